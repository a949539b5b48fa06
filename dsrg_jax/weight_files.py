"""Weight files read as NumPy: torch `.pth` / `.pt` / `.bin` (needs torch) and `.safetensors`.

    tensors, metadata = read_state_dict("vgg16-397923af.pth")   # name -> float32 array (OIHW)
    save_safetensors(tensors, "vgg16.safetensors")             # for machines without torch

Tensors keep the file's names and layout; `dsrg_jax.weights` maps them onto the models.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

PathLike = str | os.PathLike


class WeightsError(ValueError):
    """A weights file does not fit the model (missing, unexpected or wrongly shaped tensors)."""


DOWNLOAD_HINT = (
    "Download ImageNet weights yourself and pass the file's path: torchvision's "
    "VGG16_Weights.IMAGENET1K_V1 (vgg16-397923af.pth) or ResNet101_Weights.IMAGENET1K_V1 "
    "(resnet101-63fe2227.pth), or timm's vgg16.tv_in1k / resnet101.tv_in1k "
    "(model.safetensors). Nothing is downloaded at run time."
)


def read_state_dict(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a `.pth`/`.pt`/`.bin` (needs torch) or `.safetensors` file (no torch needed).

    Checkpoints wrapping the tensors in `{"state_dict": ...}` or `{"model": ...}` and a
    DataParallel `module.` prefix are unwrapped.

    Returns:
      tensors: name -> float32 array, in the file's layout (torch OIHW for convolutions).
      metadata: `.safetensors` string metadata (e.g. "input_convention"), else {}.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}. {DOWNLOAD_HINT}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensors, metadata = _read_safetensors(path)
    elif suffix in (".pth", ".pt", ".bin"):
        tensors, metadata = _read_torch(path)
    else:
        raise ValueError(
            f"weights file {path}: unknown format {suffix!r}; expected .pth, .pt, .bin "
            f"(torch) or .safetensors"
        )
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, metadata


def _read_safetensors(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(str(path), framework="np") as f:
        metadata = dict(f.metadata() or {})
        for key in f.keys():
            try:
                tensors[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
            except TypeError:  # bfloat16 has no NumPy dtype: go through JAX.
                with safe_open(str(path), framework="flax") as g:
                    tensors[key] = np.asarray(g.get_tensor(key).astype(jnp.float32))
    return tensors, metadata


def _read_torch(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch (pip install torch, the CPU build is enough); "
            f"or convert the file to .safetensors elsewhere and pass that instead"
        ) from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    metadata: dict[str, str] = {}
    if isinstance(obj, Mapping):
        if isinstance(obj.get("input_convention"), str):
            metadata["input_convention"] = obj["input_convention"]
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file {path}: expected a state dict, got {type(obj).__name__}")
    tensors = {
        k: v.detach().to(torch.float32).numpy() for k, v in obj.items() if torch.is_tensor(v)
    }
    return tensors, metadata


def save_safetensors(tensors: Mapping[str, np.ndarray], path: PathLike, *,
                     input_convention: str | None = None) -> None:
    """Writes tensors (e.g. from `read_state_dict` of a `.pth`) as `.safetensors`.

    Lets a machine without torch use torchvision weights; `input_convention` is recorded in
    the file's metadata.
    """
    from safetensors.numpy import save_file

    metadata = {"input_convention": input_convention} if input_convention else None
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
              metadata=metadata)
