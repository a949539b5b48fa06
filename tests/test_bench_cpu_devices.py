"""`benchmarks/cpu_devices.py` runs (one tiny block) and prints its table: a benchmark that no
test runs stops working unseen."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_cpu_devices_benchmark_prints_a_row_per_part():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(REPO)}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run([sys.executable, "benchmarks/cpu_devices.py", "--parts",
                           "predict,retrain", "--blocks", "1", "--steps", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 cpu devices" in proc.stdout
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines()
            if line.startswith("| predict") or line.startswith("| retrain")]
    assert [r[0].strip() for r in rows] == ["predict", "retrain"], proc.stdout
    for r in rows:
        one, two, ratio = float(r[2]), float(r[3]), float(r[4].strip().rstrip("x"))
        assert one > 0 and two > 0 and abs(ratio - one / two) < 0.02 * ratio + 0.01
