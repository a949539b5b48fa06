"""Figures of a run (PNG, matplotlib): supervision quality per epoch, cue growth panels."""
from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def palette(num_classes: int) -> np.ndarray:
    """uint8[256, 3]: black background, tab10/tab20 colours for classes, grey for no cue/ignore."""
    plt = _plt()
    colours = np.zeros((256, 3), np.uint8)
    cmap = plt.get_cmap("tab10" if num_classes <= 11 else "tab20")
    for c in range(1, num_classes):
        colours[c] = (np.asarray(cmap((c - 1) % cmap.N)[:3]) * 255).astype(np.uint8)
    colours[255] = (200, 200, 200)
    return colours


def cue_image(cues: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """bool[h, w, C] -> uint8[h, w, 3]: the highest cue class's colour, grey where none."""
    c = cues.shape[-1]
    label = np.where(cues.any(-1), c - 1 - np.argmax(cues[..., ::-1], -1), 255)
    return pal[label]


def supervision_figure(path, records: Sequence[dict]) -> None:
    """Precision / recall / IoU of the (grown) cues per epoch (the paper's Fig. 4)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    epochs = [r["epoch"] for r in records]
    for key in ("precision", "recall", "iou"):
        ax.plot(epochs, [100 * r[key] for r in records], marker="o", label=key)
    ax.set_xlabel("epoch (0 = original cues)")
    ax.set_ylabel("% of cue pixels (train split)")
    ax.set_title("supervision quality of the grown cues")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def growth_figure(path, growth_dir: pathlib.Path, num_classes: int, max_epochs: int = 5) -> bool:
    """Rows: images; columns: image, original cues, grown cues at several epochs, CRF prediction
    of the last snapshot, ground truth (on the output grid). False if there are no snapshots."""
    files = sorted(growth_dir.glob("epoch_*.npz"))
    if not files:
        return False
    if len(files) > max_epochs:
        keep = np.unique(np.linspace(0, len(files) - 1, max_epochs).round().astype(int))
        files = [files[i] for i in keep]
    snaps = [(int(f.stem.split("_")[1]), dict(np.load(f))) for f in files]
    pal = palette(num_classes)
    first = snaps[0][1]
    n = len(first["images"])
    cols = 2 + len(snaps) + 2
    plt = _plt()
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.7 * n), squeeze=False)
    for i in range(n):
        panels = [("image", first["images"][i]), ("original cues", cue_image(first["cues"][i], pal))]
        panels += [(f"grown, epoch {e}", cue_image(s["grown"][i], pal)) for e, s in snaps]
        panels += [("CRF prediction", pal[snaps[-1][1]["pred"][i]]),
                   ("ground truth", pal[first["masks"][i]])]
        for ax, (title, img) in zip(axes[i], panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("DSRG: seed cues grown during training (grey: unlabelled)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_all(workdir, results: dict, *, class_names: Sequence[str]) -> list[str]:
    """All figures of a finished run into workdir/figures; returns their paths."""
    workdir = pathlib.Path(workdir)
    out = workdir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if results.get("supervision"):
        supervision_figure(out / "supervision.png", results["supervision"])
        written.append(str(out / "supervision.png"))
    if growth_figure(out / "growth.png", workdir / "dsrg" / "growth", len(class_names)):
        written.append(str(out / "growth.png"))
    return written
