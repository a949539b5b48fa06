"""Predictions of a finished net on any split (e.g. VOC test), for a test server or other tools.

Exactly as the eval stage predicts val (`eval.scales`, `eval.flip`, `eval.crf`, argmax over all
classes), without masks or labels: WORKDIR/predict/<split>/<id>.png (VOC palette, the image's size;
VOC: under results/VOC2012/Segmentation/comp6_test_cls/, the test server's layout).
"""
from __future__ import annotations

import pathlib
import time

from dsrg_jax.config import ConfigError
from dsrg_jax.data.files import write_id_list, write_label_png
from dsrg_jax.pipeline import nets
from dsrg_jax.pipeline.sources import inference_transform
from dsrg_jax.pipeline.splits import (
    canvas_side,
    count_over_processes,
    inference_batch_of,
    iterate,
    segment_batch,
    valid_rows,
)
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.train import steps
from dsrg_jax.train.logging import is_writer, log

PREDICTING_STAGES = ("dsrg", "retrain")


def predict_source(exp: Experiment, split_name: str):
    """The images of any split by name, without masks or labels.

    VOC ImageSets/Segmentation/<name>.txt or an id-list path, COCO DATA_DIR/<name>, digits "train" /
    "val"."""
    return exp.dataset.images_of(exp.cfg.data, split_name)


def predict_dir(exp: Experiment, split_name: str) -> pathlib.Path:
    """Where `predict_split` writes: WORKDIR/predict/<split>/ plus the dataset's layout."""
    return exp.path("predict", pathlib.Path(split_name).stem, *exp.dataset.prediction_layout)


def predict_split(exp: Experiment, stage: str | None = None, split_name: str = "test",
                  out_dir=None) -> dict:
    """Writes a finished stage's prediction of every image of a split as `<id>.png`.

    Args:
      stage: "retrain" or "dsrg"; None = retrain, or dsrg when retrain is disabled.
      split_name: see `predict_source`.
      out_dir: default `predict_dir(exp, split_name)`.
    Returns:
      {"split", "stage", "num_images", "dir", "seconds"}.
    """
    cfg = exp.cfg
    stage = stage or ("retrain" if cfg.retrain.enabled else "dsrg")
    if stage not in PREDICTING_STAGES:
        raise ConfigError(f"predict: stage must be one of {PREDICTING_STAGES}, got {stage!r}")
    if exp.done(stage) is None:
        raise FileNotFoundError(f"predict: the {stage} stage is not finished in {exp.workdir} "
                                f"({exp.path(stage, 'done.json')} missing); run it first")
    t0 = time.perf_counter()
    out_dir = pathlib.Path(out_dir) if out_dir is not None else predict_dir(exp, split_name)
    source = predict_source(exp, split_name)
    model, variables, conv = nets.load_trained(exp, stage)
    predict = steps.make_predict(model, conv)
    count = 0
    transform = inference_transform(canvas_side(exp), with_mask=False)
    for hb, gb in iterate(exp, source, transform, inference_batch_of(exp, cfg.eval.batch_size)):
        segs = segment_batch(exp, predict, variables, hb, gb, mode="eval", crf=cfg.eval.crf)
        for i in valid_rows(hb):
            write_label_png(out_dir / f"{source.ids[int(hb['index'][i])]}.png", segs[i].final)
            count += 1
    count = count_over_processes(count)
    id_list = exp.path("predict", f"{pathlib.Path(split_name).stem}.txt")
    if is_writer():
        write_id_list(id_list, list(source.ids))
    info = {"split": split_name, "stage": stage, "num_images": count, "dir": str(out_dir),
            "list": str(id_list), "seconds": round(time.perf_counter() - t0, 1)}
    log(f"[predict] {count} PNGs of {split_name} ({stage} net, scales {list(cfg.eval.scales)}, "
        f"flip {cfg.eval.flip}, crf {cfg.eval.crf}) in {out_dir}")
    layout = exp.dataset.prediction_layout
    if layout and out_dir.parts[-len(layout):] == layout:
        log(f"[predict] for the test server: tar -C {out_dir.parents[len(layout) - 1]} -czf "
            f"results.tgz {layout[0]}")
    return info
