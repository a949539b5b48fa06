"""Reduced-width CAM classifier and DeepLab-ASPP for CPU runs (the embedded digits experiment).

Same structure as `VGG16CAM` / `DeepLabV2VGG16` (Caffe-geometry pools, conv6/conv7 + GAP +
classifier; ASPP branches fc6 -> fc7 -> classifier, summed), only narrower and shallower, so the
whole DSRG pipeline trains from scratch on a CPU in minutes. GroupNorm after each trunk conv
(per image, so results do not depend on the device count). Output stride 4 (two Caffe pools):
112x112 -> 29x29. Parameter names keep "classifier" for the new layers, so
`dsrg_jax.models.classifier_mask` and the lr multipliers apply unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from dsrg_jax.models.layers import CLASSIFIER_INIT, CONV_INIT, ZEROS, caffe_max_pool


class SmallTrunk(nn.Module):
    """The small nets' trunk. x: float[B, H, W, 3] -> float[B, h, w, widths[-1]].

    `len(widths)` blocks of `convs_per_block` 3x3 convs + ReLU; a Caffe max pool 3/2/1 after every
    block but the last."""

    widths: Sequence[int] = (32, 64, 128)
    convs_per_block: int = 2
    group_norm: bool = True  # per-image GroupNorm (8 groups) after each conv: trains from scratch
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.astype(self.dtype)
        for b, width in enumerate(self.widths):
            for i in range(self.convs_per_block):
                x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=CONV_INIT,
                            bias_init=ZEROS, dtype=self.dtype, name=f"conv{b + 1}_{i + 1}")(x)
                if self.group_norm:
                    x = nn.GroupNorm(num_groups=min(8, width), dtype=self.dtype,
                                     name=f"norm{b + 1}_{i + 1}")(x)
                x = nn.relu(x)
            if b < len(self.widths) - 1:
                x = caffe_max_pool(x, kernel=3, stride=2, pad=1)
        return x


def _trunk(net: nn.Module, images: jnp.ndarray) -> jnp.ndarray:
    """`net`'s "backbone": a `SmallTrunk` with its widths, convs_per_block, group_norm and dtype.

    Call from inside `net`'s compact `__call__`. images: float[B, H, W, 3] -> float[B, h, w, C].
    """
    return SmallTrunk(net.widths, net.convs_per_block, net.group_norm, net.dtype,
                      name="backbone")(images)


class SmallCAM(nn.Module):
    """CAM classifier: trunk, conv6/conv7 (3x3, `head_width`, ReLU), GAP, linear classifier.

    Same interface as `VGG16CAM`: returns (logits float32[B, F], features float32[B, h, w, K]);
    the CAM of class c is `features @ params["classifier"]["kernel"][:, c]`.
    """

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128)
    head_width: int = 128
    convs_per_block: int = 2
    head_dilation: int = 2   # conv6/conv7 dilation: a receptive field that covers a whole digit
    group_norm: bool = True
    pooling: str = "avg"     # "avg" (CAM: global average) | "max" | "lse" (log-sum-exp, r = 5)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, train: bool = False):
        del train
        x = _trunk(self, images)
        d = self.head_dilation
        for name in ("conv6", "conv7"):
            x = nn.Conv(self.head_width, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d),
                        kernel_init=CONV_INIT, bias_init=ZEROS, dtype=self.dtype, name=name)(x)
            x = nn.relu(x)
        dense = nn.Dense(self.num_classes, kernel_init=CLASSIFIER_INIT, bias_init=ZEROS,
                         dtype=self.dtype, name="classifier")
        if self.pooling == "avg":
            logits = dense(jnp.mean(x, axis=(1, 2)))
        else:  # pool the per-pixel class scores (the CAMs + bias): max or log-sum-exp
            scores = dense(x)
            if self.pooling == "max":
                logits = jnp.max(scores, axis=(1, 2))
            else:
                r, n = 5.0, scores.shape[1] * scores.shape[2]
                logits = (jax.nn.logsumexp(r * scores, axis=(1, 2)) - jnp.log(n)) / r
        return logits.astype(jnp.float32), x.astype(jnp.float32)


class SmallClassifier(nn.Module):
    """The trunk's pretraining net (the digits' stand-in for the ImageNet classifier).

    Trunk, GAP, linear classifier. images: float[B, H, W, 3] -> (logits float32[B, F], features
    float32[B, h, w, widths[-1]]), the interface of `SmallCAM`."""

    num_classes: int = 10
    widths: Sequence[int] = (32, 64, 128)
    convs_per_block: int = 2
    group_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, train: bool = False):
        del train
        x = _trunk(self, images)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(
            jnp.mean(x, axis=(1, 2)))
        return logits.astype(jnp.float32), x.astype(jnp.float32)


class SmallDeepLab(nn.Module):
    """DeepLab-ASPP-L in miniature: trunk, then one branch per dilation; branch logits summed.

    Each branch: fc6 3x3 dilated, ReLU, dropout, fc7 1x1, ReLU, dropout, classifier 1x1, N(0, 0.01).

    images: float[B, H, W, 3] -> logits float32[B, h, w, num_classes].
    """

    num_classes: int = 11
    widths: Sequence[int] = (32, 64, 128)
    head_width: int = 128
    convs_per_block: int = 2
    dilations: Sequence[int] = (1, 2, 3, 4)
    dropout_rate: float = 0.5
    group_norm: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        x = _trunk(self, images)
        total = 0.0
        for i, d in enumerate(self.dilations, start=1):
            y = nn.Conv(self.head_width, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d),
                        kernel_init=CONV_INIT, bias_init=ZEROS, dtype=self.dtype,
                        name=f"aspp_{i}_fc6")(x)
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(y))
            y = nn.Conv(self.head_width, (1, 1), kernel_init=CONV_INIT, bias_init=ZEROS,
                        dtype=self.dtype, name=f"aspp_{i}_fc7")(y)
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(y))
            total = total + nn.Conv(self.num_classes, (1, 1), kernel_init=CLASSIFIER_INIT,
                                    bias_init=ZEROS, dtype=self.dtype,
                                    name=f"aspp_{i}_classifier")(y)
        return total.astype(jnp.float32)
