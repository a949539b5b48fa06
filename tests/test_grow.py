"""dsrg_grow: exact equality with the scipy reference of the rules, properties, and transforms."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import checkify
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import ndimage

import dsrg_jax
from dsrg_jax.data.cues import import_official_cues
from dsrg_jax.data.synthetic import spiral_path, synthetic_probs, upsample_nearest
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
    """Cue layouts and labels of 40 real images from SEC's cue file."""
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


def test_equals_scipy_reference_on_large_winding_maps():
    """Smooth noise blurred by one pixel on a 97x97 grid: long, winding regions of few classes."""
    rng = np.random.default_rng(97)
    logits = ndimage.gaussian_filter(rng.normal(size=(6, 97, 97, 3)), sigma=(0, 1, 1, 0))
    probs = np.exp(8 * logits / logits.std())
    probs = (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)
    seeds = rng.random(probs.shape) < 0.01
    labels = np.ones((6, 3), bool)
    for theta_fg, theta_bg in ((0.85, 0.99), (0.6, 0.6)):
        expected = dsrg_grow_scipy(probs, seeds, labels, theta_fg=theta_fg, theta_bg=theta_bg)
        grown = dsrg_jax.dsrg_grow(probs, seeds, labels, theta_fg=theta_fg, theta_bg=theta_bg)
        np.testing.assert_array_equal(np.asarray(grown), expected)
        assert expected.sum() > 5 * seeds.sum()


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


# --- the official threshold rule, the ablation switches, dtypes, per-image thresholds ---------

def test_background_threshold_is_nested_in_the_foreground_one():
    """Official rule: a pixel whose argmax is the background is confident only when p > theta_fg
    and p > theta_bg; with theta_bg < theta_fg a background p between the two does not grow."""
    # A 1x4 strip, classes bg and 1. Pixel 0: background cue; pixel 1: bg 0.95 (above both);
    # pixel 2: bg 0.7 (above theta_bg = 0.6 only); pixel 3: bg 0.95, reachable only through 2.
    probs = np.array([[[[0.7, 0.3], [0.95, 0.05], [0.7, 0.3], [0.95, 0.05]]]], np.float32)
    seeds = np.zeros((1, 1, 4, 2), bool)
    seeds[0, 0, 0, 0] = True
    labels = np.array([[True, True]])
    grown = np.asarray(dsrg_jax.dsrg_grow(probs, seeds, labels, theta_fg=0.9, theta_bg=0.6))
    np.testing.assert_array_equal(grown[0, 0, :, 0], [True, True, False, False])
    np.testing.assert_array_equal(
        grown, dsrg_grow_scipy(probs, seeds, labels, theta_fg=0.9, theta_bg=0.6))


def test_equals_reference_with_theta_bg_below_theta_fg(real_cues):
    cues, labels = real_cues
    probs = synthetic_probs(cues, labels, np.random.default_rng(11))
    grown = np.asarray(dsrg_jax.dsrg_grow(probs, cues, labels, theta_fg=0.9, theta_bg=0.5))
    np.testing.assert_array_equal(
        grown, dsrg_grow_scipy(probs, cues, labels, theta_fg=0.9, theta_bg=0.5))
    assert grown[..., 0].sum() > cues[..., 0].sum()


@pytest.mark.parametrize("grow_fg, grow_bg", [(False, True), (True, False), (False, False)])
def test_ablation_switches_stop_exactly_one_kind_of_growth(real_cues, grow_fg, grow_bg):
    cues, labels = real_cues
    probs = synthetic_probs(cues, labels, np.random.default_rng(5))
    grown = np.asarray(dsrg_jax.dsrg_grow(probs, cues, labels, grow_fg=grow_fg, grow_bg=grow_bg))
    np.testing.assert_array_equal(
        grown, dsrg_grow_scipy(probs, cues, labels, grow_fg=grow_fg, grow_bg=grow_bg))
    for on, channels in ((grow_fg, slice(1, None)), (grow_bg, slice(0, 1))):
        if on:
            assert grown[..., channels].sum() > cues[..., channels].sum()
        else:
            np.testing.assert_array_equal(grown[..., channels], cues[..., channels])


