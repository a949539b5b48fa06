"""VGG16 multi-label classification net whose last feature map gives the CAMs."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from dsrg_jax.models.layers import CLASSIFIER_INIT, CONV_INIT, ZEROS
from dsrg_jax.models.vgg16 import VGG16Trunk


class VGG16CAM(nn.Module):
    """VGG16 conv1-conv5, conv6/conv7 (3x3x1024, ReLU), global average pooling, linear layer.

    The trunk uses DeepLab's geometry (`VGG16Trunk`), so with the default output stride 8 the
    CAMs of a 321x321 image lie on the same 41x41 grid as the segmentation output and the cues.
    The CAM of class c is `features @ params["classifier"]["kernel"][:, c]`: with global
    average pooling, `logits[b, c] = mean_hw(cam_c) + bias_c`. Parameter tree:
    `backbone/conv1_1 .. conv5_3`, `conv6`, `conv7`, `classifier` (Dense, N(0, 0.01)).

    Attributes:
      num_classes: foreground classes (20 for VOC, 80 for COCO); no background channel.
      output_stride: 8 (pool4 stride 1, conv5 dilation 2) or 16 (pool4 stride 2).
      dtype: computation dtype (parameters stay float32; outputs are returned as float32).
    """

    num_classes: int = 20
    output_stride: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, images: jnp.ndarray, *, train: bool = False
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Classifies and returns the CAM features.

        Args:
          images: float[B, H, W, 3], normalised as the weights expect.
          train: unused (no dropout or batch norm); accepted for a uniform model interface.

        Returns:
          logits: float32[B, num_classes] (multi-label, before the sigmoid).
          features: float32[B, h, w, 1024], the conv7 output the CAMs are computed from.
        """
        del train
        x = VGG16Trunk(output_stride=self.output_stride, dtype=self.dtype, name="backbone")(images)
        for name in ("conv6", "conv7"):
            x = nn.Conv(1024, (3, 3), padding=((1, 1), (1, 1)), kernel_init=CONV_INIT,
                        bias_init=ZEROS, dtype=self.dtype, name=name)(x)
            x = nn.relu(x)
        pooled = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(self.num_classes, kernel_init=CLASSIFIER_INIT, bias_init=ZEROS,
                          dtype=self.dtype, name="classifier")(pooled)
        return logits.astype(jnp.float32), x.astype(jnp.float32)
