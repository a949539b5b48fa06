"""Multi-scale inference equals running each scale by hand (OpenCV resizes) and summing."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from scipy import ndimage

from dsrg_jax import inference
from dsrg_jax.convention import CAFFE
from dsrg_jax.crf_host import dense_crf_host
from dsrg_jax.data.files import read_label_png
from dsrg_jax.data.records import Record

NUM_CLASSES = 5


class TinyNet(nn.Module):
    """Output stride 4, like a (very) small DeepLab: logits are coarser than the input."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x / 64.0))
        return nn.Conv(NUM_CLASSES, (3, 3), strides=2)(x)


@pytest.fixture(scope="module")
def net():
    model = TinyNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    return model.apply, variables


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(3, 10, 12, 3)).astype(np.uint8)
    return np.stack([cv2.resize(b, (47, 39), interpolation=cv2.INTER_CUBIC) for b in base])


def official_preprocess(image, factors):
    """test-ms.py / test-ms-f.py `preprocess`: the raw image zoomed (float32, order 1), then
    channels reversed to BGR and the mean subtracted. uint8[H, W, 3] -> float32[h, w, 3]."""
    x = ndimage.zoom(image.astype("float32"), (*factors, 1.0), order=1)
    return (x[:, :, [2, 1, 0]] - np.array([104.0, 117.0, 123.0])).astype(np.float32)


def by_hand(apply_fn, variables, images, scales, flip):
    """Each scale separately as the official test-ms-f.py: `scipy.ndimage.zoom(order=1)` of the
    raw image to round(scale * side), then BGR minus the mean, and of the logits back to the
    full size, summed."""
    b, h, w, _ = images.shape
    total = np.zeros((b, h, w, NUM_CLASSES), np.float64)
    for s in scales:
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        for n in range(b):
            x = official_preprocess(images[n], (sh / h, sw / w))
            assert x.shape[:2] == (sh, sw)
            variants = [(x, False)] + ([(x[:, ::-1], True)] if flip else [])
            for xin, mirrored in variants:
                logits = np.asarray(apply_fn(variables, jnp.asarray(xin[None].copy())))[0]
                lh, lw = logits.shape[:2]
                up = ndimage.zoom(logits.astype(np.float64), (h / lh, w / lw, 1.0), order=1)
                total[n] += up[:, ::-1] if mirrored else up
    return total


@pytest.mark.parametrize("flip", [False, True])
def test_multi_scale_logits_equal_each_scale_by_hand_summed(net, images, flip):
    apply_fn, variables = net
    scales = (0.75, 1.0, 1.25)
    got = np.asarray(inference.multi_scale_logits(apply_fn, images, variables=variables,
                                                  scales=scales, flip=flip))
    want = by_hand(apply_fn, variables, images, scales, flip)
    assert got.shape == images.shape[:3] + (NUM_CLASSES,)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_normalize_function_equals_the_convention_name(net, images):
    apply_fn, variables = net
    by_name = inference.multi_scale_logits(apply_fn, images, variables=variables, scales=(0.5,))
    by_fn = inference.multi_scale_logits(apply_fn, images, variables=variables, scales=(0.5,),
                                         normalize=CAFFE.normalize)
    np.testing.assert_allclose(np.asarray(by_fn), np.asarray(by_name), rtol=1e-6, atol=1e-6)


