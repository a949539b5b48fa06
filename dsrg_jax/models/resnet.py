"""ResNet-101 trunk (torchvision layout, frozen batch norm, output stride 8 by dilation)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from dsrg_jax.models.layers import CONV_INIT, FrozenBatchNorm

# Blocks per stage and bottleneck widths of ResNet-101 (He et al. 2016; torchvision resnet101).
RESNET101_BLOCKS: tuple[int, ...] = (3, 4, 23, 3)
RESNET_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 convolution).

    Attributes:
      width: channels of the 1x1 and 3x3 convolutions; the output has 4 * width.
      stride: stride of conv2 and of the projection shortcut.
      dilation: dilation (and padding) of conv2.
      project: whether the shortcut is a 1x1 conv + BN (`downsample` in torchvision).
    """

    width: int
    stride: int = 1
    dilation: int = 1
    project: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x: float[B, H, W, Cin] -> float[B, H / stride, W / stride, 4 * width]."""
        conv = lambda c, k, s, d, name: nn.Conv(  # noqa: E731
            c, (k, k), strides=(s, s), padding=((d * (k // 2),) * 2,) * 2,
            kernel_dilation=(d, d), use_bias=False, kernel_init=CONV_INIT, dtype=self.dtype,
            name=name,
        )
        y = nn.relu(FrozenBatchNorm(name="bn1")(conv(self.width, 1, 1, 1, "conv1")(x)))
        y = conv(self.width, 3, self.stride, self.dilation, "conv2")(y)
        y = nn.relu(FrozenBatchNorm(name="bn2")(y))
        y = FrozenBatchNorm(name="bn3")(
            conv(self.width * BOTTLENECK_EXPANSION, 1, 1, 1, "conv3")(y)
        )
        shortcut = x
        if self.project:
            shortcut = conv(self.width * BOTTLENECK_EXPANSION, 1, self.stride, 1,
                            "downsample_conv")(x)
            shortcut = FrozenBatchNorm(name="downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNetTrunk(nn.Module):
    """ResNet stem + layer1..layer4 as torchvision builds them, with frozen batch norm.

    Geometry: conv1 7x7/2 pad 3, max pool 3x3/2 pad 1 (torchvision's floor mode), layer2
    stride 2; layer3 and layer4 keep stride 1 and dilate every 3x3 convolution by 2 and 4
    (DeepLab-v2), so the output stride is 8: 321 -> 41, 513 -> 65 (320 -> 40, unlike VGG's 41).

    Parameter names follow torchvision (`layer3_5/conv2` is `layer3.5.conv2`); batch-norm
    tensors are in the `"batch_stats"` collection (see `FrozenBatchNorm`).

    Attributes:
      blocks: bottlenecks per stage; (3, 4, 23, 3) is ResNet-101.
      strides, dilations: per stage. Defaults give output stride 8.
    """

    blocks: tuple[int, ...] = RESNET101_BLOCKS
    strides: tuple[int, ...] = (1, 2, 1, 1)
    dilations: tuple[int, ...] = (1, 1, 2, 4)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x: float[B, H, W, 3] (already normalised) -> layer4: float[B, h, w, 2048]."""
        x = x.astype(self.dtype)
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    kernel_init=CONV_INIT, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(FrozenBatchNorm(name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_channels = 64
        for stage, (n, width, stride, dilation) in enumerate(
            zip(self.blocks, RESNET_WIDTHS, self.strides, self.dilations), start=1
        ):
            for i in range(n):
                first = i == 0
                x = Bottleneck(
                    width=width,
                    stride=stride if first else 1,
                    dilation=dilation,
                    project=first and (stride != 1 or in_channels != width * BOTTLENECK_EXPANSION),
                    dtype=self.dtype,
                    name=f"layer{stage}_{i}",
                )(x)
                in_channels = width * BOTTLENECK_EXPANSION
        return x
