"""VGG16 convolutional trunk (conv1_1 .. conv5_3) with DeepLab's Caffe geometry."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from dsrg_jax.models.layers import CONV_INIT, ZEROS, caffe_max_pool

# (Caffe name, output channels) of the 13 convolutions, in order; a pool follows each block.
VGG16_CONVS: tuple[tuple[str, int], ...] = (
    ("conv1_1", 64), ("conv1_2", 64),
    ("conv2_1", 128), ("conv2_2", 128),
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256),
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512),
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
)
# Index of each convolution in torchvision's `vgg16().features` (ReLUs and pools in between).
TORCHVISION_VGG16_INDEX: dict[str, int] = {
    "conv1_1": 0, "conv1_2": 2,
    "conv2_1": 5, "conv2_2": 7,
    "conv3_1": 10, "conv3_2": 12, "conv3_3": 14,
    "conv4_1": 17, "conv4_2": 19, "conv4_3": 21,
    "conv5_1": 24, "conv5_2": 26, "conv5_3": 28,
}


class VGG16Trunk(nn.Module):
    """VGG16 conv1_1 .. relu5_3 as in DeepLab-v2's prototxt (DSRG `deploy.prototxt`).

    pool1-3: max 3x3, stride 2, pad 1, ceil mode. With `output_stride=8` (DeepLab): pool4 is
    max 3x3 / stride 1 / pad 1 and conv5_x have dilation 2, so 321 -> 41 and 513 -> 65. With
    `output_stride=16`: pool4 has stride 2 and conv5_x no dilation. No pool5 here: the heads add
    their own.

    Attributes:
      output_stride: 8 or 16.
      dtype: computation dtype (parameters stay float32).
    """

    output_stride: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x: float[B, H, W, 3] (already normalised) -> relu5_3: float[B, h, w, 512]."""
        if self.output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {self.output_stride}")
        pool4_stride, conv5_dilation = (1, 2) if self.output_stride == 8 else (2, 1)
        x = x.astype(self.dtype)
        for name, channels in VGG16_CONVS:
            dilation = conv5_dilation if name.startswith("conv5") else 1
            x = nn.Conv(
                channels, (3, 3), padding=((dilation, dilation), (dilation, dilation)),
                kernel_dilation=(dilation, dilation), kernel_init=CONV_INIT, bias_init=ZEROS,
                dtype=self.dtype, name=name,
            )(x)
            x = nn.relu(x)
            if name in ("conv1_2", "conv2_2", "conv3_3"):
                x = caffe_max_pool(x, kernel=3, stride=2, pad=1)
            elif name == "conv4_3":
                x = caffe_max_pool(x, kernel=3, stride=pool4_stride, pad=1)
        return x
