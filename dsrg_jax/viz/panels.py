"""Figures (matplotlib Agg, PNG) in VOC palette colours.

  - `save_growth_figure`: panels per image (cue maps, label maps, RGB), one row per image.
  - `save_cue_growth_figure`: the paper's Fig. 1: image, original cues, grown cues at several
    epochs, prediction, ground truth, for a few fixed images.
  - `save_supervision_curves`: the paper's Fig. 4: precision / recall / IoU of the (grown) cues
    against the ground truth, per epoch.
  - `save_class_iou_bars`: per-class IoU bars (class colours), mIoU line.
  - `save_overlay_figure`: predictions blended on the images, without and with the CRF.

The pure array helpers (`cue_colours`, `label_colours`, `overlay`, `to_rgb`) that build the
pictures live in `dsrg_jax.viz.colours` (re-exported here); the `save_*` functions here touch
matplotlib and the disk.
"""
from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsrg_jax.data.files import VOC_PALETTE
from dsrg_jax.viz.colours import cue_colours as cue_colours  # re-exported
from dsrg_jax.viz.colours import label_colours as label_colours  # re-exported
from dsrg_jax.viz.colours import overlay, to_rgb


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)


def _class_legend(fig, classes: Sequence[int], names: Sequence[str] | None,
                  palette: np.ndarray = VOC_PALETTE) -> None:
    """Colour patches naming the given classes, under the panels."""
    if names is None or not len(classes):
        return
    from matplotlib.patches import Patch
    handles = [Patch(facecolor=palette[c] / 255.0, edgecolor="grey",
                     label=names[c] if c < len(names) else str(c)) for c in classes]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8,
               frameon=False)


def _classes_in(panels: Sequence[Any], num_classes: int | None) -> list[int]:
    """Sorted classes (not 255) shown in label maps and cue maps among `panels`."""
    seen: set[int] = set()
    for p in panels:
        p = np.asarray(p)
        if p.dtype == bool and p.ndim == 3:
            seen.update(np.flatnonzero(p.any(axis=(0, 1))).tolist())
        elif p.ndim == 2:
            seen.update(int(v) for v in np.unique(p) if v != 255)
    if num_classes is not None:
        seen = {c for c in seen if c < num_classes}
    return sorted(seen)


