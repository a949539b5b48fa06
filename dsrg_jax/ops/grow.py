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
per step) and one diagonal dilation; the loop stops when nothing changes. The fill works on
bit-packed planes (bit b of a uint32 word = image b), so one word operation advances 32 images, and
the label-equality masks it needs are built once, outside the loop, from bit planes of the label
map. Per pixel, the C cue channels are packed into ceil(C / 32) words too, so the multi-hot rules
(highest cue class, "cue of exactly one other class") are word operations instead of passes over C.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

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
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (offset, -offset, 0)  # one `pad` op: XLA fuses it with its consumers
    return lax.pad(x, jnp.array(fill, x.dtype), config)


def _shift2d(x: jax.Array, dy: int, dx: int, fill) -> jax.Array:
    """`y[:, i, j] = x[:, i - dy, j - dx]` on [G, H, W] planes."""
    return _shift(_shift(x, dy, 1, fill), dx, 2, fill)


# --- bit packing: images along the word for the fill, classes along the word per pixel ---------

def _pack_images(x: jax.Array) -> jax.Array:
    """bool[B, H, W] -> uint32[G, H, W], G = ceil(B / 32): image b is bit b % 32 of word b // 32."""
    words = []
    for first in range(0, x.shape[0], 32):
        word = x[first].astype(jnp.uint32)
        for bit in range(1, min(32, x.shape[0] - first)):
            word = word | (x[first + bit].astype(jnp.uint32) << bit)
        words.append(word)
    return jnp.stack(words)


def _unpack_images(words: jax.Array, batch: int) -> jax.Array:
    """uint32[G, H, W] -> bool[batch, H, W], the inverse of `_pack_images`."""
    bits = jnp.arange(32, dtype=jnp.uint32)[None, :, None, None]
    x = (words[:, None] >> bits) & jnp.uint32(1)
    return x.reshape(-1, *words.shape[1:])[:batch].astype(bool)


