"""The digits stages' train steps on 1 CPU device against N, side by side in one process.

XLA:CPU runs these small nets' convolutions on about one core per device (the DSRG step at 2
threads is no faster than at 1, docs/benchmarks.md), so a batch split over N CPU devices (each
device its own thread) is what uses N cores. This measures each stage's own jitted step, as the
pipeline builds it (`dsrg_jax.train.steps`, the optimiser and batch of
`experiments/configs/digits.py`), on a mesh of the first device and on a mesh of all N, in
alternating blocks, and the eval-mode forward pass of the pseudo-label / eval stages.

    python benchmarks/cpu_devices.py                     # N = 2, every step, 3 blocks of 5
    python benchmarks/cpu_devices.py --devices 2 --blocks 5 --steps 5 --parts cues,dsrg

The process makes N CPU devices (`jax_num_cpu_devices`) before JAX starts; XLA_FLAGS is left
as it is otherwise. Inputs are real digits images (labels, synthetic cues from the masks for
the DSRG step); the numbers of a step do not depend on its inputs' values.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("pretrain", "cues", "dsrg", "retrain", "predict")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2, help="N: the CPU devices of the second mesh")
    p.add_argument("--blocks", type=int, default=3, help="alternating blocks per mesh")
    p.add_argument("--steps", type=int, default=5, help="timed calls per block")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {PARTS}")
    return p.parse_args(argv)


def _optim(cfg, part: str):
    """The OptimConfig of a training part (its stage's)."""
    return {"pretrain": cfg.pretrain, "cues": cfg.cues, "dsrg": cfg.dsrg,
            "retrain": cfg.retrain}[part].optim


def batch_size(cfg, part: str) -> int:
    """The batch `part` runs at in the pipeline: its stage's, or the eval batch for predict."""
    return cfg.eval.batch_size if part == "predict" else _optim(cfg, part).batch_size


def _batch(cfg, part: str, grid, rng):
    """A host batch of `part`'s shape: images, labels (+ cues, pseudo-label maps)."""
    import numpy as np

    from dsrg_jax.data import transforms as T
    from dsrg_jax.data.digits import DigitsSource, GlyphSource

    batch = batch_size(cfg, part)
    if part == "pretrain":
        size = cfg.pretrain.image_size
        src = GlyphSource("train", num_images=batch, size=size, canvas=cfg.data.image_size)
    else:
        size = cfg.data.input_size
        src = DigitsSource("train", num_images=batch, seed=0, size=size)
    exs = [src[i] for i in range(batch)]
    images = np.stack([T.warp(e, size).image for e in exs]).astype(np.uint8)
    labels = np.stack([e.labels for e in exs]).astype(bool)
    out = {"image": images, "labels": labels, "valid": np.ones(batch, bool)}
    if part in ("dsrg", "retrain"):
        masks = np.stack([T.grid_nearest(e.mask, grid) for e in exs])
        onehot = np.eye(cfg.data.num_classes, dtype=bool)[np.minimum(masks, 10)]
        keep = rng.random(masks.shape) < 0.6   # CAM-like coverage: 60% of the cells
        out["cues"] = onehot & keep[..., None]
        out["grid_mask"] = masks.astype(np.uint8)
    return out


def build(cfg, part: str, mesh):
    """(call() -> seconds): `part`'s jitted step on `mesh`, state and batch on its devices."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dsrg_jax.convention import get_input_convention
    from dsrg_jax.models import model_for
    from dsrg_jax.pipeline.nets import output_grid
    from dsrg_jax.sharding import global_batch, replicate
    from dsrg_jax.train import steps as S
    from dsrg_jax.train.optim import caffe_sgd

    conv = get_input_convention(cfg.data.input_convention)
    kind = "pretrain" if part == "pretrain" else ("cam" if part == "cues" else "seg")
    model = model_for(cfg.model, kind, cfg.data.num_classes)
    size = cfg.pretrain.image_size if part == "pretrain" else cfg.data.input_size
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 3)), train=False))(
        jax.random.key(1))
    grid = output_grid(model, variables, size) if kind == "seg" else None
    hb = _batch(cfg, part, grid, np.random.default_rng(0))
    batch = global_batch(hb, mesh)
    if part == "predict":
        predict = S.make_predict(model, conv)
        args = (replicate(variables, mesh), batch["image"])
        return lambda: _timed(lambda: predict(*args))
    params = dict(variables)
    params, frozen = params.pop("params"), params
    tx = caffe_sgd(params, _optim(cfg, part))
    state = {"s": replicate(S.create_state(params, tx, frozen=frozen, seed=1), mesh)}
    if part in ("pretrain", "cues"):
        step = S.make_cam_train_step(model, tx, conv, mesh, single_label=part == "pretrain")
    elif part == "dsrg":
        step = S.make_dsrg_train_step(model, tx, conv, mesh, cfg.dsrg)
    else:
        step = S.make_retrain_step(model, tx, conv, mesh)

    def call():
        def run():
            state["s"], aux = step(state["s"], batch)
            return state["s"], aux
        return _timed(run)
    return call


def _timed(fn) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    sys.path.insert(0, str(ROOT))
    from dsrg_jax.sharding import make_mesh
    from experiments.configs.digits import get_config

    cfg = get_config()
    parts = [p for p in args.parts.split(",") if p]
    if bad := [p for p in parts if p not in PARTS]:
        sys.exit(f"error: --parts: unknown {bad}; known: {list(PARTS)}")
    print(f"# {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"{jax.device_count()} cpu devices; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"load average {os.getloadavg()}; medians of {args.blocks} x {args.steps} calls")
    print(f"| part | batch | ms, 1 device | ms, {args.devices} devices | speed-up | "
          f"block medians (1 / {args.devices}) |")
    print("|---|---|---|---|---|---|")
    for part in parts:
        calls = {n: build(cfg, part, make_mesh(n)) for n in (1, args.devices)}
        for call in calls.values():   # compile + warm-up
            call(), call()
        blocks = {n: [] for n in calls}
        times = {n: [] for n in calls}
        for _ in range(args.blocks):
            for n, call in calls.items():
                ts = [call() for _ in range(args.steps)]
                blocks[n].append(statistics.median(ts))
                times[n] += ts
        med = {n: 1e3 * statistics.median(t) for n, t in times.items()}
        print(f"| {part} | {batch_size(cfg, part)} | {med[1]:.0f} | {med[args.devices]:.0f} | "
              f"{med[1] / med[args.devices]:.2f}x | "
              f"{' '.join(f'{1e3 * b:.0f}' for b in blocks[1])} / "
              f"{' '.join(f'{1e3 * b:.0f}' for b in blocks[args.devices])} |", flush=True)
    print(f"# load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
