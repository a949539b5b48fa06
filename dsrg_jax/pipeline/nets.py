"""The nets of a run: built for a stage (seeded by the stage table), trained, loaded back."""
from __future__ import annotations

import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import serialization

from dsrg_jax.caffe_weights import load_caffe_deeplab_vgg16
from dsrg_jax.config import Config, ConfigError
from dsrg_jax.convention import CAFFE, InputConvention, get_input_convention
from dsrg_jax.data.pipeline import Pipeline
from dsrg_jax.models import model_for
from dsrg_jax.pipeline.stages import STAGE_TABLE
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import replicate
from dsrg_jax.train import steps
from dsrg_jax.train.checkpoint import CheckpointError, Checkpoints
from dsrg_jax.train.logging import log
from dsrg_jax.train.loop import train_loop
from dsrg_jax.train.optim import caffe_sgd, lr_schedule
from dsrg_jax.weights import init_model

Net = tuple[Any, Any, InputConvention]   # (flax module, variables, input convention)


def build_model(cfg: Config, stage: str, backbone: Any = None) -> Net:
    """(model, variables, input convention) of a stage's net.

    Initialised from `run.seed` plus the stage's seed offset. Real nets start from ImageNet
    weights (`model.init_weights`; the CAM net from `model.classifier_init_weights` when given);
    the small digits nets from the pretrained trunk `backbone` (params of the "backbone" subtree)
    when given."""
    spec = STAGE_TABLE[stage]
    m = cfg.model
    model = model_for(m, spec.model, cfg.data.num_classes)
    rng = jax.random.key(cfg.run.seed + spec.seed_offset)
    uses_small = (m.classifier if spec.model in ("cam", "pretrain") else m.segmentation) == "small"
    if uses_small:
        variables = model.init(rng, jnp.zeros((1, 64, 64, 3)), train=False)
        if backbone is not None:
            variables = with_backbone(variables, backbone)
        return model, variables, get_input_convention(cfg.data.input_convention or "caffe")
    weights = (m.classifier_init_weights or m.init_weights) if spec.model == "cam" else \
        m.init_weights
    if weights is not None and str(weights).endswith(".caffemodel"):
        return model, _caffe_init(model, rng, weights, m.segmentation, spec.model), CAFFE
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        variables, info = init_model(model, rng, weights=weights,
                                     input_convention=cfg.data.input_convention)
    return model, variables, info.input_convention


def _caffe_init(model: Any, rng: jax.Array, path: str, name: str, kind: str) -> Any:
    """DeepLab-v2 VGG16 variables from an official Caffe model; missing classifiers keep their init.

    E.g. the authors' init vgg16_20M_mc.caffemodel, or a DSRG snapshot."""
    if kind != "seg" or name != "deeplab_vgg16":
        raise ConfigError(f"a .caffemodel ({path}) can start the deeplab_vgg16 segmentation net "
                          f"only; this stage builds a {kind} net ({name})")
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    variables = model.init(rng, jnp.zeros((1, 65, 65, 3)), train=False)
    variables, info = load_caffe_deeplab_vgg16(variables, path)
    for note in getattr(info, "notes", ()):
        log(f"caffe weights {path}: {note}")
    return variables


def with_backbone(variables: Any, backbone: Any) -> Any:
    """variables with params["backbone"] replaced by `backbone` (same tree and shapes)."""
    params = dict(variables["params"])
    want = jax.tree.map(lambda a: (a.shape, a.dtype), params["backbone"])
    got = jax.tree.map(lambda a: (a.shape, a.dtype), backbone)
    if want != got:
        raise ValueError("pretrained backbone does not fit the model (different widths or "
                         "layers): delete the workdir's pretrain/ folder and rerun")
    params["backbone"] = jax.tree.map(jnp.asarray, backbone)
    return {**variables, "params": params}


def split_variables(variables: Any) -> tuple[Any, Any]:
    """(params, frozen collections)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def output_grid(model: Any, variables: Any, size: int) -> tuple[int, int]:
    """(h, w) of the model's output for a size x size input."""
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    shape = (out[1] if isinstance(out, tuple) else out).shape
    return int(shape[1]), int(shape[2])


def backbone_file(exp: Experiment) -> pathlib.Path:
    return exp.path("pretrain", "backbone.msgpack")


def pretrained_backbone(exp: Experiment) -> Any:
    """The pretrained trunk's params (host numpy tree), or None when pretraining is off."""
    if not exp.cfg.pretrain.enabled:
        return None
    path = backbone_file(exp)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the pretrain stage first "
                                "(--stage pretrain, or --stage all)")
    return serialization.msgpack_restore(path.read_bytes())


def _optimiser_and_state(exp: Experiment, stage: str, variables: Any):
    spec = STAGE_TABLE[stage]
    optim = spec.optim(exp.cfg)
    params, frozen = split_variables(variables)
    tx = caffe_sgd(params, optim)
    state = steps.create_state(params, tx, frozen=frozen,
                               seed=exp.cfg.run.seed + spec.seed_offset)
    return optim, tx, replicate(state, exp.mesh)


def train_stage(exp: Experiment, stage: str, *, variables: Any, make_step: Callable,
                source: Any, transform: Callable, hook: Any = None,
                on_step: Callable | None = None) -> tuple[Any, dict]:
    """Trains a stage's net from `variables` to its `max_steps`.

    Resumes from the stage's latest checkpoint; returns (final variables, the last logged metrics).

    make_step: optimiser -> jitted (state, batch) -> (state, aux) (`dsrg_jax.train.steps`).
    """
    optim, tx, state = _optimiser_and_state(exp, stage, variables)
    ckpt = Checkpoints(exp.path(stage, "checkpoints"), keep=exp.cfg.run.keep_checkpoints)
    schedule = lr_schedule(optim)
    seed = exp.cfg.run.seed

    def make_pipeline(position):
        return Pipeline(source, global_batch=optim.batch_size, transform=transform, seed=seed,
                        shuffle=True, num_epochs=None, drop_remainder=True,
                        num_workers=exp.cfg.data.num_workers, state=position)

    try:
        state, last = train_loop(
            stage=stage, state=state, step_fn=make_step(tx), mesh=exp.mesh,
            max_steps=optim.max_steps, make_pipeline=make_pipeline, checkpoints=ckpt,
            writer=exp.writer, lr_fn=lambda s: float(schedule(s)), hook=hook,
            checkpoint_every=exp.cfg.run.checkpoint_every, log_every=exp.cfg.run.log_every,
            on_step=on_step)
    finally:
        ckpt.close()
    return {"params": state["params"], **state["frozen"]}, last


def load_trained(exp: Experiment, stage: str) -> Net:
    """The final net of a finished training stage (from its last checkpoint)."""
    model, variables, convention = build_model(exp.cfg, stage)
    optim, _, like = _optimiser_and_state(exp, stage, variables)
    ckpt = Checkpoints(exp.path(stage, "checkpoints"), keep=exp.cfg.run.keep_checkpoints)
    try:
        state, meta = ckpt.restore(like)
    finally:
        ckpt.close()
    if int(meta.get("step", -1)) != optim.max_steps:
        raise CheckpointError(
            f"the final checkpoint (step {optim.max_steps}) of the {stage} stage in "
            f"{ckpt.directory} is damaged or missing (restored step {meta.get('step')}); remove "
            f"{exp.path(stage, 'done.json')} to train it again from there")
    return model, {"params": state["params"], **state["frozen"]}, convention
