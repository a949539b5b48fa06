"""Flax Linen models (NHWC): DeepLab-v2 segmentation nets and the VGG16 CAM classifier.

Each model is used as a pure function over an explicit variable pytree:

    model = DeepLabV2VGG16(num_classes=21)
    variables, info = dsrg_jax.weights.init_model(model, rng, weights="vgg16-397923af.pth")
    logits = model.apply(variables, info.input_convention.normalize(images_rgb))
    logits = model.apply(variables, x, train=True, rngs={"dropout": key})  # dropout on

`variables["params"]` is what is trained; `variables["batch_stats"]` (ResNet only) holds frozen
batch-norm tensors and is never updated.
"""
from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from dsrg_jax.models.classifier import VGG16CAM
from dsrg_jax.models.deeplab import ASPP_DILATIONS, DeepLabV2ResNet101, DeepLabV2VGG16
from dsrg_jax.models.layers import (
    FrozenBatchNorm,
    caffe_avg_pool_same,
    caffe_max_pool,
    caffe_pool_output_size,
)
from dsrg_jax.models.resnet import ResNetTrunk
from dsrg_jax.models.small import SmallCAM, SmallClassifier, SmallDeepLab
from dsrg_jax.models.vgg16 import VGG16Trunk

__all__ = [
    "ASPP_DILATIONS",
    "DeepLabV2ResNet101",
    "DeepLabV2VGG16",
    "FrozenBatchNorm",
    "MODELS",
    "ResNetTrunk",
    "SmallCAM",
    "SmallClassifier",
    "SmallDeepLab",
    "VGG16CAM",
    "VGG16Trunk",
    "caffe_avg_pool_same",
    "caffe_max_pool",
    "caffe_pool_output_size",
    "classifier_mask",
    "count_params",
    "create_model",
    "model_for",
]

# Model names for configs and benchmarks.
MODELS: dict[str, type[nn.Module]] = {
    "deeplab_vgg16": DeepLabV2VGG16,
    "deeplab_resnet101": DeepLabV2ResNet101,
    "cam_vgg16": VGG16CAM,
    "small_deeplab": SmallDeepLab,
    "small_cam": SmallCAM,
    "small_classifier": SmallClassifier,
}


def create_model(name: str, *, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds a model by config name (`MODELS`): `create_model("deeplab_vgg16", num_classes=21)`.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


def model_for(m: Any, kind: Literal["pretrain", "cam", "seg"], num_classes: int) -> nn.Module:
    """The net of a pipeline stage from a `ModelConfig`: kind "seg", "cam" or "pretrain".

    "seg": the segmentation net, `num_classes` outputs; "cam": the CAM classifier, `num_classes - 1`
    foreground outputs; "pretrain": the small trunk's single-digit classifier, `num_classes - 1`
    outputs. `num_classes` counts the background."""
    name = m.classifier if kind in ("cam", "pretrain") else m.segmentation
    dtype = jnp.dtype(getattr(m, "dtype", "float32"))
    if kind == "pretrain" and name != "small":
        raise ValueError(f"the pretrain stage needs model.classifier='small', got {name!r}")
    if name != "small":
        return create_model(name, num_classes=num_classes if kind == "seg" else num_classes - 1,
                            dtype=dtype)
    if kind == "pretrain":
        return SmallClassifier(num_classes - 1, widths=m.widths,
                               convs_per_block=m.convs_per_block, dtype=dtype)
    if kind == "cam":
        return SmallCAM(num_classes - 1, widths=m.widths, head_width=m.head_width,
                        convs_per_block=m.convs_per_block, head_dilation=m.small_cam_dilation,
                        dtype=dtype)
    return SmallDeepLab(num_classes, widths=m.widths,
                        head_width=getattr(m, "small_seg_head_width", None) or m.head_width,
                        convs_per_block=m.convs_per_block, dilations=m.small_dilations,
                        dropout_rate=m.dropout_rate, dtype=dtype)


def classifier_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True for the new classifier layers (DeepLab's fc8).

    These are the layers initialised N(0, 0.01) and, in the Caffe recipe, trained with lr x10
    (weights) / x20 (biases). Every other leaf is False.
    """
    flat = traverse_util.flatten_dict(params)
    mask = {path: "classifier" in path for path in flat}
    return traverse_util.unflatten_dict(mask)


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or of ShapeDtypeStructs)."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
