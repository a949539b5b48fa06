"""Deep seeded region growing (DSRG, Huang et al. CVPR 2018, section 3.2) as a pure JAX function.

The rules (the official Caffe layer's `generate_seed_step`), per image:
  1. Among the classes present in the image (background always present): `a = argmax Q`,
     `p = max Q` (first index wins a tie, as numpy's argmax), compared in float32.
  2. Label map: every cue pixel gets its cue class (several cues: the highest class index wins),
     other pixels are unlabelled; then every confident pixel is overwritten with `a`. A pixel is
     confident when `p > theta_fg` and, if `a` is the background, also `p > theta_bg` (the
     official layer tests the foreground threshold first and nests the background one in it).
  3. For each present class c: the 8-connected components of `label == c` that contain an original
     cue of c are added to the cues of c, except pixels that are a cue of exactly one other class.
  4. Cues are only ever added.

Because the label map gives each pixel one label, the components of all classes are disjoint and one
connected-component labelling of the label map serves them all. It runs as min-label hooking with
pointer jumping on int32 keys (a pixel's index, offset so that cue pixels that start a growth come
first): each round every pixel takes the smallest key among its same-label neighbours, hands it to
the pixel its own key points to (one scatter-min: trees hook onto smaller ones) and follows its
pointer twice (gathers). A component ends with the key of its smallest member, a start pixel when
it has one. The rounds grow with the logarithm of a region's length, not with its turns (measured:
a one-pixel spiral of side 17 / 65 / 257 takes 5 / 7 / 9 rounds; real layouts 5-6).
Per pixel, the C cue channels are packed into ceil(C / 32) uint32 words, so the multi-hot rules
(highest cue class, "cue of exactly one other class") are word operations instead of passes over C.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsrg_jax.ops.grow_checks import SUM_TOLERANCE as SUM_TOLERANCE  # re-exported
from dsrg_jax.ops.grow_checks import check_inputs, check_switch, check_threshold, validate_values

# Growth thresholds of the official code (DSRG `th2` = foreground, `th1` = background).
THETA_FG = 0.85
THETA_BG = 0.99

_UNLABELLED = -1
_JUMPS_PER_ROUND = 2  # pointer jumps after each hooking; 2 gave the fewest rounds per unit of work
_NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


# --- bit packing of the classes of a pixel -------------------------------------------------------

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


# --- connected components: min-label hooking with pointer jumping --------------------------------

def _neighbour_mask(label: jax.Array) -> jax.Array:
    """uint8[B, H, W]: bit d set where neighbour `_NEIGHBOURS[d]` is inside, with the same label."""
    _, h, w = label.shape
    padded = jnp.pad(label, ((0, 0), (1, 1), (1, 1)))
    inside = jnp.pad(jnp.ones_like(label, bool), ((0, 0), (1, 1), (1, 1)))
    mask = jnp.zeros(label.shape, jnp.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        window = (slice(None), slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
        same = inside[window] & (padded[window] == label)
        mask = mask | (same.astype(jnp.uint8) << bit)
    return mask


def _neighbour_min(keys: jax.Array, mask: jax.Array, fill: int) -> jax.Array:
    """int32[B, H, W]: the smallest key over a pixel and its same-label neighbours."""
    _, h, w = keys.shape
    padded = jnp.pad(keys, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
    smallest = keys
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        neighbour = padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        same = ((mask >> bit) & 1).astype(bool)
        smallest = jnp.where(same, jnp.minimum(smallest, neighbour), smallest)
    return smallest


# Per image (batched) gathers and scatters keep the images independent, also for XLA's partitioner.
_take = jax.vmap(lambda values, index: values.at[index].get(mode="promise_in_bounds"))
_put_min = jax.vmap(
    lambda values, index, updates: values.at[index].min(updates, mode="promise_in_bounds"))


def flood_same_label(label: jax.Array, start: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pixels 8-connected to a `start` pixel through pixels of one label.

    Connected components by min-label hooking with pointer jumping. Each pixel holds a key, a
    pointer to a pixel of its component: `index + n * (not start)` with `n = H * W`, so keys of
    start pixels are the smallest. A round: every pixel takes the smallest key among its same-label
    neighbours (shifts), writes it to the pixel its key points to when smaller (a scatter-min: the
    hooking of trees), then follows its pointer twice (gathers: pointer jumping). At the fixed
    point every component holds the key of its smallest member, so a component contains a start
    pixel exactly when its key is below n. The number of rounds grows about logarithmically with a
    component's length, whatever its shape (a one-pixel snake or spiral of side 257: 9 rounds).

    Args:
      label: int[B, H, W] label map; pixels connect only to neighbours of the same label.
      start: bool[B, H, W] pixels the fill starts from.

    Returns:
      (reached bool[B, H, W], rounds int32[]) where `reached` is the union of the 8-connected
      components of `{label == l}` (over all l) that contain a start pixel, and `rounds` the
      number of hooking rounds (the last one confirms that nothing changes).
    """
    b, h, w = label.shape
    n = h * w
    mask = _neighbour_mask(label)
    index = (lax.broadcasted_iota(jnp.int32, (b, h, w), 1) * w
             + lax.broadcasted_iota(jnp.int32, (b, h, w), 2))
    keys = jnp.where(start, index, index + n)

    def pointer(k):
        return jnp.where(k >= n, k - n, k).reshape(b, n)

    def jump(_, k):
        return _take(k.reshape(b, n), pointer(k)).reshape(b, h, w)

    def body(carry):
        keys, _, rounds = carry
        smallest = _neighbour_min(keys, mask, 2 * n)
        hooked = _put_min(keys.reshape(b, n), pointer(keys), smallest.reshape(b, n))
        hooked = jnp.minimum(hooked.reshape(b, h, w), smallest)
        # A loop, not two inlined gathers: XLA:CPU fuses chained gathers into a slow loop.
        jumped = lax.fori_loop(0, _JUMPS_PER_ROUND, jump, hooked)
        return jumped, jnp.any(jumped != keys), rounds + 1

    # The initial carry is built from the inputs (not Python constants) so that the loop also
    # traces under shard_map / an explicit mesh.
    changed0 = jnp.any(start) | True
    rounds0 = jnp.sum(start[:0], dtype=jnp.int32)
    keys, _, rounds = lax.while_loop(lambda carry: carry[1], body, (keys, changed0, rounds0))
    return keys < n, rounds


