"""The batched input pipeline: deterministic from a seed, per-host shares, prefetch, exact resume.

Why a thread pool (not grain or tf.data): decoding (PIL/libjpeg) and resizing (OpenCV) release the
GIL, so threads give parallel loading without extra processes, pickling, or a TensorFlow
dependency; and since every example's randomness is a pure function of (seed, epoch, index), the
order threads finish in never changes a batch, and resuming needs only one integer: the number of
global batches already handed out.

Order: epoch e visits the examples in `default_rng([seed, e]).permutation(N)` (or 0..N-1 without
shuffling); global batch b of an epoch is positions [b*G, (b+1)*G) of that order; host p of P takes
its contiguous share [p*G/P, (p+1)*G/P) of it. An example's augmentation uses
`default_rng([seed, e, index])`, so it does not depend on the number of hosts or workers.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from dsrg_jax.data.records import DatasetError, Source
from dsrg_jax.data.transforms import Transform

log = logging.getLogger(__name__)


class Pipeline:
    """Host-local batches of a source, forever (num_epochs None) or for num_epochs epochs.

    Each batch is a dict of numpy arrays with leading axis global_batch / process_count: the
    transform's fields, plus "index" int64[B] (index into source.ids) and "valid" bool[B] (False for
    padding in the last batch when drop_remainder is False).

    Args:
      source: a dataset source (`len`, `[i] -> Record`, `ids`).
      global_batch: examples per step over all hosts; must divide by process_count.
      transform: (record, rng) -> dict of fixed-shape arrays.
      seed: the order and augmentation seed.
      shuffle: shuffle each epoch.
      num_epochs: None = repeat forever.
      drop_remainder: drop an epoch's last incomplete batch (else pad it and mark it invalid).
      process_index, process_count: this host and the host count (default: jax's).
      num_workers: loader threads.
      prefetch: global batches loaded ahead.
      state: a `state()` dict from an earlier run to resume from.
    """

    def __init__(
        self,
        source: Source,
        *,
        global_batch: int,
        transform: Transform,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int | None = None,
        drop_remainder: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        num_workers: int = 2,
        prefetch: int = 2,
        state: dict | None = None,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if global_batch <= 0 or global_batch % process_count:
            raise ValueError(
                f"global_batch ({global_batch}) must be a positive multiple of the host count "
                f"({process_count})"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in 0..{process_count - 1}")
        self.source = source
        self.num_examples = len(source)
        if self.num_examples == 0:
            raise DatasetError("the dataset is empty: nothing to iterate")
        if drop_remainder and self.num_examples < global_batch:
            raise DatasetError(
                f"the dataset has {self.num_examples} examples, fewer than one global batch "
                f"({global_batch}); lower the batch or set drop_remainder=False"
            )
        self.global_batch = int(global_batch)
        self.local_batch = self.global_batch // process_count
        self.transform = transform
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_epochs = num_epochs
        self.drop_remainder = bool(drop_remainder)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.prefetch = max(1, int(prefetch))
        self.batches_per_epoch = (
            self.num_examples // self.global_batch if drop_remainder
            else math.ceil(self.num_examples / self.global_batch)
        )
        self.position = 0  # global batches handed out so far
        if state is not None:
            self.restore(state)
        self._pool = cf.ThreadPoolExecutor(max_workers=max(1, int(num_workers)))
        self._queue: collections.deque = collections.deque()
        self._next_to_submit = self.position
        self._perm_cache: dict[int, np.ndarray] = {}

    # ----- order (pure functions of seed, epoch, position) -----

    def epoch_order(self, epoch: int) -> np.ndarray:
        """int64[N]: the order in which epoch `epoch` visits the examples."""
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 2:
                self._perm_cache.clear()
            self._perm_cache[epoch] = (
                np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
                if self.shuffle else np.arange(self.num_examples)
            )
        return self._perm_cache[epoch]

    def batch_indices(self, position: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(epoch, int64[B] this host's source indices, bool[B] valid) of global batch `position`.
        """
        epoch, b = divmod(position, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        glob = order[b * self.global_batch:(b + 1) * self.global_batch]
        valid = np.ones(self.global_batch, bool)
        if len(glob) < self.global_batch:  # last batch without drop_remainder: pad with repeats
            valid[len(glob):] = False
            glob = np.concatenate([glob, np.resize(order, self.global_batch - len(glob))])
        lo = self.process_index * self.local_batch
        return epoch, glob[lo:lo + self.local_batch], valid[lo:lo + self.local_batch]

    # ----- state -----

    def state(self) -> dict:
        """JSON-able position: resume with `Pipeline(..., state=s)` for the very next batch."""
        return {
            "position": self.position, "seed": self.seed, "num_examples": self.num_examples,
            "global_batch": self.global_batch, "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder,
        }

    def restore(self, state: dict) -> None:
        """Moves to a saved position; refuses a state saved for another dataset/seed/batch."""
        mine = self.state()
        for k in ("seed", "num_examples", "global_batch", "shuffle", "drop_remainder"):
            if k in state and state[k] != mine[k]:
                raise ValueError(
                    f"pipeline state was saved with {k}={state[k]!r}, this pipeline has "
                    f"{k}={mine[k]!r}: resuming would not continue the same order"
                )
        self.position = int(state["position"])
        self._next_to_submit = self.position
        if getattr(self, "_queue", None):
            for _, futs in self._queue:
                for f in futs:
                    f.cancel()
            self._queue.clear()

    # ----- loading -----

    def _load(self, index: int, epoch: int) -> dict:
        rng = np.random.default_rng([self.seed, epoch, int(index)])
        return self.transform(self.source[int(index)], rng)

    def _total_batches(self) -> float:
        return math.inf if self.num_epochs is None else self.num_epochs * self.batches_per_epoch

    def _fill(self) -> None:
        while (len(self._queue) < self.prefetch
               and self._next_to_submit < self._total_batches()):
            pos = self._next_to_submit
            epoch, idx, valid = self.batch_indices(pos)
            futs = [self._pool.submit(self._load, i, epoch) for i in idx]
            self._queue.append(((pos, idx, valid), futs))
            self._next_to_submit += 1

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        self._fill()
        if not self._queue:
            raise StopIteration
        (pos, idx, valid), futs = self._queue.popleft()
        examples = [f.result() for f in futs]  # re-raises a loader's DatasetError
        batch = stack_examples(examples, [self.source.ids[i] for i in idx])
        batch["index"] = idx.astype(np.int64)
        batch["valid"] = valid
        self.position = pos + 1
        self._fill()
        return batch

    def close(self) -> None:
        """Stops the loader threads (pending loads are cancelled)."""
        for _, futs in self._queue:
            for f in futs:
                f.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stack_examples(examples: list[dict], ids: list[str]) -> dict[str, np.ndarray]:
    """Stacks per-example dicts into a batch; a shape mismatch names the two images."""
    out = {}
    for key in examples[0]:
        arrs = [e[key] for e in examples]
        shape = arrs[0].shape
        for a, i in zip(arrs, ids):
            if a.shape != shape:
                raise DatasetError(
                    f"cannot batch field {key!r}: image {ids[0]!r} gives {shape}, image {i!r} "
                    f"gives {a.shape}; warp/crop to one size, or use batch 1"
                )
        out[key] = np.stack(arrs)
    return out


def measure(pipeline: Pipeline, num_batches: int, warmup: int = 2) -> dict[str, Any]:
    """Images/s of a pipeline over num_batches host batches (after `warmup` batches)."""
    for _ in range(warmup):
        next(pipeline)
    t0 = time.perf_counter()
    for _ in range(num_batches):
        next(pipeline)
    dt = time.perf_counter() - t0
    n = num_batches * pipeline.local_batch
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 1)}