def test_bfloat16_probs_are_compared_in_float32():
    """0.8515625 is the bfloat16 value next above 0.85: it passes theta_fg = 0.85 in float32,
    but not a threshold rounded to bfloat16 (0.85 -> 0.8515625)."""
    probs = np.zeros((1, 3, 3, 2), np.float32)
    probs[..., 0], probs[..., 1] = 0.1484375, 0.8515625  # both exact in bfloat16
    seeds = np.zeros((1, 3, 3, 2), bool)
    seeds[0, 0, 0, 1] = True
    labels = np.array([[True, True]])
    grown = np.asarray(dsrg_jax.dsrg_grow(jnp.asarray(probs, jnp.bfloat16), seeds, labels))
    assert grown[..., 1].all()
    np.testing.assert_array_equal(grown, dsrg_grow_scipy(probs, seeds, labels))

    rng = np.random.default_rng(16)
    probs, seeds, labels = random_case(rng, 20, 17, 19, 6)
    probs16 = jnp.asarray(probs).astype(jnp.bfloat16)
    upcast = np.asarray(probs16.astype(jnp.float32))
    for theta_fg, theta_bg in ((0.85, 0.99), (0.9, 0.6), (0.55, 0.7)):
        np.testing.assert_array_equal(
            np.asarray(dsrg_jax.dsrg_grow(probs16, seeds, labels, theta_fg=theta_fg,
                                          theta_bg=theta_bg)),
            dsrg_grow_scipy(upcast, seeds, labels, theta_fg=theta_fg, theta_bg=theta_bg))


def test_per_image_thresholds(real_cues):
    cues, labels = real_cues[0][:8], real_cues[1][:8]
    probs = synthetic_probs(cues, labels, np.random.default_rng(8))
    rng = np.random.default_rng(9)
    theta_fg = rng.uniform(0.5, 0.95, 8).astype(np.float32)
    theta_bg = rng.uniform(0.5, 0.999, 8).astype(np.float32)
    expected = dsrg_grow_scipy(probs, cues, labels, theta_fg=theta_fg, theta_bg=theta_bg)
    for b in (0, 5):  # the reference treats each image with its own thresholds
        np.testing.assert_array_equal(expected[b], dsrg_grow_scipy(
            probs[b:b + 1], cues[b:b + 1], labels[b:b + 1], theta_fg=float(theta_fg[b]),
            theta_bg=float(theta_bg[b]))[0])
    grown = dsrg_jax.dsrg_grow(probs, cues, labels, theta_fg=theta_fg, theta_bg=theta_bg)
    np.testing.assert_array_equal(np.asarray(grown), expected)
    traced = jax.jit(lambda p, tf, tb: dsrg_jax.dsrg_grow(p, cues, labels, theta_fg=tf,
                                                          theta_bg=tb))
    np.testing.assert_array_equal(
        np.asarray(traced(probs, jnp.asarray(theta_fg), jnp.asarray(theta_bg))), expected)


def snake(size: int) -> np.ndarray:
    """bool[size, size]: a one-pixel-wide path turning at every other row."""
    path = np.zeros((size, size), bool)
    path[::2] = True
    for row in range(1, size, 2):
        path[row, size - 1 if row % 4 == 1 else 0] = True
    return path


def spiral(size: int) -> np.ndarray:
    """bool[size, size]: a one-pixel-wide square spiral from the corner (0, 0) inwards."""
    return spiral_path(size)


@pytest.mark.parametrize("shape", [snake, spiral])
@pytest.mark.parametrize("size", [17, 33, 65, 129])
def test_winding_paths_stay_exact_in_logarithmically_many_rounds(shape, size):
    """A one-pixel snake / spiral: a fill that follows the path would need one step per turn
    (size / 2 and more); the hooking rounds grow with log2(size)."""
    path = shape(size)
    label = jnp.asarray(path[None].astype(np.int32))
    start = np.zeros((1, size, size), bool)
    start[0, 0, 0] = True
    reached, rounds = flood_same_label(label, jnp.asarray(start))
    np.testing.assert_array_equal(np.asarray(reached)[0], path)
    assert int(rounds) <= np.log2(size) + 2


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


