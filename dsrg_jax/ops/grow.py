"""Deep seeded region growing (DSRG, Huang et al. CVPR 2018, section 3.2) as a pure JAX function.

The rules (DESIGN.md 2.3 step 2, the official Caffe layer's `generate_seed_step`), per image:
  1. Among the classes present in the image (background always present): `a = argmax Q`,
     `p = max Q` (first index wins a tie, as numpy's argmax).
  2. Label map: every cue pixel gets its cue class (several cues: the highest class index wins),
     other pixels are unlabelled; then every pixel with `a != 0 and p > theta_fg`, or
     `a == 0 and p > theta_bg`, is overwritten with `a`.
  3. For each present class c: the 8-connected components of `label == c` that contain an original
     cue of c are added to the cues of c, except pixels that are a cue of exactly one other class.
  4. Cues are only ever added.

Because the label map gives each pixel one label, the components of all classes are disjoint and one
single-channel flood fill grows them all at once: a pixel is reached when a neighbour with the same
label is reached. Each `lax.while_loop` iteration runs a whole-run fill along rows, one along columns
(log-depth prefix ORs over runs of equal label, so a straight region fills in one step, not one pixel
per step) and one diagonal dilation; the loop stops when nothing changes. All masks that depend only
on the label map are computed once, outside the loop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Growth thresholds of the official code (DSRG `th_f`, `th_b`; DESIGN.md 2.3).
THETA_FG = 0.85
THETA_BG = 0.99

_UNLABELLED = -1


def _check_inputs(probs, seeds, image_labels) -> None:
    """Trace-time checks of shapes and dtypes, with messages naming the argument."""
    for name, x in (("probs", probs), ("seeds", seeds), ("image_labels", image_labels)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"dsrg_grow: `{name}` must be an array, got {type(x).__name__}")
    if probs.ndim != 4:
        raise ValueError(
            f"dsrg_grow: `probs` must be float[B, H, W, C], got shape {tuple(probs.shape)}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise TypeError(f"dsrg_grow: `probs` must have a floating dtype, got {probs.dtype}")
    b, h, w, c = probs.shape
    if c < 2:
        raise ValueError(
            f"dsrg_grow: `probs` needs at least 2 classes (background + one), got C={c}")
    if seeds.dtype != jnp.bool_:
        raise TypeError(
            f"dsrg_grow: `seeds` must be bool[B, H, W, C] (multi-hot cues), got dtype "
            f"{seeds.dtype}; convert with `seeds.astype(bool)`")
    if tuple(seeds.shape) != (b, h, w, c):
        raise ValueError(
            f"dsrg_grow: `seeds` must have the shape of `probs` {(b, h, w, c)}, "
            f"got {tuple(seeds.shape)}")
    if image_labels.dtype != jnp.bool_:
        raise TypeError(
            f"dsrg_grow: `image_labels` must be bool[B, C], got dtype {image_labels.dtype}; "
            f"convert with `image_labels.astype(bool)`")
    if tuple(image_labels.shape) != (b, c):
        raise ValueError(
            f"dsrg_grow: `image_labels` must be bool[B, C] = {(b, c)}, "
            f"got shape {tuple(image_labels.shape)}")


def _shift(x: jax.Array, offset: int, axis: int, fill) -> jax.Array:
    """`y[i] = x[i - offset]` along `axis`, `fill` where `i - offset` falls outside."""
    n = x.shape[axis]
    if abs(offset) >= n:
        return jnp.full_like(x, fill)
    pad_shape = list(x.shape)
    pad_shape[axis] = abs(offset)
    pad = jnp.full(pad_shape, fill, x.dtype)
    if offset > 0:
        return jnp.concatenate([pad, lax.slice_in_dim(x, 0, n - offset, axis=axis)], axis=axis)
    return jnp.concatenate([lax.slice_in_dim(x, -offset, n, axis=axis), pad], axis=axis)


def _pack_bits(x: jax.Array) -> jax.Array:
    """bool[B, H, W] -> uint32[G, H, W], G = ceil(B / 32): image b is bit b % 32 of word b // 32."""
    b = x.shape[0]
    groups = -(-b // 32)
    x = jnp.pad(x, ((0, groups * 32 - b), (0, 0), (0, 0))).astype(jnp.uint32)
    x = x.reshape(groups, 32, *x.shape[1:])
    bits = jnp.arange(32, dtype=jnp.uint32)[None, :, None, None]
    return jnp.sum(x << bits, axis=1, dtype=jnp.uint32)  # distinct bits: the sum is an OR


def _unpack_bits(words: jax.Array, batch: int) -> jax.Array:
    """uint32[G, H, W] -> bool[batch, H, W], the inverse of `_pack_bits`."""
    bits = jnp.arange(32, dtype=jnp.uint32)[None, :, None, None]
    x = (words[:, None] >> bits) & jnp.uint32(1)
    return x.reshape(-1, *words.shape[1:])[:batch].astype(bool)


def _run_masks(same_as_previous: jax.Array, axis: int) -> list[tuple[int, jax.Array, jax.Array]]:
    """Masks for a log-depth prefix OR over runs of equal label along `axis` (bit-packed).

    Args:
      same_as_previous: uint32[G, H, W], bit set where a pixel has the label of its predecessor
        along `axis`.

    Returns:
      `(k, left_k, right_k)` for k = 1, 2, 4, ...: `left_k` has a pixel's bit set when positions
      `i - k .. i` lie in one run, `right_k` when `i .. i + k` do.
    """
    masks = []
    same, k = same_as_previous, 1
    while k < same.shape[axis]:
        masks.append((k, same, _shift(same, -k, axis, 0)))
        same = same & _shift(same, k, axis, 0)  # i-2k .. i from i-2k .. i-k and i-k .. i
        k *= 2
    return masks


def _fill_runs(reached: jax.Array, masks, axis: int) -> jax.Array:
    """Spreads `reached` over every run (of equal label along `axis`) that holds a reached pixel."""
    forward, backward = reached, reached
    for k, left_k, right_k in masks:
        forward = forward | (_shift(forward, k, axis, 0) & left_k)
        backward = backward | (_shift(backward, -k, axis, 0) & right_k)
    return forward | backward


def _shift2d(x: jax.Array, dy: int, dx: int, fill) -> jax.Array:
    return _shift(_shift(x, dy, 1, fill), dx, 2, fill)


_DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _dilate_diagonal(reached: jax.Array, masks) -> jax.Array:
    out = reached
    for (dy, dx), same in zip(_DIAGONALS, masks):
        out = out | (_shift2d(reached, dy, dx, 0) & same)
    return out


def flood_same_label(label: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pixels 8-connected to a `start` pixel through pixels of one label.

    The fill runs on bit-packed planes (32 images per uint32 word), so one word operation moves
    the front of 32 images at once.

    Args:
      label: int[B, H, W] label map; pixels connect only to neighbours of the same label.
      start: bool[B, H, W] pixels the fill starts from.

    Returns:
      (reached bool[B, H, W], iterations int32[]) where `reached` is the union of the 8-connected
      components of `{label == l}` (over all l) that contain a start pixel.
    """
    outside = jnp.iinfo(label.dtype).min  # a label no pixel has
    row_masks = _run_masks(_pack_bits(label == _shift(label, 1, 2, outside)), axis=2)
    col_masks = _run_masks(_pack_bits(label == _shift(label, 1, 1, outside)), axis=1)
    diag_masks = [_pack_bits(label == _shift2d(label, dy, dx, outside)) for dy, dx in _DIAGONALS]

    def grow_once(reached):
        reached = _fill_runs(reached, row_masks, axis=2)
        reached = _fill_runs(reached, col_masks, axis=1)
        return _dilate_diagonal(reached, diag_masks)

    def cond(carry):
        _, changed, _ = carry
        return changed

    def body(carry):
        reached, _, iterations = carry
        grown = grow_once(reached)
        return grown, jnp.any(grown != reached), iterations + 1

    # The initial carry is built from the inputs (not Python constants) so that the loop also
    # traces under shard_map / an explicit mesh (DESIGN.md 5).
    changed0 = jnp.any(start) | True
    iterations0 = jnp.sum(start[:0], dtype=jnp.int32)
    reached, _, iterations = lax.while_loop(
        cond, body, (_pack_bits(start), changed0, iterations0))
    return _unpack_bits(reached, start.shape[0]), iterations


def _max_and_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Max and argmax over the last axis in one reduction (first index wins a tie, as numpy)."""
    index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)

    def pick(a, b):
        (a_value, a_index), (b_value, b_index) = a, b
        take_b = (b_value > a_value) | ((b_value == a_value) & (b_index < a_index))
        return jnp.where(take_b, b_value, a_value), jnp.where(take_b, b_index, a_index)

    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(jnp.iinfo(jnp.int32).max, jnp.int32))
    return lax.reduce((x, index), init, pick, (x.ndim - 1,))


