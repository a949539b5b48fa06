"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) for DSRG, in JAX and on the host.

In JAX on the training grid, and pydensecrf2 on the host at full resolution.

Model (pydensecrf's defaults, which the official SEC/DSRG `krahenbuhl2013` wrapper also uses): per
image of N pixels and C classes, unary energy `U` (`-P` for unary="prob", the official training
setting; `-log P` for unary="logprob", the official test setting) and two Potts pairwise terms, a
bilateral kernel on features `(x/bi_xy, y/bi_xy, r/bi_rgb, g/bi_rgb, b/bi_rgb)` with weight `bi_w`
and a Gaussian kernel on `(x/pos_xy, y/pos_xy)` with weight `pos_w`. Each kernel
`k(i, j) = exp(-|f_i - f_j|^2 / 2)` (self term included) is normalised symmetrically,
`K~ = D^-1/2 K D^-1/2` with `D = diag(K 1)` (pydensecrf's NORMALIZE_SYMMETRIC, DIAG_KERNEL). Mean
field (densecrf.cpp `DenseCRF::inference`): `Q = softmax(-U)`, then `iterations` times
`Q = softmax(-U + sum_k w_k K~_k Q)` (PottsCompatibility(w) multiplies by -w and the message is
subtracted).

Two kernel implementations in JAX (`dense_crf(kernel=...)`):
  * "lattice" (default): pydensecrf's permutohedral lattice (Adams et al. 2010; densecrf
    `permutohedral.cpp`, SSE build) re-implemented with static shapes (sort + binary search in
    place of its hash table). This is the approximation the official code ran; it agrees with
    pydensecrf2 to float rounding. Memory O(B * N * (d+1) * C), d = 5 (bilateral) or 2.
  * "exact": explicit Gaussian kernels (the spatial one separably), the exact model with no
    approximation. It differs from the lattice by a few percent of pixels (the lattice's
    approximation, not float error). Memory B * N^2 * 4 bytes for the bilateral kernels, so it
    is for small grids.
  * "auto": "exact" up to AUTO_EXACT_MAX_PIXELS grid pixels, else "lattice" (`resolve_kernel`).

The parameters of both are one frozen `CRFParams`; `TRAIN_CRF` and `TEST_CRF` are the official
presets. The host CRF (pydensecrf2 at full resolution, process pools, callbacks from jitted code)
is `dsrg_jax.crf_host`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

from dsrg_jax.convention import CAFFE_MEAN_BGR
from dsrg_jax.ops.permutohedral import feature_index, feature_tables, features, lattice_messages

# Floor of the training CRF output before renormalising (official CRFLayer `min_prob`).
MIN_PROB = 1e-4
_UNARY_MODES = ("prob", "logprob")


@dataclasses.dataclass(frozen=True)
class CRFParams:
    """Parameters of the dense CRF, JAX or host (defaults: the official training CRF).

    Attributes:
      unary: "prob" (energy -P, official training) or "logprob" (energy -log P, official test).
      bi_w, bi_xy, bi_rgb: bilateral Potts weight, spatial width (px), colour width.
      pos_w, pos_xy: Gaussian Potts weight and spatial width (px). A weight of 0 drops the term.
      iterations: mean-field iterations.
      min_prob: output floor before renormalising (official training 1e-4; 0: raw mean field,
        as pydensecrf returns it).
      unary_floor: probabilities below it are raised to it before the unary energy (the
        official test scripts floor at 1e-5 before -log P; 0: only the float32 tiny).
    """

    unary: Literal["prob", "logprob"] = "prob"
    bi_w: float = 10.0          # krahenbuhl2013 CRF: bilateral Potts weight 10
    bi_xy: float = 80.0 / 12.0  # 80 px / scale_factor 12 (official CRFLayer on the 41x41 grid)
    bi_rgb: float = 13.0        # colour width 13
    pos_w: float = 3.0          # Gaussian Potts weight 3
    pos_xy: float = 3.0 / 12.0  # 3 px / scale_factor 12
    iterations: int = 10        # maxiter=10
    min_prob: float = MIN_PROB
    unary_floor: float = 0.0

    def __post_init__(self):
        if self.unary not in _UNARY_MODES:
            raise ValueError(f"CRFParams.unary must be one of {_UNARY_MODES}, got "
                             f"{self.unary!r}")
        if int(self.iterations) != self.iterations or self.iterations < 0:
            raise ValueError(f"CRFParams.iterations must be an integer >= 0, got "
                             f"{self.iterations}")
        for name in ("bi_w", "bi_xy", "bi_rgb", "pos_w", "pos_xy", "min_prob", "unary_floor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v)):
                raise TypeError(f"CRFParams.{name} must be a finite float, got {v!r}")
            width = name.endswith(("_xy", "_rgb"))
            if v < 0 or (width and v == 0):
                bound = "> 0 (a kernel width)" if width else ">= 0"
                raise ValueError(f"CRFParams.{name} must be {bound}, got {v}")
        if not 0.0 <= self.unary_floor < 1.0:
            raise ValueError(f"CRFParams.unary_floor must be in [0, 1), got {self.unary_floor}")

    def replace(self, **changes) -> CRFParams:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# Official training CRF: krahenbuhl2013 `CRF(im, probs, scale_factor=12.0)` on the 41x41 grid
# (official CRFLayer): unary -P, bilateral w=10, 80/12 px, 13; Gaussian w=3, 3/12 px;
# 10 iterations; output floored at 1e-4 and renormalised.
# The input is floored in place first (P < 1e-4 -> 1e-4).
TRAIN_CRF = CRFParams(unary_floor=MIN_PROB)
# Official test-time CRF at full resolution (test-ms.py, test-ms-f.py): P < 1e-5 -> 1e-5, unary
# -log P, 80 px, 13, 3 px, no output floor.
TEST_CRF = CRFParams(unary="logprob", bi_xy=80.0, pos_xy=3.0, min_prob=0.0, unary_floor=1e-5)
_KERNELS = ("auto", "exact", "lattice")
# kernel="auto": "exact" up to this many grid pixels (and within max_kernel_bytes), else
# "lattice". 2048 covers VOC's 41x41 training grid (1681 px: 11 MB of bilateral kernel per
# image); on CPU "exact" is the faster one there (docs/benchmarks.md, "Dense CRF").
AUTO_EXACT_MAX_PIXELS = 2048
# Largest bilateral kernel (all images of a call together) "exact" builds unless told otherwise.
_DEFAULT_MAX_KERNEL_BYTES = 2 * 1024**3


# ----------------------------------------------------------------------------------------------
# Image to the CRF grid, as the official CRFLayer does it.
# ----------------------------------------------------------------------------------------------


def _zoom_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order-1 `scipy.ndimage.zoom` taps along one axis (grid_mode=False: corners aligned).

    Returns (i0, i1, t): output o reads `(1 - t) * x[i0] + t * x[i1]`, coordinates computed in
    float64 as scipy does (`o * (n_in - 1) / (n_out - 1)`).
    """
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    coord = np.arange(n_out, dtype=np.float64) * scale
    i0 = np.clip(np.floor(coord).astype(np.int64), 0, n_in - 1)
    t = coord - i0
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0.astype(np.int32), i1.astype(np.int32), t.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("size", "mean", "std"))
def downsample_image(
    images: jax.Array,
    size: tuple[int, int] = (41, 41),
    *,
    mean: tuple[float, float, float] = CAFFE_MEAN_BGR,
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> jax.Array:
    """The network input image on the CRF grid, as the official CRFLayer makes it.

    pylayers.py: `zoom(im, (1, 1, 41 / H, 41 / W), order=1)` on the mean-subtracted image, then the
    mean added back and `np.round`, passed to the CRF as uint8. Here `pixel = x * std + mean` is
    applied after the bilinear (corner-aligned) zoom, then rounded half-to-even and clipped to
    [0, 255]. With the defaults (Caffe BGR input) the result is BGR, the order the official CRF
    sees. Channel order matters for the permutohedral lattice (its embedding treats each feature
    axis differently): BGR and RGB give slightly different CRFs; only the exact kernel is
    unchanged by it.

    Args:
      images: float[B, H, W, 3], the network input (mean-subtracted, e.g. BGR - (104, 117, 123)).
      size: (h, w) of the CRF grid, the network output size (41, 41 for a 321 input).
      mean: per-channel value added back after the zoom (official: (104, 117, 123)).
      std: per-channel factor applied before adding the mean (1 for the Caffe input; the ImageNet
        std * 255 for torchvision-normalised RGB input).

    Returns:
      uint8[B, h, w, 3]. Memory: about 2 * B * h * W * 3 floats of temporaries.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"downsample_image: `images` must be float[B, H, W, 3], got shape {images.shape}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"downsample_image: `size` must be (h, w) >= 1, got {size}")
    x = images.astype(jnp.float32)
    for axis, n_out in ((1, size[0]), (2, size[1])):
        i0, i1, t = _zoom_taps(x.shape[axis], n_out)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        t = jnp.asarray(t).reshape(shape)
        x = (1.0 - t) * jnp.take(x, i0, axis=axis) + t * jnp.take(x, i1, axis=axis)
    x = x * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32)
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


# ----------------------------------------------------------------------------------------------
# Shared pieces: checks, unary energy, mean field.
# ----------------------------------------------------------------------------------------------


def check_crf_inputs(fn: str, images, probs, params: CRFParams, batched: bool) -> None:
    """Shape/dtype checks with messages naming the argument (`fn` names the caller)."""
    lead = "B, " if batched else ""
    if not isinstance(params, CRFParams):
        raise TypeError(f"{fn}: `params` must be a CRFParams (e.g. TRAIN_CRF, TEST_CRF), got "
                        f"{type(params).__name__}")
    for name, x in (("images", images), ("probs", probs)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{fn}: `{name}` must be an array, got {type(x).__name__}")
    nd = 4 if batched else 3
    if probs.ndim != nd:
        raise ValueError(
            f"{fn}: `probs` must be float[{lead}H, W, C], got shape {tuple(probs.shape)}")
    if not jnp.issubdtype(probs.dtype, jnp.floating):
        raise TypeError(f"{fn}: `probs` must have a floating dtype, got {probs.dtype}")
    if images.ndim != nd or images.shape[-1] != 3:
        raise ValueError(
            f"{fn}: `images` must be uint8[{lead}H, W, 3], got shape {tuple(images.shape)}")
    if np.dtype(images.dtype) != np.uint8:
        raise TypeError(
            f"{fn}: `images` must be uint8 (0-255 colours, as pydensecrf takes them), got dtype "
            f"{images.dtype}; use `downsample_image` for the network input")
    if tuple(images.shape[:-1]) != tuple(probs.shape[:-1]):
        raise ValueError(
            f"{fn}: `images` {tuple(images.shape)} and `probs` {tuple(probs.shape)} must have "
            f"the same {lead}H, W")
    if probs.shape[-1] < 1:
        raise ValueError(f"{fn}: `probs` needs at least one class, got C={probs.shape[-1]}")
    if not params.min_prob < 1.0 / probs.shape[-1]:
        raise ValueError(f"{fn}: `params.min_prob` must be in [0, 1/C), got {params.min_prob} "
                         f"with C={probs.shape[-1]}")


def unary_energy(probs, unary: str, floor: float = 0.0, xp=jnp):
    """The unary energy: -P ("prob") or -log P ("logprob"), P first raised to `floor`.

    For the log, P is raised to at least float32's tiny."""
    probs = probs.astype(xp.float32)
    if floor > 0.0:
        probs = xp.maximum(probs, np.float32(floor))
    if unary == "prob":
        return -probs
    return -xp.log(xp.maximum(probs, np.finfo(np.float32).tiny))


def clamp_renormalise(q, min_prob: float, xp=jnp):
    """Official CRFLayer: `Q[Q < min_prob] = min_prob; Q /= Q.sum(classes)` (no-op for 0)."""
    if min_prob <= 0.0:
        return q
    q = xp.maximum(q, np.float32(min_prob))
    return q / xp.sum(q, axis=-1, keepdims=True)


def _mean_field(u: jax.Array, messages, iterations: int) -> jax.Array:
    """pydensecrf DenseCRF::inference. u: float[..., C] unary energy; messages: (w, K~ apply)."""
    q = jax.nn.softmax(-u, axis=-1)

    def step(_, q):
        logits = -u
        for w, apply in messages:
            logits = logits - (-w) * apply(q)   # Potts: pairwise message = -w * K~ Q, subtracted.
        return jax.nn.softmax(logits, axis=-1)

    return lax.fori_loop(0, iterations, step, q)


# ----------------------------------------------------------------------------------------------
# "exact": explicit Gaussian kernels.
# ----------------------------------------------------------------------------------------------


def _exact_bilateral(feat: jax.Array) -> jax.Array:
    """float[N, N] symmetric-normalised bilateral kernel, exp(-|fi - fj|^2 / 2), self included."""
    sq = 0.0
    for k in range(feat.shape[-1]):      # elementwise sum, fused by XLA: no N*N*5 temporary
        diff = feat[:, None, k] - feat[None, :, k]
        sq = sq + diff * diff
    kern = jnp.exp(-0.5 * sq)
    norm = lax.rsqrt(jnp.sum(kern, axis=1) + 1e-20)
    return norm[:, None] * kern * norm[None, :]


def _exact_gaussian_1d(n: int, sigma: float) -> jax.Array:
    """float[n, n] normalised 1-D factor of the separable spatial kernel."""
    f = jnp.arange(n, dtype=jnp.float32) / np.float32(sigma)
    d = f[:, None] - f[None, :]
    kern = jnp.exp(-0.5 * d * d)
    norm = lax.rsqrt(jnp.sum(kern, axis=1))
    return norm[:, None] * kern * norm[None, :]


def _exact_messages(image, h, w, c, *, bi_w, bi_xy, bi_rgb, pos_w, pos_xy, precision):
    """(weight, apply) pairs on q: float[H*W, C] for the exact kernels of one image."""
    msgs = []
    if pos_w != 0.0:
        # exp(-(dx^2 + dy^2)/2) = kx * ky, and D = Dx (x) Dy, so K~ = K~y (x) K~x exactly.
        ky = _exact_gaussian_1d(h, pos_xy)
        kx = _exact_gaussian_1d(w, pos_xy)

        def apply_pos(q):
            q = q.reshape(h, w, c)
            q = jnp.einsum("ab,bwc->awc", ky, q, precision=precision)
            q = jnp.einsum("ab,hbc->hac", kx, q, precision=precision)
            return q.reshape(h * w, c)

        msgs.append((pos_w, apply_pos))
    if bi_w != 0.0:
        kb = _exact_bilateral(features(feature_index(h, w, image),
                                        feature_tables(h, w, bi_xy, bi_rgb)))
        msgs.append((bi_w, lambda q: jnp.matmul(kb, q, precision=precision)))
    return msgs


# ----------------------------------------------------------------------------------------------
# Public JAX CRF.
# ----------------------------------------------------------------------------------------------


def dense_crf(
    images: jax.Array,
    probs: jax.Array,
    params: CRFParams = TRAIN_CRF,
    *,
    kernel: Literal["lattice", "exact", "auto"] = "lattice",  # lattice: the official CRF's
    max_kernel_bytes: int = _DEFAULT_MAX_KERNEL_BYTES,
    precision: lax.Precision = lax.Precision.HIGHEST,
    validate: bool = False,
) -> jax.Array:
    """Mean-field dense CRF on a small grid, pure and jitted (default: the official training CRF).

    Args:
      images: uint8[B, H, W, 3], the image at the grid size (see `downsample_image`).
      probs: float[B, H, W, C], class probabilities.
      params: the CRF's parameters (`TRAIN_CRF`, `TEST_CRF`, or `TRAIN_CRF.replace(...)`).
      kernel: "lattice" (pydensecrf's permutohedral approximation, which the official code ran;
        agrees with pydensecrf2 to float rounding), "exact" (explicit Gaussian kernels, the
        exact model; a few percent of pixels differ from the lattice's result) or "auto"
        (`resolve_kernel`: "exact" for grids of at most AUTO_EXACT_MAX_PIXELS pixels, else
        "lattice").
      max_kernel_bytes: "exact" refuses calls whose bilateral kernels (B * (H*W)^2 * 4 bytes)
        exceed this; use kernel="lattice" or `dsrg_jax.crf_host` for such sizes.
      precision: matmul precision of "exact" (HIGHEST: float32 also on TPU/GPU tensor cores).
      validate: check (`jax.experimental.checkify`; under jit wrap the caller with
        `checkify.checkify`) that `probs` holds no NaN or infinity, which mean field would
        spread over the whole image.

    Returns:
      Q: float32[B, H, W, C], the CRF marginals (rows sum to 1).

    Memory: "lattice": linear, O(B * H*W * (d+1) * (C + 2(d+1))), d = 5; "exact": quadratic,
    B * (H*W)^2 * 4 bytes for the bilateral kernels plus O(B * H*W * C). XLA's temporary buffers
    measured on CPU at 41x41, C=21: 13 MB per image ("lattice"), 11 MB per image ("exact").

    Differentiable in `probs` (plain autodiff through the iterations). The official training
    gradient does not differentiate the CRF (`dsrg_jax.ops.losses.constrain_loss` passes it
    through and gives Q no gradient): call `dense_crf(images, lax.stop_gradient(probs))` there,
    so that no (zero) backward pass runs through the iterations.
    """
    check_crf_inputs("dense_crf", images, probs, params, batched=True)
    if validate:
        checkify.check(jnp.all(jnp.isfinite(probs)),
                       "dense_crf: `probs` holds NaN or infinite values")
    if kernel not in _KERNELS:
        raise ValueError(f"dense_crf: `kernel` must be one of {_KERNELS}, got {kernel!r}")
    b, h, w, _ = probs.shape
    n = h * w
    kernel = resolve_kernel(kernel, probs.shape, max_kernel_bytes=max_kernel_bytes)
    if kernel == "exact" and params.bi_w != 0.0 and b * n * n * 4 > max_kernel_bytes:
        raise ValueError(
            f"dense_crf: the exact bilateral kernels of `probs` {tuple(probs.shape)} need "
            f"{b * n * n * 4 / 2**20:.0f} MiB (B * (H*W)^2 * 4 bytes) > max_kernel_bytes="
            f"{max_kernel_bytes / 2**20:.0f} MiB. For full-resolution images use the host CRF "
            f"(dsrg_jax.crf_host.dense_crf_host / dense_crf_host_batch, pydensecrf2) or "
            f"kernel='lattice'; or raise max_kernel_bytes")
    # The unary mode and the floors are traced, so switching them does not recompile.
    return _dense_crf(images, probs, jnp.asarray(params.unary == "logprob"),
                      jnp.asarray(params.min_prob, jnp.float32),
                      jnp.asarray(params.unary_floor, jnp.float32),
                      bi_w=float(params.bi_w), bi_xy=float(params.bi_xy),
                      bi_rgb=float(params.bi_rgb), pos_w=float(params.pos_w),
                      pos_xy=float(params.pos_xy), iterations=int(params.iterations),
                      kernel=kernel, precision=precision)


def resolve_kernel(kernel: str, probs_shape: Sequence[int], *,
                   max_kernel_bytes: int = _DEFAULT_MAX_KERNEL_BYTES) -> str:
    """The JAX CRF kernel `dense_crf` runs for `kernel` on probabilities of `probs_shape`.

    "exact" and "lattice" are returned as given. "auto" is "exact" when the grid has at most
    AUTO_EXACT_MAX_PIXELS pixels and the call's bilateral kernels (B * (H*W)^2 * 4 bytes) fit in
    `max_kernel_bytes`, else "lattice". On CPU "exact" is the faster kernel on training grids
    (15x15: 5 vs 52 ms per batch of 20; 41x41: see docs/benchmarks.md "Dense CRF"), but it is
    the exact model, not pydensecrf's lattice approximation: 92-97% argmax agreement with
    pydensecrf2 instead of bit-level agreement.
    """
    if kernel not in _KERNELS:
        raise ValueError(f"dense_crf: `kernel` must be one of {_KERNELS}, got {kernel!r}")
    if kernel != "auto":
        return kernel
    b, h, w = (int(d) for d in probs_shape[:3])
    n = h * w
    return "exact" if n <= AUTO_EXACT_MAX_PIXELS and b * n * n * 4 <= max_kernel_bytes \
        else "lattice"


@functools.partial(
    jax.jit,
    static_argnames=("bi_w", "bi_xy", "bi_rgb", "pos_w", "pos_xy", "iterations", "kernel",
                     "precision"))
def _dense_crf(images, probs, log_unary, min_prob, unary_floor, *, bi_w, bi_xy, bi_rgb, pos_w,
               pos_xy, iterations, kernel, precision):
    """`dense_crf` after its checks; log_unary: bool[], min_prob, unary_floor: float32[]."""
    _, h, w, c = probs.shape
    n = h * w
    make = _exact_messages if kernel == "exact" else lattice_messages
    params = dict(bi_w=bi_w, bi_xy=bi_xy, bi_rgb=bi_rgb, pos_w=pos_w, pos_xy=pos_xy,
                  precision=precision)

    def one(image, p):
        p = jnp.maximum(p.astype(jnp.float32), unary_floor)
        u = jnp.where(log_unary, unary_energy(p, "logprob"), unary_energy(p, "prob"))
        q = _mean_field(u.reshape(n, c), make(image, h, w, c, **params), iterations)
        return q.reshape(h, w, c)

    q = jax.vmap(one)(images, probs)
    floored = jnp.maximum(q, min_prob)
    floored = floored / jnp.sum(floored, axis=-1, keepdims=True)
    return jnp.where(min_prob > 0, floored, q)


