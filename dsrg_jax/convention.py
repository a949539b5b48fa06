"""Input conventions: how RGB 0-255 images become network input, the one definition.

`InputConvention.normalize` is used by training, inference and the CRF's image (which adds the
mean back): "caffe" (BGR, 0-255, minus the mean pixel (104, 117, 123), the official DSRG /
DeepLab nets) and "torchvision" (RGB / 255, ImageNet mean and std; alias "imagenet").
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The official Caffe nets' mean pixel, BGR.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
# Padding colour (RGB uint8) of crops and inference canvases: 0 after Caffe mean subtraction.
MEAN_RGB_UINT8 = (123, 117, 104)


@dataclasses.dataclass(frozen=True)
class InputConvention:
    """How images must be prepared for a set of weights.

    Attributes:
      name: "torchvision" or "caffe".
      channel_order: "RGB" or "BGR": order of the model's input channels.
      mean, std: per input channel (in `channel_order`), on the 0-255 scale.
    """

    name: str
    channel_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalize(self, images: Any) -> Any:
        """RGB images, 0-255: float[..., 3] -> model input float32[..., 3].

        NumPy in, NumPy out (for host pipelines); JAX in, JAX out.
        """
        xp = jnp if isinstance(images, jax.Array) else np
        x = xp.asarray(images, dtype=xp.float32)
        if x.shape[-1] != 3:
            raise ValueError(f"images: expected float[..., 3] RGB, got shape {x.shape}")
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        return (x - xp.asarray(self.mean, xp.float32)) / xp.asarray(self.std, xp.float32)

    def denormalize(self, x: Any) -> Any:
        """Inverse of `normalize`: model input float[..., 3] -> RGB 0-255 float32[..., 3]."""
        xp = jnp if isinstance(x, jax.Array) else np
        x = xp.asarray(x, dtype=xp.float32) * xp.asarray(self.std, xp.float32)
        x = x + xp.asarray(self.mean, xp.float32)
        return x[..., ::-1] if self.channel_order == "BGR" else x

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# torchvision / timm ImageNet models: RGB in [0, 1], mean (0.485, 0.456, 0.406),
# std (0.229, 0.224, 0.225) (torchvision.transforms docs), written here on the 0-255 scale.
TORCHVISION = InputConvention(
    "torchvision", "RGB", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)
)
# Caffe VGG16 / DeepLab / DSRG: BGR, 0-255, minus the mean pixel (official prototxts'
# `mean_value: 104 / 117 / 123`; the CRF layer adds the same mean back).
CAFFE = InputConvention("caffe", "BGR", mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0))
# "imagenet": another name of the torchvision style.
INPUT_CONVENTIONS: dict[str, InputConvention] = {
    "torchvision": TORCHVISION, "imagenet": TORCHVISION, "caffe": CAFFE}


def get_input_convention(name: str | InputConvention) -> InputConvention:
    """`"torchvision"` (alias `"imagenet"`) or `"caffe"` (or an `InputConvention`) -> it."""
    if isinstance(name, InputConvention):
        return name
    if name not in INPUT_CONVENTIONS:
        raise ValueError(
            f"input_convention: expected one of {sorted(INPUT_CONVENTIONS)}, got {name!r}"
        )
    return INPUT_CONVENTIONS[name]
