"""Foreground / background precision of a digits run's seed cues, and of other foreground rules.

    python -m experiments.cue_diagnostics --workdir runs/digits [--num-images 1000]

Reads the finished `cues` stage of WORKDIR (cues.npz and the CAM classifier's checkpoint) and the
digits train masks. Prints (1) for the cue file: the share of foreground cue cells whose ground
truth on the output grid is that class, the share of background cue cells that are background,
the share of ground-truth digit cells covered by a foreground cue, and the mean stroke area
inside foreground cue cells; (2) the same foreground numbers for the CAM net's cues under other
foreground rules (SEC's relative threshold, the paper's top fraction). docs/results.md uses it.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import cv2
import jax.numpy as jnp
import numpy as np


def cue_file_precision(cues_path, source, grid) -> dict:
    """Precision / coverage of a CueSet against the source's masks on `grid`."""
    from dsrg_jax.data.cues import load_cues
    from dsrg_jax.data.transforms import grid_nearest

    cueset = load_cues(cues_path)
    fg_tp = fg_n = bg_tp = bg_n = gt_fg = gt_fg_cued = 0
    stroke_share = []
    for i in range(len(source)):
        rec = source[i]
        cues, _ = cueset[rec.image_id]
        gt = grid_nearest(rec.mask, grid)
        area = cv2.resize((rec.mask > 0).astype(np.float32), (grid[1], grid[0]),
                          interpolation=cv2.INTER_AREA)
        fg = cues[..., 1:]
        fg_n += int(fg.sum())
        fg_tp += int(sum((fg[..., c] & (gt == c + 1)).sum() for c in range(fg.shape[-1])))
        if fg.any():
            stroke_share.append(float(area[fg.any(-1)].mean()))
        bg_n += int(cues[..., 0].sum())
        bg_tp += int((cues[..., 0] & (gt == 0)).sum())
        gt_fg += int((gt > 0).sum())
        gt_fg_cued += int(((gt > 0) & fg.any(-1)).sum())
    return {"fg_cells": fg_n, "fg_precision": fg_tp / max(fg_n, 1),
            "bg_cells": bg_n, "bg_precision": bg_tp / max(bg_n, 1),
            "gt_fg_covered": gt_fg_cued / max(gt_fg, 1),
            "stroke_area_in_fg_cells": float(np.mean(stroke_share)) if stroke_share else 0.0}


def foreground_rule_sweep(exp, source, grid, rules) -> list[dict]:
    """Foreground precision / coverage of the CAM net's cues under each (rule, value)."""
    from dsrg_jax.data.transforms import grid_nearest
    from dsrg_jax.ops.cam import seed_cues_from_cams
    from dsrg_jax.pipeline.cams import cams_of_batch
    from dsrg_jax.pipeline.nets import load_trained
    from dsrg_jax.train import steps as S

    model, variables, conv = load_trained(exp, "cues")
    predict = S.make_predict(model, conv)
    recs = [source[i] for i in range(len(source))]
    labels = np.stack([r.labels for r in recs])
    gts = np.stack([grid_nearest(r.mask, grid) for r in recs])
    cams = []
    for i in range(0, len(recs), 100):
        images = jnp.asarray(np.stack([r.image for r in recs[i:i + 100]]))
        cams.append(np.asarray(cams_of_batch(predict, variables, images,
                                             jnp.asarray(labels[i:i + 100, 1:]))))
    cams = jnp.asarray(np.concatenate(cams))
    out = []
    for rule, value in rules:
        kw = {"fg_threshold": value} if rule == "relative" else {"fg_top_fraction": value}
        fg = np.asarray(seed_cues_from_cams(cams, jnp.asarray(labels[:, 1:]), fg_rule=rule,
                                            **kw))[..., 1:]
        tp = sum((fg[..., c] & (gts == c + 1)).sum() for c in range(fg.shape[-1]))
        out.append({"rule": rule, "value": value, "fg_cells": int(fg.sum()),
                    "fg_precision": float(tp / max(fg.sum(), 1)),
                    "gt_fg_covered": float(((gts > 0) & fg.any(-1)).sum() / (gts > 0).sum())})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.cue_diagnostics",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a digits workdir whose cues stage is done")
    p.add_argument("--num-images", type=int, default=1000,
                   help="train images for the foreground-rule sweep (the cue file: all)")
    a = p.parse_args(argv)
    from dsrg_jax.config import config_from_dict
    from dsrg_jax.data.digits import DigitsSource
    from dsrg_jax.pipeline import Experiment
    from dsrg_jax.sharding import make_mesh

    workdir = pathlib.Path(a.workdir)
    done = workdir / "cues" / "done.json"
    if not done.is_file():
        raise SystemExit(f"{done} not found: run `python -m experiments.digits --workdir "
                         f"{workdir}` (at least its cues stage) first")
    cfg = config_from_dict(json.loads((workdir / "config.json").read_text()))
    if cfg.data.dataset != "digits":
        raise SystemExit(f"{workdir}: a digits workdir is needed (found {cfg.data.dataset!r})")
    grid = tuple(json.loads(done.read_text())["grid"])
    size = cfg.data.image_size
    train = DigitsSource("train", num_images=cfg.data.num_train, size=size)
    result = {"cue_file": cue_file_precision(workdir / "cues.npz", train, grid)}
    q = result["cue_file"]
    print(f"cues.npz ({len(train)} train images, {grid[0]}x{grid[1]} grid): foreground cue "
          f"precision {100 * q['fg_precision']:.1f}% of {q['fg_cells']} cells, background "
          f"{100 * q['bg_precision']:.1f}% of {q['bg_cells']}; digit cells covered "
          f"{100 * q['gt_fg_covered']:.1f}%; stroke area inside foreground cue cells "
          f"{100 * q['stroke_area_in_fg_cells']:.1f}%")
    exp = Experiment(cfg, workdir.absolute(), make_mesh(1), None)
    sweep_src = DigitsSource("train", num_images=min(a.num_images, len(train)), size=size)
    rules = [("relative", v) for v in (0.2, 0.4, 0.6, 0.8)] + \
            [("top_fraction", v) for v in (0.2, 0.1, 0.05)]
    result["foreground_rules"] = foreground_rule_sweep(exp, sweep_src, grid, rules)
    print(f"foreground rules on the first {len(sweep_src)} train images:")
    for r in result["foreground_rules"]:
        print(f"  {r['rule']} {r['value']}: precision {100 * r['fg_precision']:.1f}%, digit "
              f"cells covered {100 * r['gt_fg_covered']:.1f}% ({r['fg_cells']} cue cells)")
    return result


if __name__ == "__main__":
    main()
