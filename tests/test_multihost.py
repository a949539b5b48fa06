"""Several JAX processes decide together: a held workdir lock, a done stage, a SIGTERM to one of
them, a config or workdir that differs between them; each case ends every process with the
same outcome instead of leaving one waiting for the others.

Each test starts 2 processes x 2 CPU devices on 127.0.0.1 (gloo collectives; a free port chosen
at run time; every process in its own session, killed at the end whatever happens).
"""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from dsrg_jax.train import lock as lock_module
from dsrg_jax.train.lock import LockHeld, LockUnsupported, WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 150  # bound on every wait (a loaded machine starts JAX slowly)

# argv: coordinator, process id, a folder, then the script's own arguments.
PRELUDE = r"""
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
PID, DIR = jax.process_index(), sys.argv[3]
from experiments.configs.digits import get_config
"""

RUN_CUES = PRELUDE + r"""
from experiments.common import run_and_report
run_and_report(get_config(quick=True), DIR, ("cues",))
"""

DONE = PRELUDE + r"""
import json, pathlib
from dsrg_jax.pipeline.runner import run_stage
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import make_mesh
# Each process its own folder: like a host with a stale view of the shared workdir.
exp = Experiment(get_config(quick=True), pathlib.Path(DIR) / str(PID), make_mesh(), None)
print("DONE", json.dumps([exp.done("cues"), exp.done("pseudo")]))
print("RUN", json.dumps(run_stage(exp, "cues")))
"""

ITERATE = PRELUDE + r"""
import pathlib, time
from dsrg_jax.data.digits import DigitsSource
from dsrg_jax.pipeline.sources import inference_transform
from dsrg_jax.pipeline.splits import iterate
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import make_mesh
from dsrg_jax.train.loop import Preempted
exp = Experiment(get_config(quick=True), None, make_mesh(), None)
n = 0
try:
    for hb, gb in iterate(exp, DigitsSource("val", num_images=120, size=56),
                          inference_transform(56, with_mask=False), 4):
        n += 1
        if n == 2:
            (pathlib.Path(DIR) / f"batch2-{PID}").touch()
        time.sleep(0.5)
except Preempted as e:
    print("STOPPED", n, e, flush=True)
    sys.exit(128 + e.signum)
print("FINISHED", n)
"""

CREATE = PRELUDE + r"""
from dsrg_jax.config import ConfigError, override
from dsrg_jax.pipeline.workdir import Experiment
cfg, workdir = get_config(quick=True), DIR
if sys.argv[4] == "config" and PID == 1:
    cfg = override(cfg, **{"run.seed": cfg.run.seed + 7})
if sys.argv[4] == "workdir":
    workdir = f"{DIR}/{PID}"
try:
    Experiment.create(cfg, workdir)
except ConfigError as e:
    print("ERROR", e)
    sys.exit(3)
print("CREATED")
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hosts():
    """start(script, folder, *args) -> 2 Popen objects forming one 4-device run; every process
    started is killed (its whole session) at the end of the test."""
    started: list[subprocess.Popen] = []
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

    def start(script, folder, *args):
        port = _free_port()
        procs = [subprocess.Popen(
            [sys.executable, "-c", script, f"127.0.0.1:{port}", str(i), str(folder), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True) for i in range(2)]
        started.extend(procs)
        return procs

    yield start
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGKILL)     # its session: the process and any child left
        except ProcessLookupError:
            pass
        p.communicate(timeout=WAIT_S)


def _finish(procs) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each process; fails the test if one does not end in
    time (it hangs)."""
    out, deadline = [], time.monotonic() + WAIT_S
    for i, p in enumerate(procs):
        try:
            o, e = p.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {i} did not end within {WAIT_S} s (it hangs)")
        out.append((p.returncode, o, e))
    return out


def test_a_held_lock_stops_every_process_with_the_same_line(tmp_path, hosts):
    workdir = tmp_path / "w"
    with WorkdirLock(workdir, enabled=True):
        results = _finish(hosts(RUN_CUES, workdir))
    lines = []
    for rc, out, err in results:
        assert rc == 1, out[-2000:] + err[-3000:]
        lines.append(err.strip().splitlines()[-1])
    assert lines[0] == lines[1], lines
    assert lines[0].startswith(f"error: {workdir} is in use by pid {os.getpid()} on ")


def test_a_filesystem_without_locks_is_refused_naming_the_workdir(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    with pytest.raises(LockUnsupported, match="does not support file locks") as e:
        with WorkdirLock(tmp_path, enabled=True):
            pass
    assert isinstance(e.value, LockHeld)          # refused like a held lock (one-line CLI error)
    assert f"the workdir {tmp_path} " in str(e.value) and "\n" not in str(e.value)


def test_whether_a_stage_is_done_is_process_0s_reading(tmp_path, hosts):
    """Process 0 sees cues done, process 1 sees pseudo done (a stale view): both take process
    0's view, and both skip the cue stage with process 0's info."""
    for pid, stage in ((0, "cues"), (1, "pseudo")):
        (tmp_path / str(pid) / stage).mkdir(parents=True)
        (tmp_path / str(pid) / stage / "done.json").write_text(json.dumps({"by": pid}))
    for rc, out, err in _finish(hosts(DONE, tmp_path)):
        assert rc == 0, out[-2000:] + err[-3000:]
        assert 'DONE [{"by": 0}, null]' in out
        assert 'RUN {"by": 0}' in out


def test_sigterm_to_one_process_stops_both_inference_passes(tmp_path, hosts):
    procs = hosts(ITERATE, tmp_path)
    deadline = time.monotonic() + WAIT_S
    while not (tmp_path / "batch2-1").exists():
        assert time.monotonic() < deadline and procs[1].poll() is None, "no second batch"
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)       # the process that does not write the logs
    stopped = []
    for rc, out, err in _finish(procs):
        assert rc == 128 + signal.SIGTERM, out[-2000:] + err[-3000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("STOPPED"))
        assert "SIGTERM: stopped a pass over a split before it finished" in line
        stopped.append(int(line.split()[1]))
    assert stopped[0] == stopped[1] < 30, stopped   # the same batch, well before the end


def test_processes_with_different_configs_are_refused_naming_the_field(tmp_path, hosts):
    from experiments.configs.digits import get_config

    seed = get_config(quick=True).run.seed
    for rc, out, err in _finish(hosts(CREATE, tmp_path, "config")):
        assert rc == 3, out[-2000:] + err[-3000:]
        assert (f"ERROR process 1's config differs from process 0's in run.seed: {seed} -> "
                f"{seed + 7} ") in out


def test_a_workdir_the_processes_do_not_share_is_refused(tmp_path, hosts):
    for rc, out, err in _finish(hosts(CREATE, tmp_path, "workdir")):
        assert rc == 3, out[-2000:] + err[-3000:]
        assert (f"ERROR process 1 (workdir {tmp_path / '1'}) does not see process 0's workdir "
                f"{tmp_path / '0'}: the workdir must be a folder every host shares") in out
