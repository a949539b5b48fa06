"""The permutohedral lattice (Adams et al. 2010) of pydensecrf, in JAX with static shapes.

The "lattice" kernel of `dsrg_jax.ops.crf.dense_crf`: pydensecrf's `permutohedral.cpp` (SSE
build) re-implemented with sort + binary search in place of its hash table, so the same
approximation the official code ran, equal to pydensecrf2 to float rounding. Memory
O(B * N * (d+1) * C), d = 5 (bilateral) or 2 (spatial).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def feature_tables(h: int, w: int, xy: float, rgb: float | None) -> list[np.ndarray]:
    """densecrf's feature values as float32 tables computed here with IEEE division.

    The values are `x / xy, y / xy (, c / rgb for c in 0..255)`. XLA may divide through a
    reciprocal, which rounds differently and would move lattice points."""
    tables = [np.arange(w, dtype=np.float32) / np.float32(xy),
              np.arange(h, dtype=np.float32) / np.float32(xy)]
    if rgb is not None:
        tables += [np.arange(256, dtype=np.float32) / np.float32(rgb)] * 3
    return tables


def feature_index(h: int, w: int, image: jax.Array | None) -> jax.Array:
    """int32[H*W, d]: per pixel, the row of each feature table (x, y, and the colours)."""
    yy, xx = np.meshgrid(np.arange(h, dtype=np.int32), np.arange(w, dtype=np.int32),
                         indexing="ij")
    index = jnp.asarray(np.stack([xx, yy], -1).reshape(h * w, 2))
    if image is None:
        return index
    return jnp.concatenate([index, image.reshape(h * w, 3).astype(jnp.int32)], -1)


def features(index: jax.Array, tables: Sequence[np.ndarray]) -> jax.Array:
    """float32[N, d] feature vectors from `feature_index` and `feature_tables`."""
    return jnp.stack([jnp.asarray(t)[index[:, k]] for k, t in enumerate(tables)], -1)


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
    """Slot (1-based row of `table`) of each query key, 0 where absent, by binary search.

    table: int32[E, nw], sorted lexicographically (sentinel rows last); queries: int32[Q, nw]."""
    e = table.shape[0]
    # Bounds built from the inputs (not constants) so the loop traces under shard_map with its
    # varying-axis check on.
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
    """Permutohedral lattice of the features `tables[k][index[:, k]]`.

    pydensecrf `Permutohedral::init`, SSE build. index: int32[N, d]; tables: d float32 numpy tables.

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


def lattice_messages(image, h, w, c, *, bi_w, bi_xy, bi_rgb, pos_w, pos_xy, precision):
    del c, precision
    msgs = []
    if pos_w != 0.0:
        msgs.append((pos_w, _lattice_apply(feature_index(h, w, None),
                                           feature_tables(h, w, pos_xy, None))))
    if bi_w != 0.0:
        msgs.append((bi_w, _lattice_apply(feature_index(h, w, image),
                                          feature_tables(h, w, bi_xy, bi_rgb))))
    return msgs
