"""Dense CRF: the JAX CRF on the training grid and the pydensecrf2 host CRF.

Oracles: pydensecrf2 itself (called directly here), a float64 numpy mean field with explicit
Gaussian kernels written here from the model's definition, `scipy.ndimage.zoom` for the official
image downsampling, and the official constrain-loss/CRF backward written out here.
Photographs: scikit-image's sample images and, if present, the real VOC images in ../shared/data.
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import ndimage

from dsrg_jax import crf_host
from dsrg_jax.ops import crf

dcrf = pytest.importorskip("pydensecrf.densecrf")
skdata = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")

GRID = 41          # training grid (321 input, output stride 8)
C = 21             # VOC classes with background
CHUNK = 6          # JAX CRF batch used by every agreement test (one compilation per setting)
RAW = dict(min_prob=0.0)   # compare the raw mean-field output, as pydensecrf returns it


def smooth_probs(rng: np.random.Generator, n: int, h: int, w: int, c: int, *,
                 sigma: float = 3.0, temperature: float = 3.0) -> np.ndarray:
    """float32[n, h, w, c] smooth random probability maps (blurred Gaussian logits, softmax)."""
    z = rng.normal(size=(n, h, w, c))
    z = ndimage.gaussian_filter(z, sigma=(0, sigma, sigma, 0))
    z = z / z.std() * temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def to_grid(image: np.ndarray) -> np.ndarray:
    """A photograph resized to the 41x41 training grid (area averaging), uint8 RGB."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    return cv2.resize(image[..., :3], (GRID, GRID), interpolation=cv2.INTER_AREA)


def pydensecrf_direct(image, probs, *, unary, bi_w, bi_xy, bi_rgb, pos_w, pos_xy, iterations,
                      min_prob=0.0, unary_floor=0.0):
    """A plain pydensecrf2 call (the library's documented usage), float32[H, W, C]; the input
    floored at `unary_floor` first, as the official layers do."""
    h, w, c = probs.shape
    probs = np.maximum(probs, np.float32(unary_floor))
    energy = -probs if unary == "prob" else -np.log(np.maximum(probs, np.finfo(np.float32).tiny))
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(energy.reshape(-1, c).T, dtype=np.float32))
    d.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=np.ascontiguousarray(image),
                           compat=bi_w)
    return np.array(d.inference(iterations), np.float32).T.reshape(h, w, c)


def in_chunks(fn, images: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """fn over batches of CHUNK (last one padded), so every call has the same shape."""
    out = []
    for start in range(0, len(images), CHUNK):
        im, pr = images[start:start + CHUNK], probs[start:start + CHUNK]
        pad = CHUNK - len(im)
        im = np.concatenate([im, np.repeat(im[-1:], pad, 0)])
        pr = np.concatenate([pr, np.repeat(pr[-1:], pad, 0)])
        out.append(np.asarray(fn(im, pr))[:CHUNK - pad])
    return np.concatenate(out)


def agreement(q: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """(mean argmax agreement over images, mean |Q diff|, max |Q diff|)."""
    per_image = (q.argmax(-1) == ref.argmax(-1)).mean(axis=(1, 2))
    return float(per_image.mean()), float(np.abs(q - ref).mean()), float(np.abs(q - ref).max())


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """uint8[6, 41, 41, 3]: scikit-image's sample photographs on the training grid."""
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
             "hubble_deep_field")
    return np.stack([to_grid(getattr(skdata, n)()) for n in names])


@pytest.fixture(scope="module")
def voc_photos(voc_mini: pathlib.Path) -> np.ndarray:
    """uint8[16, 41, 41, 3]: the real VOC 2012 images of ../shared/data/voc_mini."""
    paths = sorted((voc_mini / "VOC2012" / "JPEGImages").glob("*.jpg"))
    if not paths:
        pytest.skip(f"no JPEG images under {voc_mini}")
    return np.stack([to_grid(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)) for p in paths])