@pytest.mark.parametrize("theta_sharded", [True, False])
def test_per_image_thresholds_under_an_explicit_mesh(batch16, theta_sharded):
    probs, cues, labels, _ = batch16
    theta_fg = np.linspace(0.6, 0.95, 16).astype(np.float32)
    mesh = jax.make_mesh((8,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    args = [jax.device_put(x, sharding) for x in (probs, cues, labels)]
    theta = jax.device_put(theta_fg, sharding if theta_sharded else NamedSharding(mesh, P()))
    grown = jax.jit(lambda p, c, y, t: dsrg_jax.dsrg_grow(p, c, y, theta_fg=t, theta_bg=0.9))(
        *args, theta)
    np.testing.assert_array_equal(
        np.asarray(grown), dsrg_grow_scipy(probs, cues, labels, theta_fg=theta_fg, theta_bg=0.9))
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


@pytest.mark.parametrize("kwargs, error, message", [
    ({"theta_fg": 1.5}, ValueError, "`theta_fg` must be a number in [0, 1]"),
    ({"theta_bg": -0.1}, ValueError, "`theta_bg` must be a number in [0, 1]"),
    ({"theta_fg": float("nan")}, ValueError, "`theta_fg` must be a number in [0, 1]"),
    ({"theta_bg": 2.0}, ValueError, "`theta_bg` must be a number in [0, 1]"),
    ({"theta_bg": True}, TypeError, "`theta_bg` must be a number in [0, 1]"),
    ({"theta_fg": "0.8"}, TypeError, "`theta_fg` must be a number in [0, 1]"),
    ({"theta_fg": np.array([0.5, 1.2], np.float32)}, ValueError, "values outside [0, 1] or NaN"),
    ({"theta_bg": np.array([0.5, np.nan], np.float32)}, ValueError, "`theta_bg` must be"),
    ({"theta_fg": jnp.zeros((3,))}, ValueError, "of shape () or (2,), got an array of dtype"),
    ({"theta_bg": jnp.zeros((2,), jnp.int32)}, ValueError, "dtype int32"),
    ({"grow_fg": 1}, TypeError, "`grow_fg` must be a Python bool"),
    ({"grow_bg": jnp.array(True)}, TypeError, "`grow_bg` must be a Python bool"),
    ({"validate": "yes"}, TypeError, "`validate` must be a Python bool"),
])
def test_bad_thresholds_and_switches_fail_at_trace_time(kwargs, error, message):
    with pytest.raises(error) as raised:
        jax.eval_shape(functools.partial(dsrg_jax.dsrg_grow, **kwargs), *GOOD)
    assert message in str(raised.value)


def test_empty_batch_is_refused():
    empty = (jax.ShapeDtypeStruct((0, 5, 5, 3), jnp.float32),
             jax.ShapeDtypeStruct((0, 5, 5, 3), jnp.bool_),
             jax.ShapeDtypeStruct((0, 3), jnp.bool_))
    with pytest.raises(ValueError, match="empty batch"):
        jax.eval_shape(dsrg_jax.dsrg_grow, *empty)


def test_validate_reports_bad_probabilities_eagerly_and_under_jit():
    rng = np.random.default_rng(4)
    probs, seeds, labels = random_case(rng, 4, 9, 10, 5)
    probs /= probs.sum(axis=-1, keepdims=True)  # random_case may round them
    grown = dsrg_jax.dsrg_grow(probs, seeds, labels, validate=True)
    np.testing.assert_array_equal(np.asarray(grown), dsrg_grow_scipy(probs, seeds, labels))
    dsrg_jax.dsrg_grow(jnp.asarray(probs, jnp.bfloat16), seeds, labels, validate=True)

    checked = checkify.checkify(jax.jit(
        lambda p, t: dsrg_jax.dsrg_grow(p, seeds, labels, theta_fg=t, validate=True)))
    error, grown = checked(probs, jnp.float32(0.85))
    assert error.get() is None
    np.testing.assert_array_equal(np.asarray(grown), dsrg_grow_scipy(probs, seeds, labels))

    nan, negative, unnormalised = probs.copy(), probs.copy(), probs * 0.9
    nan[1, 2, 3, 0] = np.nan
    negative[2, 0, 0, 1] = -0.25
    for bad, message in ((nan, "`probs` contains NaN"), (negative, "`probs` must be >= 0"),
                         (unnormalised, "`probs` must sum to 1 over C")):
        with pytest.raises(checkify.JaxRuntimeError) as raised:
            dsrg_jax.dsrg_grow(bad, seeds, labels, validate=True)
        assert message in str(raised.value)
        error, _ = checked(bad, jnp.float32(0.85))
        assert message in error.get()
    error, _ = checked(probs, jnp.float32(1.5))  # a device threshold: checked at run time
    assert "`theta_fg` must lie in [0, 1]" in error.get()


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
