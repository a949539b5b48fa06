"""Small generated dataset trees (VOCdevkit, SBD) for tests: odd sizes, palette PNGs, 255 bands."""
from __future__ import annotations

import pathlib

import numpy as np
import scipy.io
from PIL import Image

from dsrg_jax.data.files import PathLike, write_id_list, write_label_png
from dsrg_jax.data.voc import VOC_CLASSES


def random_mask(rng: np.random.Generator, h: int, w: int, classes) -> np.ndarray:
    """uint8[h, w]: background with one rectangle per class, each outlined by a 255 band."""
    mask = np.zeros((h, w), np.uint8)
    for c in classes:
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        y1, x1 = int(rng.integers(y0 + 6, h)), int(rng.integers(x0 + 6, w))
        mask[y0:y1, x0:x1] = 255
        mask[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = c
    return mask


def write_voc_tree(
    root: PathLike, ids_train, ids_val, *, seed: int = 0, num_classes: int = 21,
    sizes=((37, 53), (64, 41), (29, 30)),
) -> dict[str, np.ndarray]:
    """Writes a VOCdevkit/VOC2012 tree.

    JPEGImages, SegmentationClass (palette PNGs), ImageSets/Segmentation/{train,val,trainval}.txt,
    Annotations/*.xml (names from the masks).

    Returns id -> the uint8[H, W] mask written (the independent truth for tests).
    """
    voc = pathlib.Path(root) / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    masks = {}
    for k, i in enumerate(list(ids_train) + list(ids_val)):
        h, w = sizes[k % len(sizes)]
        classes = rng.choice(np.arange(1, num_classes), size=int(rng.integers(1, 4)), replace=False)
        mask = random_mask(rng, h, w, classes)
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{i}.jpg", quality=90)
        write_label_png(voc / "SegmentationClass" / f"{i}.png", mask)
        names = [VOC_CLASSES[c] for c in np.unique(mask) if 0 < c < 255]
        objs = "".join(f"<object><name>{n}</name></object>" for n in names)
        (voc / "Annotations").mkdir(parents=True, exist_ok=True)
        (voc / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename>{objs}</annotation>")
        masks[i] = mask
    sets = voc / "ImageSets" / "Segmentation"
    write_id_list(sets / "train.txt", ids_train)
    write_id_list(sets / "val.txt", ids_val)
    write_id_list(sets / "trainval.txt", list(ids_train) + list(ids_val))
    return masks


def write_sbd_tree(
    root: PathLike, ids_train, ids_val, shapes: dict[str, tuple[int, int]], *, seed: int = 1
) -> dict[str, np.ndarray]:
    """Writes benchmark_RELEASE/dataset/{cls/<id>.mat, train.txt, val.txt} (GTcls structs).

    Returns id -> the uint8[H, W] class map written (no 255: SBD has no boundary band).
    """
    ds = pathlib.Path(root) / "benchmark_RELEASE" / "dataset"
    (ds / "cls").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for i in list(ids_train) + list(ids_val):
        h, w = shapes[i]
        seg = random_mask(rng, h, w, rng.choice(np.arange(1, 21), size=2, replace=False))
        seg = np.where(seg == 255, 0, seg).astype(np.uint8)
        boundaries = np.empty((20, 1), dtype=object)
        for c in range(20):
            boundaries[c, 0] = np.zeros((h, w), np.uint8)
        present = np.unique(seg[seg > 0]).astype(np.uint8)
        gt = {"Segmentation": seg, "Boundaries": boundaries, "CategoriesPresent": present}
        scipy.io.savemat(ds / "cls" / f"{i}.mat", {"GTcls": gt})
        out[i] = seg
    write_id_list(ds / "train.txt", ids_train)
    write_id_list(ds / "val.txt", ids_val)
    return out


def corrupt_jpeg(path: PathLike) -> None:
    """Truncates a JPEG to half its bytes (a corrupt/partial download)."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
