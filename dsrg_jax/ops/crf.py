"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) for DSRG: in JAX on the training grid, and
pydensecrf2 on the host at full resolution.

Model (pydensecrf's defaults, which the official SEC/DSRG `krahenbuhl2013` wrapper also uses): per
image of N pixels and C classes, unary energy `U` (`-P` for unary="prob", the official training
setting; `-log P` for unary="logprob", the official test setting) and two Potts pairwise terms, a
bilateral kernel on features `(x/bi_xy, y/bi_xy, r/bi_rgb, g/bi_rgb, b/bi_rgb)` with weight `bi_w`
and a Gaussian kernel on `(x/pos_xy, y/pos_xy)` with weight `pos_w`. Each kernel
`k(i, j) = exp(-|f_i - f_j|^2 / 2)` (self term included) is normalised symmetrically,
`K~ = D^-1/2 K D^-1/2` with `D = diag(K 1)` (pydensecrf's NORMALIZE_SYMMETRIC, DIAG_KERNEL). Mean
field (densecrf.cpp `DenseCRF::inference`): `Q = softmax(-U)`, then `iterations` times
`Q = softmax(-U + sum_k w_k K~_k Q)` (PottsCompatibility(w) multiplies by -w and the message is
subtracted).

Two kernel implementations in JAX (`dense_crf(kernel=...)`):
  * "lattice" (default): pydensecrf's permutohedral lattice (Adams et al. 2010; densecrf
    `permutohedral.cpp`, SSE build) re-implemented with static shapes (sort + binary search in
    place of its hash table). This is the approximation the official code ran; it agrees with
    pydensecrf2 to float rounding. Memory O(B * N * (d+1) * C), d = 5 (bilateral) or 2.
  * "exact": explicit Gaussian kernels (the spatial one separably), the exact model with no
    approximation. It differs from the lattice by a few percent of pixels (the lattice's
    approximation, not float error). Memory B * N^2 * 4 bytes for the bilateral kernels, so it
    is for small grids.
  * "auto": "exact" up to AUTO_EXACT_MAX_PIXELS grid pixels, else "lattice" (`resolve_kernel`).

The host CRF (`dense_crf_host*`) calls pydensecrf2 itself (full resolution, any size): serially, in
a process pool, or from jitted code via `jax.pure_callback` inside `jax.shard_map`.
"""
from __future__ import annotations

import atexit
import concurrent.futures
import functools
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

# Mean pixel (BGR) the official Caffe nets subtract; CRFLayer adds it back (pylayers.py
# `mean_pixel`).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
# Floor of the training CRF output before renormalising (pylayers.py `min_prob`).
MIN_PROB = 1e-4
# Official training CRF: krahenbuhl2013 `CRF(im, probs, scale_factor=12.0)` on the 41x41 grid
# (pylayers.py CRFLayer): unary -P, bilateral w=10, 80/12 px, 13; Gaussian w=3, 3/12 px;
# 10 iterations; output floored at 1e-4 and renormalised.
TRAIN_CRF: Mapping[str, Any] = dict(
    unary="prob", bi_w=10.0, bi_xy=80.0 / 12.0, bi_rgb=13.0, pos_w=3.0, pos_xy=3.0 / 12.0,
    iterations=10, min_prob=MIN_PROB)
# Official test-time CRF at full resolution (DESIGN.md 2.5): unary -log P, 80 px, 13, 3 px.
TEST_CRF: Mapping[str, Any] = dict(
    unary="logprob", bi_w=10.0, bi_xy=80.0, bi_rgb=13.0, pos_w=3.0, pos_xy=3.0,
    iterations=10, min_prob=0.0)

_UNARY_MODES = ("prob", "logprob")
_KERNELS = ("auto", "exact", "lattice")
# kernel="auto": "exact" up to this many grid pixels (and within max_kernel_bytes), else
# "lattice". 2048 covers VOC's 41x41 training grid (1681 px: 11 MB of bilateral kernel per
# image); on CPU "exact" is the faster one there (docs/benchmarks.md, "Dense CRF").
AUTO_EXACT_MAX_PIXELS = 2048
# Largest bilateral kernel (all images of a call together) "exact" builds unless told otherwise.
_DEFAULT_MAX_KERNEL_BYTES = 2 * 1024**3


# ----------------------------------------------------------------------------------------------
# Image to the CRF grid, as the official CRFLayer does it.
# ----------------------------------------------------------------------------------------------


def _zoom_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order-1 `scipy.ndimage.zoom` taps along one axis (grid_mode=False: corners aligned).

    Returns (i0, i1, t): output o reads `(1 - t) * x[i0] + t * x[i1]`, coordinates computed in
    float64 as scipy does (`o * (n_in - 1) / (n_out - 1)`).
    """
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    coord = np.arange(n_out, dtype=np.float64) * scale
    i0 = np.clip(np.floor(coord).astype(np.int64), 0, n_in - 1)
    t = coord - i0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0.astype(np.int32), i1.astype(np.int32), t.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("size", "mean", "std"))