def _panel_grid(path: str | os.PathLike, rows: Sequence[Sequence[Any]], col_titles: Sequence[str],
                *, row_titles: Sequence[str] | None = None, title: str = "",
                class_names: Sequence[str] | None = None,
                legend_classes: Sequence[int] | None = None, panel_size: float = 2.2,
                aspect: str = "equal") -> None:
    """Draws rows of panels (see `to_rgb`), with a legend when `class_names` is given.

    The legend shows `legend_classes` (default: the classes in the cue and label panels). aspect
    "auto" stretches every panel to the same square box (cue grids cover the whole image warped to a
    square)."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), len(col_titles)
    legend = class_names is not None
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                             figsize=(panel_size * n_cols,
                                      panel_size * n_rows + (0.5 if legend else 0.0)))
    for r, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f"row {r} has {len(row)} panels, expected {n_cols}")
        for c, panel in enumerate(row):
            ax = axes[r, c]
            ax.imshow(to_rgb(panel), interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=9)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    if legend:
        if legend_classes is None:
            legend_classes = _classes_in([p for row in rows for p in row], len(class_names))
        _class_legend(fig, legend_classes, class_names)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    else:
        fig.tight_layout()
    _save(fig, path)


def save_growth_figure(path: str | os.PathLike, rows: Sequence[dict], *, title: str = "") -> None:
    """One row per image: panels named by the dict keys.

    Panels: cue maps bool[H, W, C], label maps int[H, W] or RGB uint8[H, W, 3].

    Args:
      path: PNG to write.
      rows: e.g. [{"cues": bool[H, W, C], "probabilities (argmax)": uint8[H, W, 3],
        "grown cues": bool[H, W, C]}, ...]; every row has the same keys.
      title: figure title.
    """
    names = list(rows[0])
    _panel_grid(path, [[row[n] for n in names] for row in rows], names, title=title)


def save_cue_growth_figure(
    path: str | os.PathLike,
    images: np.ndarray,
    cues: np.ndarray,
    grown: Mapping[Any, np.ndarray],
    *,
    predictions: np.ndarray | None = None,
    ground_truth: np.ndarray | None = None,
    image_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "Cue growth over training",
) -> None:
    """The paper's Fig. 1: for a few fixed images, how the supervision grows as training goes on.

    Columns: image, original cues, grown cues at each key of `grown` (e.g. epochs), prediction,
    ground truth. Cues are drawn on their own grid (black = background cue, light = no cue);
    every panel is stretched to a square, as the cue grid covers the whole image warped square.

    Args:
      path: PNG to write.
      images: uint8[N, H, W, 3].
      cues: bool[N, h, w, C] original cues.
      grown: {column name or epoch: bool[N, h, w, C]} grown cues, in column order (an int key k
        is titled "grown, epoch k"); an int[N, h, w] label map (e.g. the network's argmax at
        that point) is drawn as labels.
      predictions: optional int[N, H', W'] final label maps.
      ground_truth: optional int[N, H', W'] (255 = ignore).
      image_ids: optional row titles.
      class_names: optional; draws a legend of the classes shown.
      title: figure title.
    """
    n = len(images)
    arrays = {"cues": cues, **{str(k): v for k, v in grown.items()}}
    if predictions is not None:
        arrays["predictions"] = predictions
    if ground_truth is not None:
        arrays["ground_truth"] = ground_truth
    for name, a in arrays.items():
        if len(a) != n:
            raise ValueError(f"save_cue_growth_figure: {name} has {len(a)} images, `images` {n}")
    cols = ["image", "original cues"] + [
        f"grown, epoch {k}" if isinstance(k, (int, np.integer)) else str(k) for k in grown]
    rows = [[images[i], np.asarray(cues[i], bool)] + [np.asarray(g[i]) for g in grown.values()]
            for i in range(n)]
    if predictions is not None:
        cols.append("prediction")
        for i in range(n):
            rows[i].append(np.asarray(predictions[i]))
    if ground_truth is not None:
        cols.append("ground truth")
        for i in range(n):
            rows[i].append(np.asarray(ground_truth[i]))
    _panel_grid(path, rows, cols, row_titles=image_ids, title=title, class_names=class_names,
                aspect="auto")


def _series(history: Sequence[Mapping[str, float]] | Mapping[str, Sequence[float]],
            keys: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Epochs and one float array per key, from a list of per-epoch dicts or a dict of lists."""
    if isinstance(history, Mapping):
        cols = {k: np.asarray(history[k], np.float64) for k in keys}
        length = len(next(iter(cols.values())))
        epochs = np.asarray(history.get("epoch", np.arange(length)), np.float64)
    else:
        if not history:
            raise ValueError("history is empty")
        cols = {k: np.asarray([h[k] for h in history], np.float64) for k in keys}
        epochs = np.asarray([h.get("epoch", i) for i, h in enumerate(history)], np.float64)
    for k, v in cols.items():
        if len(v) != len(epochs):
            raise ValueError(f"history[{k!r}] has {len(v)} values for {len(epochs)} epochs")
    return epochs, cols