def test_one_scale_and_closure_form(net, images):
    apply_fn, variables = net
    closed = lambda x: apply_fn(variables, x)  # noqa: E731
    got = np.asarray(inference.multi_scale_logits(closed, images, scales=(0.5,)))
    want = by_hand(apply_fn, variables, images, (0.5,), False)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_segment_argmax_all_classes_or_labelled_classes(net, images):
    apply_fn, variables = net
    seg = inference.segment(apply_fn, images, variables=variables)
    logits = by_hand(apply_fn, variables, images, inference.DEFAULT_SCALES, False)
    np.testing.assert_allclose(seg.logits, logits, atol=1e-5 * np.abs(logits).max())
    e = np.exp(seg.logits - seg.logits.max(-1, keepdims=True))
    np.testing.assert_allclose(seg.probs, e / e.sum(-1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(seg.labels, np.argmax(seg.logits, -1))
    assert seg.labels_crf is None and seg.final is seg.labels

    labels = np.zeros((len(images), NUM_CLASSES), bool)
    labels[:, 2] = True
    labels[0, 3] = True
    restricted = inference.segment(apply_fn, images, variables=variables, image_labels=labels)
    allowed = labels.copy()
    allowed[:, 0] = True  # background always allowed
    want = np.argmax(np.where(allowed[:, None, None], seg.logits, -np.inf), -1)
    np.testing.assert_array_equal(restricted.labels, want)
    assert set(np.unique(restricted.labels[1])) <= {0, 2}
    np.testing.assert_allclose(restricted.probs[..., 1], 0.0)


def test_crf_matches_pydensecrf_per_image(net, images):
    apply_fn, variables = net
    seg = inference.segment(apply_fn, images, variables=variables, crf=True, crf_processes=1)
    for n in range(len(images)):
        q = dense_crf_host(images[n], seg.probs[n])
        np.testing.assert_allclose(seg.probs_crf[n], q, atol=1e-6)
        np.testing.assert_array_equal(seg.labels_crf[n], np.argmax(q, -1))
    assert seg.final is seg.labels_crf
    with pytest.raises(TypeError, match="uint8"):
        inference.segment(apply_fn, images.astype(np.float32), variables=variables, crf=True)


def test_bad_arguments_name_themselves(net, images):
    apply_fn, variables = net
    with pytest.raises(ValueError, match="images must be"):
        inference.multi_scale_logits(apply_fn, images[0], variables=variables)
    with pytest.raises(ValueError, match="scales"):
        inference.multi_scale_logits(apply_fn, images, variables=variables, scales=(0.0,))
    with pytest.raises(ValueError, match="image_labels"):
        inference.segment(apply_fn, images, variables=variables,
                          image_labels=np.ones((1, NUM_CLASSES), bool))
    with pytest.raises(ValueError, match="normalize"):
        inference.segment(apply_fn, images, variables=variables, normalize="bgr")


def test_group_by_size_keeps_every_index_once():
    sizes = [(10, 12), (8, 8), (10, 12), (10, 12), (8, 8)]
    groups = inference.group_by_size(sizes, batch_size=2)
    assert sorted(i for g in groups for i in g) == list(range(5))
    assert all(len({sizes[i] for i in g}) == 1 and len(g) <= 2 for g in groups)


def test_predict_records_writes_palette_pngs(net, images, tmp_path):
    apply_fn, variables = net
    labels = np.zeros(NUM_CLASSES, bool)
    labels[[0, 1]] = True
    small = np.ascontiguousarray(images[0, :20, :30])
    recs = [Record(f"im{i}", img, labels) for i, img in enumerate([images[0], small, images[1]])]
    out = inference.predict_records(apply_fn, recs, variables=variables, batch_size=2,
                                    out_dir=tmp_path)
    assert sorted(out) == ["im0", "im1", "im2"]
    for r in recs:
        written = read_label_png(tmp_path / f"{r.image_id}.png", NUM_CLASSES)
        np.testing.assert_array_equal(written, out[r.image_id])
        alone = inference.segment(apply_fn, r.image[None], variables=variables).labels[0]
        np.testing.assert_array_equal(out[r.image_id], alone)
    restricted = inference.predict_records(apply_fn, recs, variables=variables, use_labels=True)
    assert all(set(np.unique(v)) <= {0, 1} for v in restricted.values())


class Pointwise(nn.Module):
    """1x1 convolution: each output pixel sees only its own input pixel."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Conv(NUM_CLASSES, (1, 1))(x / 64.0)


def test_canvas_mode_crops_back_to_each_image(images):
    model = Pointwise()
    variables = model.init(jax.random.key(1), jnp.zeros((1, 4, 4, 3)))
    labels = np.ones(NUM_CLASSES, bool)
    parts = [images[0], np.ascontiguousarray(images[1, :20, :31]), images[2, :33, :12]]
    recs = [Record(f"im{i}", np.ascontiguousarray(p), labels) for i, p in enumerate(parts)]
    padded = inference.predict_records(model.apply, recs, variables=variables, canvas=48,
                                       batch_size=2, scales=(1.0,))
    for r in recs:  # a pointwise net at scale 1 cannot see the padding: same as alone
        alone = inference.segment(model.apply, r.image[None], variables=variables,
                                  scales=(1.0,)).labels[0]
        np.testing.assert_array_equal(padded[r.image_id], alone)
    with pytest.raises(ValueError, match="'im0'.*larger than canvas=40"):
        inference.predict_records(model.apply, recs, variables=variables, canvas=40)


def test_canvas_of_the_image_size_changes_nothing(net, images):
    apply_fn, variables = net
    h, w = images.shape[1:3]
    square = np.ascontiguousarray(images[:, :h, :h])
    labels = np.ones(NUM_CLASSES, bool)
    recs = [Record(f"im{i}", im, labels) for i, im in enumerate(square)]
    got = inference.predict_records(apply_fn, recs, variables=variables, canvas=h, crf=True,
                                    crf_processes=1)
    want = inference.segment(apply_fn, square, variables=variables, crf=True, crf_processes=1)
    for i, r in enumerate(recs):
        np.testing.assert_array_equal(got[r.image_id], want.labels_crf[i])


def test_apply_fn_returning_no_logits_is_named(images):
    with pytest.raises(ValueError, match="apply_fn must return logits"):
        inference.multi_scale_logits(lambda x: (x, x), images, scales=(1.0,))


def canvas_by_hand(apply_fn, variables, canvases, hws, *, scales=None, sizes=None, flip=False):
    """Each image on its own with `scipy.ndimage.zoom(order=1)`, as the official scripts: its real
    region scaled (aspect kept, padded with the mean colour to round(scale * S)) or warped to
    s x s, the output cells that cover it zoomed to (h, w), summed over scales (and mirrored
    passes)."""
    b, big, _, _ = canvases.shape
    total = np.zeros((b, big, big, NUM_CLASSES), np.float64)
    fill = CAFFE.normalize(np.asarray(inference.MEAN_RGB_UINT8, np.float32)[None, None])[0, 0]
    steps = [("size", s) for s in sizes] if sizes is not None else [("scale", s) for s in scales]
    for kind, v in steps:
        side = v if kind == "size" else max(1, round(big * v))
        for n, (h, w) in enumerate(hws):
            hs, ws = (v, v) if kind == "size" else (max(1, round(h * v)), max(1, round(w * v)))
            x = np.empty((side, side, 3), np.float32)
            x[:] = fill
            x[:hs, :ws] = official_preprocess(canvases[n, :h, :w], (hs / h, ws / w))
            variants = [(x, False)]
            if flip:
                xf = x.copy()
                xf[:hs, :ws] = x[:hs, :ws][:, ::-1]
                variants.append((xf, True))
            for xin, mirrored in variants:
                out = np.asarray(apply_fn(variables, jnp.asarray(xin[None])))[0]
                gh, gw = out.shape[:2]
                rows, cols = -(-gh * hs // side), -(-gw * ws // side)
                up = ndimage.zoom(out[:rows, :cols].astype(np.float64),
                                  (h / rows, w / cols, 1.0), order=1)
                total[n, :h, :w] += up[:, ::-1] if mirrored else up
    return total


@pytest.mark.parametrize("kw", [dict(scales=(0.75, 1.0, 1.25)), dict(sizes=(20, 32)),
                                dict(scales=(0.5, 1.0), flip=True)])
def test_canvas_logits_of_a_sharded_batch_equal_each_image_by_hand(net, images, kw):
    """Images of different sizes padded to one canvas, the batch sharded over 8 devices (as the
    pipeline's stages give it): each image's logits as if it ran alone, at every scale."""
    from dsrg_jax.sharding import global_batch, make_mesh

    apply_fn, variables = net
    rng = np.random.default_rng(1)
    big = 48
    hws = np.array([[48, 48], [39, 47], [20, 31], [33, 12], [48, 17], [7, 9], [40, 40],
                    [25, 48]], np.int32)
    canvases = np.empty((8, big, big, 3), np.uint8)
    canvases[:] = inference.MEAN_RGB_UINT8
    for n, (h, w) in enumerate(hws):
        canvases[n, :h, :w] = cv2.resize(images[n % len(images)], (int(w), int(h)))
    canvases[5, :7, :9] = rng.integers(0, 256, (7, 9, 3))
    gb = global_batch({"image": canvases, "hw": hws}, make_mesh(8))
    got = inference.canvas_logits(apply_fn, gb["image"], gb["hw"], variables=variables, **kw)
    assert len(got.sharding.device_set) == 8  # stays sharded over the batch
    got = np.asarray(got)
    want = canvas_by_hand(apply_fn, variables, canvases, hws, **kw)
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    for n, (h, w) in enumerate(hws):  # zero outside each image
        assert not got[n, h:].any() and not got[n, :, w:].any()


def test_canvas_logits_of_full_size_images_equal_multi_scale_logits(net, images):
    apply_fn, variables = net
    square = np.ascontiguousarray(images[:, :36, :36])
    hws = np.full((len(square), 2), 36, np.int32)
    got = inference.canvas_logits(apply_fn, square, hws, variables=variables, scales=(0.75, 1.0))
    want = inference.multi_scale_logits(apply_fn, square, variables=variables, scales=(0.75, 1.0))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want),
                               atol=1e-5 * float(np.abs(want).max()))


def test_scipy_zero_line_is_black_as_the_official_scripts_feed_it():
    """scipy's zoom zeroes the last row and column for 28x30 -> 14x15; the official scripts zoom
    the raw image, so the net sees black there (BGR minus the mean), not the mean colour."""
    from dsrg_jax.ops.resize import _scipy_zeroes_last

    assert _scipy_zeroes_last(28, 14) and _scipy_zeroes_last(30, 15)
    image = np.random.default_rng(3).integers(0, 256, (28, 30, 3)).astype(np.uint8)
    fed = official_preprocess(image, (0.5, 0.5))
    np.testing.assert_array_equal(fed[-1], np.tile([-104.0, -117.0, -123.0], (15, 1)))
    np.testing.assert_array_equal(fed[:, -1], np.tile([-104.0, -117.0, -123.0], (14, 1)))
    # An identity "net" (output stride 1) returns what it was fed, zoomed back to 28 x 30.
    got = np.asarray(inference.multi_scale_logits(lambda x: x, image[None], scales=(0.5,)))[0]
    want = ndimage.zoom(fed.astype(np.float64), (2.0, 2.0, 1.0), order=1)
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert np.abs(want[-3:]).max() > 50  # the black line reaches the last full-size rows
