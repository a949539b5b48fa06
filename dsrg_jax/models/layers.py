"""Building blocks shared by the models: Caffe-geometry pooling and frozen batch norm.

All tensors are NHWC.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

# Initialisers. The DeepLab/DSRG prototxt initialises every new classifier (fc8) with
# N(0, 0.01) weights and zero biases; layers that are trained from scratch otherwise use He
# normal (the usual choice for ReLU convolutions; Caffe's prototxt leaves it unspecified).
CLASSIFIER_INIT = nn.initializers.normal(stddev=0.01)
CONV_INIT = nn.initializers.he_normal()
ZEROS = nn.initializers.zeros


def caffe_pool_output_size(size: int, *, kernel: int, stride: int, pad: int) -> int:
    """Output length of a Caffe pooling layer along one axis (ceil mode).

    Caffe: `out = ceil((size + 2 * pad - kernel) / stride) + 1`, minus one when the last window
    would start inside the bottom/right padding. PyTorch's `ceil_mode=True` uses the same rule.
    """
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _caffe_padding(size: int, *, kernel: int, stride: int, pad: int) -> tuple[int, int]:
    """(low, high) padding that makes a floor-mode window count equal Caffe's ceil mode."""
    if kernel < stride:
        raise ValueError(
            f"Caffe pooling needs kernel >= stride, got kernel={kernel}, stride={stride}")
    out = caffe_pool_output_size(size, kernel=kernel, stride=stride, pad=pad)
    high = (out - 1) * stride + kernel - size - pad
    return pad, high


def caffe_max_pool(x: jnp.ndarray, *, kernel: int = 3, stride: int, pad: int = 1,
                   impl: str = "slices") -> jnp.ndarray:
    """Max pooling with Caffe's ceil-mode geometry.

    Args:
      x: float[B, H, W, C].
      kernel, stride, pad: square window, stride and symmetric Caffe padding.
      impl: "slices" (default: the elementwise maximum of the kernel**2 strided slices of the
        -inf-padded input, with an elementwise custom gradient that routes by the saved int8
        index of each window's first maximum) or "reduce_window" (`lax.reduce_window`, flax
        `nn.max_pool`; XLA differentiates it with select_and_scatter). Same forward values bit
        for bit and the same gradient routing (below; bit for bit with integer cotangents,
        otherwise up to the summation order where an input wins overlapping windows). On
        XLA:CPU, single thread: the pool's forward+backward alone is 2.5-10x faster with
        "slices"; the DeepLab-VGG16 DSRG step 9% faster; the digits `SmallDeepLab` step
        (GroupNorm, 56x56) ~3% slower (layout copies elsewhere in the program), see
        docs/benchmarks.md, "DSRG training step".

    Gradient (both): each window's cotangent goes to exactly one input, the first maximum of the
    window in row-major order (top row first, then left first), as XLA's select_and_scatter
    (select `>=`) and PyTorch's CPU max pool route it; an input that wins several overlapping
    windows gets the sum of their cotangents. Ties (e.g. the zeros after a ReLU) are routed
    deterministically. ("slices": a window whose maximum is NaN passes no gradient.)

    Returns:
      float[B, H', W', C] with H' = `caffe_pool_output_size(H, ...)` (e.g. 321 -> 161 for
      kernel 3, stride 2, pad 1). The extra bottom/right padding is -inf, so it never wins.
    """
    if impl not in ("reduce_window", "slices"):
        raise ValueError(f"caffe_max_pool: impl must be 'reduce_window' or 'slices', got {impl!r}")
    _, h, w, _ = x.shape
    ph = _caffe_padding(h, kernel=kernel, stride=stride, pad=pad)
    pw = _caffe_padding(w, kernel=kernel, stride=stride, pad=pad)
    if impl == "reduce_window" or min(_pool_geometry(x, kernel, stride, ph, pw)) <= 0:
        # (also the degenerate case of an empty output: input < kernel with pad 0)
        return nn.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=(ph, pw))
    return _max_pool_slices(x, kernel, stride, ph, pw)


def _pool_slices(xp: jnp.ndarray, kernel: int, stride: int, out_hw: tuple[int, int]):
    """The kernel**2 strided window slices of the padded input, row-major window order."""
    ho, wo = out_hw
    b, _, _, c = xp.shape
    return [lax.slice(xp, (0, di, dj, 0),
                      (b, di + (ho - 1) * stride + 1, dj + (wo - 1) * stride + 1, c),
                      (1, stride, stride, 1))
            for di in range(kernel) for dj in range(kernel)]