def downsample_image(
    images: jax.Array,
    size: tuple[int, int] = (41, 41),
    *,
    mean: tuple[float, float, float] = CAFFE_MEAN_BGR,
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> jax.Array:
    """The network input image on the CRF grid, as the official CRFLayer makes it.

    pylayers.py: `zoom(im, (1, 1, 41 / H, 41 / W), order=1)` on the mean-subtracted image, then the
    mean added back and `np.round`, passed to the CRF as uint8. Here `pixel = x * std + mean` is
    applied after the bilinear (corner-aligned) zoom, then rounded half-to-even and clipped to
    [0, 255]. With the defaults (Caffe BGR input) the result is BGR; the CRF treats the three
    channels alike, so BGR and RGB give the same CRF.

    Args:
      images: float[B, H, W, 3], the network input (mean-subtracted, e.g. BGR - (104, 117, 123)).
      size: (h, w) of the CRF grid, the network output size (41, 41 for a 321 input).
      mean: per-channel value added back after the zoom (official: (104, 117, 123)).
      std: per-channel factor applied before adding the mean (1 for the Caffe input; the ImageNet
        std * 255 for torchvision-normalised RGB input).

    Returns:
      uint8[B, h, w, 3]. Memory: about 2 * B * h * W * 3 floats of temporaries.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"downsample_image: `images` must be float[B, H, W, 3], got shape {images.shape}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"downsample_image: `size` must be (h, w) >= 1, got {size}")
    x = images.astype(jnp.float32)
    for axis, n_out in ((1, size[0]), (2, size[1])):
        i0, i1, t = _zoom_taps(x.shape[axis], n_out)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        t = jnp.asarray(t).reshape(shape)
        x = (1.0 - t) * jnp.take(x, i0, axis=axis) + t * jnp.take(x, i1, axis=axis)
    x = x * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


# ----------------------------------------------------------------------------------------------
# Shared pieces: checks, unary energy, mean field.
# ----------------------------------------------------------------------------------------------


def _check_common(fn: str, images, probs, unary: str, iterations: int, min_prob: float,
                  batched: bool) -> None:
    """Shape/dtype/option checks with messages naming the argument."""
    lead = "B, " if batched else ""
    for name, x in (("images", images), ("probs", probs)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{fn}: `{name}` must be an array, got {type(x).__name__}")
    nd = 4 if batched else 3
    if probs.ndim != nd:
        raise ValueError(
            f"{fn}: `probs` must be float[{lead}H, W, C], got shape {tuple(probs.shape)}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise TypeError(f"{fn}: `probs` must have a floating dtype, got {probs.dtype}")
    if images.ndim != nd or images.shape[-1] != 3:
        raise ValueError(
            f"{fn}: `images` must be uint8[{lead}H, W, 3], got shape {tuple(images.shape)}")
    if np.dtype(images.dtype) != np.uint8:
        raise TypeError(
            f"{fn}: `images` must be uint8 (0-255 colours, as pydensecrf takes them), got dtype "
            f"{images.dtype}; use `downsample_image` for the network input")
    if tuple(images.shape[:-1]) != tuple(probs.shape[:-1]):
        raise ValueError(
            f"{fn}: `images` {tuple(images.shape)} and `probs` {tuple(probs.shape)} must have "
            f"the same {lead}H, W")
    if probs.shape[-1] < 1:
        raise ValueError(f"{fn}: `probs` needs at least one class, got C={probs.shape[-1]}")
    if unary not in _UNARY_MODES:
        raise ValueError(f"{fn}: `unary` must be one of {_UNARY_MODES}, got {unary!r}")
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"{fn}: `iterations` must be an integer >= 0, got {iterations}")
    if not 0.0 <= min_prob < 1.0 / probs.shape[-1]:
        raise ValueError(
            f"{fn}: `min_prob` must be in [0, 1/C), got {min_prob} with C={probs.shape[-1]}")


def _check_kernel_params(fn: str, **params: float) -> None:
    for name, v in params.items():
        if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v)):
            raise TypeError(f"{fn}: `{name}` must be a finite Python float, got {v!r}")
        if name.endswith(("_xy", "_rgb")) and v <= 0:
            raise ValueError(f"{fn}: `{name}` (a kernel width) must be > 0, got {v}")


def _unary_energy(probs, unary: str, xp=jnp):
    """-P ("prob") or -log P ("logprob"; P floored at the dtype's smallest normal number)."""
    probs = probs.astype(xp.float32)
    if unary == "prob":
        return -probs
    return -xp.log(xp.maximum(probs, np.finfo(np.float32).tiny))


def _clamp_renormalise(q, min_prob: float, xp=jnp):
    """Official CRFLayer: `Q[Q < min_prob] = min_prob; Q /= Q.sum(classes)` (no-op for 0)."""
    if min_prob <= 0.0:
        return q
    q = xp.maximum(q, np.float32(min_prob))
    return q / xp.sum(q, axis=-1, keepdims=True)


def _mean_field(u: jax.Array, messages, iterations: int) -> jax.Array:
    """pydensecrf DenseCRF::inference. u: float[..., C] unary energy; messages: (w, K~ apply)."""
    q = jax.nn.softmax(-u, axis=-1)

    def step(_, q):
        logits = -u
        for w, apply in messages:
            logits = logits - (-w) * apply(q)   # Potts: pairwise message = -w * K~ Q, subtracted.
        return jax.nn.softmax(logits, axis=-1)

    return lax.fori_loop(0, iterations, step, q)


def _feature_tables(h: int, w: int, xy: float, rgb: float | None) -> list[np.ndarray]:
    """densecrf's feature values `x / xy, y / xy (, c / rgb for c in 0..255)`, as float32 tables
    computed here with IEEE division (XLA may divide through a reciprocal, which rounds
    differently and would move lattice points)."""
    tables = [np.arange(w, dtype=np.float32) / np.float32(xy),
              np.arange(h, dtype=np.float32) / np.float32(xy)]
    if rgb is not None:
        tables += [np.arange(256, dtype=np.float32) / np.float32(rgb)] * 3
    return tables


def _feature_index(h: int, w: int, image: jax.Array | None) -> jax.Array:
    """int32[H*W, d]: per pixel, the row of each feature table (x, y, and the colours)."""
    yy, xx = np.meshgrid(np.arange(h, dtype=np.int32), np.arange(w, dtype=np.int32),
                         indexing="ij")
    index = jnp.asarray(np.stack([xx, yy], -1).reshape(h * w, 2))
    if image is None:
        return index
    return jnp.concatenate([index, image.reshape(h * w, 3).astype(jnp.int32)], -1)


def _features(index: jax.Array, tables: Sequence[np.ndarray]) -> jax.Array:
    """float32[N, d] feature vectors from `_feature_index` and `_feature_tables`."""
    return jnp.stack([jnp.asarray(t)[index[:, k]] for k, t in enumerate(tables)], -1)


# ----------------------------------------------------------------------------------------------
# "exact": explicit Gaussian kernels.
# ----------------------------------------------------------------------------------------------


def _exact_bilateral(feat: jax.Array) -> jax.Array:
    """float[N, N] symmetric-normalised bilateral kernel, exp(-|fi - fj|^2 / 2), self included."""
    sq = 0.0
    for k in range(feat.shape[-1]):      # elementwise sum, fused by XLA: no N*N*5 temporary
        diff = feat[:, None, k] - feat[None, :, k]
        sq = sq + diff * diff
    kern = jnp.exp(-0.5 * sq)
    norm = lax.rsqrt(jnp.sum(kern, axis=1) + 1e-20)
    return norm[:, None] * kern * norm[None, :]


def _exact_gaussian_1d(n: int, sigma: float) -> jax.Array:
    """float[n, n] normalised 1-D factor of the separable spatial kernel."""
    f = jnp.arange(n, dtype=jnp.float32) / np.float32(sigma)
    d = f[:, None] - f[None, :]
    kern = jnp.exp(-0.5 * d * d)
    norm = lax.rsqrt(jnp.sum(kern, axis=1))
    return norm[:, None] * kern * norm[None, :]


def _exact_messages(image, h, w, c, *, bi_w, bi_xy, bi_rgb, pos_w, pos_xy, precision):
    """(weight, apply) pairs on q: float[H*W, C] for the exact kernels of one image."""
    msgs = []
    if pos_w != 0.0:
        # exp(-(dx^2 + dy^2)/2) = kx * ky, and D = Dx (x) Dy, so K~ = K~y (x) K~x exactly.
        ky = _exact_gaussian_1d(h, pos_xy)
        kx = _exact_gaussian_1d(w, pos_xy)

        def apply_pos(q):
            q = q.reshape(h, w, c)
            q = jnp.einsum("ab,bwc->awc", ky, q, precision=precision)
            q = jnp.einsum("ab,hbc->hac", kx, q, precision=precision)
            return q.reshape(h * w, c)

        msgs.append((pos_w, apply_pos))
    if bi_w != 0.0:
        kb = _exact_bilateral(_features(_feature_index(h, w, image),
                                        _feature_tables(h, w, bi_xy, bi_rgb)))
        msgs.append((bi_w, lambda q: jnp.matmul(kb, q, precision=precision)))
    return msgs


# ----------------------------------------------------------------------------------------------
# "lattice": pydensecrf's permutohedral lattice with static shapes.
# ----------------------------------------------------------------------------------------------

_SENTINEL = np.int32(2**31 - 1)   # key word of unused vertex slots; larger than any real word


def _lattice_plan(tables: Sequence[np.ndarray]) -> tuple[list[np.float32], int, int, int]:
    """Static constants: scale factors, key bound, bits per key coordinate, coordinates per word."""
    d = len(tables)
    r = d + 1
    inv_std = np.float32(np.sqrt(2.0 / 3.0) * r)                      # permutohedral.cpp init
    scale = [np.float32(1.0 / np.sqrt((i + 2) * (i + 1)) * np.float64(inv_std)) for i in range(d)]
    c = [float(s) * float(np.abs(t).max()) for s, t in zip(scale, tables)]
    # |elevated_j| <= sum_k c_k + j * c_{j-1}; rounding, wrap-around, canonical offsets and blur
    # neighbours move a key coordinate by at most a few (d + 1).
    bound = int(math.ceil(sum(c) + d * max(c))) + 4 * r + 2
    bits = int(math.ceil(math.log2(2 * bound + 1)))
    if bits > 30:
        raise ValueError(
            f"dense_crf(kernel='lattice'): lattice keys need {bits} bits per coordinate (features "
            f"up to {max(float(t.max()) for t in tables):.0f} kernel widths); use larger kernel "
            f"widths or dense_crf_host")
    return scale, bound, bits, 30 // bits


def _pack(coords: jax.Array, bound: int, bits: int, per_word: int) -> jax.Array:
    """int32[..., d] key coordinates -> int32[..., n_words], order-preserving (lexicographic)."""
    d = coords.shape[-1]
    shifted = coords + bound                                   # in [0, 2 * bound]
    words = []
    for start in range(0, d, per_word):
        word = jnp.zeros(coords.shape[:-1], jnp.int32)
        for k in range(start, min(start + per_word, d)):
            word = (word << bits) | shifted[..., k]
        words.append(word)
    return jnp.stack(words, -1)


def _lex_less(a: jax.Array, b: jax.Array) -> jax.Array:
    """a < b lexicographically over the last axis (int32 words)."""
    less = jnp.zeros(a.shape[:-1], bool)
    equal = jnp.ones(a.shape[:-1], bool)
    for k in range(a.shape[-1]):
        less = less | (equal & (a[..., k] < b[..., k]))
        equal = equal & (a[..., k] == b[..., k])
    return less


def _lookup(table: jax.Array, queries: jax.Array) -> jax.Array:
    """Slot (1-based row of `table`) of each query key, 0 where absent. table: int32[E, nw],
    sorted lexicographically (sentinel rows last); queries: int32[Q, nw]. Binary search."""
    e = table.shape[0]
    # Bounds built from the inputs (not constants) so the loop traces under shard_map with its
    # varying-axis check on (DESIGN.md 5).
    lo = jnp.zeros_like(queries[:, 0], jnp.int32) + jnp.zeros_like(table[0, 0], jnp.int32)
    hi = lo + e

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        go_right = _lex_less(table[jnp.minimum(mid, e - 1)], queries) & (lo < hi)
        go_left = ~go_right & (lo < hi)
        return jnp.where(go_right, mid + 1, lo), jnp.where(go_left, mid, hi)

    lo, _ = lax.fori_loop(0, max(1, int(math.ceil(math.log2(e + 1)))), step, (lo, hi))
    found = (lo < e) & jnp.all(table[jnp.minimum(lo, e - 1)] == queries, axis=-1)
    return jnp.where(found, lo + 1, 0)


def _lattice_build(index: jax.Array, tables: Sequence[np.ndarray]):
    """Permutohedral lattice of the features `tables[k][index[:, k]]` (pydensecrf
    `Permutohedral::init`, SSE build). index: int32[N, d]; tables: d float32 numpy tables.

    Returns offsets int32[N, d+1] (vertex slots, 1-based), weights float[N, d+1] (barycentric) and
    neighbours int32[d+1, 2, E+1] (blur neighbours per axis, slot 0 = absent), E = N' * (d+1).

    The lattice's structure (which vertices exist, each pixel's simplex) must be bit-exact, so
    every float the keys depend on is computed as densecrf does: the products `f * scale` and
    `j * f * scale` come from numpy tables (XLA would contract `a * b + c` into an FMA) and only
    additions remain here. The SSE build embeds features in blocks of 4 and pads the last block
    with zero features, whose simplex vertices join the lattice (they carry no value but pass
    values on in the blur); they are added here too (N' = N + 1 when N % 4 != 0).
    """
    n_pixels, d = index.shape
    if n_pixels % 4:
        index = jnp.concatenate([index, jnp.zeros((1, d), index.dtype)])  # feature 0 = row 0
    n = index.shape[0]
    r = d + 1
    scale, bound, bits, per_word = _lattice_plan(tables)
    cf_tables = [t * scale[k] for k, t in enumerate(tables)]            # float32, IEEE
    jcf_tables = [np.float32(k + 1) * t for k, t in enumerate(cf_tables)]
    # Elevate onto the hyperplane (y = E p), accumulated in densecrf's order.
    elevated = [None] * r
    sm = jnp.zeros((n,), jnp.float32)
    for j in range(d, 0, -1):
        elevated[j] = sm - jnp.asarray(jcf_tables[j - 1])[index[:, j - 1]]
        sm = sm + jnp.asarray(cf_tables[j - 1])[index[:, j - 1]]
    elevated[0] = sm
    el = jnp.stack(elevated, -1)                                       # [N, R]
    inv_r = np.float32(1.0) / np.float32(r)
    v = jnp.round(el * inv_r)                                          # nearest, ties to even
    rem0 = v * np.float32(r)
    total = jnp.sum(v.astype(jnp.int32), axis=-1)
    # Rank of each coordinate's remainder (ties broken as densecrf: the earlier index ranks lower).
    diff = el - rem0
    less = diff[:, :, None] < diff[:, None, :]                         # [N, i, j]: d_i < d_j
    upper = np.triu(np.ones((r, r), bool), 1)                          # j > i
    rank = (jnp.sum(less & upper, -1) + jnp.sum(~less & upper, -2)).astype(jnp.int32)
    rank = rank + total[:, None]
    wrap = jnp.where(rank < 0, r, 0) - jnp.where(rank >= r, r, 0)
    rank = rank + wrap
    rem0 = rem0 + wrap.astype(jnp.float32)
    # Barycentric coordinates, accumulated in densecrf's order.
    bary = jnp.zeros((n, d + 2), jnp.float32)
    slots = np.arange(d + 2)
    for i in range(r):
        vi = ((el[:, i] - rem0[:, i]) * inv_r)[:, None]
        p = (d - rank[:, i])[:, None]
        bary = jnp.where(slots == p, bary + vi, bary)
        bary = jnp.where(slots == p + 1, bary - vi, bary)
    bary = bary.at[:, 0].add(1.0 + bary[:, d + 1])
    weights = bary[:, :r]
    # Vertex keys (first d coordinates): key_i = rem0_i + canonical[remainder, rank_i].
    rem = np.arange(r)[None, :, None]                                  # [1, R(remainder), 1]
    coords = (rem0[:, None, :d].astype(jnp.int32) + rem
              - r * (rank[:, None, :d] > d - rem).astype(jnp.int32))  # [N, R, d]
    coords = coords.reshape(n * r, d)
    words = _pack(coords, bound, bits, per_word)                       # [E, nw]
    e = n * r
    # Unique vertices by sorting (the hash table of densecrf, in sorted order).
    order = jnp.lexsort(tuple(words[:, k] for k in reversed(range(words.shape[1]))))
    sorted_words = words[order]
    new = jnp.concatenate(
        [jnp.ones((1,), bool), jnp.any(sorted_words[1:] != sorted_words[:-1], axis=-1)])
    vertex = jnp.cumsum(new.astype(jnp.int32)) - 1
    offsets = jnp.zeros((e,), jnp.int32).at[order].set(vertex + 1).reshape(n, r)
    table = jnp.full((e, words.shape[1]), _SENTINEL, jnp.int32).at[vertex].set(sorted_words)
    vcoords = jnp.zeros((e, d), jnp.int32).at[vertex].set(coords[order])
    valid = jnp.zeros((e,), bool).at[vertex].set(True)
    # Blur neighbours along each of the d+1 lattice axes: n1 = key + s_j, n2 = key - s_j with
    # s_j = (-1, ..., -1, d at j, -1, ...). Only n1 is searched: n2 is its inverse
    # (n1_j(v) = u  <=>  n2_j(u) = v).
    step = np.full((r, d), -1, np.int32)
    step[np.arange(d), np.arange(d)] = d
    queries = _pack(vcoords[None] + step[:, None], bound, bits, per_word)     # [R, E, nw]
    n1 = _lookup(table, queries.reshape(r * e, -1)).reshape(r, e)
    n1 = jnp.where(valid, n1, 0)                                              # slots, 0 = absent
    slot = jnp.broadcast_to(jnp.arange(1, e + 1, dtype=jnp.int32), (r, e))
    n2 = jnp.zeros((r, e + 1), jnp.int32).at[
        jnp.arange(r)[:, None], jnp.where(n1 > 0, n1, e + 1)].set(slot, mode="drop")
    n1 = jnp.concatenate([jnp.zeros((r, 1), jnp.int32), n1], -1)
    return offsets[:n_pixels], weights[:n_pixels], jnp.stack([n1, n2], 1)


def _lattice_filter(x: jax.Array, offsets, weights, neighbours, sequential: bool) -> jax.Array:
    """Splat, blur, slice (pydensecrf `Permutohedral::compute`). x: float[N, V] -> float[N, V]."""
    n, r = offsets.shape
    v = x.shape[-1]
    contrib = (weights[:, :, None] * x[:, None, :]).reshape(n * r, v)
    values = jnp.zeros((neighbours.shape[-1], v), x.dtype).at[offsets.reshape(-1)].add(contrib)
    for j in range(r):          # indices are in [0, E] by construction
        n1 = values.at[neighbours[j, 0]].get(mode="promise_in_bounds")
        n2 = values.at[neighbours[j, 1]].get(mode="promise_in_bounds")
        values = values + 0.5 * (n1 + n2)
    alpha = np.float32(1.0 / (1.0 + 2.0 ** -(r - 1)))
    out = jnp.zeros_like(x)
    for j in range(r):
        gathered = values[offsets[:, j]]
        if sequential:          # seqCompute (value_size <= 2): w * value * alpha
            out = out + weights[:, j:j + 1] * gathered * alpha
        else:                   # sseCompute: (w * alpha) * value
            out = out + (weights[:, j:j + 1] * alpha) * gathered
    return out


def _lattice_apply(index: jax.Array, tables: Sequence[np.ndarray]):
    """K~ q for the lattice kernel of the features (NORMALIZE_SYMMETRIC).

    Under `vmap`, a lattice of unbatched features (the spatial kernel) is built once per call.
    """
    n = index.shape[0]
    lattice = _lattice_build(index, tables)
    norm = _lattice_filter(jnp.ones((n, 1), jnp.float32), *lattice, sequential=True)
    norm = 1.0 / jnp.sqrt(norm + 1e-20)

    def apply(q):
        out = _lattice_filter(q * norm, *lattice, sequential=q.shape[-1] <= 2)
        return out * norm

    return apply


def _lattice_messages(image, h, w, c, *, bi_w, bi_xy, bi_rgb, pos_w, pos_xy, precision):
    del c, precision
    msgs = []
    if pos_w != 0.0:
        msgs.append((pos_w, _lattice_apply(_feature_index(h, w, None),
                                           _feature_tables(h, w, pos_xy, None))))
    if bi_w != 0.0:
        msgs.append((bi_w, _lattice_apply(_feature_index(h, w, image),
                                          _feature_tables(h, w, bi_xy, bi_rgb))))
    return msgs


# ----------------------------------------------------------------------------------------------
# Public JAX CRF.
# ----------------------------------------------------------------------------------------------


def dense_crf(
    images: jax.Array,
    probs: jax.Array,
    *,
    unary: str = "prob",            # official training: energy -P (krahenbuhl2013 CRF wrapper)
    bi_w: float = 10.0,             # krahenbuhl2013 CRF: bilateral Potts weight 10
    bi_xy: float = 80.0 / 12.0,     # 80 px / scale_factor 12 (pylayers.py CRFLayer)
    bi_rgb: float = 13.0,           # colour width 13
    pos_w: float = 3.0,             # Gaussian Potts weight 3
    pos_xy: float = 3.0 / 12.0,     # 3 px / scale_factor 12
    iterations: int = 10,           # maxiter=10
    kernel: str = "lattice",        # the official CRF's approximation; "exact": no approximation
    min_prob: float = MIN_PROB,     # pylayers.py min_prob: clamp, then renormalise (0: off)
    max_kernel_bytes: int = _DEFAULT_MAX_KERNEL_BYTES,
    precision: lax.Precision = lax.Precision.HIGHEST,
) -> jax.Array:
    """Mean-field dense CRF on a small grid, pure and jitted (defaults: the official training CRF).

    Args:
      images: uint8[B, H, W, 3], the image at the grid size (see `downsample_image`).
      probs: float[B, H, W, C], class probabilities.
      unary: "prob" (energy -P, official training) or "logprob" (energy -log P, official test).
      bi_w, bi_xy, bi_rgb: bilateral Potts weight, spatial width (px), colour width.
      pos_w, pos_xy: Gaussian Potts weight and spatial width (px). A weight of 0 drops the term.
      iterations: mean-field iterations.
      kernel: "lattice" (pydensecrf's permutohedral approximation, which the official code ran;
        agrees with pydensecrf2 to float rounding), "exact" (explicit Gaussian kernels, the
        exact model; a few percent of pixels differ from the lattice's result) or "auto"
        (`resolve_kernel`: "exact" for grids of at most AUTO_EXACT_MAX_PIXELS pixels, else
        "lattice").
      min_prob: output floor before renormalising (official training 1e-4; 0 = raw mean field, as
        pydensecrf returns it).
      max_kernel_bytes: "exact" refuses calls whose bilateral kernels (B * (H*W)^2 * 4 bytes)
        exceed this; use kernel="lattice" or `dense_crf_host` for such sizes.
      precision: matmul precision of "exact" (HIGHEST: float32 also on TPU/GPU tensor cores).

    Returns:
      Q: float32[B, H, W, C], the CRF marginals (rows sum to 1).

    Memory: "lattice": linear, O(B * H*W * (d+1) * (C + 2(d+1))), d = 5; "exact": quadratic,
    B * (H*W)^2 * 4 bytes for the bilateral kernels plus O(B * H*W * C). XLA's temporary buffers
    measured on CPU at 41x41, C=21: 13 MB per image ("lattice"), 11 MB per image ("exact").

    Differentiable in `probs` (plain autodiff through the iterations). The official training
    gradient does not differentiate the CRF (`dsrg_jax.ops.losses.constrain_loss` passes it
    through and gives Q no gradient): call `dense_crf(images, lax.stop_gradient(probs))` there,
    so that no (zero) backward pass runs through the iterations.
    """
    _check_common("dense_crf", images, probs, unary, iterations, min_prob, batched=True)
    _check_kernel_params("dense_crf", bi_w=bi_w, bi_xy=bi_xy, bi_rgb=bi_rgb, pos_w=pos_w,
                         pos_xy=pos_xy)
    if kernel not in _KERNELS:
        raise ValueError(f"dense_crf: `kernel` must be one of {_KERNELS}, got {kernel!r}")
    b, h, w, _ = probs.shape
    n = h * w
    kernel = resolve_kernel(kernel, probs.shape, max_kernel_bytes=max_kernel_bytes)
    if kernel == "exact" and bi_w != 0.0 and b * n * n * 4 > max_kernel_bytes:
        raise ValueError(
            f"dense_crf: the exact bilateral kernels of `probs` {tuple(probs.shape)} need "
            f"{b * n * n * 4 / 2**20:.0f} MiB (B * (H*W)^2 * 4 bytes) > max_kernel_bytes="
            f"{max_kernel_bytes / 2**20:.0f} MiB. For full-resolution images use the host CRF "
            f"(dsrg_jax.ops.crf.dense_crf_host / dense_crf_host_batch, pydensecrf2) or "
            f"kernel='lattice'; or raise max_kernel_bytes")
    # The unary mode and the floor are traced, so switching them does not recompile.
    return _dense_crf(images, probs, jnp.asarray(unary == "logprob"),
                      jnp.asarray(min_prob, jnp.float32), bi_w=float(bi_w), bi_xy=float(bi_xy),
                      bi_rgb=float(bi_rgb), pos_w=float(pos_w), pos_xy=float(pos_xy),
                      iterations=int(iterations), kernel=kernel, precision=precision)


def resolve_kernel(kernel: str, probs_shape: Sequence[int], *,
                   max_kernel_bytes: int = _DEFAULT_MAX_KERNEL_BYTES) -> str:
    """The JAX CRF kernel `dense_crf` runs for `kernel` on probabilities of `probs_shape`.

    "exact" and "lattice" are returned as given. "auto" is "exact" when the grid has at most
    AUTO_EXACT_MAX_PIXELS pixels and the call's bilateral kernels (B * (H*W)^2 * 4 bytes) fit in
    `max_kernel_bytes`, else "lattice". On CPU "exact" is the faster kernel on training grids
    (15x15: 5 vs 52 ms per batch of 20; 41x41: see docs/benchmarks.md "Dense CRF"), but it is
    the exact model, not pydensecrf's lattice approximation: 92-97% argmax agreement with
    pydensecrf2 instead of bit-level agreement.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"dense_crf: `kernel` must be one of {_KERNELS}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    b, h, w = (int(d) for d in probs_shape[:3])
    n = h * w
    return "exact" if n <= AUTO_EXACT_MAX_PIXELS and b * n * n * 4 <= max_kernel_bytes \
        else "lattice"


@functools.partial(
    jax.jit,
    static_argnames=("bi_w", "bi_xy", "bi_rgb", "pos_w", "pos_xy", "iterations", "kernel",
                     "precision"))
def _dense_crf(images, probs, log_unary, min_prob, *, bi_w, bi_xy, bi_rgb, pos_w, pos_xy,
               iterations, kernel, precision):
    """`dense_crf` after its checks; log_unary: bool[], min_prob: float32[] (traced)."""
    _, h, w, c = probs.shape
    n = h * w
    make = _exact_messages if kernel == "exact" else _lattice_messages
    params = dict(bi_w=bi_w, bi_xy=bi_xy, bi_rgb=bi_rgb, pos_w=pos_w, pos_xy=pos_xy,
                  precision=precision)

    def one(image, p):
        p = p.astype(jnp.float32)
        u = jnp.where(log_unary, _unary_energy(p, "logprob"), _unary_energy(p, "prob"))
        q = _mean_field(u.reshape(n, c), make(image, h, w, c, **params), iterations)
        return q.reshape(h, w, c)

    q = jax.vmap(one)(images, probs)
    floored = jnp.maximum(q, min_prob)
    floored = floored / jnp.sum(floored, axis=-1, keepdims=True)
    return jnp.where(min_prob > 0, floored, q)


# ----------------------------------------------------------------------------------------------
# Host CRF: pydensecrf2.
# ----------------------------------------------------------------------------------------------


def _host_one(image: np.ndarray, probs: np.ndarray, unary: str, bi_w: float, bi_xy: float,
              bi_rgb: float, pos_w: float, pos_xy: float, iterations: int,
              min_prob: float) -> np.ndarray:
    """One pydensecrf2 inference; image uint8[H, W, 3], probs float[H, W, C] -> float32[H, W, C]."""
    import pydensecrf.densecrf as dcrf   # pydensecrf2 on PyPI; compiled extension

    h, w, c = probs.shape
    u = _unary_energy(np.asarray(probs), unary, xp=np)
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(np.ascontiguousarray(u.reshape(h * w, c).T, dtype=np.float32))
    if pos_w != 0.0:
        crf.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    if bi_w != 0.0:
        crf.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb,
                                 rgbim=np.require(image, np.uint8, ("C", "W")), compat=bi_w)
    q = np.asarray(crf.inference(int(iterations)), dtype=np.float32)
    q = np.ascontiguousarray(q.T.reshape(h, w, c))
    return _clamp_renormalise(q, min_prob, xp=np).astype(np.float32)


def _host_params(fn: str, image, probs, batched: bool, **params) -> dict:
    _check_common(fn, image, probs, params["unary"], params["iterations"], params["min_prob"],
                  batched=batched)
    _check_kernel_params(fn, bi_w=params["bi_w"], bi_xy=params["bi_xy"],
                         bi_rgb=params["bi_rgb"], pos_w=params["pos_w"],
                         pos_xy=params["pos_xy"])
    return {k: (v if k == "unary" else int(v) if k == "iterations" else float(v))
            for k, v in params.items()}


def dense_crf_host(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    unary: str = "logprob",         # official test time: energy -log P (DESIGN.md 2.5)
    bi_w: float = 10.0,
    bi_xy: float = 80.0,            # full-resolution widths (scale_factor 1)
    bi_rgb: float = 13.0,
    pos_w: float = 3.0,
    pos_xy: float = 3.0,
    iterations: int = 10,
    min_prob: float = 0.0,
) -> np.ndarray:
    """pydensecrf2 dense CRF of one image on the host (defaults: the official test-time CRF).

    Same parameters as `dense_crf`; pass `**TRAIN_CRF` for the official training CRF.

    Args:
      image: uint8[H, W, 3] (any size).
      probs: float[H, W, C].

    Returns:
      float32[H, W, C]. Memory: pydensecrf's lattice, O(H*W * 6 * C) floats.
    """
    params = _host_params("dense_crf_host", image, probs, False, unary=unary, bi_w=bi_w,
                          bi_xy=bi_xy, bi_rgb=bi_rgb, pos_w=pos_w, pos_xy=pos_xy,
                          iterations=iterations, min_prob=min_prob)
    return _host_one(np.asarray(image), np.asarray(probs), **params)


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


def _host_batch_np(images: np.ndarray, probs: np.ndarray, processes: int | None,
                   executor: concurrent.futures.Executor | None, params: dict) -> np.ndarray:
    b = probs.shape[0]
    out = np.empty(probs.shape, np.float32)
    if b == 0:
        return out
    workers = (os.cpu_count() or 1) if processes is None else int(processes)
    if executor is None and (workers <= 1 or b == 1):
        for i in range(b):
            out[i] = _host_one(images[i], probs[i], **params)
        return out
    pool = executor if executor is not None else _default_pool(workers)
    fn = functools.partial(_host_one, **params)
    chunk = max(1, b // (4 * workers)) if executor is None else 1
    for i, q in enumerate(pool.map(fn, list(images), list(probs), chunksize=chunk)):
        out[i] = q
    return out


def dense_crf_host_batch(
    images: np.ndarray,
    probs: np.ndarray,
    *,
    processes: int | None = None,
    executor: concurrent.futures.Executor | None = None,
    unary: str = "logprob",
    bi_w: float = 10.0,
    bi_xy: float = 80.0,
    bi_rgb: float = 13.0,
    pos_w: float = 3.0,
    pos_xy: float = 3.0,
    iterations: int = 10,
    min_prob: float = 0.0,
) -> np.ndarray:
    """`dense_crf_host` over a batch on every CPU core (a process pool); same result as serial.

    Args:
      images: uint8[B, H, W, 3].
      probs: float[B, H, W, C].
      processes: worker processes (None: os.cpu_count(); 1: serial in this process). The pool is
        started once (spawned: a script calling this needs the `if __name__ == "__main__":`
        guard) and reused; `shutdown_pools()` stops it.
      executor: use this `concurrent.futures` executor instead of the built-in pool.
      (other arguments as `dense_crf_host`)

    Returns:
      float32[B, H, W, C].
    """
    params = _host_params("dense_crf_host_batch", images, probs, True, unary=unary, bi_w=bi_w,
                          bi_xy=bi_xy, bi_rgb=bi_rgb, pos_w=pos_w, pos_xy=pos_xy,
                          iterations=iterations, min_prob=min_prob)
    return _host_batch_np(np.asarray(images), np.asarray(probs), processes, executor, params)


def dense_crf_callback(
    images: jax.Array,
    probs: jax.Array,
    *,
    processes: int | None = 1,
    **params: Any,
) -> jax.Array:
    """pydensecrf2 CRF callable from jitted code (`jax.pure_callback`); no gradient flows through.

    Under plain `jit` on a sharded batch the callback gathers the whole global batch onto one
    device; use `sharded_dense_crf_host` there. Parameters as `dense_crf_host`
    (defaults: test time; pass `**TRAIN_CRF` for the official training CRF).

    Args:
      images: uint8[B, H, W, 3].
      probs: float[B, H, W, C] (treated as constant: wrapped in `stop_gradient`).
      processes: host worker processes per call (1: in the calling thread; None: all cores).

    Returns:
      float32[B, H, W, C].
    """
    defaults = dict(unary="logprob", bi_w=10.0, bi_xy=80.0, bi_rgb=13.0, pos_w=3.0, pos_xy=3.0,
                    iterations=10, min_prob=0.0)
    unknown = set(params) - set(defaults)
    if unknown:
        raise TypeError(f"dense_crf_callback: unknown parameters {sorted(unknown)}")
    params = _host_params("dense_crf_callback", images, probs, True, **{**defaults, **params})

    def host(images_np, probs_np):
        # Under vmap ("broadcast_all") extra leading axes arrive: treat them as batch.
        probs_np = np.asarray(probs_np)
        images_np = np.asarray(images_np).reshape(-1, *images_np.shape[-3:])
        q = _host_batch_np(images_np, probs_np.reshape(-1, *probs_np.shape[-3:]), processes,
                           None, params)
        return q.reshape(probs_np.shape)

    shape = jax.ShapeDtypeStruct(probs.shape, jnp.float32)
    return jax.pure_callback(host, shape, lax.stop_gradient(images), lax.stop_gradient(probs),
                             vmap_method="broadcast_all")


def sharded_dense_crf_host(
    images: jax.Array,
    probs: jax.Array,
    *,
    mesh: Mesh,
    axis: str = "data",
    processes: int | None = 1,
    **params: Any,
) -> jax.Array:
    """pydensecrf2 CRF of a batch sharded over `mesh` axis `axis`, one host call per local shard.

    `jax.shard_map` around `dense_crf_callback`: each device's shard goes to the host of that
    device and the result stays sharded `P(axis)` (no gather of the global batch). Usable inside
    `jit`, e.g. to train with pydensecrf2 itself, as the official code does.

    Args:
      images: uint8[B, H, W, 3], B divisible by the size of `axis`.
      probs: float[B, H, W, C].
      mesh: the device mesh; axis: its batch axis name.
      processes: host worker processes per shard call (1: in the calling thread).
      **params: as `dense_crf_host`.

    Returns:
      float32[B, H, W, C], sharded like the inputs.
    """
    spec = P(axis)
    fn = functools.partial(dense_crf_callback, processes=processes, **params)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec), out_specs=spec)(images, probs)