def main(argv=None) -> None:
    """`python -m dsrg_jax.data.pipeline`: the input pipeline's images/s.

    A missing or bad dataset -> one line (`--debug`: the traceback)."""
    from dsrg_jax import cli

    p = argparse.ArgumentParser(
        prog="python -m dsrg_jax.data.pipeline",
        description="Measure the input pipeline's images/s on this machine.")
    p.add_argument("--dataset", default="digits", choices=("digits", "voc"))
    p.add_argument("--voc-root", help="VOC2012 folder (for --dataset voc)")
    p.add_argument("--split", default="train")
    p.add_argument("--stage", default="dsrg", choices=("dsrg", "crop"))
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    cli.add_debug_flag(p)
    a = p.parse_args(argv)
    cli.run(lambda: _measure_main(a), debug=a.debug)


def _measure_main(a) -> None:
    """`main`'s measurement, from its parsed flags."""
    from dsrg_jax.config import DataConfig
    from dsrg_jax.data import transforms as T
    from dsrg_jax.data.registry import get_dataset

    src = get_dataset(a.dataset).open(DataConfig(dataset=a.dataset, data_dir=a.voc_root), a.split)
    if a.stage == "dsrg":
        tf = T.warp_transform(a.size, cue_size=None, fields=("image", "labels", "mask"))
    else:
        tf = T.crop_transform(a.size, fields=("image", "labels", "mask"))
    with Pipeline(src, global_batch=a.batch, transform=tf, process_index=0, process_count=1,
                  num_workers=a.workers, prefetch=a.prefetch, drop_remainder=False) as pipe:
        runs = [measure(pipe, a.batches, warmup=2 if r == 0 else 0) for r in range(a.repeats)]
    rates = sorted(r["images_per_s"] for r in runs)
    res = {"images_per_s_median": rates[len(rates) // 2], "images_per_s_runs": rates,
           "images_per_run": runs[0]["images"]}
    res.update(dataset=a.dataset, stage=a.stage, size=a.size, batch=a.batch, workers=a.workers)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
