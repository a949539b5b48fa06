"""Stage `pretrain` (digits only): the stand-in for ImageNet weights.

`SmallClassifier` (trunk, global average pool, linear) learns a 10-way task on single-digit images
(`GlyphSource`, softmax cross-entropy); its trunk is saved to pretrain/backbone.msgpack and starts
the CAM, DSRG and retrain nets, as the ImageNet VGG16 does on VOC.
Output: pretrain/backbone.msgpack, pretrain/done.json (single-digit val accuracy).
"""
from __future__ import annotations

import jax
import numpy as np
from flax import serialization

from dsrg_jax.data.digits import GlyphSource
from dsrg_jax.pipeline import nets
from dsrg_jax.pipeline.sources import cam_transform
from dsrg_jax.pipeline.splits import iterate
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import sum_over_processes, to_host
from dsrg_jax.train import steps
from dsrg_jax.train.logging import is_writer, log

NUM_VAL_GLYPHS = 1000


def run_pretrain(exp: Experiment) -> dict:
    """Trains the single-digit classifier and saves its trunk; returns the stage's info."""
    cfg, p = exp.cfg, exp.cfg.pretrain
    if not p.enabled:
        return {}
    if cfg.model.classifier != "small" or cfg.data.dataset != "digits":
        raise ValueError("pretrain.enabled needs data.dataset='digits' and model.classifier="
                         "'small'; real datasets start from model.init_weights (ImageNet)")
    model, variables, conv = nets.build_model(cfg, "pretrain")
    canvas = cfg.data.image_size
    train = GlyphSource("train", num_images=p.num_images, size=p.image_size, canvas=canvas)
    variables, last = nets.train_stage(
        exp, "pretrain", variables=variables,
        make_step=lambda tx: steps.make_cam_train_step(model, tx, conv, exp.mesh,
                                                       single_label=True),
        source=train, transform=cam_transform(p.image_size, flip=False))

    predict = steps.make_predict(model, conv)
    val = GlyphSource("val", num_images=NUM_VAL_GLYPHS, size=p.image_size, canvas=canvas)
    counts = np.zeros(2, np.int64)   # correct, total
    for hb, gb in iterate(exp, val, cam_transform(p.image_size, flip=False),
                          cfg.eval.batch_size):
        logits = to_host(predict(variables, gb["image"])[0])
        n = int(hb["valid"].sum())
        counts += [(logits[:n].argmax(-1) == hb["labels"][:n, 1:].argmax(-1)).sum(), n]
    correct, total = (int(v) for v in sum_over_processes(counts))

    if is_writer():
        nets.backbone_file(exp).write_bytes(serialization.msgpack_serialize(
            jax.device_get(variables["params"]["backbone"])))
    info = {"val_accuracy": correct / max(total, 1), "num_val": total, "classifier": last}
    log(f"[pretrain] single-digit val accuracy {100 * info['val_accuracy']:.1f}% "
        f"({total} images); trunk saved to {nets.backbone_file(exp)}")
    return info
