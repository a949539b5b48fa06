"""DeepLab-v2 ASPP segmentation networks on VGG16 (ASPP-L) and ResNet-101."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from dsrg_jax.models.layers import (
    CLASSIFIER_INIT,
    CONV_INIT,
    ZEROS,
    caffe_avg_pool_same,
    caffe_max_pool,
)
from dsrg_jax.models.resnet import RESNET101_BLOCKS, ResNetTrunk
from dsrg_jax.models.vgg16 import VGG16Trunk

# ASPP dilation rates of DeepLab-v2 (Chen et al. 2017, "ASPP-L"; DSRG deploy.prototxt).
ASPP_DILATIONS: tuple[int, ...] = (6, 12, 18, 24)
# Dropout ratio of DeepLab-v2's fc6/fc7 dropout layers (deploy.prototxt `dropout_ratio: 0.5`).
DROPOUT_RATE = 0.5


class DeepLabV2VGG16(nn.Module):
    """DeepLab-v2 ASPP-L on VGG16, the DSRG segmentation net (DSRG `deploy.prototxt`).

    VGG16 trunk at output stride 8 (`VGG16Trunk`), pool5 max 3x3/1/1, pool5a avg 3x3/1/1, then
    four branches (dilation 6, 12, 18, 24), each fc6 3x3x1024 (dilated) ReLU dropout, fc7
    1x1x1024 ReLU dropout, classifier 1x1xC (N(0, 0.01) init); the four logits are summed.
    321x321 -> 41x41 and 513x513 -> 65x65, as in Caffe. Parameter tree:
    `backbone/conv1_1 .. conv5_3`, `aspp_{1..4}/{fc6, fc7, classifier}`.

    Attributes:
      num_classes: output channels, background included (21 VOC, 81 COCO).
      dilations: ASPP rates.
      dropout_rate: applied after fc6 and fc7 when `train=True` (needs a "dropout" rng).
      dtype: computation dtype (parameters stay float32; logits are returned as float32).
    """

    num_classes: int
    dilations: tuple[int, ...] = ASPP_DILATIONS
    dropout_rate: float = DROPOUT_RATE
    dtype: Any = jnp.float32

    def setup(self):
        self.backbone = VGG16Trunk(output_stride=8, dtype=self.dtype)
        self.branches = [
            _VGGBranch(self.num_classes, d, self.dropout_rate, self.dtype, name=f"aspp_{i}")
            for i, d in enumerate(self.dilations, start=1)
        ]

    def features(self, images: jnp.ndarray) -> jnp.ndarray:
        """images: float[B, H, W, 3] -> pool5a: float[B, h, w, 512], h = output rows."""
        x = self.backbone(images)
        x = caffe_max_pool(x, kernel=3, stride=1, pad=1)  # pool5
        return caffe_avg_pool_same(x, kernel=3)  # pool5a

    def __call__(self, images: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """images: float[B, H, W, 3] (normalised) -> logits: float32[B, h, w, num_classes]."""
        x = self.features(images)
        logits = sum(branch(x, train=train) for branch in self.branches)
        return logits.astype(jnp.float32)


class _VGGBranch(nn.Module):
    """One ASPP-L branch: fc6 (3x3, dilated) -> fc7 (1x1) -> classifier (1x1)."""

    num_classes: int
    dilation: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """x: float[B, h, w, 512] -> float[B, h, w, num_classes]."""
        d = self.dilation
        x = nn.Conv(1024, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d),
                    kernel_init=CONV_INIT, bias_init=ZEROS, dtype=self.dtype, name="fc6")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        x = nn.Conv(1024, (1, 1), kernel_init=CONV_INIT, bias_init=ZEROS, dtype=self.dtype,
                    name="fc7")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return nn.Conv(self.num_classes, (1, 1), kernel_init=CLASSIFIER_INIT, bias_init=ZEROS,
                       dtype=self.dtype, name="classifier")(x)


class DeepLabV2ResNet101(nn.Module):
    """DeepLab-v2 ASPP on ResNet-101 (output stride 8, frozen batch norm).

    ResNet-101 trunk (`ResNetTrunk`: torchvision layout, layer3/layer4 dilated 2/4), dropout,
    then four 3x3 classifiers on layer4 with dilation 6, 12, 18, 24 (N(0, 0.01) init), summed.
    Variables: `params` (convolutions, `aspp_{1..4}/classifier`) and `batch_stats` (the frozen
    batch-norm tensors, never trained).

    Attributes:
      num_classes: output channels, background included.
      dilations: ASPP rates.
      dropout_rate: dropout on layer4 features before the classifiers, `train=True` only.
      blocks: bottlenecks per stage ((3, 4, 23, 3) = ResNet-101).
      dtype: computation dtype (parameters stay float32; logits are returned as float32).
    """

    num_classes: int
    dilations: tuple[int, ...] = ASPP_DILATIONS
    dropout_rate: float = DROPOUT_RATE
    blocks: tuple[int, ...] = RESNET101_BLOCKS
    dtype: Any = jnp.float32

    def setup(self):
        self.backbone = ResNetTrunk(blocks=self.blocks, dtype=self.dtype)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.branches = [
            _ResNetBranch(self.num_classes, d, self.dtype, name=f"aspp_{i}")
            for i, d in enumerate(self.dilations, start=1)
        ]

    def features(self, images: jnp.ndarray) -> jnp.ndarray:
        """images: float[B, H, W, 3] -> layer4: float[B, h, w, 2048]."""
        return self.backbone(images)

    def __call__(self, images: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """images: float[B, H, W, 3] (normalised) -> logits: float32[B, h, w, num_classes]."""
        x = self.dropout(self.features(images), deterministic=not train)
        logits = sum(branch(x) for branch in self.branches)
        return logits.astype(jnp.float32)


class _ResNetBranch(nn.Module):
    """One ASPP branch on ResNet: a dilated 3x3 classifier."""

    num_classes: int
    dilation: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x: float[B, h, w, 2048] -> float[B, h, w, num_classes]."""
        d = self.dilation
        return nn.Conv(self.num_classes, (3, 3), padding=((d, d), (d, d)),
                       kernel_dilation=(d, d), kernel_init=CLASSIFIER_INIT, bias_init=ZEROS,
                       dtype=self.dtype, name="classifier")(x)