# ------------------------------------------------------------------------------------------------
# The JAX CRF against pydensecrf2.
# ------------------------------------------------------------------------------------------------

TRAIN = {**dataclasses.asdict(crf.TRAIN_CRF), **RAW}
TRAIN_LOGPROB = {**TRAIN, "unary": "logprob"}


@pytest.mark.parametrize("params", [TRAIN, TRAIN_LOGPROB], ids=["prob", "logprob"])
def test_lattice_crf_reproduces_pydensecrf2_on_photographs(photos, params):
    probs = smooth_probs(np.random.default_rng(0), len(photos), GRID, GRID, C)
    ref = np.stack([pydensecrf_direct(i, p, **params) for i, p in zip(photos, probs)])
    q = in_chunks(lambda i, p: crf.dense_crf(i, p, crf.CRFParams(**params), kernel="lattice"),
                  photos, probs)
    agree, mean_diff, max_diff = agreement(q, ref)
    # The same lattice (bit-exact structure); only float rounding differs (summation order, FMA,
    # exp): measured mean |dQ| < 1e-8, max < 1e-4.
    assert agree >= 0.999, agree
    assert mean_diff <= 1e-6, mean_diff
    assert max_diff <= 1e-3, max_diff


@pytest.mark.parametrize("params", [TRAIN, TRAIN_LOGPROB], ids=["prob", "logprob"])
def test_lattice_crf_reproduces_pydensecrf2_on_voc_images(voc_photos, params):
    probs = smooth_probs(np.random.default_rng(1), len(voc_photos), GRID, GRID, C)
    ref = np.stack([pydensecrf_direct(i, p, **params) for i, p in zip(voc_photos, probs)])
    q = in_chunks(lambda i, p: crf.dense_crf(i, p, crf.CRFParams(**params), kernel="lattice"),
                  voc_photos, probs)
    agree, mean_diff, max_diff = agreement(q, ref)
    assert agree >= 0.999, agree
    assert mean_diff <= 1e-6, mean_diff
    assert max_diff <= 1e-3, max_diff


def test_lattice_crf_reproduces_pydensecrf2_on_a_non_square_grid_at_test_time_widths():
    photos = [skdata.coffee(), skdata.rocket()]                 # landscape photographs
    images = np.stack([cv2.resize(p, (45, 29), interpolation=cv2.INTER_AREA) for p in photos])
    probs = smooth_probs(np.random.default_rng(9), 2, 29, 45, 5)
    params = dataclasses.asdict(crf.TEST_CRF)                   # logprob, 80 px, 13, 3 px
    ref = np.stack([pydensecrf_direct(i, p, **params) for i, p in zip(images, probs)])
    agree, mean_diff, max_diff = agreement(np.asarray(crf.dense_crf(images, probs, crf.TEST_CRF)),
                                           ref)
    assert agree >= 0.999, agree
    assert mean_diff <= 1e-6, mean_diff
    assert max_diff <= 1e-3, max_diff


@pytest.mark.parametrize("params, min_agree", [(TRAIN, 0.90), (TRAIN_LOGPROB, 0.95)],
                         ids=["prob", "logprob"])
def test_exact_crf_is_close_to_pydensecrf2_lattice(photos, params, min_agree):
    # The exact Gaussian kernels differ from the lattice's approximation of them (the lattice's
    # self weight is larger); measured 0.93 / 0.97 argmax agreement, 0.007 / 0.003 mean |dQ|.
    probs = smooth_probs(np.random.default_rng(0), len(photos), GRID, GRID, C)
    ref = np.stack([pydensecrf_direct(i, p, **params) for i, p in zip(photos, probs)])
    q = np.asarray(crf.dense_crf(photos, probs, crf.CRFParams(**params), kernel="exact"))
    agree, mean_diff, _ = agreement(q, ref)
    assert agree >= min_agree, agree
    assert mean_diff <= 0.03, mean_diff


