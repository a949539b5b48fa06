"""A run's workdir: its config (kept across resumes), the device mesh, done markers, metrics.

    WORKDIR/config.json          the resolved config; a rerun must pass the same one
    WORKDIR/<stage>/done.json    written when a stage finishes (its info); a rerun skips it
                                 (process 0 reads it and tells the others)
    WORKDIR/<stage>/checkpoints  orbax checkpoints of the training stages (resume)
    WORKDIR/metrics.jsonl, tensorboard/   metrics of every stage (process 0)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

import jax
import numpy as np

from dsrg_jax.config import Config, ConfigError, flatten
from dsrg_jax.data.registry import Dataset, get_dataset
from dsrg_jax.sharding import (
    broadcast_bytes_from_process0,
    broadcast_from_process0,
    gather_bytes_over_processes,
    gather_over_processes,
    make_mesh,
    sync_processes,
)
from dsrg_jax.train.logging import MetricsWriter, is_writer

# Fields a resumed run may change: they steer logging and checkpoint bookkeeping only.
RESUMABLE_FIELDS = ("run.checkpoint_every", "run.log_every", "run.keep_checkpoints",
                    "run.image_log_every", "run.num_figure_images")


@dataclasses.dataclass
class Experiment:
    """A config, its workdir, the device mesh and the metrics writer."""

    cfg: Config
    workdir: pathlib.Path
    mesh: Any
    writer: MetricsWriter | None

    @classmethod
    def create(cls, cfg: Config, workdir, *, num_devices: int | None = None) -> Experiment:
        """Checks `cfg` against the workdir's earlier config, then saves it there."""
        cfg.validate()
        workdir = pathlib.Path(workdir).absolute()
        check_processes_agree(cfg, workdir)
        check_resumed_config(cfg, workdir / "config.json")
        if is_writer():
            workdir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(workdir / "config.json", json.loads(cfg.to_json()))
        sync_processes("config-written")
        try:
            mesh = make_mesh(num_devices)
        except ValueError as e:
            raise ConfigError(f"--num-devices: {e} (the devices JAX sees: "
                              f"{jax.device_count()})") from None
        return cls(cfg, workdir, mesh, MetricsWriter(workdir))

    @property
    def dataset(self) -> Dataset:
        return get_dataset(self.cfg.data.dataset)

    def path(self, *parts: str) -> pathlib.Path:
        return self.workdir.joinpath(*parts)

    def done(self, stage: str) -> dict | None:
        """The info a finished stage wrote, or None when it has not finished.

        Process 0's reading, the same on every process (call it on all of them: with several
        processes it is a collective), so a stale view of a shared filesystem on one host cannot
        make the hosts disagree on what to run."""
        text = b""
        if jax.process_index() == 0:
            p = self.path(stage, "done.json")
            text = p.read_bytes() if p.is_file() else b""
        text = broadcast_bytes_from_process0(text)
        return json.loads(text) if text else None

    def mark_done(self, stage: str, info: dict) -> None:
        """Writes `<stage>/done.json` (process 0), then waits for every process."""
        if is_writer():
            write_json_atomic(self.path(stage, "done.json"), info)
        sync_processes(f"done-{stage}")


def check_processes_agree(cfg: Config, workdir: pathlib.Path) -> None:
    """With several processes: ConfigError unless all run the same config and see the same workdir.

    The message names each differing field and its two values. The workdir must be a folder all
    hosts share: process 0 writes a token, every process must read it back."""
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(cfg.to_json().encode()).digest(), np.uint8)
    digests = gather_over_processes(digest[None])
    differ = [i for i in range(len(digests)) if not np.array_equal(digests[i], digests[0])]
    if differ:
        configs = [json.loads(c) for c in gather_bytes_over_processes(cfg.to_json().encode())]
        lines = [f"process {i}'s config differs from process 0's in "
                 f"{'; '.join(config_differences(configs[0], configs[i], skip=()))}"
                 for i in differ]
        raise ConfigError(f"{' / '.join(lines)} (fields: process 0's value -> the other's): pass "
                          f"the same flags to every process")
    token = broadcast_from_process0(np.frombuffer(os.urandom(16), np.uint8))
    path = workdir / ".processes" / "token"
    if is_writer():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(token.tobytes())
    sync_processes("token-written")
    seen = path.read_bytes() if path.is_file() else b""
    ok = gather_over_processes(np.asarray([seen == token.tobytes()]))
    if not ok.all():
        paths = [w.decode() for w in gather_bytes_over_processes(str(workdir).encode())]
        missing = [f"process {i} (workdir {paths[i]})" for i in range(len(ok)) if not ok[i]]
        raise ConfigError(f"{', '.join(missing)} does not see process 0's workdir {paths[0]}: "
                          f"the workdir must be a folder every host shares (e.g. NFS or GCS "
                          f"fuse)")


def write_json_atomic(path: pathlib.Path, value: Any) -> None:
    """`path` holds either its old content or the whole new JSON, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    tmp.replace(path)


def config_differences(old: dict, new: Config | dict, *,
                       skip: tuple[str, ...] = RESUMABLE_FIELDS) -> list[str]:
    """'field: old -> new' for each field of `new` that differs from the saved config `old`.

    `new` is a Config, or a dict of one; `old` is a dict read from config.json. The fields in `skip`
    are left out. A field the saved config lacks (written by an older version) counts as its default
    value."""
    new_flat = flatten(new if isinstance(new, dict) else json.loads(new.to_json()))
    old_flat = flatten(old)
    default = flatten(json.loads(Config().to_json()))
    out = []
    for key, value in new_flat.items():
        if key in skip:
            continue
        before = old_flat.get(key, default.get(key))
        if before != value:
            out.append(f"{key}: {json.dumps(before)} -> {json.dumps(value)}")
    return out


def check_resumed_config(cfg: Config, path: pathlib.Path) -> None:
    """Raises ConfigError when the saved config at `path` differs from `cfg` beyond logging fields.

    `path` is the workdir's config.json from an earlier run; the logging fields are
    `RESUMABLE_FIELDS`."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}): use a new workdir, or delete it if "
                          f"the workdir holds no results yet") from None
    diffs = config_differences(old, cfg)
    if diffs:
        raise ConfigError(
            f"{path.parent} was started with another config; differing fields (old -> new): "
            f"{'; '.join(diffs)}. Use a new --workdir, or pass the same flags as the earlier run")
