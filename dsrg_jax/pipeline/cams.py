"""CAMs of the trained classifier, and how good a segmentation they are on their own.

  cam_val_miou             CAM segmentation of val (present class with the largest CAM,
                           background where none reaches `cues.bg_cam_threshold`)
  cam_bg_threshold_curve   the low-CAM background rule over a range of thresholds, on train
"""
from __future__ import annotations

from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dsrg_jax.data import transforms as T
from dsrg_jax.evaluate import Evaluator
from dsrg_jax.ops.cam import class_activation_maps, seed_cues_from_cams
from dsrg_jax.ops.metrics import confusion_matrix, cue_counts, cue_quality, mean_iou
from dsrg_jax.pipeline.splits import has_masks, iterate, valid_rows
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import global_batch, replicated_to_host, to_host
from dsrg_jax.train.logging import log

BG_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 11))  # 0.05 .. 0.5


def cams_of_batch(cam_predict, variables, images, labels_fg) -> jax.Array:
    """Normalised CAMs float[B, h, w, C-1] of the present foreground classes."""
    _, features = cam_predict(variables, images)
    weights = variables["params"]["classifier"]["kernel"]
    return class_activation_maps(features, weights, labels_fg)


def _mask_transform(size: int) -> T.Transform:
    return T.warp_transform(size, cue_size=None, fields=("image", "labels", "mask"), flip=False)


def cam_val_miou(exp: Experiment, cam_predict, variables) -> dict:
    """mIoU of the CAM segmentation on val: each pixel the present class with the largest
    normalised CAM, or background where none reaches `cues.bg_cam_threshold` (image labels from
    the ground truth, CAMs upsampled bilinearly)."""
    cfg, size = exp.cfg, exp.cfg.data.input_size
    source = exp.dataset.source(cfg.data, "val", with_saliency=False)
    ev = Evaluator(cfg.data.num_classes)
    for hb, gb in iterate(exp, source, _mask_transform(size), cfg.eval.batch_size):
        cams = to_host(cams_of_batch(cam_predict, variables, gb["image"], gb["labels"][:, 1:]))
        for i in valid_rows(hb):
            up = cv2.resize(cams[i], (size, size), interpolation=cv2.INTER_LINEAR)
            if up.ndim == 2:
                up = up[..., None]
            scores = np.concatenate(
                [np.full((size, size, 1), cfg.cues.bg_cam_threshold, np.float32),
                 np.where(hb["labels"][i][1:], up, -1.0)], axis=-1)
            ev.add(np.argmax(scores, -1).astype(np.uint8), hb["mask"][i])
    res = ev.result()
    return {"miou": res["miou"], "pixel_accuracy": res["pixel_accuracy"]}


def cam_bg_threshold_curve(exp: Experiment, cam_predict, variables, source, grid,
                           thresholds=BG_THRESHOLDS) -> dict:
    """The low-CAM background rule (background where the strongest present CAM < t; config
    `cues.bg_cam_threshold`) over a range of t, in one pass over the train CAMs.

    Per t: precision / recall / IoU / mIoU of the seed cues against the ground truth on the cue
    grid, and the mIoU of the CAM segmentation at the input size (as `cam_val_miou`). Returns
    {"bg_threshold_curve": {...}}, or {} when the train split has no masks or the background
    comes from saliency.
    """
    cfg, c = exp.cfg, exp.cfg.cues
    if cfg.data.saliency_dir is not None or not has_masks(source):
        return {}
    ts = sorted(set(float(t) for t in thresholds) | {float(c.bg_cam_threshold)})
    num_classes, size = cfg.data.num_classes, cfg.data.input_size

    @jax.jit
    def counts(cams, labels_fg, mask, grid_mask, valid):
        # Rows padded for the devices (or past the split's end) count nothing.
        mask = jnp.where(valid[:, None, None], mask, 255)
        grid_mask = jnp.where(valid[:, None, None], grid_mask, 255)
        up = jax.image.resize(cams, (cams.shape[0], size, size, cams.shape[-1]), "bilinear",
                              antialias=False)
        up = jnp.where(labels_fg[:, None, None, :], up, -1.0)
        strongest, best = jnp.max(up, -1), jnp.argmax(up, -1) + 1

        def one(t):
            cues = seed_cues_from_cams(cams, labels_fg, None, fg_rule=c.fg_rule,
                                       fg_threshold=c.fg_threshold,
                                       fg_top_fraction=c.fg_top_fraction, bg_cam_threshold=t)
            pred = jnp.where(strongest > t, best, 0)
            return cue_counts(cues, grid_mask), confusion_matrix(pred, mask, num_classes)

        return jax.vmap(one)(jnp.asarray(ts, jnp.float32))

    cue_n = np.zeros((len(ts), num_classes, 3), np.int64)
    conf = np.zeros((len(ts), num_classes, num_classes), np.int64)
    for hb, gb in iterate(exp, source, _mask_transform(size), cfg.eval.batch_size):
        masks = global_batch({"mask": hb["mask"], "valid": hb["valid"],
                              "grid": np.stack([T.grid_nearest(m, grid) for m in hb["mask"]])},
                             exp.mesh)
        cams = cams_of_batch(cam_predict, variables, gb["image"], gb["labels"][:, 1:])
        cc, cm = counts(cams, gb["labels"][:, 1:], masks["mask"], masks["grid"], masks["valid"])
        cue_n += replicated_to_host(cc).astype(np.int64)   # sums over the global batch
        conf += replicated_to_host(cm).astype(np.int64)
    curve: dict[str, Any] = {"thresholds": ts, "configured": float(c.bg_cam_threshold)}
    for k in range(len(ts)):
        for key, v in cue_quality(cue_n[k]).items():
            curve.setdefault(key, []).append(v)
        curve.setdefault("cam_miou", []).append(mean_iou(conf[k]))
    best = int(np.nanargmax(curve["cam_miou"]))
    log(f"[cues] low-CAM background threshold on train: CAM segmentation mIoU "
        f"{100 * curve['cam_miou'][best]:.2f} at t={ts[best]} (configured t={c.bg_cam_threshold}: "
        f"{100 * curve['cam_miou'][ts.index(float(c.bg_cam_threshold))]:.2f})")
    return {"bg_threshold_curve": curve}