def numpy_mean_field(image, probs, *, unary, bi_w, bi_xy, bi_rgb, pos_w, pos_xy, iterations,
                     min_prob=0.0, unary_floor=0.0):
    """Textbook mean field in float64: explicit kernels, symmetric normalisation, Potts."""
    h, w, c = probs.shape
    yy, xx = np.mgrid[:h, :w]
    pos = np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64)

    def normalised_kernel(f):
        k = np.exp(-0.5 * ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
        n = 1.0 / np.sqrt(k.sum(1))
        return n[:, None] * k * n[None, :]

    kb = normalised_kernel(np.concatenate([pos / bi_xy, image.reshape(-1, 3) / bi_rgb], 1))
    kg = normalised_kernel(pos / pos_xy)
    p = np.maximum(probs.reshape(-1, c).astype(np.float64), unary_floor)
    u = -p if unary == "prob" else -np.log(p)

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    q = softmax(-u)
    for _ in range(iterations):
        q = softmax(-u + bi_w * kb @ q + pos_w * kg @ q)
    return q.reshape(h, w, c)


@pytest.mark.parametrize("unary", ["prob", "logprob"])
def test_exact_crf_is_the_exact_mean_field(unary):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 9, 12, 3), dtype=np.uint8)
    probs = smooth_probs(rng, 2, 9, 12, 4, sigma=1.0)
    params = dict(unary=unary, bi_w=10.0, bi_xy=3.0, bi_rgb=13.0, pos_w=3.0, pos_xy=1.5,
                  iterations=5)
    q = np.asarray(crf.dense_crf(images, probs, crf.CRFParams(min_prob=0.0, **params),
                                   kernel="exact"))
    ref = np.stack([numpy_mean_field(i, p, **params) for i, p in zip(images, probs)])
    np.testing.assert_allclose(q, ref, atol=2e-5)


def test_output_is_floored_and_renormalised_as_the_official_layer(photos):
    probs = smooth_probs(np.random.default_rng(3), len(photos), GRID, GRID, C)
    raw = np.asarray(crf.dense_crf(photos, probs, crf.TRAIN_CRF.replace(**RAW), kernel="exact"),
                     np.float64)
    q = np.asarray(crf.dense_crf(photos, probs, kernel="exact"))   # default min_prob = 1e-4
    # pylayers.py CRFLayer: result[result < min_prob] = min_prob; result /= result.sum(classes).
    ref = raw.copy()
    ref[ref < 1e-4] = 1e-4
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q.sum(-1), 1.0, atol=1e-5)
    assert raw.min() < 1e-4                                   # the floor is exercised
    assert q.min() >= 1e-4 / (1 + C * 1e-4) - 1e-9


# ------------------------------------------------------------------------------------------------
# Image downsampling as the official CRFLayer.
# ------------------------------------------------------------------------------------------------


def official_downsample(images_bgr_minus_mean: np.ndarray, size: int) -> np.ndarray:
    """pylayers.py CRFLayer: zoom(order=1) of the NCHW net input, + mean, np.round."""
    im = np.transpose(images_bgr_minus_mean, (0, 3, 1, 2))
    im = ndimage.zoom(im, (1.0, 1.0, size / im.shape[2], size / im.shape[3]), order=1)
    im = im + np.array(crf.CAFFE_MEAN_BGR)[None, :, None, None]
    return np.transpose(np.round(im), (0, 2, 3, 1)).astype(np.uint8)


def caffe_input(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., ::-1].astype(np.float32) - np.array(crf.CAFFE_MEAN_BGR, np.float32))


