"""Multi-scale inference as the official test scripts: summed multi-scale logits, CRF, argmax.

The steps: scales or warps, logits at full size, summed, softmax, the full-resolution CRF, argmax.

The official protocol (`test-ms-f.py` for evaluation, `test-ms.py` for pseudo-labels; every
setting with its source in docs/fidelity.md): the image resampled with
`scipy.ndimage.zoom(order=1)` (corner-aligned linear; here `dsrg_jax.ops.resize.zoom_region`, on
the device, equal to scipy to float rounding) to each scale (0.75, 1, 1.25, aspect kept) or size
(241, 321, 401, warped), through the network, the logits zoomed back to the full image size the
same way and summed; softmax; `P < 1e-5 -> 1e-5`; an optional full-resolution dense CRF
(pydensecrf2, `dsrg_jax.crf_host`, every CPU core: unary -log P, bilateral w=10, 80 px, 13;
Gaussian w=3, 3 px; 10 iterations, on the RGB image); argmax over all classes (the official
default) or, as an option, over the image's labelled classes only.

Works with any network function:

    apply_fn = lambda variables, x: model.apply(variables, x, train=False)
    out = segment(apply_fn, images_uint8, variables=variables, crf=True)
    out.labels_crf  # uint8[B, H, W]

or `segment(lambda x: f(x), images)` for a closed-over function. Each scale is one jitted call
over the whole batch (compiled once per (apply_fn, scale, image shape)); pass the same `apply_fn`
object on every call so the compiled code is reused, and the variables through `variables` rather
than a closure (a closure bakes them into the compiled code as constants).

One path for every caller: `canvas_logits` takes a batch of images of different sizes at the top
left of one canvas (what the pipeline gives, possibly sharded over devices) and scales each image
on its own; `multi_scale_logits` / `segment` are its equal-size special case and
`segment_canvases` adds the per-image softmax, CRF and argmax. A whole split:
`predict_records(apply_fn, records, variables=..., canvas=500, out_dir=...)` writes VOC palette
PNGs that `python -m dsrg_jax.evaluate` scores. The CRF's process pool is spawned: a script that
uses it (crf_processes None or > 1) needs the `if __name__ == "__main__":` guard.

Images are zoomed to round(scale * side) as scipy does, then normalised (`normalize`: "caffe",
"torchvision" / "imagenet", None for float32 input as it is, or a function), as the official
scripts zoom the raw image and then subtract the mean (scipy's zero last line is black).
`Segmentation`, `normalize_images` and the small helpers live in `dsrg_jax.inference_parts` and
are importable from here.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsrg_jax.convention import MEAN_RGB_UINT8
from dsrg_jax.crf_host import dense_crf_host_batch
from dsrg_jax.data.files import write_label_png
from dsrg_jax.inference_parts import (
    Normalize,
    Segmentation,
    flip_region,
    group_by_size,
    label_mask,
    normalize_images,
    scaled_size,
)
from dsrg_jax.ops.crf import TEST_CRF, CRFParams
from dsrg_jax.ops.resize import zoom_region
from dsrg_jax.sharding import to_host

DEFAULT_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)  # official multi-scale test

ApplyFn = Callable[..., jax.Array]


def _call(apply_fn: ApplyFn, variables: Any, x: jax.Array) -> jax.Array:
    return apply_fn(x) if variables is None else apply_fn(variables, x)


def multi_scale_logits(apply_fn: ApplyFn, images: jax.Array | np.ndarray, *,
                       variables: Any = None, scales: Sequence[float] = DEFAULT_SCALES,
                       flip: bool = False, normalize: Normalize = "caffe") -> jax.Array:
    """Summed full-size logits of equal-size images: [B, H, W, 3] -> float32[B, H, W, C].

    The sum is over scales (and flips); this is `canvas_logits` with every image filling the canvas.

    `normalize` turns the RGB images into network input ("caffe", "torchvision", None, ...).
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3] RGB, got shape {tuple(images.shape)}")
    hw = np.tile(np.asarray(images.shape[1:3], np.int32), (images.shape[0], 1))
    return canvas_logits(apply_fn, images, hw, variables=variables, scales=scales, flip=flip,
                         normalize=normalize)


@functools.partial(jax.jit, static_argnames=("apply_fn", "scale", "size", "flip", "scipy_edge",
                                             "normalize"))
