"""The official DSRG resampling as pure, jit-able JAX ops (and numpy for the host transforms).

Two conventions, both corner-aligned (unlike `jax.image.resize` / OpenCV INTER_LINEAR, whose
half-pixel centres shift the cells):

  * `scipy.ndimage.zoom(x, factors, order=1)`, the official test / pseudo-label scripts' image
    rescale and logit upsampling. The output side is `round(in * factor)` (Python's round) and,
    with scipy's default `grid_mode=False`, output index k samples the input at
    `k * ((in - 1) / (out - 1))` (0 when out == 1), computed from the shapes, not from the factor.
    Linear interpolation between the two neighbouring samples. scipy's default mode="constant"
    gives cval (0) to a sample whose double-precision position rounds past `in - 1`; this happens
    on the last output line for some size pairs (e.g. 500 -> 281, 4 -> 375), and is reproduced
    here unless `scipy_edge=False`. The official scripts zoom the raw 0-255 image and subtract
    the mean afterwards, so that line reaches the net black (0 - mean), and zoom the raw logits
    (the line adds 0 to the scale sum): zoom before normalising, as `dsrg_jax.inference` does.
  * DeepLab-Caffe's Interp layer with `shrink_factor: f` (the retrain stage's `label_shrink`):
    output side `(in - 1) // f + 1`, output k samples the input at
    `k * ((in - 1) / (out - 1))` in float32, bilinearly. For a 321 crop and f = 8 the positions
    are the integers 8k (label[8i, 8j], 41 x 41); they are integers whenever f divides in - 1.
"""
from __future__ import annotations

import functools
import math
import numbers
import types
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

ShrinkMode = Literal["floor", "bilinear"]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _out_hw(out_hw: object) -> tuple[int, int]:
    if not isinstance(out_hw, (tuple, list)) or len(out_hw) != 2:
        raise ValueError(f"out_hw must be a pair (h, w) of positive ints, got {out_hw!r}")
    return (_positive_int(out_hw[0], "out_hw[0]"), _positive_int(out_hw[1], "out_hw[1]"))


def _check_images(x: jax.Array | np.ndarray, name: str = "x") -> None:
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"{name} must be float[B, H, W, C], got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")


def zoom_factor_size(size: int, zoom: float) -> int:
    """The output side `scipy.ndimage.zoom` gives an axis of `size` for factor `zoom`.

    `round(size * zoom)` with Python's round (half to even: 342 * 0.75 = 256.5 -> 256), as scipy.
    """
    size = _positive_int(size, "size")
    if (isinstance(zoom, bool) or not isinstance(zoom, numbers.Real)
            or not math.isfinite(zoom) or zoom <= 0):
        raise ValueError(f"zoom must be a positive finite number, got {zoom!r}")
    out = int(round(size * float(zoom)))
    if out < 1:
        raise ValueError(f"zoom {zoom!r} maps size {size} to {out} samples; need at least 1")
    return out


def _scipy_zeroes_last(src: np.ndarray | int, dst: np.ndarray | int) -> np.ndarray:
    """Whether scipy's zoom of src samples to dst (broadcast ints >= 1) gives its last line cval.

    Its last output line is cval when that line's float64 position (dst-1) * ((src-1) / (dst-1))
    exceeds src - 1."""
    num = np.asarray(src, np.int64) - 1
    den = np.asarray(dst, np.int64) - 1
    zoom = np.divide(num, den, out=np.ones(np.broadcast(num, den).shape), where=den > 0)
    return den * zoom > num


@functools.lru_cache(maxsize=64)
def _scipy_zeroes_last_table(max_src: int, max_dst: int) -> np.ndarray:
    """bool[max_src + 1, max_dst + 1]: `_scipy_zeroes_last(s, d)` at [s, d] (False at 0)."""
    s = np.arange(max_src + 1)[:, None]
    d = np.arange(max_dst + 1)[None, :]
    return _scipy_zeroes_last(np.maximum(s, 1), np.maximum(d, 1)) & (s >= 1) & (d >= 1)