def _pool_geometry(x, kernel, stride, ph, pw):
    _, h, w, _ = x.shape
    ho = (h + ph[0] + ph[1] - kernel) // stride + 1
    wo = (w + pw[0] + pw[1] - kernel) // stride + 1
    return ho, wo


def _padded_window_slices(x, kernel, stride, ph, pw):
    """The kernel**2 window slices of x padded with -inf by (ph, pw) (`_pool_slices`)."""
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                 ((0, 0, 0), (ph[0], ph[1], 0), (pw[0], pw[1], 0), (0, 0, 0)))
    return _pool_slices(xp, kernel, stride, _pool_geometry(x, kernel, stride, ph, pw))


def _pool_max_and_argmax(x, kernel, stride, ph, pw):
    """(max float[B, H', W', C], index int8 of its first maximum in the window, row-major)."""
    slices = _padded_window_slices(x, kernel, stride, ph, pw)
    out = functools.reduce(jnp.maximum, slices)
    # The first k with slice_k == max: scan from the last window position to the first.
    # No match (a NaN maximum) leaves kernel**2, which routes no gradient.
    idx = jnp.full(out.shape, len(slices), jnp.int8)
    for k in range(len(slices) - 1, -1, -1):
        idx = jnp.where(slices[k] == out, jnp.int8(k), idx)
    return out, idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_slices(x, kernel, stride, ph, pw):
    """Forward of impl="slices"; its gradient routes by the saved int8 first-argmax index."""
    return functools.reduce(jnp.maximum, _padded_window_slices(x, kernel, stride, ph, pw))


def _max_pool_slices_fwd(x, kernel, stride, ph, pw):
    if kernel * kernel > 127:
        raise ValueError(f"caffe_max_pool(impl='slices'): kernel {kernel} too large for int8")
    return _pool_max_and_argmax(x, kernel, stride, ph, pw)


def _max_pool_slices_bwd(kernel, stride, ph, pw, idx, g):
    zero = jnp.zeros((), g.dtype)
    dx = None
    for k in range(kernel * kernel):
        di, dj = divmod(k, kernel)
        # Transpose of the strided slice, cropped to the unpadded input: interior padding puts
        # the window's cotangents at its positions; negative edge padding drops the border.
        part = lax.pad(jnp.where(idx == k, g, zero), zero,
                       ((0, 0, 0),
                        (di - ph[0], kernel - 1 - di - ph[1], stride - 1),
                        (dj - pw[0], kernel - 1 - dj - pw[1], stride - 1),
                        (0, 0, 0)))
        dx = part if dx is None else dx + part
    return (dx,)


_max_pool_slices.defvjp(_max_pool_slices_fwd, _max_pool_slices_bwd)


def caffe_avg_pool_same(x: jnp.ndarray, *, kernel: int = 3) -> jnp.ndarray:
    """Caffe AVE pooling with stride 1 and pad (kernel - 1) / 2: zero padding counted.

    With stride 1 and this padding every Caffe window has kernel**2 elements (padding
    included), which is `count_include_pad=True`.

    Args:
      x: float[B, H, W, C].

    Returns:
      float[B, H, W, C].
    """
    if kernel % 2 != 1:
        raise ValueError(f"kernel must be odd, got {kernel}")
    p = (kernel - 1) // 2
    return nn.avg_pool(
        x, (kernel, kernel), strides=(1, 1), padding=((p, p), (p, p)), count_include_pad=True
    )


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine terms (torchvision's FrozenBatchNorm2d).

    All four tensors live in the `"batch_stats"` collection, not in `"params"`: they are never
    differentiated, decayed or updated. `y = (x - mean) / sqrt(var + eps) * scale + bias`.

    Attributes:
      epsilon: 1e-5, torch.nn.BatchNorm2d's default (the ImageNet weights were trained with it).
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x: float[..., C] -> float[..., C]."""
        c = x.shape[-1]
        scale = self.variable("batch_stats", "scale", lambda: jnp.ones((c,), jnp.float32)).value
        bias = self.variable("batch_stats", "bias", lambda: jnp.zeros((c,), jnp.float32)).value
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
        var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value
        mul = scale * (1.0 / jnp.sqrt(var + self.epsilon))
        add = bias - mean * mul
        return x * mul.astype(x.dtype) + add.astype(x.dtype)
