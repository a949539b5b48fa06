"""How every command line reports an expected failure: one line `error: ...`, exit status 1.

The line goes to stderr, with no traceback (`--debug`: the traceback first).

    def main(argv=None):
        args = parser(argv)                 # with cli.add_debug_flag(parser)
        return cli.run(lambda: body(args), debug=args.debug)

Expected failures: bad or missing files and data (`DatasetError`, `OSError`: missing file, no
permission, full disk, undecodable image), bad values (`ValueError`, so `ConfigError` too), a
damaged checkpoint (`CheckpointError`), a held workdir lock (`LockHeld`) and a diverged run
(`TrainingDiverged`). Anything else is a bug and keeps its traceback. A signal that stopped the
work (`Preempted`) prints its own line and exits with 128 + the signal.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

# Error classes of modules that may not be imported (and then cannot have raised): checked by
# name in sys.modules, so that a light CLI does not import JAX or orbax for them.
_OPTIONAL = (("dsrg_jax.train.checkpoint", "CheckpointError"),
             ("dsrg_jax.train.lock", "LockHeld"),
             ("dsrg_jax.train.loop", "TrainingDiverged"))


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception classes reported in one line."""
    extra = [getattr(sys.modules[m], name, None) for m, name in _OPTIONAL if m in sys.modules]
    return (ValueError, OSError, *(c for c in extra if isinstance(c, type)))


def one_line(error: BaseException | str) -> str:
    """`error`'s message on one line: an OS error as 'FILE: reason', list lines joined by '; '."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    parts: list[str] = []
    for line in (" ".join(raw.split()) for raw in text.splitlines()):
        if not line:
            continue
        if parts and not parts[-1].endswith(":"):
            parts[-1] += ";"
        parts.append(line)
    return " ".join(parts)


def fail(error: BaseException | str, *, debug: bool = False, status: int = 1,
         exc: BaseException | None = None) -> NoReturn:
    """Prints `error: <one line>` on stderr and exits with `status`.

    `debug`: the traceback of `exc` (default: `error`, if it is an exception) first."""
    exc = exc if exc is not None else (error if isinstance(error, BaseException) else None)
    if debug and exc is not None:
        traceback.print_exception(exc)
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    sys.exit(status)


def run(body: Callable[[], T], *, debug: bool = False, status: int = 1) -> T:
    """`body()`; an expected failure -> one line and exit `status`; a signal -> exit 128 + signal.

    An expected failure (`expected_errors`) -> `fail` (one line, exit `status`); a signal that
    stopped the work (`Preempted`) -> its line, exit 128 + the signal."""
    try:
        return body()
    except Exception as e:
        loop = sys.modules.get("dsrg_jax.train.loop")
        if loop is not None and isinstance(e, loop.Preempted):
            print(str(e), file=sys.stderr, flush=True)
            sys.exit(128 + e.signum)
        if isinstance(e, expected_errors()):
            fail(e, debug=debug, status=status)
        raise


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """The `--debug` flag `run` reads."""
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error too (by default: one line)")
