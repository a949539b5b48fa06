"""Region growing: jitted `dsrg_jax.dsrg_grow` against the scipy implementation, side by side.

    python benchmarks/grow.py [--cues PATH] [--repeats 15] [--batch 20]

Three input layouts, each at 41x41, 81x81 and 161x161, 21 classes:
  real     cue layouts of real images (the official SEC cue file, 41x41), upsampled by nearest
           neighbour, with smooth synthetic probabilities around the cues (the cues cover ~25% of
           the grid and grow to ~48%).
  winding  random smooth probability maps (logit noise blurred by 1 pixel at every size, so a
           bigger map has longer, more winding regions), two present classes, 1% scattered cues.
  spiral   one confident one-pixel-wide square spiral per image, its cue at the outer end: the
           worst case of a fill that follows the regions.
JAX inputs are on the device before timing, as in a train step; compile time is excluded (one
warm-up call). The calls alternate (scipy, jax, run fill, ...) so that background load hits them
alike; the reported time is the median over repeats. Every JAX result is checked equal to scipy's.

"jax" is `dsrg_grow` (connected components by min-label hooking and pointer jumping: `rounds`);
"run fill" is the previous kernel, kept here as a baseline: a flood fill on bit-packed planes
(32 images per uint32 word) that fills whole runs along rows and columns per loop iteration
(`iters`), so its iteration count grows with the turns of a region.
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import ndimage

import dsrg_jax
from dsrg_jax.data.cues import import_official_cues
from dsrg_jax.data.synthetic import spiral_path, synthetic_probs, upsample_nearest
from dsrg_jax.ops.grow import flood_same_label, growth_label_map
from dsrg_jax.ops.grow_scipy import dsrg_grow_scipy

DEFAULT_CUES = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "sec"
                / "localization_cues.pickle.gz")
NUM_CLASSES = 21


# --- the previous kernel: whole-run flood fill on bit-packed planes ------------------------------

def _shift(x: jax.Array, offset: int, axis: int, fill) -> jax.Array:
    """`y[i] = x[i - offset]` along `axis`, `fill` where `i - offset` falls outside."""
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (offset, -offset, 0)
    return lax.pad(x, jnp.array(fill, x.dtype), config)


def _shift2d(x: jax.Array, dy: int, dx: int, fill) -> jax.Array:
    return _shift(_shift(x, dy, 1, fill), dx, 2, fill)


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
    bits = jnp.arange(32, dtype=jnp.uint32)[None, :, None, None]
    x = (words[:, None] >> bits) & jnp.uint32(1)
    return x.reshape(-1, *words.shape[1:])[:batch].astype(bool)


def _same_label(planes: list[jax.Array], dy: int, dx: int) -> jax.Array:
    """Packed bits set where a pixel has the label of its neighbour at (-dy, -dx) (inside)."""
    inside = _shift2d(jnp.full_like(planes[0], 0xFFFFFFFF), dy, dx, 0)
    for plane in planes:
        inside = inside & ~(plane ^ _shift2d(plane, dy, dx, 0))
    return inside


def _run_masks(same_as_previous: jax.Array, axis: int) -> list[tuple[int, jax.Array, jax.Array]]:
    """(k, left_k, right_k) for a log-depth prefix OR over runs of equal label along `axis`."""
    masks = []
    same, k = same_as_previous, 1
    while k < same.shape[axis]:
        masks.append((k, same, _shift(same, -k, axis, 0)))
        same = same & _shift(same, k, axis, 0)
        k *= 2
    return masks


def _fill_runs(reached: jax.Array, masks, axis: int) -> jax.Array:
    forward, backward = reached, reached
    for k, left_k, right_k in masks:
        forward = forward | (_shift(forward, k, axis, 0) & left_k)
        backward = backward | (_shift(backward, -k, axis, 0) & right_k)
    return forward | backward


_DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def run_fill(label: jax.Array, start: jax.Array, num_labels: int = NUM_CLASSES):
    """The previous `flood_same_label`: (reached bool[B, H, W], loop iterations int32[])."""
    value = (label + 1).astype(jnp.uint32)
    planes = [_pack_images(((value >> k) & 1).astype(bool))
              for k in range(max(1, num_labels.bit_length()))]
    row_masks = _run_masks(_same_label(planes, 0, 1), axis=2)
    col_masks = _run_masks(_same_label(planes, 1, 0), axis=1)
    diag_masks = [_same_label(planes, dy, dx) for dy, dx in _DIAGONALS]

    def body(carry):
        reached, _, iterations = carry
        grown = _fill_runs(reached, row_masks, axis=2)
        grown = _fill_runs(grown, col_masks, axis=1)
        for (dy, dx), same in zip(_DIAGONALS, diag_masks):
            grown = grown | (_shift2d(grown, dy, dx, 0) & same)
        return grown, jnp.any(grown != reached), iterations + 1

    reached, _, iterations = lax.while_loop(
        lambda carry: carry[1], body, (_pack_images(start), jnp.bool_(True), jnp.int32(0)))
    return _unpack_images(reached, start.shape[0]), iterations


@functools.partial(jax.jit, static_argnames="flood")
def grow_with(probs, seeds, image_labels, *, flood):
    """The growth rules around a given flood fill: (grown bool[B, H, W, C], its loop count)."""
    label, confident = growth_label_map(probs, seeds, image_labels)
    ids = jnp.arange(probs.shape[-1])
    present = image_labels | (ids == 0)
    one_hot = label[..., None] == ids
    is_cue = jnp.any(seeds & one_hot, -1)
    start = is_cue & (confident | jnp.any(present[:, None, None] & one_hot, -1))
    reached, loops = flood(label, start)
    single = (jnp.sum(seeds, -1) == 1) & ~is_cue
    return seeds | (one_hot & (reached & ~single)[..., None]), loops


# --- input layouts --------------------------------------------------------------------------------

def real_case(cues41, labels, factor, rng):
    cues = upsample_nearest(cues41, factor) if factor > 1 else cues41
    return synthetic_probs(cues, labels, rng), cues, labels


def winding_case(batch, size, rng, present=2, density=0.01):
    labels = np.zeros((batch, NUM_CLASSES), bool)
    for b in range(batch):
        labels[b, rng.choice(np.arange(1, NUM_CLASSES), present, replace=False)] = True
    labels[:, 0] = True
    noise = ndimage.gaussian_filter(rng.normal(size=(batch, size, size, NUM_CLASSES)),
                                    sigma=(0, 1, 1, 0))
    logits = 6.0 * noise / noise.std() - 20.0 * ~labels[:, None, None, :]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    seeds = (rng.random((batch, size, size, NUM_CLASSES)) < density) & labels[:, None, None, :]
    return probs.astype(np.float32), seeds, labels


def spiral_case(batch, size):
    path = spiral_path(size)
    probs = np.full((batch, size, size, NUM_CLASSES), 0.0, np.float32)
    probs[..., 0] = np.where(path, 0.05, 0.9)  # off the path: background, not confident
    probs[..., 1] = 1.0 - probs[..., 0]
    seeds = np.zeros(probs.shape, bool)
    seeds[:, 0, 0, 1] = True
    labels = np.zeros((batch, NUM_CLASSES), bool)
    labels[:, :2] = True
    return probs, seeds, labels


def median_ms(samples):
    return 1e3 * float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cues", type=pathlib.Path, default=DEFAULT_CUES)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cue_set = import_official_cues(args.cues)
    rng = np.random.default_rng(args.seed)
    cues41, labels41 = cue_set.dense_batch(rng.choice(len(cue_set), args.batch, replace=False))
    print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} x "
          f"{jax.devices()[0].platform}, jax {jax.__version__}, batch {args.batch}, "
          f"{NUM_CLASSES} classes, median of {args.repeats}")
    print(f"{'layout':>7} {'grid':>7} {'scipy ms':>8} {'jax ms':>7} {'fill ms':>7} "
          f"{'scipy/jax':>9} {'scipy/fill':>10} {'rounds':>6} {'iters':>5} {'cues':>6} "
          f"{'grown':>6}")
    fill = functools.partial(grow_with, flood=run_fill)
    for layout in ("real", "winding", "spiral"):
        for factor in (1, 2, 4):
            size = 40 * factor + 1
            if layout == "real":
                probs, cues, labels = real_case(cues41, labels41, factor, rng)
            elif layout == "winding":
                probs, cues, labels = winding_case(args.batch, size, rng)
            else:
                probs, cues, labels = spiral_case(args.batch, size)
            device_args = [jax.device_put(x) for x in (probs, cues, labels)]
            expected = dsrg_grow_scipy(probs, cues, labels)
            _, rounds = grow_with(*device_args, flood=flood_same_label)
            for name, fn in (("dsrg_grow", dsrg_jax.dsrg_grow), ("run fill", fill)):
                out = fn(*device_args)  # warm-up (compile) and exactness
                grown = out[0] if isinstance(out, tuple) else out
                if not np.array_equal(np.asarray(grown), expected):
                    raise SystemExit(f"{name} disagrees with scipy on {layout} {size}px")
            iterations = fill(*device_args)[1]
            times = {"scipy": [], "jax": [], "fill": []}
            for _ in range(args.repeats):
                start = time.perf_counter()
                dsrg_grow_scipy(probs, cues, labels)
                times["scipy"].append(time.perf_counter() - start)
                start = time.perf_counter()
                dsrg_jax.dsrg_grow(*device_args).block_until_ready()
                times["jax"].append(time.perf_counter() - start)
                start = time.perf_counter()
                jax.block_until_ready(fill(*device_args))
                times["fill"].append(time.perf_counter() - start)
            scipy_ms, jax_ms, fill_ms = (median_ms(times[k]) for k in ("scipy", "jax", "fill"))
            grid = f"{size}x{size}"
            print(f"{layout:>7} {grid:>7} {scipy_ms:8.2f} {jax_ms:7.2f} {fill_ms:7.2f} "
                  f"{scipy_ms / jax_ms:8.1f}x {scipy_ms / fill_ms:9.1f}x {int(rounds):6d} "
                  f"{int(iterations):5d} {cues.any(-1).mean():6.1%} "
                  f"{expected.any(-1).mean():6.1%}")


if __name__ == "__main__":
    main()