def test_downsample_image_reproduces_the_official_zoom():
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    # The official training input: the whole image warped to 321x321.
    batch = np.stack([caffe_input(cv2.resize(p, (321, 321))) for p in photos])
    ours = np.asarray(crf.downsample_image(batch, (GRID, GRID)))
    np.testing.assert_array_equal(ours, official_downsample(batch, GRID))
    # Another input size (fractional zoom coordinates): equal up to float rounding.
    batch = caffe_input(skdata.chelsea())[None]              # 300 x 451
    ours = np.asarray(crf.downsample_image(batch, (GRID, GRID))).astype(int)
    ref = official_downsample(batch, GRID).astype(int)
    assert np.abs(ours - ref).max() <= 1
    assert (ours != ref).mean() <= 1e-3


# ------------------------------------------------------------------------------------------------
# Gradient: the official pass-through of the CRF.
# ------------------------------------------------------------------------------------------------


def test_constrain_loss_gradient_passes_through_the_crf_as_official(photos):
    losses = pytest.importorskip(
        "dsrg_jax.ops.losses", reason="dsrg_jax.ops.losses (constrain_loss) not written yet")
    probs = jnp.asarray(smooth_probs(np.random.default_rng(4), len(photos), GRID, GRID, C))

    def loss(p):
        # The training step's composition: the CRF (training defaults) is a constant of the
        # backward pass; constrain_loss routes its gradient to P.
        q = crf.dense_crf(photos, jax.lax.stop_gradient(p))
        return losses.constrain_loss(p, q), q

    grad, q = jax.grad(loss, has_aux=True)(probs)
    grad = np.asarray(grad, np.float64)
    # Official (SEC/DSRG pylayers.py): ConstrainLossLayer = Theano autodiff of
    # mean_{n,h,w} sum_c Q log(clip(Q / P, 0.05, 20)) w.r.t. P and log Q; CRFLayer backward
    # passes the log-Q gradient to P as (1 - Q) * g.
    p = np.asarray(probs, np.float64)
    q = np.asarray(q, np.float64)
    ratio = q / p
    inside = (ratio > 0.05) & (ratio < 20.0)
    m = p.shape[0] * p.shape[1] * p.shape[2]
    d_p = -q / p * inside / m
    d_logq = q * (np.log(np.clip(ratio, 0.05, 20.0)) + inside) / m
    expected = d_p + (1.0 - q) * d_logq
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Host CRF (pydensecrf2): direct call, process pool, pure_callback inside shard_map.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [crf.TEST_CRF, crf.TRAIN_CRF], ids=["test", "train"])
def test_host_wrapper_is_a_direct_pydensecrf2_call(params):
    image = cv2.resize(skdata.coffee(), (120, 80))            # full resolution: any size
    probs = smooth_probs(np.random.default_rng(5), 1, 80, 120, 5)[0]
    ours = crf_host.dense_crf_host(image, probs, params)
    ref = pydensecrf_direct(image, probs, **dataclasses.asdict(params))
    if params.min_prob > 0:
        ref = np.maximum(ref, params.min_prob)
        ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_array_equal(ours, ref)
    assert ours.dtype == np.float32 and ours.shape == probs.shape


def test_host_batch_in_a_process_pool_equals_serial(photos):
    probs = smooth_probs(np.random.default_rng(6), len(photos), GRID, GRID, C)
    try:
        parallel = crf_host.dense_crf_host_batch(photos, probs, crf.TRAIN_CRF, processes=2)
    finally:
        crf_host.shutdown_pools()
    serial = crf_host.dense_crf_host_batch(photos, probs, crf.TRAIN_CRF, processes=1)
    np.testing.assert_array_equal(parallel, serial)
    np.testing.assert_array_equal(
        serial[2], crf_host.dense_crf_host(photos[2], probs[2], crf.TRAIN_CRF))


