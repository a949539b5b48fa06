"""Figures of a run (PNG, matplotlib, VOC palette colours), written by `write_all`.

Written into workdir/figures: cue growth (the paper's Fig. 1), supervision quality per epoch
(Fig. 4), per-class IoU of the dsrg and retrain nets, prediction overlays without / with the CRF,
and the quality of the low-CAM background rule over its threshold."""
from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from matplotlib.patches import Patch

from dsrg_jax.data.files import VOC_PALETTE
from dsrg_jax.viz.panels import _pyplot, cue_colours, save_overlay_figure


def _plt():
    return _pyplot()


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


def growth_figure(path, growth_dir: pathlib.Path, num_classes: int, max_epochs: int = 5,
                  class_names: Sequence[str] | None = None) -> bool:
    """The cue growth figure (rows: images); False if there are no snapshots.

    Columns: image, original cues, grown cues at several epochs, CRF prediction of the last
    snapshot, ground truth (on the output grid); a legend of the classes shown."""
    files = sorted(growth_dir.glob("epoch_*.npz"))
    if not files:
        return False
    if len(files) > max_epochs:
        keep = np.unique(np.linspace(0, len(files) - 1, max_epochs).round().astype(int))
        files = [files[i] for i in keep]
    snaps = [(int(f.stem.split("_")[1]), dict(np.load(f))) for f in files]
    pal = VOC_PALETTE
    first = snaps[0][1]
    n = len(first["images"])
    cols = 2 + len(snaps) + 2
    plt = _plt()
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.7 * n), squeeze=False)
    for i in range(n):
        panels = [("image", first["images"][i]), ("original cues", cue_colours(first["cues"][i]))]
        panels += [(f"grown, epoch {e}", cue_colours(s["grown"][i])) for e, s in snaps]
        panels += [("CRF prediction", pal[snaps[-1][1]["pred"][i]]),
                   ("ground truth", pal[first["masks"][i]])]
        for ax, (title, img) in zip(axes[i], panels):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("DSRG: seed cues grown during training (cream: no cue, black: background)",
                 fontsize=9)
    fig.tight_layout()
    if class_names is not None:
        shown = set()
        for _, snap in snaps:
            for key in ("cues", "grown"):
                if key in snap:
                    flat = snap[key].reshape(-1, snap[key].shape[-1])
                    shown |= set(np.flatnonzero(flat.any(0)))
        shown |= set(np.unique(first["masks"])) - {255}
        handles = [Patch(facecolor=pal[c] / 255.0, edgecolor="grey", label=class_names[c])
                   for c in sorted(int(c) for c in shown) if c < len(class_names)]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 11), fontsize=7,
                   frameon=False)
        fig.subplots_adjust(bottom=0.08)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def class_iou_figure(path, evals: dict, class_names: Sequence[str]) -> bool:
    """Per-class val IoU of each evaluated net (e.g. dsrg and retrain) side by side.

    Bars in the class colours, one hatch per net, dashed mIoU lines. evals: {net:
    {"iou_per_class": [...], "miou": float}} (fractions; None = class absent). False if there is
    nothing to draw."""
    evals = {k: v for k, v in evals.items() if v.get("iou_per_class")}
    if not evals:
        return False
    plt = _plt()
    pal = VOC_PALETTE / 255.0
    c = len(class_names)
    width = 0.8 / len(evals)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * c + 1.5), 3.6))
    x = np.arange(c)
    hatches = ("", "//", "..", "xx")
    for j, (net, res) in enumerate(evals.items()):
        iou = np.array([np.nan if v is None else 100 * v for v in res["iou_per_class"]], float)
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, np.nan_to_num(iou), width, color=pal[np.arange(c)], edgecolor="grey",
               linewidth=0.5, hatch=hatches[j % len(hatches)], label=net)
        ax.axhline(100 * res["miou"], color="k", lw=1, ls=("--", ":", "-.")[j % 3],
                   label=f"{net} mIoU {100 * res['miou']:.1f}")
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%) on val")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.set_title("IoU per class (" + " | ".join(evals) + ")", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def overlay_figure(path, samples: dict, class_names: Sequence[str], net: str) -> bool:
    """Overlays of a few fixed val images; False if there are none.

    Image, prediction without CRF, with CRF (if it ran), ground truth, as overlays. samples:
    {"ids", "images", "gt", "pred", "pred_crf"} lists (see
    `dsrg_jax.pipeline.evaluate.evaluate_model`)."""
    if not samples or not samples.get("images"):
        return False
    crf = samples["pred_crf"] if all(p is not None for p in samples["pred_crf"]) else None
    save_overlay_figure(path, samples["images"], samples["pred"], predictions_crf=crf,
                            ground_truth=samples["gt"], image_ids=samples["ids"],
                            class_names=class_names,
                            title=f"{net} net on val: without / with the CRF")
    return True


def bg_threshold_figure(path, curve: dict) -> None:
    """Quality of the low-CAM background rule over its threshold t on train.

    Cue precision, recall, IoU and the CAM segmentation mIoU; the configured t marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ts = curve["thresholds"]
    for key, label in (("precision", "cue precision"), ("recall", "cue recall"),
                       ("iou", "cue IoU"), ("cam_miou", "CAM segmentation mIoU")):
        if key in curve:
            ax.plot(ts, [100 * v for v in curve[key]], marker="o", ms=3, label=label)
    if curve.get("configured") is not None:
        ax.axvline(curve["configured"], color="grey", ls="--", lw=1,
                   label=f"configured t={curve['configured']}")
    ax.set_xlabel("t (background where the strongest present CAM < t)")
    ax.set_ylabel("% (train split)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("CAM cues: background threshold", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_run_figures(workdir, results: dict, *, class_names: Sequence[str],
              overlays: dict | None = None) -> list[str]:
    """All figures of a finished run into workdir/figures; returns their paths.

    overlays: {net: samples} from `dsrg_jax.pipeline.evaluate.evaluate_model`; the last net's
    are drawn.
    """
    workdir = pathlib.Path(workdir)
    out = workdir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if results.get("supervision"):
        supervision_figure(out / "supervision.png", results["supervision"])
        written.append(str(out / "supervision.png"))
    if growth_figure(out / "growth.png", workdir / "dsrg" / "growth", len(class_names),
                     class_names=class_names):
        written.append(str(out / "growth.png"))
    if class_iou_figure(out / "class_iou.png", results.get("eval", {}), class_names):
        written.append(str(out / "class_iou.png"))
    if overlays:
        net = list(overlays)[-1]
        if overlay_figure(out / "overlays.png", overlays[net], class_names, net):
            written.append(str(out / "overlays.png"))
    if results.get("bg_threshold_curve"):
        bg_threshold_figure(out / "cam_bg_threshold.png", results["bg_threshold_curve"])
        written.append(str(out / "cam_bg_threshold.png"))
    return written
