"""The dense CRF on the host with pydensecrf2: one image, a batch on every core, or from jit.

Same model and parameters (`dsrg_jax.ops.crf.CRFParams`) as the JAX CRF; the defaults here are the
official test-time CRF at full resolution (`TEST_CRF`), any image size:

  * `dense_crf_host(image, probs)`: one image, in this process;
  * `dense_crf_host_batch(images, probs)`: a batch over a reused pool of spawned worker processes
    (a script that uses it needs the `if __name__ == "__main__":` guard);
  * `dense_crf_callback` / `sharded_dense_crf_host`: from jitted code via `jax.pure_callback`,
    inside `jax.shard_map` so that each device's shard goes to its own host.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import functools
import multiprocessing
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from dsrg_jax.ops.crf import TEST_CRF, CRFParams, check_crf_inputs, clamp_renormalise, unary_energy


def _host_one(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """One pydensecrf2 inference; image uint8[H, W, 3], probs float[H, W, C] -> float32[H, W, C]."""
    import pydensecrf.densecrf as dcrf  # pydensecrf2 on PyPI; a compiled extension

    h, w, c = probs.shape
    u = unary_energy(np.asarray(probs), params.unary, params.unary_floor, xp=np)
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(u.reshape(h * w, c).T, dtype=np.float32))
    if params.pos_w != 0.0:
        crf.addPairwiseGaussian(sxy=float(params.pos_xy), compat=float(params.pos_w))
    if params.bi_w != 0.0:
        crf.addPairwiseBilateral(sxy=float(params.bi_xy), srgb=float(params.bi_rgb),
                                 rgbim=np.require(image, np.uint8, ("C", "W")),
                                 compat=float(params.bi_w))
    q = np.asarray(crf.inference(int(params.iterations)), dtype=np.float32)
    q = np.ascontiguousarray(q.T.reshape(h, w, c))
    return clamp_renormalise(q, params.min_prob, xp=np).astype(np.float32)


def dense_crf_host(image: np.ndarray, probs: np.ndarray,
                   params: CRFParams = TEST_CRF) -> np.ndarray:
    """pydensecrf2 dense CRF of one image (default: the official test-time CRF).

    Args:
      image: uint8[H, W, 3] (any size).
      probs: float[H, W, C].
      params: `TEST_CRF`, `TRAIN_CRF` or any `CRFParams`.

    Returns:
      float32[H, W, C]. Memory: pydensecrf's lattice, O(H*W * 6 * C) floats.
    """
    check_crf_inputs("dense_crf_host", image, probs, params, batched=False)
    _refuse_nan("dense_crf_host", np.asarray(probs)[None])
    return _host_one(np.asarray(image), np.asarray(probs), params)


_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _default_pool(processes: int) -> concurrent.futures.ProcessPoolExecutor:
    """A lazily started, reused pool of `processes` spawned workers (spawn: JAX is threaded)."""
    pool = _POOLS.get(processes)
    if pool is None:
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=processes, mp_context=multiprocessing.get_context("spawn"))
        _POOLS[processes] = pool
    return pool


@atexit.register
def shutdown_pools() -> None:
    """Stops the worker processes started by `dense_crf_host_batch` (also run at exit)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)


