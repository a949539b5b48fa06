"""Saliency maps from a directory of greyscale PNGs, matched by image id (background cues)."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from dsrg_jax.data.files import PathLike, decode_file
from dsrg_jax.data.records import DatasetError


def _grey_levels(im: Image.Image) -> np.ndarray:
    """A grey PIL image as float32[H, W]: value / 65535 for 16-bit modes, else luma / 255."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(im, dtype=np.float32) / 65535.0
    return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


class SaliencyDir:
    """A folder of saliency maps `<dir>/<image_id><ext>` (any saliency model, e.g. DRFI).

    Maps are read as grey levels and scaled to [0, 1] (value / 255 for 8-bit, / 65535 for 16-bit).
    """

    def __init__(self, directory: PathLike, ext: str = ".png"):
        self.directory = pathlib.Path(directory)
        self.ext = ext
        if not self.directory.is_dir():
            raise DatasetError(f"{self.directory}: saliency directory not found")

    def path(self, image_id: str) -> pathlib.Path:
        return self.directory / f"{image_id}{self.ext}"

    def load(self, image_id: str, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Returns float32[H, W] in [0, 1].

        Args:
          image_id: the image's id.
          shape: (H, W) the map must have (the image's size); None to skip the check.
        Raises:
          DatasetError naming the file if it is missing, undecodable or of another size.
        """
        path = self.path(image_id)
        if not path.is_file():
            raise DatasetError(f"{path}: saliency map not found for image {image_id!r}")
        arr = decode_file(path, "saliency map", _grey_levels)
        if shape is not None and arr.shape != tuple(shape):
            raise DatasetError(
                f"{path}: saliency map is {arr.shape[0]}x{arr.shape[1]} (HxW), "
                f"the image is {shape[0]}x{shape[1]}"
            )
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
