"""ImageNet weight import: torchvision `.pth`, torchvision- or timm-named `.safetensors`.

    model = DeepLabV2VGG16(num_classes=21)
    variables, info = init_model(model, jax.random.key(0), weights="vgg16-397923af.pth")
    x = info.input_convention.normalize(images_rgb_0_255)   # float[B, H, W, 3]
    logits = model.apply(variables, x)

What is imported (everything else keeps its random init):
- `DeepLabV2VGG16`: conv1_1..conv5_3 from VGG16's `features`; fc6/fc7 of every ASPP branch
  from VGG16's first two fully connected layers, subsampled by DeepLab's "20M" recipe
  (`deeplab_fc_from_vgg16`); classifiers stay N(0, 0.01).
- `VGG16CAM`: conv1_1..conv5_3; conv6, conv7 and the classifier stay random.
- `DeepLabV2ResNet101`: the whole ResNet-101 trunk (convolutions and frozen batch norm).

The input convention comes with the weights (`InputConvention`): torchvision and timm ImageNet
weights take RGB scaled to [0, 1] and normalised by the ImageNet mean/std; Caffe-converted
weights take BGR 0-255 minus (104, 117, 123). Pass `input_convention="caffe"` for those, or
store `{"input_convention": "caffe"}` in the `.safetensors` metadata.
No network access: the files come from paths the user gives. `dsrg_jax.weight_files` reads
them (`read_state_dict`, `save_safetensors`, re-exported here); this module maps the names.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from dsrg_jax.convention import (
    InputConvention,
    get_input_convention,
)
from dsrg_jax.models.classifier import VGG16CAM
from dsrg_jax.models.deeplab import DeepLabV2ResNet101, DeepLabV2VGG16
from dsrg_jax.models.vgg16 import TORCHVISION_VGG16_INDEX
from dsrg_jax.weight_files import DOWNLOAD_HINT, PathLike, WeightsError, read_state_dict
from dsrg_jax.weight_files import save_safetensors as save_safetensors  # re-exported


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """Where a model's initial weights came from; save `to_json()` beside the checkpoints.

    Attributes:
      path: the weights file, or None when the model was initialised at random.
      naming: "torchvision", "timm" or "none".
      input_convention: how to normalise images for these weights.
    """

    path: str | None
    naming: str
    input_convention: InputConvention

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "naming": self.naming,
                "input_convention": self.input_convention.name}


class TrainingFromScratchWarning(UserWarning):
    """A model is initialised without ImageNet weights."""


# ------------------------------------------------------------------------- DeepLab fc6 / fc7

# DeepLab's "20M" VGG16 (DeepLab-LargeFOV init, reused by DeepLab-v2 ASPP-L): fc6 and fc7 keep
# every 4th filter (4096 -> 1024) and fc6 keeps the taps 0, 3, 6 of its 7x7 kernel (-> 3x3).
FC_FILTER_STEP = 4
FC6_TAPS = (0, 3, 6)


def deeplab_fc_from_vgg16(
    fc6_weight: np.ndarray, fc6_bias: np.ndarray, fc7_weight: np.ndarray, fc7_bias: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Subsamples VGG16's fully connected layers into DeepLab's fc6/fc7 convolutions.

    Args:
      fc6_weight: float[4096, 25088] (torchvision `classifier.0`, input flattened C, H, W) or
        float[4096, 512, 7, 7] (timm `pre_logits.fc1`).
      fc6_bias: float[4096].
      fc7_weight: float[4096, 4096] (torchvision `classifier.3`) or float[4096, 4096, 1, 1]
        (timm `pre_logits.fc2`).
      fc7_bias: float[4096].

    Returns:
      {"fc6": {"kernel": float[3, 3, 512, 1024], "bias": float[1024]},
       "fc7": {"kernel": float[1, 1, 1024, 1024], "bias": float[1024]}} (Flax layout).
    """
    step, taps = FC_FILTER_STEP, np.asarray(FC6_TAPS)
    w6 = np.asarray(fc6_weight).reshape(4096, 512, 7, 7)[::step][:, :, taps][:, :, :, taps]
    w7 = np.asarray(fc7_weight).reshape(4096, 4096)[::step, ::step]
    return {
        "fc6": {"kernel": np.ascontiguousarray(w6.transpose(2, 3, 1, 0)),
                "bias": np.asarray(fc6_bias)[::step].copy()},
        "fc7": {"kernel": np.ascontiguousarray(w7.T[None, None]),
                "bias": np.asarray(fc7_bias)[::step].copy()},
    }


# ------------------------------------------------------------------------------ name mapping

