"""Dense CRF speed, side by side: the JAX CRF (a batch) against pydensecrf2 (one image at a time).

The training setting: a batch of 20 images at 41x41 and 21 classes, the official training CRF
(`dsrg_jax.ops.crf.TRAIN_CRF`). Times the jitted `dense_crf` with both kernels ("lattice", the
default, and "exact"), pydensecrf2 called image by image in this process (what the official Caffe
layer does), and pydensecrf2 over a process pool of every core (`dense_crf_host_batch`). Medians of
`--repeats` runs after one warm-up; ratios are against pydensecrf2 one image at a time. With
`--with-model`, also times one forward pass of the DeepLab-v2 VGG16 net (321x321) for scale.

`--agreement` prints instead how closely the JAX CRF (both kernels) reproduces pydensecrf2 on real
photographs (scikit-image's samples and, if present, the voc_mini VOC images of the shared test
data: `$DSRG_SHARED_DATA/voc_mini`, found as the tests find it) on the training grid, with smooth
random probability maps.

Run from the project root:
  python -m benchmarks.crf --repeats 7 --with-model
  python -m benchmarks.crf --agreement
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from dsrg_jax import crf_host
from dsrg_jax.ops import crf

# The shared test data, as tests/conftest.py finds it: DSRG_SHARED_DATA, else shared/data beside
# the project.
SHARED_DATA = pathlib.Path(os.environ.get(
    "DSRG_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"))


def _photos(n: int, size: int) -> np.ndarray:
    """uint8[n, size, size, 3]: scikit-image sample photographs (noise if it is missing)."""
    try:
        import cv2
        import skimage.data as skdata
    except ImportError:
        return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
             "hubble_deep_field")
    base = [cv2.resize(getattr(skdata, k)(), (size, size), interpolation=cv2.INTER_AREA)
            for k in names]
    return np.stack([base[i % len(base)] for i in range(n)])


def _probs(n: int, size: int, classes: int, seed: int = 0) -> np.ndarray:
    """float32[n, size, size, classes]: smooth random probability maps."""
    z = np.random.default_rng(seed).normal(size=(n, size, size, classes))
    z = ndimage.gaussian_filter(z, sigma=(0, 3, 3, 0))
    z = z / z.std() * 3.0
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def _training_grid(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8[size, size, 3]: a photograph as the training CRF sees it.

    Warped to 321, Caffe BGR input, then the official CRFLayer downsampling."""
    import cv2

    bgr = cv2.resize(rgb[..., :3], (321, 321))[..., ::-1].astype(np.float32)
    x = bgr - np.asarray(crf.CAFFE_MEAN_BGR, np.float32)
    return np.asarray(crf.downsample_image(x[None], (size, size)))[0]


def agreement_table(voc_root: str | None, size: int, classes: int) -> None:
    """Prints argmax agreement and |Q difference| of the JAX CRF against pydensecrf2."""
    import cv2
    import skimage.data as skdata

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
             "hubble_deep_field")
    sets = {"scikit-image samples": [getattr(skdata, k)() for k in names]}
    if voc_root and os.path.isdir(os.path.join(voc_root, "JPEGImages")):
        folder = os.path.join(voc_root, "JPEGImages")
        sets["VOC 2012 (voc_mini)"] = [
            cv2.cvtColor(cv2.imread(os.path.join(folder, f)), cv2.COLOR_BGR2RGB)
            for f in sorted(os.listdir(folder)) if f.endswith(".jpg")]
    settings = {
        "training CRF, unary -P": crf.TRAIN_CRF.replace(min_prob=0.0),
        "training widths, unary -log P": crf.TRAIN_CRF.replace(unary="logprob", min_prob=0.0),
        "test-time widths (80, 13, 3), -log P": crf.TEST_CRF,
    }
    print(f"agreement with pydensecrf2 at {size}x{size}, {classes} classes, smooth random "
          f"probability maps (raw mean-field output, no floor)")
    print("| images | setting | kernel | mean argmax agreement | mean abs Q diff "
          "| max abs Q diff |")
    print("|---|---|---|---|---|---|")
    for set_name, photos in sets.items():
        images = np.stack([_training_grid(p, size) for p in photos])
        probs = _probs(len(images), size, classes, seed=1)
        for setting, params in settings.items():
            ref = np.stack([crf_host.dense_crf_host(i, p, params) for i, p in zip(images, probs)])
            for kernel in ("lattice", "exact"):
                q = np.asarray(crf.dense_crf(images, probs, params, kernel=kernel))
                agree = (q.argmax(-1) == ref.argmax(-1)).mean(axis=(1, 2)).mean()
                diff = np.abs(q - ref)
                print(f"| {set_name} ({len(images)}) | {setting} | {kernel} | {agree:.5f} | "
                      f"{diff.mean():.2e} | {diff.max():.1e} |")