# --- the rules ------------------------------------------------------------------------------------

def _max_and_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Max and argmax over the last axis in one reduction (first index wins a tie, as numpy)."""
    index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)

    def pick(a, b):
        (a_value, a_index), (b_value, b_index) = a, b
        take_b = (b_value > a_value) | ((b_value == a_value) & (b_index < a_index))
        return jnp.where(take_b, b_value, a_value), jnp.where(take_b, b_index, a_index)

    init = (jnp.array(-jnp.inf, x.dtype), jnp.array(jnp.iinfo(jnp.int32).max, jnp.int32))
    return lax.reduce((x, index), init, pick, (x.ndim - 1,))


def _per_image(theta, batch: int) -> jax.Array:
    """A threshold (number, float[] or float[B]) as float32[B, 1, 1]."""
    return jnp.broadcast_to(jnp.asarray(theta).astype(jnp.float32), (batch,))[:, None, None]


def _label_map(probs, seed_words, present, theta_fg, theta_bg, grow_fg, grow_bg):
    batch = probs.shape[0]
    best_prob, best_class = _max_and_argmax(
        jnp.where(present[:, None, None, :], probs.astype(jnp.float32), -jnp.inf))
    above_fg = best_prob > _per_image(theta_fg, batch)
    above_bg = best_prob > _per_image(theta_bg, batch)
    is_bg = best_class == 0
    confident = jnp.where(is_bg, grow_bg & above_fg & above_bg, grow_fg & above_fg)
    return jnp.where(confident, best_class, _highest_class(seed_words)), confident


def growth_label_map(probs: jax.Array, seeds: jax.Array, image_labels: jax.Array, *,
                     theta_fg=THETA_FG, theta_bg=THETA_BG, grow_fg: bool = True,
                     grow_bg: bool = True) -> tuple[jax.Array, jax.Array]:
    """The label map of rule 2 int32[B, H, W] and where a label comes from confidence.

    Args:
      probs: float[B, H, W, C] class probabilities (channel 0 = background).
      seeds: bool[B, H, W, C] multi-hot cues.
      image_labels: bool[B, C] classes present; channel 0 is treated as present.
      theta_fg, theta_bg, grow_fg, grow_bg: as in `dsrg_grow` (not checked here).

    Returns:
      (label int32[B, H, W] with -1 for unlabelled pixels, confident bool[B, H, W]).
    """
    present = image_labels | (jnp.arange(probs.shape[-1]) == 0)
    return _label_map(probs, _pack_classes(seeds), present, theta_fg, theta_bg, grow_fg, grow_bg)


def dsrg_grow(probs: jax.Array, seeds: jax.Array, image_labels: jax.Array, *,
              theta_fg=THETA_FG, theta_bg=THETA_BG, grow_fg: bool = True, grow_bg: bool = True,
              validate: bool = False) -> jax.Array:
    """Grows seed cues bool[B, H, W, C] into confidently predicted, connected regions (DSRG).

    Pure and jitted inside; usable under `jit`, `vmap` and `shard_map`, with no host round trip.
    Probabilities are compared with the thresholds in float32 whatever their dtype.

    Args:
      probs: float[B, H, W, C] class probabilities (e.g. the CRF output Q), channel 0 background.
        Treated as a constant (no gradient flows through growth).
      seeds: bool[B, H, W, C] original multi-hot cues; all False means an unlabelled pixel.
      image_labels: bool[B, C] classes present in each image; channel 0 is always treated as
        present.
      theta_fg: foreground threshold (official 0.85): a pixel whose most likely present class is
        a foreground class is confident when its probability is above it. A number in [0, 1], or
        a float array of shape () or (B,) (one per image).
      theta_bg: background threshold (official 0.99): a pixel whose most likely class is the
        background is confident when its probability is above both `theta_fg` and `theta_bg`,
        as in the official layer. Same forms as `theta_fg`.
      grow_fg: whether foreground classes grow; when False, no pixel whose most likely present
        class is a foreground class is made confident (ablation switch).
      grow_bg: whether the background grows; when False, no pixel whose most likely class is the
        background is made confident (ablation switch).
      validate: also check the values at run time with `jax.experimental.checkify`: NaN or
        negative probabilities, probabilities whose sum over C is off 1 by more than
        `SUM_TOLERANCE` (+ the dtype's epsilon), thresholds given as device arrays outside
        [0, 1]. Called eagerly, a failed check raises `checkify.JaxRuntimeError`; under `jit`,
        functionalise the caller: `err, out = checkify.checkify(jax.jit(f))(...)`, `err.throw()`.

    Returns:
      bool[B, H, W, C]: the grown cues, a superset of `seeds`.

    Raises:
      TypeError / ValueError at trace time when a shape, a dtype, a switch or a threshold given
      as a number or a numpy array is wrong (outside [0, 1], NaN), naming the argument.
    """
    check_inputs(probs, seeds, image_labels)
    batch = probs.shape[0]
    theta_fg = check_threshold("theta_fg", theta_fg, batch)
    theta_bg = check_threshold("theta_bg", theta_bg, batch)
    grow_fg = check_switch("grow_fg", grow_fg)
    grow_bg = check_switch("grow_bg", grow_bg)
    if check_switch("validate", validate):
        validate_values(probs, theta_fg, theta_bg)
    return _dsrg_grow(probs, seeds, image_labels, theta_fg, theta_bg,
                      grow_fg=grow_fg, grow_bg=grow_bg)


@functools.partial(jax.jit, static_argnames=("grow_fg", "grow_bg"))
def _dsrg_grow(probs, seeds, image_labels, theta_fg, theta_bg, *, grow_fg, grow_bg):
    grow = functools.partial(_grow, grow_fg=grow_fg, grow_bg=grow_bg)
    batch_axes = _explicit_batch_sharding(probs)
    if batch_axes is None:
        return grow(probs, seeds, image_labels, theta_fg, theta_bg)
    # Explicitly sharded batch (e.g. a `jax.make_mesh` mesh): grow each device's images where
    # they are, so no device waits for another's slowest image.
    mesh = jax.typeof(probs).sharding.mesh
    args = [probs, seeds, image_labels, theta_fg, theta_bg]
    specs = [P(batch_axes) if jnp.ndim(x) else P() for x in args]
    # The other arguments (e.g. replicated per-image thresholds) follow the batch's sharding.
    args = [x if not jnp.ndim(x) else jax.reshard(x, NamedSharding(mesh, spec))
            for x, spec in zip(args, specs)]
    return jax.shard_map(grow, mesh=mesh, in_specs=tuple(specs), out_specs=P(batch_axes))(*args)


def _explicit_batch_sharding(probs: jax.Array):
    """Mesh axes that explicitly shard the batch axis of `probs`, or None."""
    sharding = getattr(jax.typeof(probs), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return None
    if any(axes is not None for axes in spec[1:]):
        raise ValueError(f"dsrg_grow: only the batch axis of `probs` may be sharded, got {spec}")
    return spec[0]


def _grow(probs, seeds, image_labels, theta_fg, theta_bg, *, grow_fg, grow_bg):
    """`dsrg_grow` on one device's (or the whole) batch."""
    probs = lax.stop_gradient(probs)
    num_classes = probs.shape[-1]
    present = image_labels | (jnp.arange(num_classes) == 0)
    # Classes are handled as bits (32 per uint32 word): one word op per pixel instead of C.
    seed_words = _pack_classes(seeds)                                  # uint32[B, H, W, G]
    present_words = _pack_classes(present)[:, None, None, :]           # uint32[B, 1, 1, G]

    label, confident = _label_map(probs, seed_words, present, theta_fg, theta_bg,
                                  grow_fg, grow_bg)
    # A confident label is a present class by construction; a cue label may be an absent one.
    is_cue_of_label = _has_class(seed_words, label)
    start = is_cue_of_label & (confident | _has_class(present_words, label))
    reached, _ = flood_same_label(label, start)

    num_cues = jnp.sum(lax.population_count(seed_words), axis=-1)
    cue_of_one_other_class = (num_cues == 1) & ~is_cue_of_label
    added = reached & ~cue_of_one_other_class
    grown_words = seed_words | _class_bit(label, added, seed_words.shape[-1])
    return _unpack_classes(grown_words, num_classes)
