"""The official resampling: scipy.ndimage.zoom(order=1) and Caffe's Interp shrink_factor."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as nd

from dsrg_jax.ops.resize import (
    shrink_labels,
    shrink_labels_np,
    shrink_size,
    zoom_factor_size,
    zoom_linear,
    zoom_region,
)

# (H, W) -> (h, w): up and down, odd sizes, length-1 axes, and pairs where scipy's last position
# rounds past the input (500 -> 281, 4 -> 375, 768 -> 96), where it returns a zero line.
SIZE_PAIRS = [
    ((41, 41), (321, 321)), ((321, 321), (41, 41)), ((500, 375), (375, 281)),
    ((63, 47), (500, 375)), ((4, 7), (375, 3)), ((1, 5), (3, 1)), ((1, 1), (5, 5)),
    ((5, 5), (1, 1)), ((2, 2), (3, 3)), ((17, 23), (9, 40)), ((768, 9), (96, 9)),
    ((31, 500), (241, 8)), ((3, 2), (2, 3)),
]


def scipy_zoom(img: np.ndarray, out_hw: tuple[int, int], **kwargs) -> np.ndarray:
    """What the official scripts call: zoom(img, (h / H, w / W, 1.0), order=1) on float32."""
    h, w = out_hw
    out = nd.zoom(img.astype(np.float32), (h / img.shape[0], w / img.shape[1], 1.0), order=1,
                  **kwargs)
    assert out.shape[:2] == (h, w)
    return out


def images(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.random(shape) * 255).astype(np.float32)


@pytest.mark.parametrize("in_hw,out_hw", SIZE_PAIRS)
def test_zoom_linear_equals_scipy(in_hw, out_hw):
    rng = np.random.default_rng(sum(in_hw) * 7 + sum(out_hw))
    x = images(rng, (2, *in_hw, 3))
    got = np.asarray(zoom_linear(x, out_hw))
    assert got.shape == (2, *out_hw, 3) and got.dtype == np.float32
    for b in range(2):
        np.testing.assert_allclose(got[b], scipy_zoom(x[b], out_hw), rtol=0, atol=2e-4)


def test_scipy_zero_last_line_is_reproduced_and_optional():
    rng = np.random.default_rng(0)
    x = images(rng, (1, 500, 4, 2)) + 1.0
    ref = scipy_zoom(x[0], (281, 4))
    assert (ref[-1] == 0).all() and (ref[:-1] > 0).all()   # scipy's quirk at this size pair
    np.testing.assert_allclose(np.asarray(zoom_linear(x, (281, 4)))[0], ref, atol=2e-4)
    clamped = np.asarray(zoom_linear(x, (281, 4), scipy_edge=False))[0]
    np.testing.assert_allclose(clamped, scipy_zoom(x[0], (281, 4), mode="nearest"), atol=2e-4)
    np.testing.assert_allclose(clamped[-1], x[0, -1], atol=2e-4)


def test_zoom_linear_under_jit_and_on_integer_images():
    rng = np.random.default_rng(1)
    x = images(rng, (3, 37, 29, 3))
    fn = jax.jit(lambda v: zoom_linear(v, (50, 21)))
    np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(zoom_linear(x, (50, 21))), atol=1e-5)
    u8 = x.astype(np.uint8)
    np.testing.assert_allclose(np.asarray(zoom_linear(u8, (50, 21)))[1],
                               scipy_zoom(u8[1], (50, 21)), atol=2e-4)


def test_half_pixel_bilinear_is_not_the_official_resampling():
    rng = np.random.default_rng(2)
    x = images(rng, (1, 41, 41, 2))
    ref = scipy_zoom(x[0], (321, 321))
    half_pixel = np.asarray(jax.image.resize(x, (1, 321, 321, 2), "bilinear"))[0]
    assert np.abs(half_pixel - ref).max() > 10.0
    np.testing.assert_allclose(np.asarray(zoom_linear(x, (321, 321)))[0], ref, atol=2e-4)


def region_reference(x: np.ndarray, out_hw, dst, src) -> np.ndarray:
    out = np.zeros((x.shape[0], *out_hw, x.shape[3]), np.float32)
    for b, ((dh, dw), (sh, sw)) in enumerate(zip(dst, src)):
        if dh and dw:
            out[b, :dh, :dw] = scipy_zoom(x[b, :sh, :sw], (dh, dw))
    return out


def test_zoom_region_equals_scipy_per_image_with_traced_sizes():
    rng = np.random.default_rng(3)
    x = images(rng, (4, 500, 40, 2))
    out_hw = (300, 60)
    fn = jax.jit(lambda v, d, s: zoom_region(v, out_hw, d, s))
    cases = [
        ([[281, 31], [300, 60], [1, 1], [123, 7]], [[500, 40], [321, 40], [5, 9], [41, 1]]),
        ([[241, 17], [0, 0], [75, 60], [2, 3]], [[41, 13], [100, 30], [500, 40], [1, 1]]),
    ]
    for dst, src in cases:
        dst, src = np.asarray(dst, np.int32), np.asarray(src, np.int32)
        ref = region_reference(x, out_hw, dst, src)
        np.testing.assert_allclose(np.asarray(fn(x, dst, src)), ref, rtol=0, atol=2e-4)
        np.testing.assert_allclose(np.asarray(zoom_region(x, out_hw, dst, src)), ref, atol=2e-4)
    # the first case includes scipy's zero last line (500 -> 281)
    assert (region_reference(x, out_hw, *map(np.asarray, cases[0]))[0, 280, :31] == 0).all()


def test_zoom_region_keeps_a_same_size_region_and_upsamples():
    rng = np.random.default_rng(4)
    x = images(rng, (2, 33, 45, 1))
    dst = jnp.asarray([[33, 45], [60, 20]], jnp.int32)
    src = jnp.asarray([[33, 45], [20, 31]], jnp.int32)
    got = jax.jit(lambda v, d, s: zoom_region(v, (64, 64), d, s))(x, dst, src)
    np.testing.assert_allclose(np.asarray(got),
                               region_reference(x, (64, 64), np.asarray(dst), np.asarray(src)),
                               atol=2e-4)
    np.testing.assert_allclose(np.asarray(got)[0, :33, :45], x[0], atol=1e-5)


@pytest.mark.parametrize("size", [1, 2, 41, 63, 281, 321, 333, 342, 375, 338, 374, 378, 500])
def test_zoom_factor_size_is_scipys_output_size(size):
    for zoom in (0.75, 1.0, 1.25, 241 / size, 321 / size, 401 / size, 481 / size, 0.5, 3.3):
        expected = nd.zoom(np.zeros((size, 1), np.float32), (zoom, 1.0), order=1).shape[0]
        if expected >= 1:
            assert zoom_factor_size(size, zoom) == expected, (size, zoom)
    for target in (41, 333, 500):   # the logits' factor d / h gives back d
        assert zoom_factor_size(size, target / size) == target


def test_zoom_factor_size_rounds_half_to_even_as_scipy():
    assert zoom_factor_size(342, 0.75) == 256 and zoom_factor_size(338, 0.75) == 254
    assert zoom_factor_size(374, 1.25) == 468 and zoom_factor_size(378, 1.25) == 472


def caffe_interp2(plane: np.ndarray, out_h: int, out_w: int) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's caffe_cpu_interp2 (one channel, no padding) transliterated, float32 scalars.

    Returns the output and where its position was integral (all weight on the top-left tap).
    """
    f32 = np.float32
    in_h, in_w = plane.shape
    if (in_h, in_w) == (out_h, out_w):
        return plane.astype(f32), np.ones(plane.shape, bool)
    rh = f32(in_h - 1) / f32(out_h - 1) if out_h > 1 else f32(0)
    rw = f32(in_w - 1) / f32(out_w - 1) if out_w > 1 else f32(0)
    out = np.zeros((out_h, out_w), f32)
    integral = np.zeros((out_h, out_w), bool)
    p = plane.astype(f32)
    for i in range(out_h):
        hr = rh * f32(i)
        h1 = int(hr)
        hp = 1 if h1 < in_h - 1 else 0
        l1 = f32(hr - f32(h1))
        l0 = f32(1) - l1
        for j in range(out_w):
            wr = rw * f32(j)
            w1 = int(wr)
            wp = 1 if w1 < in_w - 1 else 0
            m1 = f32(wr - f32(w1))
            m0 = f32(1) - m1
            integral[i, j] = l1 == 0 and m1 == 0
            out[i, j] = (l0 * (m0 * p[h1, w1] + m1 * p[h1, w1 + wp])
                         + l1 * (m0 * p[h1 + hp, w1] + m1 * p[h1 + hp, w1 + wp]))
    return out, integral