def _refuse_nan(fn: str, probs: np.ndarray) -> None:
    """ValueError naming the images whose probabilities hold NaN or infinity.

    pydensecrf would spread one such pixel over the whole image."""
    bad = ~np.isfinite(probs.reshape(probs.shape[0], -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{fn}: `probs` holds NaN or infinite values in image(s) "
                         f"{np.flatnonzero(bad)[:5].tolist()}; the CRF would spread them over "
                         f"the whole image")


def _host_batch_np(images: np.ndarray, probs: np.ndarray, params: CRFParams,
                   processes: int | None,
                   executor: concurrent.futures.Executor | None) -> np.ndarray:
    _refuse_nan("dense_crf_host_batch", probs)
    b = probs.shape[0]
    out = np.empty(probs.shape, np.float32)
    if b == 0:
        return out
    workers = (os.cpu_count() or 1) if processes is None else int(processes)
    if executor is None and (workers <= 1 or b == 1):
        for i in range(b):
            out[i] = _host_one(images[i], probs[i], params)
        return out
    pool = executor if executor is not None else _default_pool(workers)
    fn = functools.partial(_host_one, params=params)
    chunk = max(1, b // (4 * workers)) if executor is None else 1
    for i, q in enumerate(pool.map(fn, list(images), list(probs), chunksize=chunk)):
        out[i] = q
    return out


def dense_crf_host_batch(images: np.ndarray, probs: np.ndarray, params: CRFParams = TEST_CRF,
                         *, processes: int | None = None,
                         executor: concurrent.futures.Executor | None = None) -> np.ndarray:
    """`dense_crf_host` over a batch on every CPU core (a process pool); same result as serial.

    Args:
      images: uint8[B, H, W, 3].
      probs: float[B, H, W, C].
      params: as `dense_crf_host`.
      processes: worker processes (None: os.cpu_count(); 1: serial in this process). The pool is
        started once (spawned: a script calling this needs the `if __name__ == "__main__":`
        guard) and reused; `shutdown_pools()` stops it.
      executor: use this `concurrent.futures` executor instead of the built-in pool.

    Returns:
      float32[B, H, W, C].
    """
    check_crf_inputs("dense_crf_host_batch", images, probs, params, batched=True)
    return _host_batch_np(np.asarray(images), np.asarray(probs), params, processes, executor)


def dense_crf_callback(images: jax.Array, probs: jax.Array, params: CRFParams = TEST_CRF, *,
                       processes: int | None = 1) -> jax.Array:
    """pydensecrf2 CRF callable from jitted code (`jax.pure_callback`); no gradient flows through.

    Under plain `jit` on a sharded batch the callback gathers the whole global batch onto one
    device; use `sharded_dense_crf_host` there.

    Args:
      images: uint8[B, H, W, 3].
      probs: float[B, H, W, C] (treated as constant: wrapped in `stop_gradient`).
      params: as `dense_crf_host` (default: test time; `TRAIN_CRF` for the training CRF).
      processes: host worker processes per call (1: in the calling thread; None: all cores).

    Returns:
      float32[B, H, W, C].
    """
    check_crf_inputs("dense_crf_callback", images, probs, params, batched=True)

    def host(images_np, probs_np):
        # Under vmap ("broadcast_all") extra leading axes arrive: treat them as batch.
        probs_np = np.asarray(probs_np)
        images_np = np.asarray(images_np).reshape(-1, *images_np.shape[-3:])
        q = _host_batch_np(images_np, probs_np.reshape(-1, *probs_np.shape[-3:]), params,
                           processes, None)
        return q.reshape(probs_np.shape)

    shape = jax.ShapeDtypeStruct(probs.shape, jnp.float32)
    return jax.pure_callback(host, shape, lax.stop_gradient(images), lax.stop_gradient(probs),
                             vmap_method="broadcast_all")


def sharded_dense_crf_host(images: jax.Array, probs: jax.Array, params: CRFParams = TEST_CRF,
                           *, mesh: Mesh, axis: str = "data",
                           processes: int | None = 1) -> jax.Array:
    """pydensecrf2 CRF of a batch sharded over `mesh` axis `axis`, one host call per local shard.

    `jax.shard_map` around `dense_crf_callback`: each device's shard goes to the host of that
    device and the result stays sharded `P(axis)` (no gather of the global batch). Usable inside
    `jit`, e.g. to train with pydensecrf2 itself, as the official code does.

    Args:
      images: uint8[B, H, W, 3], B divisible by the size of `axis`.
      probs: float[B, H, W, C].
      params: as `dense_crf_host`.
      mesh: the device mesh; axis: its batch axis name.
      processes: host worker processes per shard call (1: in the calling thread).

    Returns:
      float32[B, H, W, C], sharded like the inputs.
    """
    spec = P(axis)
    fn = functools.partial(dense_crf_callback, params=params, processes=processes)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec), out_specs=spec)(images, probs)
