"""Stage `cues`: seed cues of the train split, from the CAM classifier or an imported file.

  imported (`data.cues_file`): the official cue pickle or our .npz, checked to cover every train
      image -> cues.npz
  CAM: train the classifier (multi-label), then per train image its CAMs -> foreground cues
      (`cues.fg_rule`) and background cues (saliency below `cues.bg_saliency_threshold`, or the
      low-CAM fallback) on the segmentation output grid -> cues.npz; the cue quality on train,
      the CAM segmentation of val, the low-CAM threshold curve and the train masks' statistics
      on the grid (the dataset card, `mask_statistics`) go to cues/done.json.
"""
from __future__ import annotations

import pathlib

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dsrg_jax.data import transforms as T
from dsrg_jax.data.card import mask_statistics
from dsrg_jax.data.cues import CueSet, cueset_from_dense
from dsrg_jax.data.records import DatasetError
from dsrg_jax.data.seeds import load_any_cues
from dsrg_jax.models import model_for
from dsrg_jax.ops.cam import seed_cues_from_cams
from dsrg_jax.ops.metrics import cue_counts, cue_quality
from dsrg_jax.pipeline import nets
from dsrg_jax.pipeline.cams import BgThresholdCurve, cam_val_miou, cams_of_batch
from dsrg_jax.pipeline.sources import cam_transform
from dsrg_jax.pipeline.splits import has_masks, iterate
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import gather_over_processes, global_batch, sum_over_processes, to_host
from dsrg_jax.train import steps
from dsrg_jax.train.logging import is_writer, log

CARD_IMAGES = 500   # train images measured for the dataset card (`mask_statistics`)


def check_cues_cover(cueset: CueSet, ids, path: pathlib.Path, split: str) -> None:
    """Raises DatasetError (one line) unless every train id has cues in `cueset` (from `path`).

    Every id of the train split must have cues in `cueset` (imported from `path`); the error says
    how many are missing, shows a few, and for the SEC pickle where its input_list.txt must lie."""
    missing = [i for i in ids if i not in cueset]
    if not missing:
        return
    msg = (f"cue file {path}: {len(missing)} of the {len(ids)} {split} ids have no cues (e.g. "
           f"{', '.join(missing[:5])}); the file names its {len(cueset)} images "
           f"{', '.join(list(cueset.ids)[:3])}, ...")
    if path.suffix != ".npz":
        msg += (f"; the official pickle is indexed by the train_aug input_list.txt, which must "
                f"lie beside it as {path.parent / 'input_list.txt'} (without it the images are "
                f"named 0..{len(cueset) - 1}), or convert it first with `python -m "
                f"dsrg_jax.data.cues --pickle {path} --input-list LIST --out cues.npz`")
    else:
        msg += "; is it the cue file of this dataset and split?"
    raise DatasetError(msg)


def import_cues(exp: Experiment) -> dict:
    """Imports `data.cues_file` into cues.npz after checking it covers the train split.

    The source is told by `load_any_cues`: our .npz, an official pickle, or a folder of seed
    PNGs or CAM .npy files (another CAM method's output), brought to the segmentation net's
    output grid; CAMs become cues by the `cues.*` rule, background from `data.saliency_dir` when
    set, else from low CAMs."""
    cfg, c = exp.cfg, exp.cfg.cues
    path = pathlib.Path(cfg.data.cues_file)
    if not path.exists():
        raise FileNotFoundError(
            f"cue file {path} not found: download the DSRG authors' localization_cues-sal.pickle "
            f"(CAM foreground + saliency background, the published setup) or SEC's "
            f"localization_cues.pickle.gz, give a folder of seed PNGs or CAM .npy files, or "
            f"pass no --cues to make cues from CAMs")
    train_ids = exp.dataset.source(cfg.data, "train", with_saliency=False).ids
    ids, grid, cam_kw = None, None, {}
    if path.is_dir():  # made here on the net's grid; files carry their own grid
        size = cfg.data.input_size
        model = model_for(cfg.model, "seg", cfg.data.num_classes)
        image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                                   image)
        ids, grid = train_ids, nets.output_grid(model, variables, size)
        cam_kw = dict(fg_rule=c.fg_rule, fg_threshold=c.fg_threshold,
                      fg_top_fraction=c.fg_top_fraction, saliency_dir=cfg.data.saliency_dir,
                      bg_threshold=c.bg_saliency_threshold if cfg.data.saliency_dir
                      else c.bg_cam_threshold)
    cueset = load_any_cues(path, ids, grid, cfg.data.num_classes, **cam_kw)
    check_cues_cover(cueset, train_ids, path, cfg.data.train_split)
    if is_writer():
        cueset.save(exp.path("cues.npz"))
    # Coverage over the train images: the fraction of grid cells with a cue (any class), and
    # per class the fraction of cells with a cue of that class.
    cells, per_class = 0, np.zeros(cueset.num_classes, np.int64)
    for image_id in train_ids:
        n = cueset.index_of(image_id)
        lo, hi = cueset.offsets[n], cueset.offsets[n + 1]
        cells += len(set(zip(cueset.cue_row[lo:hi].tolist(), cueset.cue_col[lo:hi].tolist())))
        per_class += np.bincount(cueset.cue_class[lo:hi], minlength=cueset.num_classes)
    total = max(1, len(train_ids) * int(np.prod(cueset.grid_size)))
    coverage = {"cells": cells / total, "per_class": (per_class / total).tolist()}
    log(f"[cues] imported {path}: {100 * coverage['cells']:.1f}% of the train grid cells carry "
        f"a cue")
    return {"source": str(path), "num_images": len(cueset), "grid": list(cueset.grid_size),
            "coverage": coverage}


