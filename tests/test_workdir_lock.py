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