def save_supervision_curves(
    path: str | os.PathLike,
    history: Sequence[Mapping[str, float]] | Mapping[str, Sequence[float]],
    *,
    keys: Sequence[str] = ("precision", "recall", "iou"),
    title: str = "Quality of the supervision (grown cues vs ground truth)",
    xlabel: str = "epoch",
) -> None:
    """The paper's Fig. 4: precision, recall and IoU of the supervision per epoch, in percent.

    Args:
      path: PNG to write.
      history: per-epoch dicts [{"epoch": 0, "precision": 0.63, "recall": 0.32, "iou": 0.30},
        ...] (fractions, as `dsrg_jax.cue_quality` returns) or a dict of lists with the same
        keys (optionally "epoch"). Values above 1 are taken as percent already.
      keys: the series to draw.
      title, xlabel: labels.
    """
    epochs, cols = _series(history, keys)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    markers = "osd^v<>"
    for (k, v), m in zip(cols.items(), markers * 4):
        pct = v if np.nanmax(np.abs(v)) > 1.0 + 1e-9 else 100.0 * v
        ax.plot(epochs, pct, marker=m, label=f"{k} ({pct[0]:.1f} -> {pct[-1]:.1f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def save_class_iou_bars(
    path: str | os.PathLike,
    iou: Sequence[float],
    class_names: Sequence[str],
    *,
    mean_iou: float | None = None,
    title: str = "IoU per class",
    palette: np.ndarray = VOC_PALETTE,
) -> None:
    """Per-class IoU bars in the class colours, with the mIoU as a dashed line.

    Args:
      path: PNG to write.
      iou: float[C] IoU per class, percent (NaN: class not present, drawn as "-").
      class_names: C names.
      mean_iou: percent; default the mean of the defined IoUs.
      title: figure title.
    """
    iou = np.asarray(iou, np.float64)
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} IoU values")
    if mean_iou is None:
        mean_iou = float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.38 * len(iou) + 1.5), 3.6))
    x = np.arange(len(iou))
    colours = palette[np.arange(len(iou)) % len(palette)] / 255.0
    ax.bar(x, np.nan_to_num(iou), color=colours, edgecolor="grey", linewidth=0.5)
    for xi, v in zip(x, iou):
        ax.text(xi, (0 if math.isnan(v) else v) + 1, "-" if math.isnan(v) else f"{v:.0f}",
                ha="center", va="bottom", fontsize=7)
    if not math.isnan(mean_iou):
        ax.axhline(mean_iou, color="k", ls="--", lw=1, label=f"mIoU {mean_iou:.1f}")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 110)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def save_overlay_figure(
    path: str | os.PathLike,
    images: np.ndarray,
    predictions: np.ndarray,
    *,
    predictions_crf: np.ndarray | None = None,
    ground_truth: np.ndarray | None = None,
    image_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.6,
    title: str = "Predictions",
) -> None:
    """Predictions blended on the images: without CRF, with CRF, ground truth (one row each image).

    Args:
      path: PNG to write.
      images: uint8[N, H, W, 3].
      predictions: int[N, H, W] (no CRF).
      predictions_crf: optional int[N, H, W] after the CRF.
      ground_truth: optional int[N, H, W] (255 = ignore).
      image_ids: optional row titles; class_names: optional legend.
      alpha: blend weight of the class colour.
      title: figure title.
    """
    cols = ["image", "prediction" if predictions_crf is None else "prediction (no CRF)"]
    if predictions_crf is not None:
        cols.append("prediction + CRF")
    if ground_truth is not None:
        cols.append("ground truth")
    rows = []
    for i in range(len(images)):
        row = [images[i], overlay(images[i], predictions[i], alpha=alpha)]
        if predictions_crf is not None:
            row.append(overlay(images[i], predictions_crf[i], alpha=alpha))
        if ground_truth is not None:
            row.append(overlay(images[i], ground_truth[i], alpha=alpha))
        rows.append(row)
    legend = None
    if class_names is not None:  # overlays are RGB: the legend comes from the label maps
        maps = [predictions] + [m for m in (predictions_crf, ground_truth) if m is not None]
        legend = _classes_in([m[i] for m in maps for i in range(len(images))], len(class_names))
    _panel_grid(path, rows, cols, row_titles=image_ids, title=title, class_names=class_names,
                legend_classes=legend)


def save_ablation_bars(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *,
                       title: str = "Ablation: val mIoU over seeds") -> None:
    """The ablation table as bars, beside the paper's VOC value where it has one.

    Per row its mean val mIoU (%) with a +-1 std error bar and every seed's value as a dot; the
    paper's VOC value gets its own panel (a different dataset, so compare orderings, not levels).

    rows: dicts with "group", "row", "miou" (per-seed fractions, None where missing), "mean" and
    "std" (fractions; absent when a seed is missing) and "paper_voc_val" (percent or None), as
    `experiments.ablation` writes them.
    """
    plt = _pyplot()
    n = len(rows)
    fig, (ax, ax_paper) = plt.subplots(1, 2, figsize=(10, 0.42 * n + 1.6), sharey=True,
                                       gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(n)[::-1]
    groups = sorted({r["group"] for r in rows}, key=[r["group"] for r in rows].index)
    colours = {g: f"C{i}" for i, g in enumerate(groups)}
    for yi, r in zip(y, rows):
        vals = np.asarray([np.nan if v is None else 100 * v for v in r["miou"]], np.float64)
        c = colours[r["group"]]
        if "mean" in r:     # the table's own summary (`experiments.ablation.summarise`)
            mean, std = 100 * r["mean"], 100 * r["std"]
            ax.barh(yi, mean, xerr=std, color=c, alpha=0.6, capsize=3)
            ax.plot(vals, np.full_like(vals, yi), "k.", ms=4)
            ax.text(mean + std + 0.3, yi, f"{mean:.1f} ± {std:.1f}", va="center", fontsize=7)
        if r.get("paper_voc_val") is not None:
            ax_paper.barh(yi, r["paper_voc_val"], color=c, alpha=0.6)
            ax_paper.text(r["paper_voc_val"] + 0.3, yi, f"{r['paper_voc_val']:.1f}",
                          va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['row']}" for r in rows], fontsize=8)
    ax.set_xlabel("val mIoU (%), this run: mean ± std, dots = seeds")
    means = [100 * v for r in rows for v in r["miou"] if v is not None]
    if means:
        ax.set_xlim(max(0.0, min(means) - 5), max(means) + 6)
    ax_paper.set_xlabel("paper, VOC 2012 val (%)")
    ax_paper.set_xlim(45, 62)
    for a in (ax, ax_paper):
        a.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
