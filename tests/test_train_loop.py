"""The training loop resumes exactly, saves on SIGTERM, and stops on NaN keeping the last good
checkpoint; a SIGTERM stops the inference passes and the stages between two loops too."""
import json
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrg_jax.config import OptimConfig
from dsrg_jax.data.digits import DigitsSource
from dsrg_jax.data.pipeline import Pipeline
from dsrg_jax.models.small import SmallCAM
from dsrg_jax.pipeline import runner
from dsrg_jax.pipeline.sources import cam_transform, inference_transform
from dsrg_jax.pipeline.splits import iterate
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import make_mesh, replicate
from dsrg_jax.train import steps as S
from dsrg_jax.train.checkpoint import Checkpoints
from dsrg_jax.train.logging import MetricsWriter
from dsrg_jax.train.loop import Preempted, Signals, TrainingDiverged, train_loop
from dsrg_jax.train.optim import caffe_sgd
from dsrg_jax.weights import get_input_convention

MODEL = SmallCAM(10, widths=(4, 8), head_width=8, convs_per_block=1)
SOURCE = DigitsSource("train", num_images=24, size=48)


def _run(workdir, max_steps, *, on_step=None, step_wrapper=None):
    mesh = make_mesh()
    v = MODEL.init(jax.random.key(0), jnp.zeros((1, 48, 48, 3)))
    cfg = OptimConfig(base_lr=1e-2, batch_size=8, max_steps=max_steps)
    tx = caffe_sgd(v["params"], cfg)
    state = replicate(S.create_state(v["params"], tx), mesh)
    step = S.make_cam_train_step(MODEL, tx, get_input_convention("torchvision"), mesh)
    if step_wrapper is not None:
        step = step_wrapper(step)
    ckpt = Checkpoints(workdir / "ckpt")
    writer = MetricsWriter(workdir, tensorboard=False)
    try:
        state, _ = train_loop(
            stage="t", state=state, step_fn=step, mesh=mesh, max_steps=max_steps,
            make_pipeline=lambda st: Pipeline(SOURCE, global_batch=8, seed=1, state=st,
                                              transform=cam_transform(48)),
            checkpoints=ckpt, writer=writer, checkpoint_every=2, log_every=1, on_step=on_step)
    finally:
        ckpt.close()
        writer.close()
    return jax.device_get(state["params"])


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def test_resume_continues_exactly(tmp_path):
    straight = _run(tmp_path / "a", 6)
    _run(tmp_path / "b", 3)                 # stops at 3 (a checkpoint), like an interrupted run
    resumed = _run(tmp_path / "b", 6)       # same workdir: parameters, optimiser, data position
    _assert_same(straight, resumed)


def test_resume_logs_each_step_once(tmp_path):
    """Steps logged after the last checkpoint of a stopped run are logged again by the rerun:
    metrics.jsonl keeps each step once."""
    _run(tmp_path, 3)                       # checkpoints at 2 (every 2) and 3 (the end)
    log = tmp_path / "metrics.jsonl"
    rows = log.read_text().splitlines()
    # A kill after step 3's log line but before its checkpoint: drop that checkpoint.
    shutil.rmtree(tmp_path / "ckpt" / "3")
    log.write_text("\n".join(rows) + "\n" + '{"stage": "t", "st')   # and a cut last line
    _run(tmp_path, 5)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    # Killed before the first checkpoint: the rerun starts at 0 and logs steps 1.. once.
    shutil.rmtree(tmp_path / "ckpt")
    _run(tmp_path, 1)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1]


def test_sigterm_saves_and_resume_matches(tmp_path, capsys):
    straight = _run(tmp_path / "a", 6)

    def kill_at_3(step, batch, aux, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted, match="SIGTERM: saved stage 't' at step 3"):
        _run(tmp_path / "b", 6, on_step=kill_at_3)
    assert Checkpoints(tmp_path / "b" / "ckpt").latest_step() == 3
    resumed = _run(tmp_path / "b", 6)
    assert "resumed from checkpoint at step 3" in capsys.readouterr().out
    _assert_same(straight, resumed)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def poison(step):
        def wrapped(state, batch):
            bad = int(jax.device_get(state["step"])) >= 4   # read before the step donates it
            new, aux = step(state, batch)
            aux["metrics"]["loss"] = jnp.where(bad, jnp.nan, aux["metrics"]["loss"])
            return new, aux
        return wrapped

    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5.*last good checkpoint "
                                               r"\(step 4\) is kept"):
        _run(tmp_path, 8, step_wrapper=poison)
    assert Checkpoints(tmp_path / "ckpt").latest_step() == 4


def _pass_with_sigterm_at(exp, batch):
    """Runs an inference pass over 40 images (batch 8), SIGTERM to itself at batch `batch`;
    returns the number of batches it saw (raises what the pass raises)."""
    seen = 0
    for _ in iterate(exp, DigitsSource("val", num_images=40, size=48),
                     inference_transform(48, with_mask=False), 8):
        seen += 1
        if seen == batch:
            os.kill(os.getpid(), signal.SIGTERM)
    return seen


def _experiment(tmp_path):
    from experiments.configs.digits import get_config

    return Experiment(get_config(quick=True), tmp_path, make_mesh(), None)


def test_sigterm_during_an_inference_pass_stops_it_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="SIGTERM: stopped a pass over a split before it "
                                        "finished; rerun the same command") as e:
        _pass_with_sigterm_at(_experiment(tmp_path), 2)
    assert e.value.signum == signal.SIGTERM and e.value.step is None
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_in_a_stage_or_before_it_stops_it_unmarked(tmp_path, monkeypatch):
    """Inside a stage's pass, or between two stages (the run's handler keeps the signal): the
    stage stops with `Preempted` naming it and is not marked done (a rerun runs it)."""
    exp = _experiment(tmp_path)
    monkeypatch.setitem(runner.RUNNERS, "cues", lambda exp: {"seen": _pass_with_sigterm_at(exp, 3)})
    with pytest.raises(Preempted, match="SIGTERM: stopped stage 'cues' before it finished"):
        runner.run_stage(exp, "cues")
    assert exp.done("cues") is None
    started = []
    monkeypatch.setitem(runner.RUNNERS, "cues", lambda exp: started.append(1) or {})
    with Signals():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(Preempted, match="SIGTERM: stopped stage 'cues' before it finished"):
            runner.run_stage(exp, "cues")
    assert started == [] and exp.done("cues") is None
    runner.run_stage(exp, "cues")          # no signal since: the rerun runs and marks it
    assert started == [1] and exp.done("cues") is not None
