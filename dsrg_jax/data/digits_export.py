"""The digits dataset written out: a VOCdevkit-style tree and a figure of samples.

`python -m dsrg_jax.data.digits --figure PATH` / `--export DIR` (this module's `main`).
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np
from PIL import Image

from dsrg_jax.data.digits import (
    DEFAULT_SIZE,
    DIGIT_CLASSES,
    SPLITS,
    DigitsSource,
    make_digits_example,
)
from dsrg_jax.data.files import write_id_list, write_label_png


def export_voc_tree(
    root: str | pathlib.Path, *, seed: int = 0, size: int = DEFAULT_SIZE,
    num_train: int | None = None, num_val: int | None = None,
) -> pathlib.Path:
    """Writes the dataset as a VOCdevkit-style tree for `VOCSource`.

    Read it back with `VOCSource(root, split, image_ext=".png", class_names=DIGIT_CLASSES)`.

    Layout under root/VOC2012: JPEGImages/<id>.png (lossless, despite the folder name),
    SegmentationClass/<id>.png (palette), ImageSets/Segmentation/{train,val}.txt.
    Returns the VOC2012 folder.
    """
    voc = pathlib.Path(root) / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", num_train), ("val", num_val)):
        src = DigitsSource(split, num_images=n, seed=seed, size=size)
        for i in range(len(src)):
            image, mask = make_digits_example(split, i, seed=seed, size=size)
            Image.fromarray(image).save(voc / "JPEGImages" / f"{src.ids[i]}.png")
            write_label_png(voc / "SegmentationClass" / f"{src.ids[i]}.png", mask)
        write_id_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt", src.ids)
    return voc


def save_sample_grid(
    path: str | pathlib.Path, *, split: str = "train", num: int = 12, seed: int = 0,
    size: int = DEFAULT_SIZE, cols: int = 6,
) -> pathlib.Path:
    """Saves a figure: each sample's image above its mask (VOC colours), titled with its labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Figure colours: black background, tab10 for digits 0..9 (class d+1), white for ignore.
    palette = np.zeros((256, 3), np.uint8)
    palette[1:11] = (np.asarray(plt.get_cmap("tab10").colors) * 255).astype(np.uint8)
    palette[255] = 255

    src = DigitsSource(split, num_images=num, seed=seed, size=size)
    rows = -(-num // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.9 * cols, 2.0 * 2 * rows))
    axes = np.asarray(axes).reshape(2 * rows, cols)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(num):
        rec = src[i]
        r, c = 2 * (i // cols), i % cols
        names = [DIGIT_CLASSES[k] for k in np.flatnonzero(rec.labels) if k > 0]
        axes[r, c].imshow(rec.image)
        axes[r, c].set_title(f"{rec.image_id[-5:]}: labels {{{', '.join(names)}}}", fontsize=7)
        axes[r + 1, c].imshow(palette[rec.mask])
        axes[r + 1, c].set_title("mask", fontsize=7)
    fig.suptitle(
        f"digits {split}, seed {seed}, {size}x{size}: image (top), ground-truth mask (bottom; "
        "colour = digit: " + ", ".join(f"{d}={n}" for d, n in enumerate(
            ("blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan")))
        + ")", fontsize=8,
    )
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="The embedded digits dataset.")
    p.add_argument("--figure", help="write a grid of samples with masks and labels to this PNG")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)
    p.add_argument("--num", type=int, default=12, help="samples in the figure")
    p.add_argument("--export", help="write the dataset as a VOCdevkit-style tree under this folder")
    p.add_argument("--num-train", type=int, default=None, help="train images to export")
    p.add_argument("--num-val", type=int, default=None, help="val images to export")
    a = p.parse_args(argv)
    if not (a.figure or a.export):
        p.error("nothing to do: pass --figure PATH and/or --export DIR")
    if a.figure:
        out = save_sample_grid(a.figure, split=a.split, num=a.num, seed=a.seed, size=a.size)
        print(f"wrote {out}")
    if a.export:
        voc = export_voc_tree(a.export, seed=a.seed, size=a.size, num_train=a.num_train,
                              num_val=a.num_val)
        print(f"wrote {voc} (read it with VOCSource(root, split, image_ext='.png', "
              "class_names=DIGIT_CLASSES))")
