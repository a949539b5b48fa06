"""JAX's persistent compilation cache, on by default for the command lines.

A pipeline compiles the same programs again and again: the forward pass at the same sizes in the
pseudo-label and eval stages, every stage again when a run resumes, every run of an ablation. With
the cache an XLA executable is compiled once and read back from disk after that. The numbers do
not change (the executable is the same); `--quick` on the 2-core CPU takes 2 min 55 s instead of
3 min 8 s from an empty cache and 2 min 28 s from a filled one (docs/benchmarks.md).

    where = enable(default_dir())   # before the first jit; None: left as JAX has it

Where: `--compile-cache DIR` of the experiments, else the environment variable
DSRG_JAX_COMPILE_CACHE, else ~/.cache/dsrg_jax/xla ($XDG_CACHE_HOME when set); "off" turns it
off. A JAX_COMPILATION_CACHE_DIR set by the user wins over all of these (JAX reads it itself).

JAX writes an entry in place (not by rename), so a process killed in the middle of a write can
leave a truncated entry; JAX then warns "Error reading persistent compilation cache entry" and
compiles that program again on every run. Deleting the folder clears it.
"""
from __future__ import annotations

import os
import pathlib

ENV = "DSRG_JAX_COMPILE_CACHE"
OFF = "off"
# Programs that compile faster than this are not worth a disk read (JAX's own default: 1 s; the
# small nets' CPU programs take 0.2-10 s each).
MIN_COMPILE_SECS = 0.2


def default_dir() -> str:
    """The cache folder when no flag is given: $DSRG_JAX_COMPILE_CACHE or the user's cache."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return str(pathlib.Path(base) / "dsrg_jax" / "xla")


def enable(path: str | os.PathLike | None, *,
           min_compile_secs: float = MIN_COMPILE_SECS) -> str | None:
    """Turns the persistent cache on at `path` (created if missing); returns the folder in use.

    `path` None or "off": nothing changes (None returned unless JAX_COMPILATION_CACHE_DIR set
    one). Call before the first compilation. Raises OSError naming `path` when it cannot be made
    a folder."""
    import jax

    preset = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if preset:
        return preset
    if path is None or str(path) == OFF:
        return None
    folder = pathlib.Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (the compile cache folder: pass --compile-cache "
                               f"DIR with a writable folder, or --compile-cache off)",
                      str(folder)) from e
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    return str(folder)