# One entry per imported tensor: torch name -> (variables path, kind). kind "conv" transposes
# torch OIHW to Flax HWIO; "vector" copies as is.
_Table = dict[str, tuple[tuple[str, ...], str]]

_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _vgg16_table(backbone_params: Mapping[str, Any]) -> _Table:
    table = {}
    for conv in backbone_params:
        idx = TORCHVISION_VGG16_INDEX[conv]
        table[f"features.{idx}.weight"] = (("params", "backbone", conv, "kernel"), "conv")
        table[f"features.{idx}.bias"] = (("params", "backbone", conv, "bias"), "vector")
    return table


def _resnet_torch_module(flax_module: tuple[str, ...]) -> str:
    parts = []
    for p in flax_module:
        p = re.sub(r"^layer(\d+)_(\d+)$", r"layer\1.\2", p)
        p = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p, p)
        parts.append(p)
    return ".".join(parts)


def _resnet_table(variables: Mapping[str, Any]) -> _Table:
    table = {}
    for path in traverse_util.flatten_dict(variables["params"]["backbone"]):
        *module, leaf = path
        if leaf != "kernel":
            raise AssertionError(f"unexpected ResNet parameter {path}")
        table[_resnet_torch_module(tuple(module)) + ".weight"] = (
            ("params", "backbone", *path), "conv")
    for path in traverse_util.flatten_dict(variables["batch_stats"]["backbone"]):
        *module, leaf = path
        table[_resnet_torch_module(tuple(module)) + "." + _BN_NAMES[leaf]] = (
            ("batch_stats", "backbone", *path), "vector")
    return table


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "conv":
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)
    return tuple(shape)


def _to_flax(array: np.ndarray, kind: str) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0)) if kind == "conv" else array


def _vgg16_naming(keys: set[str]) -> str:
    return "timm" if any(k.startswith(("pre_logits.", "head.")) for k in keys) else "torchvision"


