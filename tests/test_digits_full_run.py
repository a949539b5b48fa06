"""The full main job (`python -m experiments.digits`, 6-14 minutes on 2 CPU cores) against the
numbers docs/results.md records. Marked slow, so CI (which runs `--quick` instead) skips it; run it
with `python -m pytest tests/test_digits_full_run.py --run-slow` after a change that could break
learning.

The documented run used the default 2 CPU devices; so does this test. Runs are deterministic on
one machine; across machines and library versions float rounding moves the numbers a little,
hence the tolerances (TOLERANCE points of mIoU, and the learning claims themselves). Measured on
two CPUs (docs/results.md, "The main job"): the documented run below and /tmp/main4 on a 2.5x
faster one (CAM 38.66, DSRG 31.65, retrain 25.55; supervision 77.7 / 72.9 / 60.2 -> 76.7 / 78.1 /
63.1) differ by at most 1.1 points. (The previous recipe's cue stage moved them by 22 points
between the same two CPUs.)"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# docs/results.md, "The main job": val mIoU (%) of each stage and the supervision quality (%).
DOCUMENTED = {   # docs/results.md, the current recipe's run (/tmp/main3, 2 CPU devices)
    "miou": {"cues": 39.37, "dsrg": 32.11, "retrain": 26.00},
    "supervision_first": (78.6, 73.6, 61.3),   # (precision, recall, iou) at epoch 0
    "supervision_last": (77.5, 78.6, 64.0),    # at the last epoch
}
TOLERANCE = 1.5


@pytest.mark.slow
def test_full_digits_run_reproduces_the_documented_numbers(tmp_path):
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "device_count" not in f)   # the default 2, as documented
    env.pop("JAX_NUM_CPU_DEVICES", None)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "experiments.digits", "--workdir",
                           str(tmp_path / "digits")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "digits" / "results.json").read_text())
    for stage, want in DOCUMENTED["miou"].items():
        assert 100 * res["miou"][stage] == pytest.approx(want, abs=TOLERANCE), stage
    sup = res["supervision"]
    for got, want in ((sup[0], DOCUMENTED["supervision_first"]),
                      (sup[-1], DOCUMENTED["supervision_last"])):
        for key, value in zip(("precision", "recall", "iou"), want):
            assert 100 * got[key] == pytest.approx(value, abs=TOLERANCE), key
    # The claims the page makes, whatever the rounding: growth raises the supervision's recall
    # at about its precision, the dataset card's bounds hold, every stage is far above the
    # all-background score (~6.9).
    assert sup[-1]["recall"] > sup[0]["recall"] + 0.03
    assert sup[-1]["precision"] > sup[0]["precision"] - 0.03
    assert min(res["miou"].values()) > 0.2
    card = res["dataset"]
    assert 0.20 <= card["fg_fraction"] <= 0.35 and card["share_at_least_2_cells"] >= 0.9
    assert card["cue_fg_precision"] >= 0.5 and card["cue_fg_recall"] >= 0.3
    assert "summary of" in proc.stdout and "supervision P / R / IoU" in proc.stdout
