"""Kill a run at random moments, rerun it, and check that it ends with the uninterrupted numbers.

    python -m experiments.kill_resume [--trials 5] [--workdir runs/kill_resume] [--seed 0]

A reference `experiments.digits --quick` run first; then each trial starts a fresh quick run,
sends SIGKILL (no chance to save) at a uniformly random moment within the reference's wall time,
possibly several times, and reruns the same command until it finishes. The trial passes when its
results.json holds the reference's mIoU (to 1e-4, the 1-vs-8-device tolerance) and metrics.jsonl
logs each step once. Writes WORKDIR/kill_resume.json with every kill moment and outcome.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cmd(workdir: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "experiments.digits", "--quick", "--workdir", str(workdir)]


def _run(workdir: pathlib.Path, kill_after: float | None) -> tuple[int, float]:
    """(exit status, seconds) of one run, SIGKILLed after `kill_after` seconds if given."""
    t0 = time.time()
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, time.time() - t0


def _steps_logged_once(workdir: pathlib.Path) -> bool:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["stage"], r["step"]) for r in rows if "step" in r]
    return len(keys) == len(set(keys))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.kill_resume", description=__doc__)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--kills", type=int, default=2, help="kills per trial (at most)")
    p.add_argument("--workdir", default="runs/kill_resume")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = random.Random(a.seed)
    root = pathlib.Path(a.workdir)
    shutil.rmtree(root, ignore_errors=True)
    code, ref_seconds = _run(root / "reference", None)
    if code != 0:
        sys.exit(f"error: the reference run failed (exit {code}); see {root / 'reference'}")
    reference = json.loads((root / "reference" / "results.json").read_text())["miou"]
    trials = []
    for t in range(a.trials):
        workdir = root / f"trial_{t}"
        kills = []
        for _ in range(a.kills):
            moment = rng.uniform(5.0, ref_seconds)
            code, _ = _run(workdir, moment)
            kills.append({"after_s": round(moment, 1), "finished_before": code == 0})
            if code == 0:
                break
        code, _ = _run(workdir, None)
        miou = json.loads((workdir / "results.json").read_text())["miou"] if code == 0 else {}
        ok = (code == 0 and all(abs(miou[k] - reference[k]) <= 1e-4 for k in reference)
              and _steps_logged_once(workdir))
        trials.append({"kills": kills, "exit": code, "miou": miou, "ok": ok})
        print(f"trial {t}: killed at {[k['after_s'] for k in kills]} s -> "
              f"{'same numbers' if ok else 'DIFFERENT'} {miou}", flush=True)
    out = {"reference": reference, "reference_seconds": round(ref_seconds, 1),
           "trials": trials, "passed": sum(t["ok"] for t in trials)}
    (root / "kill_resume.json").write_text(json.dumps(out, indent=2))
    print(f"{out['passed']} of {len(trials)} trials ended with the reference numbers")
    return out


if __name__ == "__main__":
    main()