def _pack_classes(x: jax.Array) -> jax.Array:
    """bool[..., C] -> uint32[..., G], G = ceil(C / 32): class c is bit c % 32 of word c // 32."""
    num_classes = x.shape[-1]
    groups = -(-num_classes // 32)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, groups * 32 - num_classes)])
    x = x.reshape(*x.shape[:-1], groups, 32).astype(jnp.uint32)
    return jnp.sum(x << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def _unpack_classes(words: jax.Array, num_classes: int) -> jax.Array:
    """uint32[..., G] -> bool[..., num_classes], the inverse of `_pack_classes`."""
    parts = []
    for group in range(words.shape[-1]):
        bits = jnp.arange(min(32, num_classes - 32 * group), dtype=jnp.uint32)
        parts.append((words[..., group:group + 1] >> bits) & jnp.uint32(1))
    return jnp.concatenate(parts, axis=-1).astype(bool)


def _highest_class(words: jax.Array) -> jax.Array:
    """Highest set class of packed classes uint32[..., G] -> int32[...], -1 where none is set."""
    group_offset = 32 * jnp.arange(words.shape[-1], dtype=jnp.int32)
    highest = 31 - lax.clz(words).astype(jnp.int32) + group_offset
    return jnp.max(jnp.where(words != 0, highest, _UNLABELLED), axis=-1)


def _has_class(words: jax.Array, class_id: jax.Array) -> jax.Array:
    """Whether class `class_id` int32[...] is set in packed classes uint32[..., G] (-1: False)."""
    group = jnp.arange(words.shape[-1], dtype=jnp.int32)
    bit = jnp.left_shift(jnp.uint32(1), (jnp.maximum(class_id, 0) % 32).astype(jnp.uint32))
    in_group = group == (class_id // 32)[..., None]
    return jnp.any(in_group & ((words & bit[..., None]) != 0), axis=-1) & (class_id >= 0)


def _class_bit(class_id: jax.Array, on: jax.Array, groups: int) -> jax.Array:
    """Packed classes uint32[..., G] with only `class_id` set, where `on` (else nothing)."""
    group = jnp.arange(groups, dtype=jnp.int32)
    bit = jnp.left_shift(jnp.uint32(1), (jnp.maximum(class_id, 0) % 32).astype(jnp.uint32))
    hit = on[..., None] & (group == (class_id // 32)[..., None])
    return jnp.where(hit, bit[..., None], jnp.uint32(0))


# --- the flood fill on packed planes -----------------------------------------------------------

def _label_planes(label: jax.Array, num_labels: int) -> list[jax.Array]:
    """Bit planes of a label map int[B, H, W] with values in -1..num_labels-1.

    Plane k, uint32[G, H, W], holds bit k of `label + 1` for every image (packed as images), so
    label equality between neighbours becomes a few word operations for 32 images at once.
    """
    value = (label + 1).astype(jnp.uint32)
    return [_pack_images(((value >> k) & 1).astype(bool))
            for k in range(max(1, num_labels.bit_length()))]


def _same_label(planes: list[jax.Array], dy: int, dx: int) -> jax.Array:
    """Packed bits set where a pixel has the label of its neighbour at (-dy, -dx) (inside)."""
    inside = _shift2d(jnp.full_like(planes[0], 0xFFFFFFFF), dy, dx, 0)
    for plane in planes:
        inside = inside & ~(plane ^ _shift2d(plane, dy, dx, 0))
    return inside


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


_DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _dilate_diagonal(reached: jax.Array, masks) -> jax.Array:
    out = reached
    for (dy, dx), same in zip(_DIAGONALS, masks):
        out = out | (_shift2d(reached, dy, dx, 0) & same)
    return out


def flood_same_label(label: jax.Array, start: jax.Array, *,
                     num_labels: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Pixels 8-connected to a `start` pixel through pixels of one label.

    The fill runs on bit-packed planes (32 images per uint32 word), so one word operation moves
    the front of 32 images at once.

    Args:
      label: int[B, H, W] label map with values in -1..num_labels-1; pixels connect only to
        neighbours of the same label.
      start: bool[B, H, W] pixels the fill starts from.
      num_labels: bound on the labels (static); default: 2**31 - 1 (32 bit planes).

    Returns:
      (reached bool[B, H, W], iterations int32[]) where `reached` is the union of the 8-connected
      components of `{label == l}` (over all l) that contain a start pixel.
    """
    planes = _label_planes(label, num_labels or (2**31 - 1))
    row_masks = _run_masks(_same_label(planes, 0, 1), axis=2)
    col_masks = _run_masks(_same_label(planes, 1, 0), axis=1)
    diag_masks = [_same_label(planes, dy, dx) for dy, dx in _DIAGONALS]

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
        cond, body, (_pack_images(start), changed0, iterations0))
    return _unpack_images(reached, start.shape[0]), iterations


def _max_and_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Max and argmax over the last axis in one reduction (first index wins a tie, as numpy)."""
    index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)

    def pick(a, b):
        (a_value, a_index), (b_value, b_index) = a, b
        take_b = (b_value > a_value) | ((b_value == a_value) & (b_index < a_index))
        return jnp.where(take_b, b_value, a_value), jnp.where(take_b, b_index, a_index)

    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(jnp.iinfo(jnp.int32).max, jnp.int32))
    return lax.reduce((x, index), init, pick, (x.ndim - 1,))


def _label_map(probs, seed_words, present, theta_fg, theta_bg):
    best_prob, best_class = _max_and_argmax(
        jnp.where(present[:, None, None, :], probs, -jnp.inf))
    confident = jnp.where(best_class == 0, best_prob > theta_bg, best_prob > theta_fg)
    return jnp.where(confident, best_class, _highest_class(seed_words)), confident


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
    present = image_labels | (jnp.arange(probs.shape[-1]) == 0)
    return _label_map(probs, _pack_classes(seeds), present, theta_fg, theta_bg)


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
    batch_axes = _explicit_batch_sharding(probs)
    if batch_axes is not None:
        # Explicitly sharded batch (e.g. a `jax.make_mesh` mesh): grow each device's images where
        # they are, so no device waits for another's slowest image (DESIGN.md 3).
        spec = P(batch_axes)
        return jax.shard_map(
            functools.partial(_grow, theta_fg=theta_fg, theta_bg=theta_bg),
            mesh=jax.typeof(probs).sharding.mesh, in_specs=(spec, spec, spec), out_specs=spec,
        )(probs, seeds, image_labels)
    return _grow(probs, seeds, image_labels, theta_fg=theta_fg, theta_bg=theta_bg)


def _explicit_batch_sharding(probs: jax.Array):
    """Mesh axes that explicitly shard the batch axis of `probs`, or None."""
    sharding = getattr(jax.typeof(probs), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return None
    if any(axes is not None for axes in spec[1:]):
        raise ValueError(f"dsrg_grow: only the batch axis of `probs` may be sharded, got {spec}")
    return spec[0]


def _grow(probs, seeds, image_labels, *, theta_fg, theta_bg):
    """`dsrg_grow` on one device's (or the whole) batch."""
    probs = lax.stop_gradient(probs)
    num_classes = probs.shape[-1]
    present = image_labels | (jnp.arange(num_classes) == 0)
    # Classes are handled as bits (32 per uint32 word): one word op per pixel instead of C.
    seed_words = _pack_classes(seeds)                                  # uint32[B, H, W, G]
    present_words = _pack_classes(present)[:, None, None, :]           # uint32[B, 1, 1, G]

    label, confident = _label_map(probs, seed_words, present, theta_fg, theta_bg)
    # A confident label is a present class by construction; a cue label may be an absent one.
    is_cue_of_label = _has_class(seed_words, label)
    start = is_cue_of_label & (confident | _has_class(present_words, label))
    reached, _ = flood_same_label(label, start, num_labels=num_classes)

    num_cues = jnp.sum(lax.population_count(seed_words), axis=-1)
    cue_of_one_other_class = (num_cues == 1) & ~is_cue_of_label
    added = reached & ~cue_of_one_other_class
    grown_words = seed_words | _class_bit(label, added, seed_words.shape[-1])
    return _unpack_classes(grown_words, num_classes)