def test_host_crf_inside_shard_map_stays_sharded_and_matches(photos):
    n_dev = len(jax.devices())
    mesh = Mesh(np.array(jax.devices()), ("data",))
    images = np.concatenate([photos] * 2)[:n_dev, :17, :17]
    probs = smooth_probs(np.random.default_rng(7), n_dev, 17, 17, 4)
    sharding = NamedSharding(mesh, P("data"))
    images_d, probs_d = jax.device_put(images, sharding), jax.device_put(probs, sharding)

    @jax.jit
    def step(images, probs):
        return crf_host.sharded_dense_crf_host(images, probs, crf.TRAIN_CRF, mesh=mesh)

    q = step(images_d, probs_d)
    assert q.sharding.is_equivalent_to(sharding, q.ndim)
    np.testing.assert_array_equal(
        np.asarray(q), crf_host.dense_crf_host_batch(images, probs, crf.TRAIN_CRF, processes=1))
    # No gradient through the host CRF (it is a constant of the loss), and no tracing error.
    grad = jax.jit(jax.grad(lambda p: jnp.sum(
        crf_host.sharded_dense_crf_host(images_d, p, crf.TRAIN_CRF, mesh=mesh) * p)))(probs_d)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(q), rtol=1e-6)


def test_jax_crf_on_a_sharded_batch_equals_unsharded(photos):
    mesh = Mesh(np.array(jax.devices()[:CHUNK]), ("data",))   # one image per device
    probs = smooth_probs(np.random.default_rng(0), len(photos), GRID, GRID, C)
    sharding = NamedSharding(mesh, P("data"))
    q = crf.dense_crf(jax.device_put(photos, sharding), jax.device_put(probs, sharding),
                      crf.CRFParams(**TRAIN))
    assert q.sharding.is_equivalent_to(sharding, q.ndim)
    np.testing.assert_allclose(np.asarray(q),
                               np.asarray(crf.dense_crf(photos, probs, crf.CRFParams(**TRAIN))),
                               atol=1e-4)   # float rounding of differently compiled programs


# ------------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------------


def test_exact_kernel_refuses_full_resolution_and_points_to_the_host_crf():
    images = jax.ShapeDtypeStruct((2, 321, 321, 3), jnp.uint8)
    probs = jax.ShapeDtypeStruct((2, 321, 321, C), jnp.float32)
    with pytest.raises(ValueError, match="dense_crf_host"):
        jax.eval_shape(lambda i, p: crf.dense_crf(i, p, kernel="exact"), images, probs)


@pytest.mark.parametrize("shape, max_bytes, expected", [
    ((20, 15, 15, 11), None, "exact"),        # digits grid
    ((20, 41, 41, 21), None, "exact"),        # VOC training grid (1681 px, 226 MB of kernels)
    ((2, 45, 45, 21), None, "exact"),         # 2025 px, at the limit
    ((2, 46, 46, 21), None, "lattice"),       # 2116 px > AUTO_EXACT_MAX_PIXELS
    ((1, 321, 321, 21), None, "lattice"),     # full resolution
    ((20, 41, 41, 21), 100 * 2**20, "lattice"),   # kernels over max_kernel_bytes
])
def test_auto_kernel_is_exact_on_small_grids_else_lattice(shape, max_bytes, expected):
    kw = {} if max_bytes is None else {"max_kernel_bytes": max_bytes}
    assert crf.resolve_kernel("auto", shape, **kw) == expected
    assert crf.resolve_kernel("lattice", shape) == "lattice"
    assert crf.resolve_kernel("exact", shape) == "exact"


def test_auto_kernel_runs_the_resolved_kernel():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 9, 9, 3)).astype(np.uint8)
    probs = smooth_probs(rng, 2, 9, 9, 4, sigma=1.0)
    auto = np.asarray(crf.dense_crf(images, probs, kernel="auto"))
    np.testing.assert_array_equal(auto, np.asarray(crf.dense_crf(images, probs, kernel="exact")))


