"""Passes over a split (each host its share, batches sharded over the mesh) and predictions.

Every inference loop of the pipeline has one shape: `for hb, gb in iterate(...)`, with `hb` this
host's numpy batch ("valid" False on padding rows, "index" into `source.ids`) and `gb` the global
batch; per-image results go to an `Evaluator` or a file, and sums are taken across hosts at the
end. A SIGTERM / Ctrl-C to any host stops every host's pass at the same batch (`Preempted`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from dsrg_jax import inference
from dsrg_jax.config import ConfigError
from dsrg_jax.data.pipeline import Pipeline
from dsrg_jax.pipeline.workdir import Experiment
from dsrg_jax.sharding import global_batch, sum_over_processes
from dsrg_jax.train.loop import Preempted, Signals, agreed_stop


def inference_batch(batch: int, num_devices: int, process_count: int | None = None) -> int:
    """`batch` rounded up to a multiple of the mesh's device count (and of the process count).

    Inference batches (pseudo, eval, cue extraction) then split evenly over hosts and devices
    whatever their number; the pipeline marks the extra rows invalid and they are skipped."""
    if batch <= 0:
        raise ConfigError(f"inference batch must be positive, got {batch} (--eval-batch-size)")
    process_count = jax.process_count() if process_count is None else process_count
    m = math.lcm(int(num_devices), int(process_count))
    return -(-int(batch) // m) * m


def iterate(exp: Experiment, source: Any, transform: Callable,
            batch: int | None) -> Iterator[tuple[dict, dict]]:
    """(host batch numpy, global batch) over a split once, each host its share.

    `batch` is rounded up to a multiple of the device count (`inference_batch`). batch None: one
    image per host at a time (images of different sizes; the device rows are padding).

    Raises `Preempted` (stage None) on every process, before the next batch, once any process
    got SIGTERM / SIGINT (all processes agree on it at each batch)."""
    rows = jax.process_count() if batch is None else inference_batch(batch, exp.mesh.size)
    pipe = Pipeline(source, global_batch=rows,
                    transform=transform, seed=exp.cfg.run.seed, shuffle=False, num_epochs=1,
                    drop_remainder=False, num_workers=exp.cfg.data.num_workers)
    try:
        with Signals():
            for b in pipe:
                if signum := agreed_stop():
                    raise Preempted(signum, None)
                yield b, global_batch(b, exp.mesh)
    finally:
        pipe.close()


def valid_rows(hb: dict) -> list[int]:
    """Rows of a host batch that are real images (not padding)."""
    return [i for i in range(len(hb["valid"])) if hb["valid"][i]]


def has_masks(source: Any) -> bool:
    """Whether the source's records carry ground-truth masks."""
    try:
        return source[0].mask is not None
    except Exception:  # noqa: BLE001  (an empty or unreadable source has none to score)
        return False


def canvas_side(exp: Experiment) -> int | None:
    """The side of the canvases inference pads images to.

    `eval.canvas`, or the images' own side when they all have one; None: every image alone at its
    own size."""
    return exp.cfg.eval.canvas or exp.dataset.image_side(exp.cfg.data)


def inference_batch_of(exp: Experiment, batch: int) -> int | None:
    """The inference batch for `iterate`: `batch`, or None (one image per host) without a canvas.

    No canvas: images of any size, each alone as the official scripts run them."""
    return batch if canvas_side(exp) is not None else None


def segment_batch(exp: Experiment, predict: Callable, variables: Any, hb: dict, gb: dict, *,
                  mode: str, crf: bool, restrict: bool = False) -> list:
    """`inference.segment_canvases` of a batch with the config's protocol: "pseudo" or "eval".

    Mode "pseudo" warps to `pseudo.sizes`, as the pseudo-label stage; mode "eval" uses `eval.scales`
    and `eval.flip`, aspect kept."""
    cfg = exp.cfg
    kw = (dict(sizes=tuple(cfg.pseudo.sizes)) if mode == "pseudo"
          else dict(scales=tuple(cfg.eval.scales), flip=cfg.eval.flip))
    return inference.segment_canvases(
        predict, gb["image"], gb["hw"], variables=variables, host_images=hb["image"],
        host_hw=hb["hw"], image_labels=hb["labels"] if restrict else None, normalize=None,
        crf=crf, **kw)


def count_over_processes(n: int) -> int:
    """An int summed over all processes."""
    return int(sum_over_processes(np.array(n)))
