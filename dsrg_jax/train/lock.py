"""One run per workdir: an OS file lock on `workdir/.lock`.

`WorkdirLock(workdir)` takes `fcntl.flock` (exclusive, non-blocking) on `workdir/.lock` and
writes the holder's pid, host name and start time into it; a second run gets `LockHeld`, naming
the holder. The OS releases a flock when its process ends, however it ends: a lock file whose
flock is free is stale (e.g. its holder was killed with SIGKILL) and is taken over, with a line
saying so. The file itself stays (emptied on release); deleting it would let two runs lock
different files of one name.

Multi-host runs: only process 0 takes the lock (enter it after `jax.distributed.initialize`,
on every process, before any other collective); process 0 then shares its outcome, so a refused
run stops on every process with process 0's one-line error instead of leaving the others waiting
for it. Network filesystems: Linux maps flock onto NFS byte-range locks, so the lock holds
across hosts there when the server supports locking.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket

import jax

from dsrg_jax.sharding import broadcast_bytes_from_process0
from dsrg_jax.train.logging import log


class LockHeld(RuntimeError):
    """Another live process holds the workdir's lock."""


class LockUnsupported(LockHeld):
    """The workdir's filesystem refuses file locks.

    A `LockHeld`: the run is refused the same way."""


def _describe(holder: dict) -> str:
    """'pid 123 on host-a since 2024-01-01T10:00:00+00:00' (or what is known of it)."""
    if not holder:
        return "a process that has not written its details yet"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"since {holder.get('since', '?')}")


def _read(fd: int) -> dict:
    """The holder's details in the lock file; {} when empty or unreadable."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        holder = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


class WorkdirLock:
    """Context manager holding `workdir/.lock` for the lifetime of a run.

    Args:
      workdir: the experiment folder (created).
      enabled: take the lock; default: only on process 0 of a multi-process run, which then
        shares its outcome with every process (entering is then a collective).

    Raises (on enter):
      LockHeld: another live process holds the lock; the message names it and the workdir.
      LockUnsupported: the workdir's filesystem has no file locks; the message names it.
    """

    def __init__(self, workdir: str | pathlib.Path, *, enabled: bool | None = None):
        self.workdir = pathlib.Path(workdir).absolute()
        self.path = self.workdir / ".lock"
        self.shared = enabled is None and jax.process_count() > 1
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._fd: int | None = None

    def __enter__(self) -> WorkdirLock:
        if not self.shared:
            if self.enabled:
                self._take()
            return self
        error: BaseException | None = None
        if self.enabled:
            try:
                self._take()
            except Exception as e:  # noqa: BLE001  (any failure is shared, then raised)
                error = e
        shared = _share_outcome(error)
        if shared is not None:
            raise error if error is not None else shared
        return self

    def _take(self) -> None:
        """Takes the flock and writes this process's details (raises as `__enter__`)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this WorkdirLock")
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise LockHeld(
                f"{self.workdir} is in use by {_describe(holder)} (lock {self.path}); wait for "
                f"that run to end or stop it, or use another workdir") from None
        except OSError as e:
            os.close(fd)
            raise LockUnsupported(
                f"cannot lock {self.path} ({e.strerror or errno.errorcode.get(e.errno, e)}): the "
                f"filesystem of the workdir {self.workdir} does not support file locks; use a "
                f"workdir on a local or lock-capable disk") from None
        stale = _read(fd)
        if stale:
            log(f"taking over the stale lock {self.path} of {_describe(stale)} (that process is "
                f"gone)")
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty file: released cleanly, not stale
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_ERRORS = {"LockHeld": LockHeld, "LockUnsupported": LockUnsupported}


def _share_outcome(error: BaseException | None) -> BaseException | None:
    """Process 0's lock outcome on every process: None (taken) or the error to raise.

    The error has the same class and message as process 0's (an `OSError` keeps its errno and file
    name)."""
    outcome = {}
    if error is not None:
        outcome = {"type": type(error).__name__, "message": str(error)}
        if isinstance(error, OSError):
            outcome.update(errno=error.errno, strerror=error.strerror,
                           filename=None if error.filename is None else str(error.filename))
    outcome = json.loads(broadcast_bytes_from_process0(json.dumps(outcome).encode()))
    if not outcome:
        return None
    if "errno" in outcome:
        return OSError(outcome["errno"], outcome["strerror"], outcome["filename"])
    return _ERRORS.get(outcome["type"], RuntimeError)(outcome["message"])
