"""Region growing: jitted `dsrg_jax.dsrg_grow` against the scipy implementation, side by side.

    python benchmarks/grow.py [--cues PATH] [--repeats 15] [--batch 20]

Inputs: real cue layouts (the official SEC cue file, 41x41, 21 classes), upsampled by nearest
neighbour to 81x81 and 161x161, with smooth synthetic probabilities around the cues (realistic
region sizes: the cues cover ~25% of the grid and grow to ~48%). JAX inputs are on the device
before timing, as in a train step; compile time is excluded (one warm-up call). The calls
alternate (scipy, jax, dilation baseline, ...) so that background load hits them alike; the
reported time is the median over repeats. Every JAX result is checked equal to scipy's.

The "dilation" column is the plain single-channel formulation (one masked 3x3 dilation per loop
step, 4 steps per iteration, no bit packing), kept here as the baseline the issue names.
"""
from __future__ import annotations

import argparse
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import dsrg_jax
from dsrg_jax.data.cues import import_official_cues
from dsrg_jax.data.synthetic import synthetic_probs, upsample_nearest
from dsrg_jax.ops.grow import growth_label_map
from dsrg_jax.ops.grow_scipy import dsrg_grow_scipy

DEFAULT_CUES = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "sec"
                / "localization_cues.pickle.gz")


@jax.jit
def grow_by_dilation(probs, seeds, image_labels):
    """Baseline: single-channel flood fill, one 3x3 dilation per step, 4 steps per iteration."""
    label, _ = growth_label_map(probs, seeds, image_labels)
    ids = jnp.arange(probs.shape[-1])
    present = image_labels | (ids == 0)
    one_hot = label[..., None] == ids
    is_cue = jnp.any(seeds & one_hot, -1)
    start = is_cue & jnp.any(present[:, None, None] & one_hot, -1)
    padded_label = jnp.pad(label, ((0, 0), (1, 1), (1, 1)), constant_values=-2)
    h, w = label.shape[1:]
    same = [padded_label[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == label
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]

    def step(reached):
        padded = jnp.pad(reached, ((0, 0), (1, 1), (1, 1)))
        out = reached
        for (dy, dx), s in zip(offsets, same):
            out = out | (padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] & s)
        return out

    def body(carry):
        reached, _ = carry
        new = step(step(step(step(reached))))
        return new, jnp.any(new != reached)

    reached, _ = lax.while_loop(lambda c: c[1], body, (start, jnp.any(start) | True))
    single = (jnp.sum(seeds, -1) == 1) & ~is_cue
    return seeds | (one_hot & (reached & ~single)[..., None])


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
    cues41, labels = cue_set.dense_batch(rng.choice(len(cue_set), args.batch, replace=False))
    print(f"# {platform.processor() or platform.machine()}, {jax.device_count()} x "
          f"{jax.devices()[0].platform}, jax {jax.__version__}, batch {args.batch}, 21 classes, "
          f"median of {args.repeats}")
    print(f"{'grid':>8} {'scipy ms':>9} {'jax ms':>8} {'dilation ms':>12} "
          f"{'scipy/jax':>10} {'scipy/dilation':>15} {'cues':>6} {'grown':>6}")
    for factor in (1, 2, 4):
        cues = upsample_nearest(cues41, factor) if factor > 1 else cues41
        probs = synthetic_probs(cues, labels, rng)
        device_args = [jax.device_put(x) for x in (probs, cues, labels)]
        expected = dsrg_grow_scipy(probs, cues, labels)
        for fn in (dsrg_jax.dsrg_grow, grow_by_dilation):  # warm-up (compile) and exactness
            if not np.array_equal(np.asarray(fn(*device_args)), expected):
                raise SystemExit(f"{fn.__name__} disagrees with scipy at {cues.shape[1]}px")
        times = {"scipy": [], "jax": [], "dilation": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            dsrg_grow_scipy(probs, cues, labels)
            times["scipy"].append(time.perf_counter() - start)
            start = time.perf_counter()
            dsrg_jax.dsrg_grow(*device_args).block_until_ready()
            times["jax"].append(time.perf_counter() - start)
            start = time.perf_counter()
            grow_by_dilation(*device_args).block_until_ready()
            times["dilation"].append(time.perf_counter() - start)
        scipy_ms, jax_ms, dil_ms = (median_ms(times[k]) for k in ("scipy", "jax", "dilation"))
        size = f"{cues.shape[1]}x{cues.shape[2]}"
        print(f"{size:>8} {scipy_ms:9.2f} {jax_ms:8.2f} {dil_ms:12.2f} {scipy_ms / jax_ms:9.1f}x "
              f"{scipy_ms / dil_ms:14.1f}x {cues.any(-1).mean():6.1%} "
              f"{expected.any(-1).mean():6.1%}")


if __name__ == "__main__":
    main()
