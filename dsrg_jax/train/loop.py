"""The resumable training loop: checkpoints, SIGTERM / Ctrl-C, NaN guard, logging, progress.

`train_loop` runs one stage from its latest checkpoint (or step 0) to `max_steps`:
  - resume: parameters, optimiser state, step, RNG and the data position (`Pipeline.state()`)
    come back from the last checkpoint, plus whatever the stage's `hook` keeps;
  - SIGTERM (preemption) or Ctrl-C to any process: the current step finishes, every process
    saves the checkpoint together, and `Preempted` is raised (the CLIs exit with 128 + signal
    number); the inference passes (`pipeline.splits.iterate`) stop the same way after their
    current batch, without a checkpoint (a rerun redoes that stage);
  - a non-finite loss raises `TrainingDiverged` without saving: the last good checkpoint stays.
"""
from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

from dsrg_jax.sharding import gather_over_processes, global_batch
from dsrg_jax.train.checkpoint import Checkpoints
from dsrg_jax.train.logging import MetricsWriter, log, progress


class Preempted(Exception):
    """The run was stopped by a signal on some process; rerun to resume.

    With `step` and `directory`: a training stage saved its checkpoint there. Without: an
    inference pass (or a stage not yet started) stopped with nothing saved; `stage` None when
    the pass does not know its stage (the runner then raises it again with the stage's name).
    """

    def __init__(self, signum: int, stage: str | None, step: int | None = None,
                 directory: str | None = None):
        self.signum, self.stage, self.step, self.directory = signum, stage, step, directory
        name = signal.Signals(signum).name
        if step is not None:
            msg = (f"{name}: saved stage {stage!r} at step {step} in {directory}; rerun the same "
                   f"command to resume")
        else:
            what = "a pass over a split" if stage is None else f"stage {stage!r}"
            msg = (f"{name}: stopped {what} before it finished; rerun the same command to go on "
                   f"(finished stages and saved checkpoints are kept)")
        super().__init__(msg)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


class Hook(Protocol):
    """Per-stage bookkeeping carried in checkpoints (e.g. supervision quality per epoch)."""

    def update(self, step: int, metrics: dict[str, np.ndarray]) -> dict[str, float]: ...

    def state(self) -> dict: ...

    def restore(self, state: dict) -> None: ...


class Signals:
    """Turns SIGTERM / SIGINT into a flag while installed (a second Ctrl-C interrupts at once).

    Nested uses share one flag (the outermost installs the handlers and restores the old ones):
    the runner holds one over a whole run, the training loop and `iterate` each their own, so a
    signal between two loops is seen by the next one.
    """

    _depth = 0
    _received: int | None = None
    _old: dict = {}

    @property
    def received(self) -> int | None:
        """The signal this process got while installed (None: none)."""
        return Signals._received

    @staticmethod
    def _handle(signum, frame):
        if Signals._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        Signals._received = signum
        log(f"received {signal.Signals(signum).name}: finishing this step or batch, then "
            f"stopping every process")

    def __enter__(self) -> Signals:
        if Signals._depth == 0:
            Signals._received, Signals._old = None, {}
            for s in (signal.SIGTERM, signal.SIGINT):
                try:
                    Signals._old[s] = signal.signal(s, Signals._handle)
                except ValueError:  # not the main thread: no handlers
                    pass
        Signals._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        Signals._depth -= 1
        if Signals._depth == 0:
            for s, h in Signals._old.items():
                signal.signal(s, h)
            Signals._old, Signals._received = {}, None


def agreed_stop() -> int:
    """The signal number some process received while `Signals` is installed, same on every process.

    0: none, or not installed. A collective with several processes: every process calls it at the
    same point of the same loop."""
    got = np.asarray([Signals._received or 0], np.int32)
    return int(gather_over_processes(got).max()) if jax.process_count() > 1 else int(got[0])


def train_loop(
    *,
    stage: str,
    state: Any,
    step_fn: Callable,
    make_pipeline: Callable[[dict | None], Any],
    mesh,
    max_steps: int,
    checkpoints: Checkpoints,
    writer: MetricsWriter,
    lr_fn: Callable[[int], float] | None = None,
    hook: Hook | None = None,
    checkpoint_every: int = 500,
    log_every: int = 20,
    on_step: Callable[[int, dict, dict, Any], None] | None = None,
) -> tuple[Any, dict]:
    """Trains one stage to `max_steps`, resuming from the latest checkpoint.

    Args:
      stage: name used in logs, metrics and messages.
      state: a fresh (replicated) state; replaced by the checkpoint's when one exists.
      step_fn: jitted (state, batch) -> (state, aux) with aux["metrics"]["loss"].
      make_pipeline: data-position dict (or None) -> a `Pipeline` positioned there.
      mesh: the device mesh (batches are sharded over it).
      max_steps: total steps of the stage.
      checkpoints: this stage's checkpoint manager.
      writer: metrics writer.
      lr_fn: step -> learning rate, logged.
      hook: per-stage bookkeeping, saved in the checkpoint's metadata.
      checkpoint_every, log_every: in steps.
      on_step: optional (step, batch, aux, state) callback (e.g. TensorBoard images), after the
        step.

    Returns:
      (final state, the last logged metrics).
    """
    start = 0
    meta: dict = {}
    if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore(state)
        start = int(meta["step"])
        if hook is not None and "hook" in meta:
            hook.restore(meta["hook"])
        log(f"[{stage}] resumed from checkpoint at step {start} ({checkpoints.directory})")
    if writer is not None:   # rows logged after the restored step (or before any checkpoint)
        writer.resume(stage, start)
    if start >= max_steps:
        return state, meta.get("last", {})
    pipe = make_pipeline(meta.get("pipeline"))

    def save(step: int) -> None:
        checkpoints.save(step, state, {"step": step, "pipeline": pipe.state(),
                                       "hook": hook.state() if hook else {}, "last": last})

    last: dict = {}
    t0, n0 = time.perf_counter(), start
    bar = progress(max_steps, start, stage)
    try:
        with Signals():
            for step in range(start, max_steps):
                batch_np = next(pipe)
                batch = global_batch(batch_np, mesh)
                new_state, aux = step_fn(state, batch)
                metrics = jax.device_get(aux["metrics"])
                loss = float(metrics["loss"])
                if not math.isfinite(loss):
                    kept = checkpoints.latest_step()
                    raise TrainingDiverged(
                        f"[{stage}] loss is {loss} at step {step + 1}: stopped. The last good "
                        f"checkpoint ({'none' if kept is None else f'step {kept}'}) is kept in "
                        f"{checkpoints.directory}; lower the learning rate or check the inputs")
                state = new_state
                scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
                if hook is not None:
                    scalars.update(hook.update(step + 1, metrics))
                if lr_fn is not None:
                    scalars["lr"] = float(lr_fn(step))
                last = scalars
                if on_step is not None:
                    on_step(step + 1, batch_np, aux, state)
                bar.update(1)
                done = step + 1
                if done % log_every == 0 or done == max_steps:
                    rate = (done - n0) / max(time.perf_counter() - t0, 1e-9)
                    writer.scalars(stage, done, {**scalars, "steps_per_s": rate})
                    bar.set_postfix(loss=f"{loss:.4f}")
                # A signal to any process stops all of them after the same step.
                stop = agreed_stop()
                if done % checkpoint_every == 0 or done == max_steps or stop:
                    save(done)
                if stop:
                    raise Preempted(stop, stage, done, str(checkpoints.directory))
    finally:
        bar.close()
        pipe.close()
    return state, last