def _line_taps(out_len: int, in_len: int, dst: jax.Array | int, src: jax.Array | int,
               zeroed_last: jax.Array | bool
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Taps of one axis: out sample o < dst reads input o * (src-1) / (dst-1) of the first src.

    Positions are exact rationals (integer numerator and denominator), so the indices never
    suffer float rounding. Returns i0, i1 int32[out_len], frac float32[out_len] and valid
    bool[out_len] (o < dst, and not scipy's zeroed last line).
    """
    if out_len * in_len >= 2**31:
        raise ValueError(f"sizes {in_len} -> {out_len} overflow the int32 sample positions")
    o = jnp.arange(out_len, dtype=jnp.int32)
    dst = jnp.asarray(dst, jnp.int32)
    src = jnp.asarray(src, jnp.int32)
    den = jnp.maximum(dst - 1, 1)
    num = o * jnp.maximum(src - 1, 0)
    q = num // den
    frac = (num - q * den).astype(jnp.float32) / den.astype(jnp.float32)
    last = jnp.clip(src - 1, 0, in_len - 1)
    i0 = jnp.minimum(q, last)
    i1 = jnp.minimum(q + 1, last)
    valid = (o < dst) & ~((o == dst - 1) & zeroed_last)
    return i0, i1, frac, valid


def _lerp(x: jax.Array, taps: tuple[jax.Array, ...], axis: int) -> jax.Array:
    """x resampled along `axis` by `taps` (see `_line_taps`), invalid samples set to 0."""
    i0, i1, frac, valid = taps
    shape = [1] * x.ndim
    shape[axis] = -1
    f = frac.reshape(shape)
    y = ((1.0 - f) * jnp.take(x, i0, axis=axis, mode="clip")
         + f * jnp.take(x, i1, axis=axis, mode="clip"))
    return jnp.where(valid.reshape(shape), y, 0.0)


@functools.partial(jax.jit, static_argnames=("out_hw", "scipy_edge"))
def _zoom_linear(x: jax.Array, out_hw: tuple[int, int], scipy_edge: bool) -> jax.Array:
    _, h, w, _ = x.shape
    x = x.astype(jnp.float32)
    zero_h = scipy_edge and bool(_scipy_zeroes_last(h, out_hw[0]))
    zero_w = scipy_edge and bool(_scipy_zeroes_last(w, out_hw[1]))
    x = _lerp(x, _line_taps(out_hw[0], h, out_hw[0], h, zero_h), axis=1)
    return _lerp(x, _line_taps(out_hw[1], w, out_hw[1], w, zero_w), axis=2)


def zoom_linear(x: jax.Array | np.ndarray, out_hw: tuple[int, int], *,
                scipy_edge: bool = True) -> jax.Array:
    """Corner-aligned linear resize, float[B, H, W, C] -> float32[B, h, w, C].

    Equal, to float32 rounding, to `scipy.ndimage.zoom(x[b], (h / H, w / W, 1.0), order=1)` per
    image (what the official scripts call; the channel factor 1 leaves channels untouched).
    Computed as two separable passes of gathers (two taps per output line, weights from exact
    integer positions), float32 throughout: no matrix products, so no matmul precision setting.

    Args:
      x: float[B, H, W, C] (integer dtypes are cast to float32, as the official `astype`).
      out_hw: (h, w) static output size; for a scipy zoom factor use `zoom_factor_size`.
      scipy_edge: keep scipy's zero last line for the size pairs where its position rounds past
        the input (see the module docstring); False interpolates that line from the input.
    """
    _check_images(x)
    return _zoom_linear(jnp.asarray(x), _out_hw(out_hw), bool(scipy_edge))


@functools.partial(jax.jit, static_argnames=("out_hw", "scipy_edge"))
def _zoom_region(x: jax.Array, dst_hw: jax.Array, src_hw: jax.Array, out_hw: tuple[int, int],
                 scipy_edge: bool) -> jax.Array:
    _, h, w, _ = x.shape
    table_h = jnp.asarray(_scipy_zeroes_last_table(h, out_hw[0]) & scipy_edge)
    table_w = jnp.asarray(_scipy_zeroes_last_table(w, out_hw[1]) & scipy_edge)

    def one(img: jax.Array, dst: jax.Array, src: jax.Array) -> jax.Array:
        s_h, s_w = jnp.clip(src[0], 1, h), jnp.clip(src[1], 1, w)
        d_h, d_w = jnp.clip(dst[0], 0, out_hw[0]), jnp.clip(dst[1], 0, out_hw[1])
        img = _lerp(img, _line_taps(out_hw[0], h, d_h, s_h, table_h[s_h, d_h]), axis=0)
        return _lerp(img, _line_taps(out_hw[1], w, d_w, s_w, table_w[s_w, d_w]), axis=1)

    return jax.vmap(one)(x.astype(jnp.float32), dst_hw.astype(jnp.int32),
                         src_hw.astype(jnp.int32))


def _check_sizes(sizes: jax.Array | np.ndarray, name: str, batch: int,
                 lo: tuple[int, int], hi: tuple[int, int]) -> None:
    if getattr(sizes, "shape", None) != (batch, 2) or not jnp.issubdtype(sizes.dtype,
                                                                         jnp.integer):
        raise ValueError(f"{name} must be int[{batch}, 2] (one (h, w) per image), got "
                         f"{getattr(sizes, 'dtype', type(sizes).__name__)}"
                         f"{list(getattr(sizes, 'shape', ()))}")
    if isinstance(sizes, jax.core.Tracer):
        return
    values = np.asarray(sizes)
    if (values < np.asarray(lo)).any() or (values > np.asarray(hi)).any():
        raise ValueError(f"{name} must lie in [{lo}, {hi}] per (h, w), got {values.tolist()}")


def zoom_region(x: jax.Array | np.ndarray, out_hw: tuple[int, int],
                dst_hw: jax.Array | np.ndarray, src_hw: jax.Array | np.ndarray, *,
                scipy_edge: bool = True) -> jax.Array:
    """Per image, x[b, :src_h, :src_w] zoomed corner-aligned onto [:dst_h, :dst_w] of a canvas.

    For images of different real sizes padded at the top left of one canvas. Equal, to float32
    rounding, to `scipy.ndimage.zoom(x[b, :src_h, :src_w], (dst_h / src_h, dst_w / src_w, 1.0),
    order=1)` at the top left of zeros, per image. Same gathers as `zoom_linear`, with the taps
    computed per image from the sizes, which may be traced (one compilation for all sizes).

    Args:
      x: float[B, H, W, C] canvases.
      out_hw: (out_h, out_w) static canvas size of the result.
      dst_hw: int[B, 2] each image's zoomed size, 0 <= dst <= out_hw (0: an all-zero result).
      src_hw: int[B, 2] each image's real size in x, 1 <= src <= (H, W).
      scipy_edge: as in `zoom_linear`.

    Returns:
      float32[B, out_h, out_w, C], zero outside [:dst_h, :dst_w]. Traced sizes out of range are
      clipped into it (concrete ones raise).
    """
    _check_images(x)
    out_hw = _out_hw(out_hw)
    batch, h, w, _ = x.shape
    _check_sizes(dst_hw, "dst_hw", batch, (0, 0), out_hw)
    _check_sizes(src_hw, "src_hw", batch, (1, 1), (h, w))
    return _zoom_region(jnp.asarray(x), jnp.asarray(dst_hw), jnp.asarray(src_hw), out_hw,
                        bool(scipy_edge))


def shrink_size(size: int, factor: int) -> int:
    """Caffe Interp's output side for `shrink_factor`: (size - 1) // factor + 1 (321, 8 -> 41)."""
    return (_positive_int(size, "size") - 1) // _positive_int(factor, "factor") + 1


@functools.lru_cache(maxsize=64)
def _caffe_taps(in_len: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caffe's corner-aligned taps for one axis, in its float32 arithmetic.

    `r = float(in - 1) / (out - 1)` (0 when out == 1), `p = r * k`, i0 = int(p), i1 = i0 + 1
    (i0 at the last sample), lambda = p - i0. Returns i0, i1 int32[out] and lambda float32[out].
    """
    out = shrink_size(in_len, factor)
    ratio = np.float32(in_len - 1) / np.float32(out - 1) if out > 1 else np.float32(0.0)
    pos = ratio * np.arange(out, dtype=np.float32)
    i0 = pos.astype(np.int32)
    i1 = np.where(i0 < in_len - 1, i0 + 1, i0).astype(np.int32)
    return i0, i1, (pos - i0.astype(np.float32)).astype(np.float32)


def _check_labels(labels: jax.Array | np.ndarray, factor: int, mode: str) -> int:
    if getattr(labels, "ndim", 0) < 2 or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be an integer label map [..., H, W] (uint8), got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)}"
                         f"{list(getattr(labels, 'shape', ()))}")
    if mode not in ("floor", "bilinear"):
        raise ValueError(f"mode must be 'floor' or 'bilinear', got {mode!r}")
    return _positive_int(factor, "factor")


def _shrink(xp: types.ModuleType, labels: jax.Array | np.ndarray, factor: int,
            mode: str) -> jax.Array | np.ndarray:
    """Shared body of `shrink_labels` / `shrink_labels_np`; xp is numpy or jax.numpy."""
    h0, h1, lh = _caffe_taps(labels.shape[-2], factor)
    w0, w1, lw = _caffe_taps(labels.shape[-1], factor)

    def pick(rows: np.ndarray, cols: np.ndarray) -> jax.Array | np.ndarray:
        picked = xp.take(labels, rows, axis=-2, mode="clip")
        return xp.take(picked, cols, axis=-1, mode="clip")

    if mode == "floor":
        return pick(h0, w0)
    p00, p01, p10, p11 = pick(h0, w0), pick(h0, w1), pick(h1, w0), pick(h1, w1)
    f32 = np.float32
    lh, lw = lh[:, None], lw[None, :]
    kh, kw = f32(1.0) - lh, f32(1.0) - lw
    # Caffe's expression order: h0l * (w0l * p00 + w1l * p01) + h1l * (w0l * p10 + w1l * p11).
    value = (kh * (kw * p00.astype(f32) + lw * p01.astype(f32))
             + lh * (kw * p10.astype(f32) + lw * p11.astype(f32)))
    # SoftmaxWithLoss reads the float label blob with static_cast<int>: truncation.
    return xp.floor(value).astype(labels.dtype)


def shrink_labels(labels: jax.Array | np.ndarray, factor: int, *,
                  mode: ShrinkMode = "floor") -> jax.Array:
    """Label map shrunk as Caffe's Interp `shrink_factor`, uint8[..., H, W] -> uint8[..., h, w].

    h = (H - 1) // factor + 1, w likewise; output (i, j) samples Caffe's corner-aligned position
    (i * (H-1)/(h-1), j * (W-1)/(w-1)). When factor divides H - 1 and W - 1 (the official 321
    crop with factor 8) these are the integers (factor*i, factor*j): labels[..., 8i, 8j], and
    both modes agree. Otherwise Caffe interpolates the class ids bilinearly in float32 and the
    loss truncates them to int, which mixes ids (between 0 and 255 it yields 127):
      mode="floor": the top-left sample of Caffe's bilinear cell (its integer part), a real id;
      mode="bilinear": Caffe's CPU arithmetic exactly, mixed ids included (GPU Caffe may fuse
        multiply-adds and differ where a value lands on an integer).
    Static gathers; jit-able. The dtype is kept.
    """
    factor = _check_labels(labels, factor, mode)
    return _shrink(jnp, jnp.asarray(labels), factor, mode)


def shrink_labels_np(labels: np.ndarray, factor: int, *, mode: ShrinkMode = "floor"
                     ) -> np.ndarray:
    """`shrink_labels` in numpy for the host-side transforms, uint8[..., H, W] -> [..., h, w]."""
    labels = np.asarray(labels)
    factor = _check_labels(labels, factor, mode)
    return _shrink(np, labels, factor, mode)
