"""Forward + backward time and peak memory of the segmentation models under jit.

One training-style step per call: logits (dropout on) -> mean softmax cross-entropy against
random labels on the output grid -> gradients of all trainable parameters. Compile time is
reported apart; the step time is the median of `--runs` timed calls after one warm-up call.
Each model runs in a fresh subprocess so that its peak resident memory is its own.

    python benchmarks/models.py                      # both models, batch 2 x 321 x 321
    python benchmarks/models.py --models deeplab_vgg16 --runs 3

Memory: "XLA" is the compiled step's own estimate (arguments + outputs + temporaries, from
`Compiled.memory_analysis()`); "peak RSS" is the whole process's maximum resident set
(Python, JAX runtime, parameters, the compiler included).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("deeplab_vgg16", "deeplab_resnet101")


def _worker(name: str, batch: int, size: int, runs: int, num_classes: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from dsrg_jax.models import count_params, create_model

    model = create_model(name, num_classes=num_classes)
    x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, x[:1, :65, :65]))(jax.random.key(1))
    params = variables["params"]
    frozen = {k: v for k, v in variables.items() if k != "params"}
    out_hw = jax.eval_shape(model.apply, variables, x).shape[1:3]
    labels = jax.random.randint(jax.random.key(2), (batch, *out_hw), 0, num_classes)

    def loss_fn(params, x, labels, key):
        logits = model.apply({"params": params, **frozen}, x, train=True, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    t0 = time.perf_counter()
    compiled = step.lower(params, x, labels, jax.random.key(3)).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_bytes = None
    if mem is not None:
        xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    jax.block_until_ready(compiled(params, x, labels, jax.random.key(4)))  # warm-up
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, x, labels, jax.random.key(5 + i)))
        times.append(time.perf_counter() - t0)
    return {
        "model": name,
        "params": count_params(params),
        "input": [batch, size, size, 3],
        "output_grid": list(out_hw),
        "compile_s": compile_s,
        "step_s_median": statistics.median(times),
        "step_s_all": times,
        "xla_bytes": xla_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "load_avg_after": os.getloadavg(),
    }


def _machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import jax

    return (f"{cpu}, {os.cpu_count()} cores, JAX {jax.__version__} "
            f"({jax.default_backend()}), Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.batch, args.size, args.runs,
                                 args.num_classes)))
        return
    print(f"machine: {_machine()}; load average before: {os.getloadavg()}")
    print("| model | params | input | output | compile (s) | fwd+bwd median (s) | runs (s) "
          "| XLA memory (GiB) | peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch),
               "--size", str(args.size), "--runs", str(args.runs),
               "--num-classes", str(args.num_classes)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f}"  # noqa: E731
        print(f"| {r['model']} | {r['params']:,} | {'x'.join(map(str, r['input']))} "
              f"| {'x'.join(map(str, r['output_grid']))} | {r['compile_s']:.1f} "
              f"| {r['step_s_median']:.2f} | {', '.join(f'{t:.2f}' for t in r['step_s_all'])} "
              f"| {gib(r['xla_bytes'])} | {gib(r['peak_rss_bytes'])} |", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
