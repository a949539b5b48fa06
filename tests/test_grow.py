"""dsrg_grow: exact equality with the scipy reference of the rules, properties, and transforms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.sharding import NamedSharding, PartitionSpec as P
from scipy import ndimage

import dsrg_jax
from dsrg_jax.data.cues import import_official_cues
from dsrg_jax.data.synthetic import synthetic_probs, upsample_nearest
from dsrg_jax.ops.grow import flood_same_label
from dsrg_jax.ops.grow_scipy import dsrg_grow_scipy


def random_case(rng: np.random.Generator, batch: int, height: int, width: int, classes: int):
    """Random probabilities (smooth, often confident, sometimes tied), seeds and labels."""
    sigma = rng.uniform(0.5, 4.0)
    logits = ndimage.gaussian_filter(rng.normal(size=(batch, height, width, classes)),
                                     sigma=(0, sigma, sigma, 0))
    logits *= rng.uniform(1.0, 40.0, size=(batch, 1, 1, 1)) / max(logits.std(), 1e-6)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if rng.random() < 0.3:  # coarse probabilities: many exact ties and values at the thresholds
        probs = np.round(probs * 20) / 20
    density = rng.uniform(0.0, 0.4, size=(batch, 1, 1, 1))
    density[rng.random(batch) < 0.1] = 0.0  # images without any cue
    seeds = rng.random((batch, height, width, classes)) < density
    blobs = ndimage.binary_dilation(seeds, structure=np.ones((1, 3, 3, 1)))
    seeds = np.where(rng.random((batch, 1, 1, classes)) < 0.5, blobs, seeds)  # overlapping blobs
    labels = rng.random((batch, classes)) < 0.5  # cues of absent classes are common
    return probs.astype(np.float32), seeds, labels


def test_equals_scipy_reference_on_300_random_images():
    rng = np.random.default_rng(2018)
    checked = 0
    for _ in range(15):  # 15 random sizes (each a compilation) x 20 random images
        height, width = rng.integers(1, 40, size=2)
        classes = int(rng.integers(2, 12))
        probs, seeds, labels = random_case(rng, 20, int(height), int(width), classes)
        theta_fg, theta_bg = (0.85, 0.99) if rng.random() < 0.5 else rng.uniform(0.3, 0.95, 2)
        expected = dsrg_grow_scipy(probs, seeds, labels, theta_fg=theta_fg, theta_bg=theta_bg)
        grown = dsrg_jax.dsrg_grow(probs, seeds, labels, theta_fg=theta_fg, theta_bg=theta_bg)
        np.testing.assert_array_equal(np.asarray(grown), expected)
        checked += len(probs)
    assert checked >= 300


def test_growth_actually_happens_in_random_cases():
    """Guards the equality test above against trivial inputs (no growth at all)."""
    rng = np.random.default_rng(7)
    probs, seeds, labels = random_case(rng, 10, 30, 30, 5)
    grown = dsrg_grow_scipy(probs, seeds, labels, theta_fg=0.6, theta_bg=0.6)
    assert grown.sum() > seeds.sum()


@pytest.fixture(scope="module")
def real_cues(sec_cue_file):
    """Cue layouts and labels of 40 real images from the official cue file."""
    cue_set = import_official_cues(sec_cue_file)
    indices = np.random.default_rng(0).choice(len(cue_set), size=40, replace=False)
    return cue_set.dense_batch(indices)


@pytest.mark.parametrize("factor", [1, 2])
def test_equals_scipy_reference_on_real_cue_layouts(real_cues, factor):
    cues, labels = real_cues
    cues = upsample_nearest(cues, factor)
    probs = synthetic_probs(cues, labels, np.random.default_rng(factor))
    expected = dsrg_grow_scipy(probs, cues, labels)
    grown = np.asarray(dsrg_jax.dsrg_grow(probs, cues, labels))
    np.testing.assert_array_equal(grown, expected)
    # Realistic growth: the cues (about a quarter of the grid) grow substantially.
    assert grown.sum() > 1.3 * cues.sum()


def test_official_case_by_hand():
    """A 1x6 strip worked by hand from the rules."""
    # classes: 0 bg, 1, 2 (present), 3 (absent). Pixel 0: cue of 1; pixels 1-2 confident 1;
    # pixel 3: cue of 2 only, confident 1 (connects but is not added); pixel 4: confident 1;
    # pixel 5: not confident.
    probs = np.array([[[[0.05, 0.90, 0.05, 0.0], [0.05, 0.90, 0.05, 0.0],
                        [0.02, 0.95, 0.03, 0.0], [0.05, 0.90, 0.05, 0.0],
                        [0.05, 0.90, 0.05, 0.0], [0.30, 0.40, 0.30, 0.0]]]], np.float32)
    seeds = np.zeros((1, 1, 6, 4), bool)
    seeds[0, 0, 0, 1] = True
    seeds[0, 0, 3, 2] = True
    labels = np.array([[False, True, True, False]])
    grown = np.asarray(dsrg_jax.dsrg_grow(probs, seeds, labels))
    np.testing.assert_array_equal(grown[0, 0, :, 1], [True, True, True, False, True, False])
    np.testing.assert_array_equal(grown[0, 0, :, 2], seeds[0, 0, :, 2])
    np.testing.assert_array_equal(grown, dsrg_grow_scipy(probs, seeds, labels))


def test_diagonal_neighbours_connect():
    probs = np.zeros((1, 4, 4, 2), np.float32)
    probs[..., 0] = 1.0
    for i in range(4):
        probs[0, i, i] = [0.0, 1.0]  # a confident diagonal line of class 1
    seeds = np.zeros((1, 4, 4, 2), bool)
    seeds[0, 0, 0, 1] = True
    grown = np.asarray(dsrg_jax.dsrg_grow(probs, seeds, np.array([[True, True]])))
    assert grown[0, :, :, 1].sum() == 4 and all(grown[0, i, i, 1] for i in range(4))


def test_winding_path_needs_many_loop_iterations_and_stays_exact():
    """A one-pixel-wide snake: every turn costs the fill one more loop iteration."""
    size = 33
    snake = np.zeros((size, size), bool)
    snake[::2] = True
    for row in range(1, size, 2):
        snake[row, size - 1 if row % 4 == 1 else 0] = True
    label = jnp.asarray(np.where(snake, 1, 0)[None].astype(np.int32))
    start = np.zeros((1, size, size), bool)
    start[0, 0, 0] = True
    reached, iterations = flood_same_label(label, jnp.asarray(start))
    np.testing.assert_array_equal(np.asarray(reached)[0], snake)
    assert int(iterations) >= size // 2


# --- properties ------------------------------------------------------------------------------

SHAPE = (2, 9, 11, 4)


@st.composite
def growth_inputs(draw):
    probs = draw(hnp.arrays(np.float32, SHAPE, elements=st.floats(0.0, 1.0, width=32)))
    probs = probs + 1e-3
    probs = probs / probs.sum(axis=-1, keepdims=True)
    seeds = draw(hnp.arrays(np.bool_, SHAPE))
    labels = draw(hnp.arrays(np.bool_, SHAPE[:1] + SHAPE[-1:]))
    theta_fg = draw(st.floats(0.25, 0.95))
    theta_bg = draw(st.floats(0.25, 0.999))
    return probs.astype(np.float32), seeds, labels, theta_fg, theta_bg


@settings(max_examples=60, deadline=None)
@given(growth_inputs())
def test_properties_superset_present_classes_thresholds(inputs):
    probs, seeds, labels, theta_fg, theta_bg = inputs
    grown = np.asarray(dsrg_jax.dsrg_grow(probs, seeds, labels,
                                          theta_fg=theta_fg, theta_bg=theta_bg))
    # 1. the output is a superset of the seeds
    assert np.all(grown >= seeds)
    added = grown & ~seeds
    # 2. growth only into classes present in the image (background always present)
    present = labels.copy()
    present[:, 0] = True
    assert not np.any(added & ~present[:, None, None, :])
    # 3. a pixel added to class c passed c's threshold and c is its most likely present class
    b, y, x, c = np.nonzero(added)
    threshold = np.where(c == 0, theta_bg, theta_fg)
    assert np.all(probs[b, y, x, c] > threshold.astype(np.float32))
    best = np.max(np.where(present[:, None, None, :], probs, -1.0), axis=-1)
    assert np.all(probs[b, y, x, c] == best[b, y, x])
    # and everything equals the reference
    np.testing.assert_array_equal(
        grown, dsrg_grow_scipy(probs, seeds, labels, theta_fg=theta_fg, theta_bg=theta_bg))


# --- transforms: jit, vmap, a caller's jit, shard_map ----------------------------------------

@pytest.fixture(scope="module")
def batch16(real_cues):
    cues, labels = real_cues
    cues, labels = cues[:16], labels[:16]
    probs = synthetic_probs(cues, labels, np.random.default_rng(3))
    return probs, cues, labels, dsrg_grow_scipy(probs, cues, labels)


def test_same_result_under_vmap(batch16):
    probs, cues, labels, expected = batch16
    stacked = [x.reshape(4, 4, *x.shape[1:]) for x in (probs, cues, labels)]
    grown = jax.vmap(dsrg_jax.dsrg_grow)(*stacked)
    np.testing.assert_array_equal(np.asarray(grown).reshape(expected.shape), expected)


def test_same_result_inside_a_callers_jitted_train_step(batch16):
    probs, cues, labels, expected = batch16
    logits = jnp.log(jnp.asarray(probs))

    @jax.jit
    def step(logits, cues, labels):
        def loss_fn(logits):
            p = dsrg_jax.probs_from_logits(logits, min_prob=0.0)
            grown = dsrg_jax.dsrg_grow(p, cues, labels)
            return dsrg_jax.balanced_seed_loss(p + 1e-6, grown), grown
        (loss, grown), grad = jax.value_and_grad(loss_fn, has_aux=True)(logits)
        return loss, grown, grad

    loss, grown, grad = step(logits, cues, labels)
    reference = dsrg_grow_scipy(np.asarray(jax.nn.softmax(logits, axis=-1)), cues, labels)
    np.testing.assert_array_equal(np.asarray(grown), reference)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))


def test_same_result_under_shard_map_on_8_devices(batch16):
    probs, cues, labels, expected = batch16
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    mesh = jax.make_mesh((8,), ("data",))
    grow_per_device = jax.jit(jax.shard_map(
        dsrg_jax.dsrg_grow, mesh=mesh, in_specs=P("data"), out_specs=P("data")))
    sharding = NamedSharding(mesh, P("data"))
    args = [jax.device_put(x, sharding) for x in (probs, cues, labels)]
    grown = grow_per_device(*args)
    assert grown.sharding.is_equivalent_to(sharding, grown.ndim)
    np.testing.assert_array_equal(np.asarray(grown), expected)


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_same_result_under_jit_with_a_sharded_global_batch(batch16, axis_type):
    """A caller's jit over a batch sharded on 8 devices: with an explicit mesh (jax.make_mesh's
    default) dsrg_grow runs per device by itself; with an auto mesh XLA partitions it."""
    probs, cues, labels, expected = batch16
    if axis_type == "explicit":
        mesh = jax.make_mesh((8,), ("data",))
    else:
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    args = [jax.device_put(x, sharding) for x in (probs, cues, labels)]

    @jax.jit
    def callers_step(probs, cues, labels):
        return dsrg_jax.dsrg_grow(probs, cues, labels)

    grown = callers_step(*args)
    np.testing.assert_array_equal(np.asarray(grown), expected)
    assert grown.sharding.is_equivalent_to(sharding, grown.ndim)


# --- bad input --------------------------------------------------------------------------------

GOOD = (jax.ShapeDtypeStruct((2, 5, 5, 3), jnp.float32),
        jax.ShapeDtypeStruct((2, 5, 5, 3), jnp.bool_),
        jax.ShapeDtypeStruct((2, 3), jnp.bool_))


@pytest.mark.parametrize("position, bad, message", [
    (0, jax.ShapeDtypeStruct((2, 5, 5), jnp.float32), "`probs` must be float[B, H, W, C]"),
    (0, jax.ShapeDtypeStruct((2, 5, 5, 3), jnp.int32), "`probs` must have a floating dtype"),
    (0, jax.ShapeDtypeStruct((2, 5, 5, 1), jnp.float32), "at least 2 classes"),
    (1, jax.ShapeDtypeStruct((2, 5, 5, 3), jnp.float32), "`seeds` must be bool"),
    (1, jax.ShapeDtypeStruct((2, 5, 6, 3), jnp.bool_), "`seeds` must have the shape of `probs`"),
    (2, jax.ShapeDtypeStruct((2, 3), jnp.int32), "`image_labels` must be bool[B, C]"),
    (2, jax.ShapeDtypeStruct((2, 4), jnp.bool_), "`image_labels` must be bool[B, C] = (2, 3)"),
])
def test_bad_input_fails_at_trace_time_naming_the_argument(position, bad, message):
    args = list(GOOD)
    args[position] = bad
    with pytest.raises((TypeError, ValueError)) as error:
        jax.eval_shape(dsrg_jax.dsrg_grow, *args)  # tracing only: nothing is computed
    assert message in str(error.value)


def test_output_has_input_shape_and_bool_dtype():
    out = jax.eval_shape(dsrg_jax.dsrg_grow, *GOOD)
    assert out.shape == (2, 5, 5, 3) and out.dtype == jnp.bool_


def test_more_than_32_classes_and_32_images():
    """Classes and images are packed 32 to a word; cross both word boundaries (COCO has 81)."""
    rng = np.random.default_rng(81)
    probs, seeds, labels = random_case(rng, 35, 12, 13, 81)
    labels[:, 40:] = rng.random((35, 41)) < 0.5
    np.testing.assert_array_equal(np.asarray(dsrg_jax.dsrg_grow(probs, seeds, labels)),
                                  dsrg_grow_scipy(probs, seeds, labels))
