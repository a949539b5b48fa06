"""Building blocks shared by the models: Caffe-geometry pooling and frozen batch norm.

All tensors are NHWC.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

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


def caffe_max_pool(x: jnp.ndarray, *, kernel: int = 3, stride: int, pad: int = 1) -> jnp.ndarray:
    """Max pooling with Caffe's ceil-mode geometry.

    Args:
      x: float[B, H, W, C].
      kernel, stride, pad: square window, stride and symmetric Caffe padding.

    Returns:
      float[B, H', W', C] with H' = `caffe_pool_output_size(H, ...)` (e.g. 321 -> 161 for
      kernel 3, stride 2, pad 1). The extra bottom/right padding is -inf, so it never wins.
    """
    _, h, w, _ = x.shape
    padding = (
        _caffe_padding(h, kernel=kernel, stride=stride, pad=pad),
        _caffe_padding(w, kernel=kernel, stride=stride, pad=pad),
    )
    return nn.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=padding)


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
