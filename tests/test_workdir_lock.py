"""One run per workdir: a second process is refused while the first holds the lock, gets in after
it ends, and a lock left by a killed process is taken over."""
import os
import select
import signal
import socket
import subprocess
import sys

import pytest

from dsrg_jax.train.lock import LockHeld, WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
WAIT_S = 120  # bound on every wait for a subprocess (a loaded machine starts Python slowly)

# Takes the lock, says so, and holds it until its stdin closes.
HOLD = """
import sys
from dsrg_jax.train.lock import WorkdirLock
with WorkdirLock(sys.argv[1], enabled=True):
    print("locked", flush=True)
    sys.stdin.readline()
"""

# Tries the lock once: exit 0 if taken, 3 with the error line if refused.
TRY = """
import sys
from dsrg_jax.train.lock import LockHeld, WorkdirLock
try:
    with WorkdirLock(sys.argv[1], enabled=True):
        print("got the lock")
except LockHeld as e:
    print(e)
    sys.exit(3)
"""


@pytest.fixture
def processes():
    """Started subprocesses; all killed and reaped at the end of the test."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=WAIT_S)
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                stream.close()


def _try(workdir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRY, str(workdir)], env=ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=WAIT_S)


def _start_holder(workdir, processes) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir)], env=ENV, cwd=REPO,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    processes.append(p)
    ready, _, _ = select.select([p.stdout], [], [], WAIT_S)
    assert ready and p.stdout.readline().strip() == "locked", "the holder did not take the lock"
    return p


def test_second_process_is_refused_while_held_and_gets_in_after(tmp_path):
    with WorkdirLock(tmp_path, enabled=True):
        refused = _try(tmp_path)
    assert refused.returncode == 3, refused.stderr
    message = refused.stdout.strip()
    assert "\n" not in message
    assert f"pid {os.getpid()} on {socket.gethostname()} since " in message
    assert str(tmp_path) in message

    after = _try(tmp_path)
    assert after.returncode == 0, after.stdout + after.stderr


def test_lock_held_by_another_process_names_it(tmp_path, processes):
    holder = _start_holder(tmp_path, processes)
    with pytest.raises(LockHeld, match=f"pid {holder.pid} on "):
        with WorkdirLock(tmp_path, enabled=True):
            pass
    holder.stdin.close()  # the holder leaves its `with` and exits
    assert holder.wait(timeout=WAIT_S) == 0
    with WorkdirLock(tmp_path, enabled=True):
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path, processes, capsys):
    holder = _start_holder(tmp_path, processes)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=WAIT_S)
    assert (tmp_path / ".lock").read_text().strip()  # its details are still in the file
    with WorkdirLock(tmp_path, enabled=True) as lock:
        assert f'"pid": {os.getpid()}' in lock.path.read_text()
    out = capsys.readouterr().out
    assert f"taking over the stale lock {tmp_path / '.lock'} of pid {holder.pid}" in out


def test_lock_is_released_when_the_run_raises(tmp_path, capsys):
    with pytest.raises(ValueError):
        with WorkdirLock(tmp_path, enabled=True):
            raise ValueError("the run failed")
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly: nothing stale
    with WorkdirLock(tmp_path, enabled=True):
        pass
    assert "stale" not in capsys.readouterr().out


def test_disabled_lock_does_nothing(tmp_path):
    """Processes other than 0 of a multi-host run do not take the lock."""
    with WorkdirLock(tmp_path / "w", enabled=False):
        pass
    assert not (tmp_path / "w").exists()


def _tree(folder) -> dict:
    """Every path under `folder` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_second_real_run_on_a_workdir_exits_at_once_and_the_first_is_unaffected(tmp_path):
    """Two `python -m experiments.digits` runs on one workdir: the second is refused in one line
    naming the first and writes nothing; the first (held still meanwhile, so that it surely
    holds the lock) then finishes: exit 0, its stage done, each metrics row once."""
    import json
    import time

    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "experiments.digits", "--quick", "--stage", "pretrain",
           "--max-steps", "2", "--workdir", str(workdir)]
    env = {**ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}   # the cheapest run
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while first.poll() is None and time.monotonic() < deadline:
            text = (workdir / ".lock").read_text() if (workdir / ".lock").is_file() else ""
            if f'"pid": {first.pid}' in text:
                break
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before it could be paused"
        os.kill(first.pid, signal.SIGSTOP)     # holds the lock, does nothing
        before = _tree(workdir)
        t0 = time.monotonic()
        second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=WAIT_S)
        seconds = time.monotonic() - t0
        after = _tree(workdir)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 1, second.stdout + second.stderr
    err = second.stderr
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"pid {first.pid} on {socket.gethostname()} since " in err and str(workdir) in err
    assert "[pretrain]" not in second.stdout and seconds < WAIT_S
    assert after == before                     # the second touched nothing

    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    done = json.loads((workdir / "pretrain" / "done.json").read_text())
    assert 0 <= done["val_accuracy"] <= 1
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r.get("stage") == "pretrain"]
    assert steps == sorted(set(steps)) and steps[-1] == 2   # each step once, to the end
    assert (workdir / ".lock").read_text() == ""           # released
