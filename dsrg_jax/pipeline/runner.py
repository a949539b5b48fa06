"""Runs the stages of a config over a workdir, in order; finished stages are skipped.

With several processes every decision is process 0's, shared: the workdir lock, which stages
are done, and a stop on SIGTERM / Ctrl-C to any process (all stop with `Preempted`)."""
from __future__ import annotations

import time

import jax

from dsrg_jax.config import Config, ConfigError
from dsrg_jax.pipeline.cues import run_cues
from dsrg_jax.pipeline.dsrg import run_dsrg
from dsrg_jax.pipeline.evaluate import run_eval
from dsrg_jax.pipeline.predict import predict_split
from dsrg_jax.pipeline.pretrain import run_pretrain
from dsrg_jax.pipeline.pseudo import run_pseudo
from dsrg_jax.pipeline.retrain import run_retrain
from dsrg_jax.pipeline.splits import inference_batch
from dsrg_jax.pipeline.stages import STAGE_TABLE, STAGES, stage_runs, stage_trains
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.train.lock import WorkdirLock
from dsrg_jax.train.logging import log
from dsrg_jax.train.loop import Preempted, Signals, agreed_stop

RUNNERS = {"pretrain": run_pretrain, "cues": run_cues, "dsrg": run_dsrg, "pseudo": run_pseudo,
           "retrain": run_retrain, "eval": run_eval}


def run_stage(exp: Experiment, stage: str) -> dict:
    """Runs one stage unless it is done, and marks it done with its info and wall time.

    A done stage's info is returned as it was written. Every process calls it: done or not is
    process 0's reading; a signal some process got before or during the stage stops all of them with
    `Preempted` naming the stage (it is not marked done)."""
    if (info := exp.done(stage)) is not None:
        log(f"[{stage}] done already; skipping")
        return info
    t0 = time.perf_counter()
    info = _named(stage, RUNNERS[stage], exp)
    seconds = round(time.perf_counter() - t0, 1)
    if "seconds" not in info:      # (results.json has its own table of every stage's time)
        info = {**info, "seconds": seconds}
    exp.mark_done(stage, info)
    log(f"[{stage}] finished in {seconds:.1f} s")
    return info


def _named(stage: str, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` unless a process got a signal before it.

    A `Preempted` from an inference pass, which does not know its stage, is raised again naming
    `stage`."""
    if signum := agreed_stop():
        raise Preempted(signum, stage)
    try:
        return fn(*args, **kwargs)
    except Preempted as e:
        if e.stage is not None:
            raise
        raise Preempted(e.signum, stage) from None


def check_training_batches(cfg: Config, stages, num_devices: int, process_count: int) -> None:
    """Raises ConfigError when a training stage to run has a global batch the hosts cannot share.

    Each host loads global batch / process count examples."""
    for stage in stages:
        if not stage_trains(cfg, stage):
            continue
        b = STAGE_TABLE[stage].optim(cfg).batch_size
        if b <= 0 or b % process_count:
            raise ConfigError(
                f"the {stage} stage's global batch ({b}) must be a positive multiple of the "
                f"process (host) count ({process_count}; {num_devices} devices): pass "
                f"--batch-size N with N a multiple of {process_count}")


def run(cfg: Config, workdir, *, stages=STAGES, num_devices: int | None = None,
        predict: str | None = None) -> dict:
    """Runs the given stages in order (each skipped when done); returns the run's results.

    The results: results.json's dict (or the last stage's info). With `predict` (a split name):
    then `predict_split` of that split with the final net, its info under the key "predict". One
    run per workdir: a second one is refused while this one holds the workdir's lock (`LockHeld`,
    on every process). SIGTERM / Ctrl-C to any process: `Preempted` on all of them."""
    with WorkdirLock(workdir), Signals():
        return _run_locked(cfg, workdir, stages=stages, num_devices=num_devices,
                           predict=predict)


def _run_locked(cfg: Config, workdir, *, stages, num_devices, predict) -> dict:
    exp = Experiment.create(cfg, workdir, num_devices=num_devices)
    log(f"devices: {exp.mesh.size} ({jax.devices()[0].platform}), processes: "
        f"{jax.process_count()}; workdir {exp.workdir}")
    check_training_batches(cfg, stages, exp.mesh.size, jax.process_count())
    for name, b in (("pseudo", cfg.pseudo.batch_size), ("eval", cfg.eval.batch_size)):
        if inference_batch(b, exp.mesh.size) != b:
            log(f"{name} batch {b} rounded up to {inference_batch(b, exp.mesh.size)} (a multiple "
                f"of the {exp.mesh.size} devices; the extra rows are padding)")
    out: dict = {}
    try:
        for stage in stages:
            if stage_runs(cfg, stage):
                out = run_stage(exp, stage)
        if predict is not None:
            out = {**out, "predict": _named("predict", predict_split, exp, split_name=predict)}
    finally:
        exp.writer.close()
    return out