def canvas_scale_logits(apply_fn: ApplyFn, variables: Any, inputs: jax.Array, hw: jax.Array,
                        fill: jax.Array, *, scale: float | None = None, size: int | None = None,
                        flip: bool = False, scipy_edge: bool = True,
                        normalize: Normalize = None) -> jax.Array:
    """Logits of one scale for images padded at the top left of a canvas (see `canvas_logits`).

    Args:
      apply_fn: `apply_fn(x)` (variables None) or `apply_fn(variables, x)`: float32[B, h, w, 3]
        network input -> float[B, h', w', C] logits (any output stride).
      variables: the network's variables, or None.
      inputs: [B, S, S', 3] RGB 0-255 canvases (not normalised); hw: int[B, 2] real sizes.
      fill: float32[3] RGB colour of the padding of the scaled canvas (before `normalize`).
      scale: the real image resized to round(scale*h) x round(scale*w) (aspect kept), at the top
        left of a round(scale*S) x round(scale*S') canvas; or
      size: the real image warped to size x size (aspect not kept).
      flip: also run the mirrored image and add its mirrored-back logits.
      scipy_edge: reproduce scipy's zero last line for the size pairs where its zoom gives one
        (`dsrg_jax.ops.resize`; the official scripts had it). False: the edge value.
      normalize: applied after the zoom (see `normalize_images`), as the official scripts zoom
        the raw image and then subtract the mean: scipy's zero line is black, not the mean.

    Returns:
      float32[B, S, S', C]: each image's logits (the part of the output grid its real region
      covers) zoomed (scipy order 1, corner-aligned) to (h, w) at the top left; zero elsewhere.
    """
    _, big_h, big_w, _ = inputs.shape
    hw = hw.astype(jnp.int32)
    if size is not None:
        side = (int(size), int(size))
        dst = jnp.full_like(hw, int(size))
    else:
        side = (scaled_size(big_h, scale), scaled_size(big_w, scale))  # round: monotone
        dst = jnp.maximum(1, jnp.round(hw.astype(jnp.float32) * scale).astype(jnp.int32))
    x = zoom_region(inputs, side, dst, hw, scipy_edge=scipy_edge)
    inside = ((jnp.arange(side[0])[None, :, None] < dst[:, 0, None, None])
              & (jnp.arange(side[1])[None, None, :] < dst[:, 1, None, None]))
    x = normalize_images(jnp.where(inside[..., None], x, fill), normalize)
    canvas_side = jnp.asarray(side, jnp.int32)

    def logits_of(xin):
        out = _call(apply_fn, variables, xin)
        if not hasattr(out, "ndim") or out.ndim != 4 or out.shape[0] != xin.shape[0]:
            raise ValueError(f"apply_fn must return logits float[B, h, w, C] for input "
                             f"{tuple(xin.shape)}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        grid = jnp.asarray(out.shape[1:3], jnp.int32)
        # The output cells that cover the real (resized) image: ceil(grid * dst / side).
        cover = jnp.maximum(1, (grid * dst + canvas_side - 1) // canvas_side)
        return zoom_region(out.astype(jnp.float32), (big_h, big_w), hw, cover,
                           scipy_edge=scipy_edge)

    logits = logits_of(x)
    if flip:
        logits = logits + flip_region(logits_of(flip_region(x, dst[:, 1])), hw[:, 1])
    return logits


def canvas_logits(apply_fn: ApplyFn, images: jax.Array | np.ndarray, hw: jax.Array | np.ndarray,
                  *, variables: Any = None, scales: Sequence[float] | None = DEFAULT_SCALES,
                  sizes: Sequence[int] | None = None, flip: bool = False,
                  normalize: Normalize = "caffe", fill: Sequence[float] = MEAN_RGB_UINT8,
                  scipy_edge: bool = True) -> jax.Array:
    """Multi-scale logits of a batch of images of different sizes, each at the top left of a canvas.

    This is the batch the training pipeline gives (and may shard over devices: the arrays keep their
    sharding, one jitted call per scale).

    Each image's real region is zoomed on its own (as the official scripts zoom each image) and
    padded after scaling, and its logits come from the output cells its region covers: the
    result of an image does not depend on the canvas it was padded to (up to the padding the
    network sees at the scaled canvas' border; none when the image fills the canvas or is
    warped to `sizes`).

    Args:
      apply_fn, variables: the network (see `canvas_scale_logits`).
      images: [B, S, S', 3] RGB canvases, image b in [:h_b, :w_b].
      hw: int[B, 2] real sizes (h_b, w_b).
      scales: image scales, aspect kept (the official test protocol: 0.75, 1, 1.25); or
      sizes: sides the image is warped to, aspect not kept (the official pseudo-label protocol:
        241, 321, 401); exactly one of scales / sizes (sizes wins when given).
      flip: add the mirrored image's logits at every scale.
      normalize: RGB -> network input (see `normalize_images`), applied to each zoomed image
        (a function runs under jit: jax.numpy, hashable, equal on every call, e.g. an
        `InputConvention.normalize`).
      fill: RGB colour of the padding of the scaled canvases (normalised like the images).
      scipy_edge: see `canvas_scale_logits`.

    Returns:
      float32[B, S, S', C]: summed logits, image b's in [:h_b, :w_b], zero elsewhere.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3] RGB, got shape {tuple(images.shape)}")
    hw = jnp.asarray(hw)
    if hw.shape != (images.shape[0], 2):
        raise ValueError(f"hw must be int[{images.shape[0]}, 2], got shape {tuple(hw.shape)}")
    steps = [dict(size=int(v)) for v in sizes] if sizes is not None else [
        dict(scale=float(v)) for v in (scales or ())]
    if not steps:
        raise ValueError("scales or sizes must name at least one scale")
    for st in steps:
        if not next(iter(st.values())) > 0:
            raise ValueError(f"scales / sizes must be > 0, got {st}")
    fill = jnp.asarray(fill, jnp.float32).reshape(3)
    total = None
    for st in steps:
        logits = canvas_scale_logits(apply_fn, variables, images, hw, fill, flip=bool(flip),
                                     scipy_edge=bool(scipy_edge), normalize=normalize, **st)
        total = logits if total is None else total + logits
    return total


def segment(apply_fn: ApplyFn, images: np.ndarray, *, variables: Any = None,
            scales: Sequence[float] = DEFAULT_SCALES, flip: bool = False,
            normalize: Normalize = "caffe", crf: bool = False,
            crf_params: CRFParams = TEST_CRF, crf_processes: int | None = None,
            image_labels: np.ndarray | None = None) -> Segmentation:
    """Multi-scale (+ flip) prediction of a batch, optionally refined by the full-size CRF.

    Args:
      apply_fn, variables: the network (see `canvas_scale_logits`).
      images: uint8[B, H, W, 3] RGB (the CRF needs uint8 colours; with crf=False any dtype).
      scales: image scales (default 0.75, 1, 1.25).
      flip: add the mirrored image's logits at every scale.
      normalize: RGB -> network input ("caffe", "imagenet", None, or a function).
      crf: run pydensecrf2 at full resolution on softmax(logits) (unary -log P).
      crf_params: the full-size CRF's parameters (default the official test-time CRF).
      crf_processes: CRF worker processes (None: every core; 1: serial).
      image_labels: optional bool[B, C]; when given, classes outside the image label get
        probability 0 (background always kept) before the CRF and the argmax. The official code
        does not do this (default None: argmax over all classes).

    Returns:
      `Segmentation` (numpy arrays).
    """
    logits = multi_scale_logits(apply_fn, images, variables=variables, scales=scales, flip=flip,
                                normalize=normalize)
    return finish(logits, images, image_labels=image_labels, crf=crf, crf_params=crf_params,
                  crf_processes=crf_processes)


def finish(logits: jax.Array | np.ndarray, images: np.ndarray, *,
           image_labels: np.ndarray | None = None, crf: bool = False,
           crf_params: CRFParams = TEST_CRF,
           crf_processes: int | None = None) -> Segmentation:
    """Summed logits float[B, H, W, C] -> softmax, optional CRF, argmax (see `segment`).

    images: uint8[B, H, W, 3], used by the CRF only.
    """
    logits = jnp.asarray(logits)
    b, _, _, c = logits.shape
    allowed = label_mask(image_labels, c, b)
    masked = logits if allowed is None else jnp.where(allowed[:, None, None, :], logits, -jnp.inf)
    probs = np.asarray(jax.nn.softmax(masked, axis=-1))
    out = dict(logits=np.asarray(logits), probs=probs,
               labels=np.argmax(probs, axis=-1).astype(np.uint8))
    if crf:
        images_np = np.asarray(images)
        if images_np.dtype != np.uint8:
            raise TypeError(f"crf=True needs uint8 images (pydensecrf takes 0-255 colours), got "
                            f"{images_np.dtype}")
        q = dense_crf_host_batch(images_np, probs, crf_params, processes=crf_processes)
        if allowed is not None:
            q = np.where(allowed[:, None, None, :], q, 0.0)
        out.update(probs_crf=q, labels_crf=np.argmax(q, axis=-1).astype(np.uint8))
    return Segmentation(**out)


def segment_canvases(apply_fn: ApplyFn, images: jax.Array | np.ndarray,
                     hw: jax.Array | np.ndarray, *, variables: Any = None,
                     host_images: np.ndarray | None = None, host_hw: np.ndarray | None = None,
                     image_labels: np.ndarray | None = None,
                     scales: Sequence[float] | None = DEFAULT_SCALES,
                     sizes: Sequence[int] | None = None, flip: bool = False,
                     normalize: Normalize = "caffe", crf: bool = False,
                     crf_params: CRFParams = TEST_CRF,
                     crf_processes: int | None = None) -> list[Segmentation]:
    """One `Segmentation` per image of a batch of padded canvases, cropped to its real size.

    The one inference path (the pipeline's eval, pseudo-labels and test predictions, and
    `predict_records`): `canvas_logits` (the batch may be sharded over devices), then per image
    softmax, the full-size CRF (images of equal size go to the CRF pool together) and argmax.

    Args:
      apply_fn, variables, scales, sizes, flip, normalize: as `canvas_logits`.
      images: [B, S, S', 3] RGB canvases (may be a global array over several hosts).
      hw: int[B, 2] real sizes.
      host_images, host_hw: this host's rows of `images` / `hw` as numpy (default: the arrays
        themselves, one host); the CRF and the crops use them.
      image_labels: optional bool[B', C] of this host's rows: restrict the argmax to them.
      crf, crf_params, crf_processes: as `segment`.

    Returns:
      this host's segmentations (B' >= its images: rows padded for the devices come last),
      arrays [h_i, w_i(, C)].
    """
    logits = to_host(canvas_logits(apply_fn, images, hw, variables=variables, scales=scales,
                                   sizes=sizes, flip=flip, normalize=normalize))
    host_images = np.asarray(images) if host_images is None else host_images
    host_hw = np.asarray(hw) if host_hw is None else host_hw
    n = len(host_images)
    sizes_hw = [tuple(int(v) for v in host_hw[i]) for i in range(n)]
    out: list = [None] * n
    for group in group_by_size(sizes_hw, n):
        h, w = sizes_hw[group[0]]
        seg = finish(logits[group, :h, :w], host_images[group, :h, :w],
                     image_labels=None if image_labels is None else image_labels[group],
                     crf=crf, crf_params=crf_params, crf_processes=crf_processes)
        for k, i in enumerate(group):
            out[i] = Segmentation(**{
                f.name: None if getattr(seg, f.name) is None else getattr(seg, f.name)[k]
                for f in dataclasses.fields(seg)})
    return out


def predict_records(apply_fn: ApplyFn, records: Sequence[Any], *, variables: Any = None,
                    batch_size: int = 8, canvas: int | None = None,
                    out_dir: str | pathlib.Path | None = None, use_labels: bool = False,
                    scales: Sequence[float] = DEFAULT_SCALES, flip: bool = False,
                    normalize: Normalize = "caffe", crf: bool = False,
                    crf_params: CRFParams = TEST_CRF,
                    crf_processes: int | None = None) -> dict[str, np.ndarray]:
    """Predicts every record (`dsrg_jax.data.Record`: image, labels) of a split.

    Two ways to batch images of different sizes (both through `segment_canvases`):
      * canvas None: batches of equal-size images only (one compile per size and scale).
      * canvas S: every image at the top left of an S x S canvas, one compile per scale; each
        image is scaled on its own and its logits come from the output cells it covers, so its
        result does not depend on the canvas (up to the padding the network sees at the scaled
        canvas' border).

    Args:
      apply_fn, variables: the network (see `canvas_logits`).
      records: records with `.image_id`, `.image` uint8[H, W, 3], `.labels` bool[C].
      batch_size: images per network call.
      canvas: see above.
      out_dir: if given, each prediction is written there as `{image_id}.png`, a VOC palette
        PNG (what the VOC test server expects).
      use_labels: restrict the argmax to each record's labelled classes.
      scales, flip, normalize, crf, crf_params, crf_processes: as `segment`.

    Returns:
      {image_id: uint8[H, W]} final predictions (after the CRF if crf=True).
    """
    out: dict[str, np.ndarray] = {}
    if canvas is None:
        batches = group_by_size([r.image.shape[:2] for r in records], batch_size)
    else:
        for r in records:
            if max(r.image.shape[:2]) > canvas:
                raise ValueError(f"image {r.image_id!r} is {r.image.shape[0]}x"
                                 f"{r.image.shape[1]}, larger than canvas={canvas}")
        batches = [list(range(s, min(s + batch_size, len(records))))
                   for s in range(0, len(records), batch_size)]
    for batch in batches:
        recs = [records[i] for i in batch]
        side = canvas or recs[0].image.shape[0]
        side_w = canvas or recs[0].image.shape[1]
        images = np.empty((len(recs), side, side_w, 3), np.uint8)
        images[:] = np.asarray(MEAN_RGB_UINT8, np.uint8)
        for k, r in enumerate(recs):
            images[k, :r.image.shape[0], :r.image.shape[1]] = r.image
        hw = np.array([r.image.shape[:2] for r in recs], np.int32)
        labels = np.stack([r.labels for r in recs]) if use_labels else None
        segs = segment_canvases(apply_fn, images, hw, variables=variables, image_labels=labels,
                                scales=scales, flip=flip, normalize=normalize, crf=crf,
                                crf_params=crf_params, crf_processes=crf_processes)
        for r, seg in zip(recs, segs):
            out[r.image_id] = seg.final
            if out_dir is not None:
                write_label_png(pathlib.Path(out_dir) / f"{r.image_id}.png", seg.final)
    return out