def test_train_config_defaults_to_the_official_lattice_and_digits_to_auto():
    """VOC/COCO train with the CRF the official code ran; the CPU digits run picks by size."""
    from dsrg_jax.config import DSRGConfig
    from experiments.configs.digits import get_config

    assert DSRGConfig().crf_kernel == "lattice" and DSRGConfig().crf == crf.TRAIN_CRF
    assert get_config().dsrg.crf_kernel == "auto"


@pytest.mark.parametrize("images, probs, kwargs, error, name", [
    (np.zeros((1, 5, 5, 3), np.float32), np.ones((1, 5, 5, 2), np.float32), {}, TypeError,
     "images"),
    (np.zeros((1, 5, 5, 3), np.uint8), np.ones((1, 5, 6, 2), np.float32), {}, ValueError,
     "probs"),
    (np.zeros((1, 5, 5, 3), np.uint8), np.ones((5, 5, 2), np.float32), {}, ValueError, "probs"),
    (np.zeros((1, 5, 5, 3), np.uint8), np.ones((1, 5, 5, 2), np.int32), {}, TypeError, "probs"),
    (np.zeros((1, 5, 5, 3), np.uint8), np.ones((1, 5, 5, 2), np.float32), {"kernel": "fast"},
     ValueError, "kernel"),
    (np.zeros((1, 5, 5, 3), np.uint8), np.ones((1, 5, 5, 2), np.float32), {"params": {}},
     TypeError, "params"),
])
def test_bad_arguments_are_named(images, probs, kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`"):
        crf.dense_crf(images, probs, **kwargs)
    if "kernel" not in kwargs and np.ndim(probs) == 4:
        with pytest.raises(error, match=f"`{name}`"):
            crf_host.dense_crf_host_batch(images, probs, processes=1, **kwargs)


@pytest.mark.parametrize("field, value, error", [
    ("unary", "log", ValueError), ("bi_xy", 0.0, ValueError), ("iterations", -1, ValueError),
    ("pos_w", float("nan"), TypeError), ("unary_floor", 1.0, ValueError)])
def test_bad_crf_parameters_are_named_when_built(field, value, error):
    with pytest.raises(error, match=f"CRFParams.{field}"):
        crf.TRAIN_CRF.replace(**{field: value})


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_jax_crf_runs_per_device_under_shard_map_with_the_varying_axis_check(axis_type):
    """The lattice's search loop must trace inside a user's shard_map (check_vma on), and each
    device's result equals the unsharded one."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 21, 21, 3)).astype(np.uint8)
    logits = rng.normal(size=(8, 21, 21, 5))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    if axis_type == "explicit":
        mesh = jax.make_mesh((8,), ("data",))
    else:
        mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    per_device = jax.jit(jax.shard_map(crf.dense_crf, mesh=mesh, in_specs=P("data"),
                                       out_specs=P("data")))
    out = per_device(jax.device_put(images, sharding), jax.device_put(probs, sharding))
    np.testing.assert_allclose(np.asarray(out), np.asarray(crf.dense_crf(images, probs)),
                               atol=1e-6)


def test_nan_probabilities_are_refused_by_the_host_crf_and_checked_in_the_jax_crf():
    """One NaN pixel would turn the whole image's CRF output into NaN: refused by name."""
    from jax.experimental import checkify

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 9, 9, 3)).astype(np.uint8)
    probs = smooth_probs(rng, 2, 9, 9, 4, sigma=1.0)
    probs[1, 3, 4, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*image\(s\) \[1\]"):
        crf_host.dense_crf_host_batch(images, probs, processes=1)
    with pytest.raises(ValueError, match="NaN"):
        crf_host.dense_crf_host(images[1], probs[1])
    checked = jax.jit(checkify.checkify(
        lambda i, p: crf.dense_crf(i, p, kernel="exact", validate=True)))
    err, _ = checked(images, probs)
    with pytest.raises(checkify.JaxRuntimeError, match="NaN"):
        err.throw()
    err, _ = checked(images, np.nan_to_num(probs))
    err.throw()   # finite input: no error
