"""CAMs of the trained classifier, and how good a segmentation they are on their own.

  cam_val_miou             CAM segmentation of val (present class with the largest CAM,
                           background where none reaches `cues.bg_cam_threshold`)
  BgThresholdCurve         the low-CAM background rule over a range of thresholds, on train
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
from dsrg_jax.ops.metrics import confusion_matrix, cue_counts, cue_quality
from dsrg_jax.pipeline.splits import has_masks, iterate, valid_rows
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import replicated_to_host, to_host
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
    """mIoU of the CAM segmentation on val.

    Each pixel is the present class with the largest normalised CAM, or background where none
    reaches `cues.bg_cam_threshold` (image labels from the ground truth, CAMs upsampled
    bilinearly)."""
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


class BgThresholdCurve:
    """The low-CAM background rule over a range of thresholds t, from the cue stage's CAM batches.

    The rule: background where the strongest present CAM < t (config `cues.bg_cam_threshold`).
    Accumulated over the train batches the cue stage already passes through the CAM net (no second
    pass).

    Per t: precision / recall / IoU / mIoU of the seed cues against the ground truth on the cue
    grid, and the mIoU of the CAM segmentation at the input size (as `cam_val_miou`).

        curve = BgThresholdCurve(cfg, grid)
        for each global batch: curve.add(cams, gb, grid_masks)
        curve.result()   # {"bg_threshold_curve": {...}}
    """

    def __init__(self, cfg, grid: tuple[int, int], thresholds=BG_THRESHOLDS):
        c = cfg.cues
        self.configured = float(c.bg_cam_threshold)
        self.ts = sorted(set(float(t) for t in thresholds) | {self.configured})
        num_classes, size = cfg.data.num_classes, cfg.data.input_size
        self.grid = grid
        self.cue_counts = np.zeros((len(self.ts), num_classes, 3), np.int64)
        self.evaluators = [Evaluator(num_classes) for _ in self.ts]
        ts = jnp.asarray(self.ts, jnp.float32)

        @jax.jit
        def counts(cams, labels_fg, mask, grid_mask, valid):
            # Rows padded for the devices (or past the split's end) count nothing.
            mask = jnp.where(valid[:, None, None], mask, 255)
            grid_mask = jnp.where(valid[:, None, None], grid_mask, 255)
            up = jax.image.resize(cams, (cams.shape[0], size, size, cams.shape[-1]),
                                  "bilinear", antialias=False)
            up = jnp.where(labels_fg[:, None, None, :], up, -1.0)
            strongest, best = jnp.max(up, -1), jnp.argmax(up, -1) + 1

            def one(t):
                cues = seed_cues_from_cams(cams, labels_fg, None, fg_rule=c.fg_rule,
                                           fg_threshold=c.fg_threshold,
                                           fg_top_fraction=c.fg_top_fraction,
                                           bg_cam_threshold=t)
                pred = jnp.where(strongest > t, best, 0)
                return cue_counts(cues, grid_mask), confusion_matrix(pred, mask, num_classes)

            return jax.vmap(one)(ts)

        self._counts = counts

    @staticmethod
    def applies(cfg, source) -> bool:
        """Only for the low-CAM background (no saliency) of a split with masks."""
        return cfg.data.saliency_dir is None and has_masks(source)

    def add(self, cams: jax.Array, gb: dict, grid_masks: jax.Array) -> None:
        """Adds one global batch (cams, gb, grid_masks).

        cams float[B, h, w, C-1], gb's "labels", "mask" uint8[B, H, W] and "valid", grid_masks
        uint8[B, h, w] (the masks on the cue grid)."""
        cc, cm = self._counts(cams, gb["labels"][:, 1:], gb["mask"], grid_masks, gb["valid"])
        self.cue_counts += replicated_to_host(cc).astype(np.int64)   # the whole global batch
        # The counts already cover every process's rows: only process 0 adds them, so the
        # evaluators' sum over processes counts each image once.
        if jax.process_index() == 0:
            for ev, conf in zip(self.evaluators, replicated_to_host(cm)):
                ev.add_confusion(conf)

    def result(self) -> dict:
        """{"bg_threshold_curve": thresholds, configured, per-t cue quality and cam_miou}."""
        ts = self.ts
        curve: dict[str, Any] = {"thresholds": ts, "configured": self.configured}
        for k in range(len(ts)):
            for key, v in cue_quality(self.cue_counts[k]).items():
                curve.setdefault(key, []).append(v)
            curve.setdefault("cam_miou", []).append(self.evaluators[k].result()["miou"])
        best = int(np.nanargmax(curve["cam_miou"]))
        log(f"[cues] low-CAM background threshold on train: CAM segmentation mIoU "
            f"{100 * curve['cam_miou'][best]:.2f} at t={ts[best]} (configured "
            f"t={self.configured}: {100 * curve['cam_miou'][ts.index(self.configured)]:.2f})")
        return {"bg_threshold_curve": curve}
