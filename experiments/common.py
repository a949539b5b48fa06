"""Shared CLI plumbing for the experiments: flags -> config overrides -> `stages.run`."""
from __future__ import annotations

import argparse
import json
import sys
import time

STAGE_CHOICES = ("cues", "dsrg", "pseudo", "retrain", "eval", "all")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags every experiment has."""
    p.add_argument("--stage", default="all", choices=STAGE_CHOICES,
                   help="run one stage (its inputs must exist in the workdir) or all of them in "
                        "order; finished stages are skipped, interrupted ones resume")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of initialisation, data order, augmentation and dropout")
    p.add_argument("--max-steps", type=int, default=None,
                   help="training steps of each training stage (cues, dsrg, retrain)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch of each training stage, whatever the device count")
    p.add_argument("--num-devices", type=int, default=None,
                   help="use only the first N devices (default: all devices of all hosts)")


def apply_run_flags(cfg, args):
    """The config with the common flags applied."""
    from dsrg_jax.train.config import override

    changes = {}
    if args.seed is not None:
        changes["run.seed"] = args.seed
    for stage in ("cues", "dsrg", "retrain"):
        if args.max_steps is not None:
            changes[f"{stage}.optim.max_steps"] = args.max_steps
        if args.batch_size is not None:
            changes[f"{stage}.optim.batch_size"] = args.batch_size
    return override(cfg, **changes) if changes else cfg


def stages_of(args):
    from dsrg_jax.train.stages import STAGES

    return STAGES if args.stage == "all" else (args.stage,)


def run_and_report(cfg, workdir, stages, num_devices=None) -> dict:
    """Prints the resolved config, runs the stages; signals, NaN and missing data -> one line
    and an exit status (128 + signal after a save; 1 for errors)."""
    from dsrg_jax.data.records import DatasetError
    from dsrg_jax.train.logging import log
    from dsrg_jax.train.loop import Preempted, TrainingDiverged
    from dsrg_jax.train.stages import run

    log("config:\n" + cfg.to_json())
    t0 = time.perf_counter()
    try:
        out = run(cfg, workdir, stages=stages, num_devices=num_devices)
    except Preempted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except (TrainingDiverged, DatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    log(f"total wall time {time.perf_counter() - t0:.1f} s")
    if "miou" in out:
        log("results: " + json.dumps({"miou": out["miou"]}))
    return out