def _vgg16_fc_shapes(naming: str) -> dict[str, tuple[int, ...]]:
    if naming == "timm":
        return {"pre_logits.fc1.weight": (4096, 512, 7, 7), "pre_logits.fc1.bias": (4096,),
                "pre_logits.fc2.weight": (4096, 4096, 1, 1), "pre_logits.fc2.bias": (4096,)}
    return {"classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
            "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,)}


def _guess_architecture(keys: set[str]) -> str:
    if "layer1.0.conv1.weight" in keys:
        return "ResNet"
    if "features.0.weight" in keys:
        return "VGG"
    return "unknown"


def _natural(name: str) -> list[Any]:
    """Sort key putting layer3.2 before layer3.10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_tensors(
    tensors: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[int, ...]],
    ignored: Callable[[str], bool],
    *,
    path: PathLike,
    what: str,
) -> None:
    """Raises WeightsError listing missing, unexpected and wrongly shaped tensors."""
    keys = set(tensors)
    missing = sorted(set(expected) - keys, key=_natural)
    unexpected = sorted((k for k in keys - set(expected) if not ignored(k)), key=_natural)
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)}, expected {tuple(expected[k])}"
        for k in sorted(set(expected) & keys, key=_natural)
        if tuple(tensors[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return

    def listing(title: str, items: list[str], limit: int = 30) -> str:
        shown = "\n    ".join(items[:limit])
        more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}"

    msg = f"weights file {path} does not fit {what}:"
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", wrong)):
        if items:
            msg += listing(title, items)
    msg += f"\n  (the file looks like a {_guess_architecture(keys)} state dict)"
    raise WeightsError(msg)


def _set_leaves(variables: Any, updates: Mapping[tuple[str, ...], np.ndarray]) -> Any:
    flat = traverse_util.flatten_dict(variables)
    for key, value in updates.items():
        if key not in flat:
            raise AssertionError(f"model has no variable {'/'.join(key)}")
        if tuple(flat[key].shape) != tuple(value.shape):
            raise WeightsError(
                f"variable {'/'.join(key)}: model shape {tuple(flat[key].shape)}, "
                f"imported {tuple(value.shape)}"
            )
        flat[key] = jnp.asarray(value, dtype=flat[key].dtype)
    return traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------------------------ public loaders


def load_imagenet_weights(
    model: nn.Module,
    variables: Any,
    path: PathLike,
    *,
    input_convention: str | InputConvention | None = None,
) -> tuple[Any, WeightsInfo]:
    """Puts ImageNet weights from `path` into `variables` (the model's random init).

    Args:
      model: a `DeepLabV2VGG16`, `VGG16CAM` or `DeepLabV2ResNet101`.
      variables: `model.init(...)` output; leaves not covered by the file are kept.
      path: torchvision `.pth` or torchvision/timm-named `.safetensors` of VGG16 (for the VGG
        models) or ResNet-101.
      input_convention: "torchvision" or "caffe"; default: the file's metadata, else
        "torchvision".

    Returns:
      (new variables, WeightsInfo).

    Raises:
      FileNotFoundError: no such file (the message says what to download).
      WeightsError: the file does not fit, listing missing / unexpected / wrongly shaped
        tensors.
    """
    if not isinstance(model, (DeepLabV2VGG16, VGG16CAM, DeepLabV2ResNet101)):
        raise TypeError(
            f"model: no ImageNet import for {type(model).__name__}; expected DeepLabV2VGG16, "
            f"VGG16CAM or DeepLabV2ResNet101"
        )
    tensors, metadata = read_state_dict(path)
    keys = set(tensors)
    updates: dict[tuple[str, ...], np.ndarray] = {}
    if isinstance(model, (DeepLabV2VGG16, VGG16CAM)):
        naming = _vgg16_naming(keys)
        table = _vgg16_table(variables["params"]["backbone"])
        expected = {name: _torch_shape(_leaf(variables, target).shape, kind)
                    for name, (target, kind) in table.items()}
        if isinstance(model, DeepLabV2VGG16):
            fc_shapes = _vgg16_fc_shapes(naming)
            expected.update(fc_shapes)
            ignored = lambda k: k.startswith(("classifier.6.", "head."))  # noqa: E731
        else:
            ignored = lambda k: k.startswith(("classifier.", "pre_logits.", "head."))  # noqa: E731
        _check_tensors(tensors, expected, ignored, path=path,
                       what=f"{type(model).__name__} (VGG16, {naming} names)")
        if isinstance(model, DeepLabV2VGG16):
            fc = deeplab_fc_from_vgg16(*(tensors[k] for k in fc_shapes))
            for branch in variables["params"]:
                if branch.startswith("aspp_"):
                    for layer in ("fc6", "fc7"):
                        for leaf in ("kernel", "bias"):
                            updates[("params", branch, layer, leaf)] = fc[layer][leaf]
    else:
        naming = "torchvision"  # timm's ResNets use torchvision's names.
        table = _resnet_table(variables)
        expected = {name: _torch_shape(_leaf(variables, target).shape, kind)
                    for name, (target, kind) in table.items()}
        ignored = lambda k: k.startswith("fc.") or k.endswith(".num_batches_tracked")  # noqa: E731
        _check_tensors(tensors, expected, ignored, path=path,
                       what=f"{type(model).__name__} (ResNet-101, torchvision/timm names)")
    for name, (target, kind) in table.items():
        updates[target] = _to_flax(tensors[name], kind)
    convention = get_input_convention(
        input_convention or metadata.get("input_convention", "torchvision"))
    return _set_leaves(variables, updates), WeightsInfo(str(path), naming, convention)


def _leaf(variables: Any, path: tuple[str, ...]) -> Any:
    node = variables
    for p in path:
        node = node[p]
    return node


def init_model(
    model: nn.Module,
    rng: jax.Array,
    *,
    weights: PathLike | None,
    input_convention: str | InputConvention | None = None,
    sample_shape: tuple[int, int, int, int] = (1, 64, 64, 3),
) -> tuple[Any, WeightsInfo]:
    """Initialises `model` and imports ImageNet weights from `weights` (None: from scratch).

    Args:
      model: a `DeepLabV2VGG16`, `VGG16CAM` or `DeepLabV2ResNet101`.
      rng: PRNG key for the layers the file does not cover (classifiers, ...).
      weights: path of a `.pth`/`.safetensors` file, or None to train from scratch (a
        `TrainingFromScratchWarning` says so).
      input_convention: see `load_imagenet_weights`; without weights default "torchvision".
      sample_shape: input shape used to trace the init (the models are fully convolutional,
        so the variables do not depend on it).

    Returns:
      (variables, WeightsInfo): `variables["params"]` is trained, `variables["batch_stats"]`
      (ResNet) is frozen.
    """
    if weights is not None and not pathlib.Path(weights).is_file():
        raise FileNotFoundError(f"weights file not found: {weights}. {DOWNLOAD_HINT}")
    variables = model.init(rng, jnp.zeros(sample_shape, jnp.float32), train=False)
    if weights is None:
        warnings.warn(
            f"NO IMAGENET WEIGHTS: {type(model).__name__} is initialised at random and trains "
            f"from scratch; expect much worse results. Pass weights=PATH. {DOWNLOAD_HINT}",
            TrainingFromScratchWarning,
            stacklevel=2,
        )
        return variables, WeightsInfo(None, "none",
                                      get_input_convention(input_convention or "torchvision"))
    return load_imagenet_weights(model, variables, weights, input_convention=input_convention)
