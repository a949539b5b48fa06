"""File I/O shared by the dataset readers: images, label PNGs, id lists."""
from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from PIL import Image

from dsrg_jax.data.records import IGNORE_INDEX, DatasetError

PathLike = str | os.PathLike
T = TypeVar("T")


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour map (bit-interleaved), uint8[n, 3]; 255 -> (224, 224, 192)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


VOC_PALETTE = voc_palette()


def decode_file(path: pathlib.Path, what: str, decode: Callable[[Image.Image], T]) -> T:
    """Opens an image file, decodes every byte and returns `decode(im)` of the PIL image `im`.

    A truncated file fails here, not later. Raises DatasetError naming the file and `what` (e.g.
    "label mask") if PIL or `decode` cannot read it.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return decode(im)
    except DatasetError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise DatasetError(f"{path}: cannot decode {what} ({type(e).__name__}: {e})") from e


def read_image(path: PathLike) -> np.ndarray:
    """Decodes an image file fully. Returns uint8[H, W, 3] RGB.

    Raises DatasetError naming the file if it is missing, truncated or not an image.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    return decode_file(path, "image", lambda im: np.asarray(
        im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8))


def read_label_png(path: PathLike, num_classes: int) -> np.ndarray:
    """Reads a label map as class indices. Returns uint8[H, W], values 0..C-1 or 255.

    Palette ('P') PNGs give their palette indices (never the colours' grey levels); grey ('L')
    PNGs (e.g. SegmentationClassAug) give their values; RGB PNGs are decoded through the VOC
    palette. Raises DatasetError naming the file for a missing file, an unknown colour, or a value
    outside 0..C-1 / 255.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: label mask not found")
    mode, arr = decode_file(path, "label mask", lambda im: (im.mode, np.asarray(im)))
    if mode in ("P", "L"):
        mask = arr.astype(np.uint8)
    elif mode == "RGB":
        mask = _rgb_to_index(arr, path)
    else:
        raise DatasetError(f"{path}: label mask has PIL mode {mode!r}, expected 'P', 'L' or 'RGB'")
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise DatasetError(
            f"{path}: label mask holds values {bad[:10].tolist()}, expected 0..{num_classes - 1} "
            f"or {IGNORE_INDEX}"
        )
    return mask


def _rgb_to_index(rgb: np.ndarray, path: pathlib.Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    pal = VOC_PALETTE.astype(np.int32)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(c): i for i, c in enumerate(pal_code)}
    uniq, inv = np.unique(code, return_inverse=True)
    idx = np.empty(len(uniq), np.uint8)
    for k, c in enumerate(uniq):
        if int(c) not in lut:
            col = ((c >> 16) & 255, (c >> 8) & 255, c & 255)
            raise DatasetError(f"{path}: RGB label mask holds colour {col}, not in the VOC palette")
        idx[k] = lut[int(c)]
    return idx[inv].reshape(code.shape)


def write_label_png(path: PathLike, mask: np.ndarray) -> None:
    """Writes uint8[H, W] class indices as a VOC palette PNG (what the VOC test server expects)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be uint8[H, W], got {mask.dtype}{list(mask.shape)}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask, mode="P")
    im.putpalette(VOC_PALETTE.reshape(-1).tolist())
    im.save(path)


_ID_IN_PATH = re.compile(r"([^/\\]+?)\.(jpg|jpeg|png)$", re.IGNORECASE)


def read_id_list(path: PathLike) -> list[str]:
    """Image ids from a list file, in file order.

    Accepts one id per line ("2007_000032"), VOC ImageSets lines with a flag ("2007_000032  1"),
    and path lines ("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png").
    Raises DatasetError naming the file if it is missing or empty, or an id repeats.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: id list not found")
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        first = line.split()[0]
        m = _ID_IN_PATH.search(first)
        ids.append(m.group(1) if m else first)
    if not ids:
        raise DatasetError(f"{path}: id list is empty")
    dup = _first_duplicate(ids)
    if dup is not None:
        raise DatasetError(f"{path}: id {dup!r} is listed more than once")
    return ids


def write_id_list(path: PathLike, ids: Sequence[str]) -> None:
    """Writes one id per line."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _first_duplicate(ids: Sequence[str]) -> str | None:
    seen = set()
    for i in ids:
        if i in seen:
            return i
        seen.add(i)
    return None


def find_folder(root: PathLike, inner: str, marker: str, what: str, hint: str) -> pathlib.Path:
    """`root` if it holds the folder `marker`, else `root/inner` if that does; else a DatasetError.

    The error says what was expected (`what`) and what to download (`hint`)."""
    root = pathlib.Path(root)
    for cand in (root, root / inner):
        if (cand / marker).is_dir():
            return cand
    raise DatasetError(f"{root}: not {what} (no {marker}/ in it or in {inner}/); {hint}")