def run_cues(exp: Experiment) -> dict:
    """Imports or makes the seed cues; returns the stage's info."""
    cfg, c = exp.cfg, exp.cfg.cues
    if cfg.data.cues_file:
        return import_cues(exp)
    model, variables, conv = nets.build_model(cfg, "cues", nets.pretrained_backbone(exp))
    size = cfg.data.input_size
    train = exp.dataset.source(cfg.data, "train")
    variables, last = nets.train_stage(
        exp, "cues", variables=variables,
        make_step=lambda tx: steps.make_cam_train_step(model, tx, conv, exp.mesh),
        source=train, transform=cam_transform(size, flip=cfg.data.flip))
    cam_predict = steps.make_predict(model, conv)
    grid = nets.output_grid(model, variables, size)

    with_mask, use_sal = has_masks(train), cfg.data.saliency_dir is not None
    fields = ("image", "labels") + (("mask",) if with_mask else ()) + \
        (("saliency",) if use_sal else ())
    transform = T.warp_transform(size, cue_size=None, fields=fields, flip=False)
    all_cues, all_labels, all_idx, all_valid = [], [], [], []
    counts = np.zeros((cfg.data.num_classes, 3), np.int64)
    curve = BgThresholdCurve(cfg, grid) if BgThresholdCurve.applies(cfg, train) else None
    for hb, gb in iterate(exp, train, transform, cfg.eval.batch_size):
        cams = cams_of_batch(cam_predict, variables, gb["image"], gb["labels"][:, 1:])
        if with_mask:   # the masks on the cue grid (padding rows too: they are counted out)
            grid_masks = np.stack([T.grid_nearest(m, grid) for m in hb["mask"]])
        if curve is not None:
            curve.add(cams, gb, global_batch({"grid": grid_masks}, exp.mesh)["grid"])
        sal = None
        if use_sal:
            sal = jnp.asarray(np.stack([
                cv2.resize(s, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
                for s in hb["saliency"]]))
        n = len(hb["valid"])          # every host has the same rows per batch (some padding)
        cues = to_host(seed_cues_from_cams(
            cams, gb["labels"][:, 1:], sal, fg_rule=c.fg_rule, fg_threshold=c.fg_threshold,
            fg_top_fraction=c.fg_top_fraction, bg_saliency_threshold=c.bg_saliency_threshold,
            bg_cam_threshold=c.bg_cam_threshold))[:n]
        valid = hb["valid"].astype(bool)
        all_cues.append(cues)
        all_labels.append(hb["labels"])
        all_idx.append(hb["index"])
        all_valid.append(valid)
        if with_mask:
            counts += np.asarray(cue_counts(jnp.asarray(cues[valid]),
                                            jnp.asarray(grid_masks[valid])), np.int64)
    # Every process gathers every process's rows, then keeps each image once (padding dropped).
    cues, labels, idx, valid = (gather_over_processes(np.concatenate(a))
                                for a in (all_cues, all_labels, all_idx, all_valid))
    idx, first = np.unique(np.where(valid, idx, -1), return_index=True)
    keep = idx >= 0
    idx, cues, labels = idx[keep], cues[first[keep]], labels[first[keep]]
    order = np.argsort(idx)
    ids = [train.ids[i] for i in idx[order]]
    cueset = cueset_from_dense(ids, cues[order], labels[order])
    if is_writer():
        cueset.save(exp.path("cues.npz"))

    info = {"source": "cam", "background": "saliency" if use_sal else "low CAM "
            f"(max present CAM < {c.bg_cam_threshold})", "num_images": len(ids),
            "grid": list(grid), "classifier": last}
    if counts.sum():
        info["train_quality"] = cue_quality(sum_over_processes(counts))
    if with_mask:   # the dataset card: what the objects look like on this grid
        info["train_masks"] = mask_statistics(train, grid, max_images=CARD_IMAGES)
    if curve is not None:
        info.update(curve.result())
    info["val_cam"] = cam_val_miou(exp, cam_predict, variables)
    quality = info.get("train_quality")
    log(f"[cues] {len(ids)} images, background from {info['background']}; train cue quality "
        f"{', '.join(f'{k} {100 * v:.1f}' for k, v in quality.items()) if quality else 'n/a'};"
        f" CAM segmentation val mIoU {100 * info['val_cam']['miou']:.2f}")
    return info