def _median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    fn()                                                        # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    try:
        load = "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    except OSError:
        load = "load average n/a"
    return (f"{cpu}, {os.cpu_count()} cores ({load}); jax {jax.__version__} on "
            f"{jax.devices()[0].platform} ({len(jax.devices())} devices)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--size", type=int, default=41)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--processes", type=int, default=os.cpu_count(),
                        help="pool size of the pydensecrf2 process-pool line")
    parser.add_argument("--with-model", action="store_true",
                        help="also time one DeepLab-v2 VGG16 forward pass (321x321, 1 image)")
    parser.add_argument("--agreement", action="store_true",
                        help="instead of timing, print the agreement with pydensecrf2")
    parser.add_argument("--voc-root", default=str(SHARED_DATA / "voc_mini" / "VOC2012"),
                        help="VOC2012 folder whose JPEGImages join the agreement images")
    args = parser.parse_args()
    if args.agreement:
        print(f"machine: {_machine()}")
        agreement_table(args.voc_root, args.size, args.classes)
        return

    images = _photos(args.batch, args.size)
    probs = _probs(args.batch, args.size, args.classes)
    images_d, probs_d = jnp.asarray(images), jnp.asarray(probs)
    print(f"machine: {_machine()}")
    print(f"setting: batch {args.batch}, {args.size}x{args.size}, {args.classes} classes, "
          f"official training CRF {crf.TRAIN_CRF}; median of {args.repeats} runs")

    rows = []
    ref, _ = _median_seconds(
        lambda: [crf_host.dense_crf_host(i, p, crf.TRAIN_CRF) for i, p in zip(images, probs)],
        args.repeats)
    rows.append(("pydensecrf2, one image at a time (official)", ref))
    pool, _ = _median_seconds(
        lambda: crf_host.dense_crf_host_batch(images, probs, crf.TRAIN_CRF,
                                              processes=args.processes), args.repeats)
    crf_host.shutdown_pools()
    rows.append((f"pydensecrf2, process pool of {args.processes}", pool))
    for kernel in ("lattice", "exact"):
        fn = jax.jit(lambda i, p, k=kernel: crf.dense_crf(i, p, crf.TRAIN_CRF, kernel=k))
        start = time.perf_counter()
        fn.lower(images_d, probs_d).compile()
        compile_s = time.perf_counter() - start
        t, _ = _median_seconds(lambda fn=fn: fn(images_d, probs_d).block_until_ready(),
                               args.repeats)
        rows.append((f"JAX dense_crf kernel={kernel!r} (jit; compile {compile_s:.1f} s)", t))
    if args.with_model:
        from dsrg_jax.models import DeepLabV2VGG16

        model = DeepLabV2VGG16(num_classes=args.classes)
        x = jnp.zeros((1, 321, 321, 3), jnp.float32)
        params = jax.jit(model.init)(jax.random.key(0), x)
        fwd = jax.jit(model.apply)
        t, _ = _median_seconds(lambda: fwd(params, x).block_until_ready(),
                               max(3, args.repeats // 2))
        rows.append(("(scale) DeepLab-v2 VGG16 forward, 1 image 321x321", t))

    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  {'median s':>9}  {'ms/image':>9}  {'vs pydensecrf2 serial':>22}")
    for name, t in rows:
        per_image = 1e3 * t / (1 if name.startswith("(scale)") else args.batch)
        print(f"{name:{width}}  {t:9.3f}  {per_image:9.1f}  {t / ref:21.2f}x")


if __name__ == "__main__":
    main()