def _pack_classes(x: jax.Array) -> jax.Array:
    """bool[..., C] -> uint32[..., G], G = ceil(C / 32): class c is bit c % 32 of word c // 32."""
    num_classes = x.shape[-1]
    groups = -(-num_classes // 32)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, groups * 32 - num_classes)])
    x = x.reshape(*x.shape[:-1], groups, 32).astype(jnp.uint32)
    return jnp.sum(x << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def _unpack_classes(words: jax.Array, num_classes: int) -> jax.Array:
    """uint32[..., G] -> bool[..., num_classes], the inverse of `_pack_classes`."""
    bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & jnp.uint32(1)
    return bits.reshape(*words.shape[:-1], -1)[..., :num_classes].astype(bool)


def _highest_class(words: jax.Array) -> jax.Array:
    """Highest set class of packed classes uint32[..., G] -> int32[...], -1 where none is set."""
    group_offset = 32 * jnp.arange(words.shape[-1], dtype=jnp.int32)
    highest = 31 - lax.clz(words).astype(jnp.int32) + group_offset  # clz(0) = 32 gives -1 + 32g
    return jnp.max(jnp.where(words != 0, highest, _UNLABELLED), axis=-1)


def _has_class(words: jax.Array, class_id: jax.Array) -> jax.Array:
    """Whether class `class_id` int32[...] is set in packed classes uint32[..., G] (-1: False)."""
    group = jnp.arange(words.shape[-1], dtype=jnp.int32)
    bit = jnp.left_shift(jnp.uint32(1), (class_id % 32).astype(jnp.uint32))
    in_group = group == (class_id // 32)[..., None]
    return jnp.any(in_group & ((words & bit[..., None]) != 0), axis=-1) & (class_id >= 0)


def _class_bit(class_id: jax.Array, on: jax.Array, groups: int) -> jax.Array:
    """Packed classes uint32[..., G] with only `class_id` set, where `on` (else nothing)."""
    group = jnp.arange(groups, dtype=jnp.int32)
    bit = jnp.left_shift(jnp.uint32(1), (jnp.maximum(class_id, 0) % 32).astype(jnp.uint32))
    hit = on[..., None] & (group == (class_id // 32)[..., None])
    return jnp.where(hit, bit[..., None], jnp.uint32(0))


def growth_label_map(probs: jax.Array, seeds: jax.Array, image_labels: jax.Array, *,
                     theta_fg: float = THETA_FG, theta_bg: float = THETA_BG
                     ) -> tuple[jax.Array, jax.Array]:
    """The label map of rule 2 and where a pixel's label comes from confidence.

    Args:
      probs: float[B, H, W, C] class probabilities (channel 0 = background).
      seeds: bool[B, H, W, C] multi-hot cues.
      image_labels: bool[B, C] classes present; channel 0 is treated as present.

    Returns:
      (label int32[B, H, W] with -1 for unlabelled pixels, confident bool[B, H, W]).
    """
    class_ids = jnp.arange(probs.shape[-1], dtype=jnp.int32)
    present = image_labels | (class_ids == 0)
    best_prob, best_class = _max_and_argmax(
        jnp.where(present[:, None, None, :], probs, -jnp.inf))
    confident = jnp.where(best_class == 0, best_prob > theta_bg, best_prob > theta_fg)
    cue_label = _highest_class(_pack_classes(seeds))
    return jnp.where(confident, best_class, cue_label), confident


@jax.jit
def dsrg_grow(probs: jax.Array, seeds: jax.Array, image_labels: jax.Array, *,
              theta_fg: float = THETA_FG, theta_bg: float = THETA_BG) -> jax.Array:
    """Grows seed cues into confidently predicted, connected regions (DSRG).

    Pure and jitted; usable under `jit`, `vmap` and `shard_map`, with no host round trip.

    Args:
      probs: float[B, H, W, C] class probabilities (e.g. the CRF output Q), channel 0 background.
        Treated as a constant (no gradient flows through growth).
      seeds: bool[B, H, W, C] original multi-hot cues; all False means an unlabelled pixel.
      image_labels: bool[B, C] classes present in each image; channel 0 is always treated as
        present.
      theta_fg: foreground threshold, a pixel joins a foreground class when its probability is
        above it (official 0.85).
      theta_bg: background threshold (official 0.99).

    Returns:
      bool[B, H, W, C]: the grown cues, a superset of `seeds`.

    Raises:
      TypeError / ValueError at trace time when a shape or dtype is wrong, naming the argument.
    """
    _check_inputs(probs, seeds, image_labels)
    probs = lax.stop_gradient(probs)
    num_classes = probs.shape[-1]
    present = image_labels | (jnp.arange(num_classes) == 0)
    # Classes are handled as bits (32 per uint32 word): one word op per pixel instead of C.
    seed_words = _pack_classes(seeds)                                  # uint32[B, H, W, G]
    present_words = _pack_classes(present)[:, None, None, :]           # uint32[B, 1, 1, G]

    label, confident = growth_label_map(probs, seeds, image_labels,
                                        theta_fg=theta_fg, theta_bg=theta_bg)
    # A confident label is a present class by construction; a cue label may be an absent one.
    is_cue_of_label = _has_class(seed_words, label)
    start = is_cue_of_label & (confident | _has_class(present_words, label))
    reached, _ = flood_same_label(label, start)

    num_cues = jnp.sum(lax.population_count(seed_words), axis=-1)
    cue_of_one_other_class = (num_cues == 1) & ~is_cue_of_label
    added = reached & ~cue_of_one_other_class
    grown_words = seed_words | _class_bit(label, added, seed_words.shape[-1])
    return _unpack_classes(grown_words, num_classes)
