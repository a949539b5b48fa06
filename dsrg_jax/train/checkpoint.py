"""Orbax checkpoints of a training stage: state pytree + JSON metadata, verified on restore.

One `CheckpointManager` per stage folder (`workdir/<stage>/checkpoints`), synchronous saves (a
SIGTERM handler can save and exit without waiting on a background thread). Each step holds three
orbax items: `state` (the arrays), `meta` (JSON: step, data position, metrics) and `integrity`
(JSON: shape, dtype and SHA-256 of the bytes of every array, keyed by its tree path, and the
SHA-256 of the metadata).

Nothing is restored silently:
  - a restore re-hashes every array and checks it is finite and of the saved shape and dtype;
  - a damaged step (an orbax / TensorStore error or a mismatch) is reported in one line and the
    newest intact earlier step is used instead; `CheckpointError` when none is intact;
  - a failed save (disk full, permission) raises `CheckpointError` and leaves the earlier steps
    as they were; its partial files are removed.

Multi-process runs: every process hashes the same bytes (replicated arrays from a local shard,
sharded ones gathered), the processes agree on whether a step is intact, and only orbax writes
files (its JSON items are written by the primary process).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import pathlib
import shutil
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dsrg_jax.train.logging import log

_FORMAT = 1  # version of the `integrity` item
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's suffix of a step folder being written


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or no intact one could be read; the message says why."""


class _Damaged(Exception):
    """A step that cannot be trusted; the message is one line saying why."""


def _one_line(e: BaseException, limit: int = 200) -> str:
    """'Type: first line of the message', shortened to `limit` characters."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _cause(e: BaseException) -> str:
    """A failed write in a few words: 'disk full (...)', 'permission denied (...)' or the error."""
    chain, x = [], e
    while x is not None and len(chain) < 10:
        chain.append(x)
        x = x.__cause__ or x.__context__
    text = " ".join(str(x) for x in chain)
    codes = {x.errno for x in chain if isinstance(x, OSError)}
    if (codes & {errno.ENOSPC, errno.EDQUOT} or "No space left" in text
            or ("RESOURCE_EXHAUSTED" in text and "memory" not in text.lower())):
        return f"disk full ({_one_line(e, 120)})"
    if (codes & {errno.EACCES, errno.EPERM, errno.EROFS} or "PERMISSION_DENIED" in text
            or "Permission denied" in text or "Read-only file system" in text):
        return f"permission denied ({_one_line(e, 120)})"
    return _one_line(e)


@contextlib.contextmanager
def _orbax_errors_held():
    """Holds back orbax's ERROR log records (tracebacks of its worker threads) during a call.

    On failure they are dropped (the caller raises or logs one line with the cause); on success
    they are logged as usual.
    """
    held: list[logging.LogRecord] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "orbax" in record.pathname:
            held.append(record)
            return False
        return True

    logger = logging.getLogger("absl")  # orbax logs through absl.logging
    logger.addFilter(hold)
    try:
        yield
    except BaseException:
        _join_orbax_threads()  # its other writers may still be failing (and logging)
        raise
    finally:
        logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


def _join_orbax_threads(timeout_s: float = 60.0) -> None:
    """Waits (bounded) for orbax's background writer threads, e.g. after a failed save."""
    for thread in threading.enumerate():
        mine = thread is threading.current_thread()
        if type(thread).__module__.startswith("orbax.") and not mine:
            threading.Thread.join(thread, timeout_s)