def random_labels(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    labels = rng.integers(0, 21, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.1] = 255
    return labels


@pytest.mark.parametrize("mode", ["floor", "bilinear"])
def test_shrink_labels_on_a_321_crop_is_every_8th_label(mode):
    labels = random_labels(np.random.default_rng(5), (3, 321, 321))
    expected = labels[:, ::8, ::8]
    assert expected.shape == (3, 41, 41)
    got = shrink_labels(labels, 8, mode=mode)
    assert got.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(got), expected)
    np.testing.assert_array_equal(shrink_labels_np(labels, 8, mode=mode), expected)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: shrink_labels(v, 8, mode=mode))(
        labels)), expected)


@pytest.mark.parametrize("hw,factor", [((300, 41), 8), ((17, 23), 3), ((8, 9), 8), ((7, 5), 1),
                                       ((65, 100), 4), ((1, 12), 5)])
def test_shrink_labels_matches_caffe_interp(hw, factor):
    labels = random_labels(np.random.default_rng(hw[0] * factor), (2, *hw))
    out_hw = ((hw[0] - 1) // factor + 1, (hw[1] - 1) // factor + 1)
    assert (shrink_size(hw[0], factor), shrink_size(hw[1], factor)) == out_hw
    caffe = np.stack([np.floor(caffe_interp2(p, *out_hw)[0]) for p in labels]).astype(np.uint8)
    got_np = shrink_labels_np(labels, factor, mode="bilinear")
    np.testing.assert_array_equal(got_np, caffe)
    np.testing.assert_array_equal(np.asarray(shrink_labels(labels, factor, mode="bilinear")),
                                  caffe)
    # floor: Caffe's top-left tap; equal to Caffe wherever Caffe's weights put 1 on that tap
    floor_np = shrink_labels_np(labels, factor)
    np.testing.assert_array_equal(np.asarray(shrink_labels(labels, factor)), floor_np)
    integral = caffe_interp2(labels[0], *out_hw)[1]
    np.testing.assert_array_equal(floor_np[:, integral], caffe[:, integral])
    assert np.isin(floor_np, labels).all()


def test_shrink_labels_bilinear_mixes_ids_where_positions_are_fractional():
    labels = random_labels(np.random.default_rng(6), (1, 300, 300))
    mixed = shrink_labels_np(labels, 8, mode="bilinear")
    assert not np.isin(mixed, np.append(np.arange(21), 255)).all()
    assert np.isin(shrink_labels_np(labels, 8), np.append(np.arange(21), 255)).all()


def test_bad_arguments_are_named():
    x = np.zeros((1, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="x must be float"):
        zoom_linear(x[0], (2, 2))
    with pytest.raises(ValueError, match="out_hw"):
        zoom_linear(x, (0, 2))
    with pytest.raises(ValueError, match="dst_hw"):
        zoom_region(x, (8, 8), np.array([[9, 8]], np.int32), np.array([[4, 4]], np.int32))
    with pytest.raises(ValueError, match="src_hw"):
        zoom_region(x, (8, 8), np.array([[8, 8]], np.int32), np.array([[4.0, 4.0]]))
    with pytest.raises(ValueError, match="src_hw"):
        zoom_region(x, (8, 8), np.array([[8, 8]], np.int32), np.array([[5, 4]], np.int32))
    with pytest.raises(ValueError, match="zoom"):
        zoom_factor_size(10, -1.0)
    with pytest.raises(ValueError, match="factor"):
        shrink_labels(np.zeros((9, 9), np.uint8), 0)
    with pytest.raises(ValueError, match="labels"):
        shrink_labels_np(np.zeros((9, 9), np.float32), 8)
    with pytest.raises(ValueError, match="mode"):
        shrink_labels_np(np.zeros((9, 9), np.uint8), 8, mode="nearest")
