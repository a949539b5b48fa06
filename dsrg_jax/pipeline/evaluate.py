"""Stage `eval`: val mIoU of the dsrg and retrain nets with the official test protocol.

Each val image at `eval.scales` (aspect kept, optional flips), logits summed at full size,
softmax, the full-resolution CRF, argmax -> confusion matrix over the split. Writes
eval/<net>/predictions/<id>.png, eval/<net>/scores.txt, results.json (every stage's numbers) and
figures/*.png.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from dsrg_jax import viz
from dsrg_jax.data.files import write_label_png
from dsrg_jax.evaluate import Evaluator, scores_from_confusion
from dsrg_jax.pipeline import nets
from dsrg_jax.pipeline.sources import inference_transform
from dsrg_jax.pipeline.splits import (
    canvas_side,
    inference_batch_of,
    iterate,
    segment_batch,
    valid_rows,
)
from dsrg_jax.pipeline.stages import STAGES
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.train import steps
from dsrg_jax.train.logging import is_writer, log


def evaluate_model(exp: Experiment, predict, variables, *, crf: bool, tag: str,
                   out_dir: pathlib.Path | None = None, samples: dict | None = None) -> dict:
    """mIoU, pixel accuracy and per-class IoU of a segmentation net on the val split.

    With `out_dir`: each prediction written as `out_dir/predictions/<id>.png` (VOC palette; each
    process writes the images it predicted) and the score table as `out_dir/scores.txt`
    (process 0). With `samples` (a dict): the first `run.num_figure_images` val images of this
    process go there as {"ids", "images", "gt", "pred", "pred_crf"} for the overlay figure.
    """
    cfg = exp.cfg
    source = exp.dataset.source(cfg.data, "val", with_saliency=False)
    ev = Evaluator(cfg.data.num_classes, cfg.eval.miou_formula)
    keep = cfg.run.num_figure_images if samples is not None else 0
    if samples is not None:
        samples.update(ids=[], images=[], gt=[], pred=[], pred_crf=[])
    transform = inference_transform(canvas_side(exp), with_mask=True)
    for hb, gb in iterate(exp, source, transform, inference_batch_of(exp, cfg.eval.batch_size)):
        segs = segment_batch(exp, predict, variables, hb, gb, mode="eval", crf=crf)
        for i in valid_rows(hb):
            pred = segs[i].final
            h, w = pred.shape
            gt = hb["mask"][i, :h, :w]
            ev.add(pred, gt)
            image_id = source.ids[int(hb["index"][i])]
            if out_dir is not None:
                write_label_png(out_dir / "predictions" / f"{image_id}.png", pred)
            if keep and int(hb["index"][i]) < keep:
                for key, value in (("ids", image_id), ("images", hb["image"][i, :h, :w]),
                                   ("gt", gt), ("pred", segs[i].labels),
                                   ("pred_crf", segs[i].labels_crf)):
                    samples[key].append(value)
    res = ev.result()
    num_images = res.pop("num_images")
    res["crf"] = crf
    if out_dir is not None:
        confusion, _ = ev.total()
        scores = scores_from_confusion(confusion, exp.dataset.class_names,
                                       num_images=num_images)
        if is_writer():
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "scores.txt").write_text(scores.table() + "\n")
        res["predictions"] = str(out_dir / "predictions")
    log(f"[eval] {tag}: mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_accuracy']:.2f}"
        f" (val, scales {list(cfg.eval.scales)}, flip {cfg.eval.flip}, crf {crf})")
    return res


def collect_results(exp: Experiment) -> dict[str, Any]:
    """The numbers the earlier stages wrote in their done.json, for results.json."""
    results: dict[str, Any] = {"miou": {}, "eval": {}}
    cues = exp.done("cues") or {}
    if "val_cam" in cues:
        results["miou"]["cues"] = cues["val_cam"]["miou"]
    for key, name in (("train_quality", "cue_quality_train"),
                      ("bg_threshold_curve", "bg_threshold_curve")):
        if key in cues:
            results[name] = cues[key]
    if "train_masks" in cues:   # the dataset card: the objects on the grid, the cues on them
        card = dict(cues["train_masks"])
        quality = cues.get("train_quality") or {}
        for key in ("fg_precision", "fg_recall", "bg_precision", "bg_recall"):
            if key in quality:
                card[f"cue_{key}"] = quality[key]
        results["dataset"] = card
    return results


def run_eval(exp: Experiment) -> dict:
    """Scores the finished nets on val; writes results.json and the figures."""
    cfg = exp.cfg
    t0 = time.perf_counter()
    results = collect_results(exp)
    overlays: dict[str, dict] = {}
    for stage in ("dsrg", "retrain"):
        if exp.done(stage) is None:
            continue
        model, variables, conv = nets.load_trained(exp, stage)
        samples: dict = {}
        res = evaluate_model(exp, steps.make_predict(model, conv), variables, crf=cfg.eval.crf,
                             tag=stage, out_dir=exp.path("eval", stage), samples=samples)
        results["miou"][stage] = res["miou"]
        results["eval"][stage] = res
        overlays[stage] = samples
    results["supervision"] = (exp.done("dsrg") or {}).get("supervision", [])
    if "train_miou" in (pseudo := exp.done("pseudo") or {}):
        results["pseudo_label_train_miou"] = pseudo["train_miou"]
    if "val_accuracy" in (pre := exp.done("pretrain") or {}):
        results["pretrain_val_accuracy"] = pre["val_accuracy"]
    results["seconds"] = {s: (exp.done(s) or {}).get("seconds") for s in STAGES[:-1]}
    results["seconds"]["eval"] = round(time.perf_counter() - t0, 1)
    if is_writer():
        (exp.workdir / "results.json").write_text(json.dumps(results, indent=2))
        viz.write_run_figures(exp.workdir, results, class_names=exp.dataset.class_names,
                              overlays=overlays)
    return results
