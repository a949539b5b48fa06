"""Data parallelism over every device of every host: a 1-D mesh, shardings, global batches.

The pmap design in today's API: `jax.jit` over a `Mesh` with axis "data",
parameters and optimiser state replicated (`P()`), batches sharded along their leading axis
(`P("data")`); per-device work (region growing, the CRF, host callbacks) through `jax.shard_map`.
The global batch is assembled from each host's share with `jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over all devices (or the first `num_devices`), axis "data", Auto axis type.

    Auto (not JAX 0.10's default Explicit) so that models and losses trace without sharding
    annotations; per-device steps are written with `per_device`.
    """
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices must be in 1..{len(devices)}, got {num_devices}")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of parameters and optimiser state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: leading axis split over "data"."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_device_count(mesh: Mesh) -> int:
    """Devices of this process in the mesh."""
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def pad_local_batch(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Pads a host batch along axis 0 to a multiple of `multiple` by repeating example 0.

    The "valid" field (bool[B], added if absent) is False on the padding, so weighted losses and
    metrics ignore it: the configured global batch is the same whatever the device count.
    """
    n = len(next(iter(batch.values())))
    out = dict(batch)
    if "valid" not in out:
        out["valid"] = np.ones(n, bool)
    pad = (-n) % multiple
    if pad:
        out = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in out.items()}
        out["valid"][n:] = False
    return out


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This host's batch -> global arrays sharded `P("data")` over the mesh.

    Non-array fields (e.g. lists of ids) are dropped; string arrays are dropped too.
    Each host pads its share to a multiple of its local device count (see `pad_local_batch`).
    """
    arrays = {k: np.asarray(v) for k, v in batch.items()
              if isinstance(v, np.ndarray) and v.dtype.kind != "U"}
    arrays = pad_local_batch(arrays, local_device_count(mesh))
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in arrays.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a pytree of host/device arrays on every device of the mesh (replicated)."""
    return jax.device_put(tree, replicated(mesh))


def per_device(fn: Callable, mesh: Mesh, num_args: int) -> Callable:
    """`fn` run on each device's shard of `num_args` batch-sharded arguments (shard_map).

    Use inside jitted steps for per-image work: region growing (each device waits only for its own
    slowest image) and host callbacks (each host handles only its own shard). `fn` is purely
    per-example (no collectives), so the varying-axis check is off (`check_vma=False`): loops
    whose carries start from constants (e.g. the CRF lattice's binary search) then trace.
    """
    spec = P(DATA_AXIS)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * num_args, out_specs=spec,
                         check_vma=False)


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly sharded, possibly multi-host) array as a numpy array of this host's rows.

    Single host: the whole array. Multi-host: the rows of this host's devices, in order.
    """
    if jax.process_count() == 1:
        return np.asarray(x)
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:
            seen.add(start)
            rows.append(np.asarray(s.data))
    return np.concatenate(rows)


def sum_over_processes(x: np.ndarray) -> np.ndarray:
    """The sum of a host array over all processes (itself with one process)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(np.asarray(x))).sum(0)


def gather_over_processes(x: np.ndarray) -> np.ndarray:
    """Host arrays of every process concatenated along axis 0, in process order.

    Each process's array has the same shape."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.concatenate(list(multihost_utils.process_allgather(np.asarray(x))))


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (itself with one process)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag)))))


def replicated_to_host(x: jax.Array) -> np.ndarray:
    """A fully replicated (e.g. a jitted reduction's) array as numpy, on any process."""
    return np.asarray(x.addressable_shards[0].data) if isinstance(x, jax.Array) else np.asarray(x)


def broadcast_from_process0(x: np.ndarray) -> np.ndarray:
    """Process 0's value of a host array on every process."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(x)))


def _padded(data: bytes, size: int) -> np.ndarray:
    """`data` as uint8[n], zero-padded to n = the next power of two >= max(size, 256).

    Few distinct shapes: each shape of a collective compiles once."""
    n = 1 << max(int(size) - 1, 255).bit_length()
    out = np.zeros(n, np.uint8)
    out[:len(data)] = np.frombuffer(data, np.uint8)
    return out


def broadcast_bytes_from_process0(data: bytes) -> bytes:
    """Process 0's `data` on every process (the others' `data` is ignored)."""
    if jax.process_count() == 1:
        return bytes(data)
    n = int(broadcast_from_process0(np.asarray(len(data), np.int32)))
    buf = _padded(data if jax.process_index() == 0 else b"", n)
    return broadcast_from_process0(buf)[:n].tobytes()


def gather_bytes_over_processes(data: bytes) -> list[bytes]:
    """Every process's `data` (any lengths), in process order."""
    if jax.process_count() == 1:
        return [bytes(data)]
    sizes = gather_over_processes(np.asarray([len(data)], np.int32))
    bufs = np.asarray(multihost_utils.process_allgather(_padded(data, int(sizes.max()))))
    return [bufs[i, :int(n)].tobytes() for i, n in enumerate(sizes)]


def sync_processes(name: str) -> None:
    """Waits until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
