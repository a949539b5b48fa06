"""Stage `retrain`: the segmentation net fully supervised on the pseudo-labels.

Inputs: pseudo_labels/ and the start: the dsrg stage's final net (`retrain.init="dsrg"`, as the
official run.sh does) or a fresh ImageNet-initialised one ("imagenet"). Random crops + flips,
softmax cross-entropy on the output grid (`steps.make_retrain_step`).
Output: retrain/checkpoints, retrain/done.json.
"""
from __future__ import annotations

from dsrg_jax.data.derived import PseudoLabelSource
from dsrg_jax.pipeline import nets
from dsrg_jax.pipeline.sources import retrain_transform
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.train import steps


def initial_net(exp: Experiment) -> nets.Net:
    """The net retraining starts from (`retrain.init`)."""
    if exp.cfg.retrain.init == "dsrg":
        return nets.load_trained(exp, "dsrg")
    return nets.build_model(exp.cfg, "retrain", nets.pretrained_backbone(exp))


def run_retrain(exp: Experiment) -> dict:
    """Trains the net on the pseudo-labels; returns the stage's info."""
    cfg = exp.cfg
    model, variables, conv = initial_net(exp)
    grid = nets.output_grid(model, variables, cfg.data.crop_size)
    base = exp.dataset.source(cfg.data, "train", with_saliency=False)
    source = PseudoLabelSource(base, exp.path("pseudo_labels"), cfg.data.num_classes)
    _, last = nets.train_stage(
        exp, "retrain", variables=variables,
        make_step=lambda tx: steps.make_retrain_step(model, tx, conv, exp.mesh),
        source=source, transform=retrain_transform(cfg.data.crop_size, grid,
                                                   flip=cfg.data.flip))
    return {"last": last}