def _host(leaf: Any) -> np.ndarray:
    """The full value of one state leaf on this host; every process gets the same bytes."""
    if isinstance(leaf, jax.Array):
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_shards[0].data)
        if not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def _digest(x: np.ndarray) -> str:
    """SHA-256 of the array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(x).reshape(-1).view(np.uint8)).hexdigest()


def _finite(x: np.ndarray) -> bool:
    """True unless a float array holds NaN or inf (min/max propagate both; no temporaries)."""
    if x.size == 0 or not jnp.issubdtype(x.dtype, jnp.inexact):
        return True
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return bool(np.isfinite(x).all())
    return math.isfinite(float(x.min())) and math.isfinite(float(x.max()))


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the metadata as JSON gives it back (keys as strings, sorted)."""
    canonical = json.dumps(json.loads(json.dumps(meta)), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    """(tree path as a string, leaf) for every leaf, in tree order."""
    return [(jax.tree_util.keystr(p), leaf)
            for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _spec(shape: Any, dtype: Any) -> str:
    return f"{jnp.dtype(dtype).name}{list(shape)}"


def _spec_of(leaf: Any) -> str:
    """'float32[3, 4]' of an array or scalar, without copying it."""
    dtype = getattr(leaf, "dtype", None)
    return _spec(np.shape(leaf), np.result_type(leaf) if dtype is None else dtype)


def _summary(names: list[str]) -> str:
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _agree(reason: str | None) -> str | None:
    """`reason` unless every process found the step intact (one answer on all processes)."""
    if jax.process_count() == 1:
        return reason
    intact = multihost_utils.process_allgather(np.int32(reason is None))
    if reason is None and not np.all(intact):
        return "damaged as read by another process"
    return reason


class Checkpoints:
    """Save / restore of (state, meta) under `directory`, with checksums.

    Args:
      directory: folder for this stage's checkpoints (created).
      keep: how many recent checkpoints to keep.
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 2):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True,
                cleanup_tmp_directories=True),  # partial steps of a killed run
        )
        self._damaged: set[int] = set()  # found damaged by `restore`; replaced when saved again

    def latest_step(self) -> int | None:
        """The newest step on disk (intact or not: `restore` falls back past damaged ones)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every step on disk, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Writes checkpoint `step` with the checksums of its arrays.

        An existing step is kept as it is, unless `restore` found it damaged: then it is replaced.

        Raises:
          CheckpointError: `state` holds NaN/inf, or the write failed (disk full, permission);
            the earlier steps are untouched either way.
        """
        if step in self.manager.all_steps():
            if step not in self._damaged:
                return
            self.manager.delete(step)
            self._damaged.discard(step)
        record, bad = {}, []
        for name, leaf in _leaves(state):
            x = _host(leaf)
            record[name] = {"shape": list(x.shape), "dtype": x.dtype.name, "sha256": _digest(x)}
            if not _finite(x):
                bad.append(name)
        kept = self._kept()
        if bad:
            raise CheckpointError(
                f"not saving step {step} in {self.directory}: {_summary(bad)} holds NaN/inf; "
                f"{kept}")
        try:
            with _orbax_errors_held():
                self.manager.save(step, args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta),
                    integrity=ocp.args.JsonSave({"format": _FORMAT, "arrays": record,
                                                 "meta_sha256": _meta_digest(meta)})),
                    force=True)
                self.manager.wait_until_finished()
        except Exception as e:  # orbax / TensorStore / OS errors of any kind
            self._remove_partial(step)
            raise CheckpointError(
                f"could not save step {step} in {self.directory}: {_cause(e)}; {kept}; "
                f"fix that and rerun to resume") from e

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """(state, meta) of a verified checkpoint, arrays placed like `like`.

        Args:
          like: a state of the expected structure, shapes, dtypes and shardings.
          step: the step to restore; default: the newest intact one (each damaged newer step is
            reported in one line).

        Raises:
          CheckpointError: no checkpoint, none intact (or `step` damaged), or the checkpoint
            holds a state of other shapes / dtypes than `like`.
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}: train this stage first")
        if step is not None:
            try:
                return self._restore_verified(step, like)
            except _Damaged as e:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} is damaged ({e}); restore "
                    f"another step or remove {self.directory / str(step)}") from None
        for i, s in enumerate(steps):
            try:
                out = self._restore_verified(s, like)
            except _Damaged as e:
                self._damaged.add(s)
                then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no earlier step"
                log(f"checkpoint step {s} in {self.directory} is damaged ({e}); {then}")
                continue
            if i:
                log(f"restored step {s}, the newest intact checkpoint in {self.directory}")
            return out
        raise CheckpointError(
            f"no intact checkpoint in {self.directory} (steps {', '.join(map(str, steps))} "
            f"damaged); remove that folder to restart this stage from step 0")

    def close(self) -> None:
        self.manager.close()

    # ------------------------------------------------------------------------------ helpers

    def _kept(self) -> str:
        intact = [s for s in self.manager.all_steps() if s not in self._damaged]
        return (f"the previous checkpoint (step {max(intact)}) is kept" if intact
                else "there is no earlier checkpoint")

    def _remove_partial(self, step: int) -> None:
        """Removes the unfinished folder of a failed save (orbax only lists finished steps)."""
        if jax.process_index() == 0:
            for path in self.directory.glob(f"{step}{_TMP_SUFFIX}*"):
                shutil.rmtree(path, ignore_errors=True)
        self.manager.reload()

    def _record(self, step: int) -> dict | None:
        """The saved shapes / dtypes / digests of `step`; None for a step saved without them."""
        if not (self.directory / str(step) / "integrity").exists():
            return None
        out = self.manager.restore(step, args=ocp.args.Composite(
            integrity=ocp.args.JsonRestore()))
        record = out["integrity"]
        if (not isinstance(record, dict) or record.get("format") != _FORMAT
                or not isinstance(record.get("arrays"), dict)):
            raise _Damaged("unreadable checksum record")
        return record

    def _check_like(self, step: int, like: Any, record: dict) -> None:
        """Raises CheckpointError when `step` holds another state than `like` (not damage)."""
        expected = {name: _spec_of(leaf) for name, leaf in _leaves(like)}
        saved = {name: _spec(r["shape"], r["dtype"]) for name, r in record["arrays"].items()}
        diff = [f"{n} saved {saved.get(n, 'absent')}, expected {expected.get(n, 'absent')}"
                for n in sorted(set(expected) | set(saved)) if saved.get(n) != expected.get(n)]
        if diff:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} holds another state ({_summary(diff)})"
                f"; rerun with the configuration it was trained with or remove that folder")

    def _restore_verified(self, step: int, like: Any) -> tuple[Any, dict]:
        """(state, meta) of `step` after checking it; _Damaged (same on all processes) if not."""
        reason, out, record = None, None, None
        try:
            with _orbax_errors_held():
                record = self._record(step)
                if record is not None:
                    self._check_like(step, like, record)
                out = self._restore_unchecked(step, like)
            reason = self._verify(out, like, record)
        except _Damaged as e:
            reason = str(e)
        except CheckpointError:
            raise
        except Exception as e:  # orbax / TensorStore / JSON errors: damaged files
            reason = _one_line(e)
        reason = _agree(reason)
        if reason is not None:
            raise _Damaged(reason)
        if record is None:
            log(f"checkpoint step {step} in {self.directory} has no checksums (saved by an older "
                f"version): checked shapes and finiteness only")
        return out

    def _restore_unchecked(self, step: int, like: Any) -> tuple[Any, dict]:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
            np.shape(a), a.dtype, sharding=getattr(a, "sharding", None)), like)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        if not isinstance(out["meta"], dict):
            raise _Damaged("unreadable metadata")
        return out["state"], dict(out["meta"])

    @staticmethod
    def _verify(restored: tuple[Any, dict], like: Any, record: dict | None) -> str | None:
        """Why a restored (state, meta) cannot be trusted (shape / dtype, checksum, NaN/inf)."""
        state, meta = restored
        if record is not None and record.get("meta_sha256") != _meta_digest(meta):
            return "checksum mismatch: metadata"
        arrays = {} if record is None else record["arrays"]
        wrong, changed, nonfinite = [], [], []
        expected = dict(_leaves(like))
        for name, leaf in _leaves(state):
            x = _host(leaf)
            if name not in expected or _spec(x.shape, x.dtype) != _spec_of(expected[name]):
                wrong.append(name)
                continue
            if record is not None and arrays.get(name, {}).get("sha256") != _digest(x):
                changed.append(name)
            elif not _finite(x):
                nonfinite.append(name)
        if wrong:
            return f"arrays of the wrong shape or dtype: {_summary(wrong)}"
        if changed:
            return f"checksum mismatch: {_summary(changed)}"
        if nonfinite:
            return f"NaN/inf in {_summary(nonfinite)}"
        return None
