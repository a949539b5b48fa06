"""Multi-scale inference: scales (+ flip), logits upsampled to full size and summed, CRF, argmax.

DESIGN.md 2.5 (the official test protocol): the image at scales 0.75, 1, 1.25 (aspect kept), each
through the network, logits resized bilinearly to the full image size and summed; softmax; an
optional full-resolution dense CRF (pydensecrf2, `dense_crf_host_batch`, every CPU core: unary
-log P, bilateral w=10, 80 px, 13; Gaussian w=3, 3 px; 10 iterations); argmax over all classes
(the official default) or, as an option, over the image's labelled classes only.

Works with any network function:

    apply_fn = lambda variables, x: model.apply(variables, x, train=False)
    out = segment(apply_fn, images_uint8, variables=variables, crf=True)
    out.labels_crf  # uint8[B, H, W]

or `segment(lambda x: f(x), images)` for a closed-over function. Each scale is one jitted call
over the whole batch (compiled once per (apply_fn, scale, image shape)); pass the same `apply_fn`
object on every call so the compiled code is reused, and the variables through `variables` rather
than a closure (a closure bakes them into the compiled code as constants).

A batch of images of different sizes padded to one canvas (what the training pipeline gives, possibly
sharded over devices): `canvas_logits(apply_fn, images, hw, scales=...)`, or `sizes=(241, 321, 401)`
to warp each image to s x s (the pseudo-label protocol, DESIGN.md 2.4); the pipeline's stages use it.

A whole split: `predict_records(apply_fn, records, variables=..., canvas=500, out_dir=...)` batches
images of any size (padded to a canvas, or grouped by size) and writes VOC palette PNGs that
`python -m dsrg_jax.evaluate` scores. The CRF's process pool is spawned: a script that uses it
(crf_processes None or > 1) needs the `if __name__ == "__main__":` guard.

Images are normalised at full size (`normalize`: "caffe", "imagenet", None for float32 input as it
is, or a function), then resized bilinearly (half-pixel centres, no antialiasing: what OpenCV's
INTER_LINEAR does) to round(scale * side).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dsrg_jax.data.transforms import (CAFFE_MEAN_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB,
                                      MEAN_RGB_UINT8)
from dsrg_jax.ops.crf import TEST_CRF, dense_crf_host_batch

DEFAULT_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)  # official multi-scale test (DESIGN 2.5)

ApplyFn = Callable[..., jax.Array]
Normalize = str | Callable[[jax.Array], jax.Array] | None


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """Result of `segment` for a batch.

    Attributes:
      logits: float32[B, H, W, C] summed full-size logits over scales (and flips).
      probs: float32[B, H, W, C] softmax of `logits` (restricted to labelled classes if asked).
      labels: uint8[B, H, W] argmax of `probs` (no CRF).
      probs_crf: float32[B, H, W, C] after the dense CRF, or None without CRF.
      labels_crf: uint8[B, H, W] argmax after the CRF, or None without CRF.
    """

    logits: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    probs_crf: np.ndarray | None = None
    labels_crf: np.ndarray | None = None

    @property
    def final(self) -> np.ndarray:
        """The prediction to write: after the CRF if one ran, else before. uint8[B, H, W]."""
        return self.labels if self.labels_crf is None else self.labels_crf


def normalize_images(images: jax.Array, normalize: Normalize) -> jax.Array:
    """uint8/float[B, H, W, 3] RGB -> float32 network input ("caffe": BGR minus the mean pixel;
    "imagenet": RGB/255 minus mean over std; None: as float32; or a function)."""
    if callable(normalize):
        return jnp.asarray(normalize(images), jnp.float32)
    x = jnp.asarray(images, jnp.float32)
    if normalize is None:
        return x
    if normalize == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    if normalize == "imagenet":
        return ((x / 255.0 - jnp.asarray(IMAGENET_MEAN_RGB, jnp.float32))
                / jnp.asarray(IMAGENET_STD_RGB, jnp.float32))
    raise ValueError(f"normalize must be 'caffe', 'imagenet', None or a function, got "
                     f"{normalize!r}")


def scaled_size(size: int, scale: float) -> int:
    """Side length at `scale`: round(scale * size), at least 1 (as `transforms.rescale`)."""
    return max(1, round(size * scale))


def resize_bilinear(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """float[B, H, W, C] -> float[B, h, w, C]: bilinear, half-pixel centres, no antialiasing."""
    if tuple(x.shape[1:3]) == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), "bilinear",
                            antialias=False)


def _call(apply_fn: ApplyFn, variables: Any, x: jax.Array) -> jax.Array:
    return apply_fn(x) if variables is None else apply_fn(variables, x)


@functools.partial(jax.jit, static_argnames=("apply_fn", "scale", "flip"))
def scale_logits(apply_fn: ApplyFn, variables: Any, inputs: jax.Array, *, scale: float,
                 flip: bool = False) -> jax.Array:
    """Logits of one scale, resized to the input's full size (one jitted call per scale).

    Args:
      apply_fn: `apply_fn(x)` (variables None) or `apply_fn(variables, x)`: float32[B, h, w, 3]
        network input -> float[B, h', w', C] logits (any output stride).
      variables: the network's variables, or None.
      inputs: float32[B, H, W, 3] normalised full-size images.
      scale: image scale (aspect kept): the network sees round(scale*H) x round(scale*W).
      flip: also run the mirrored image and add its mirrored-back logits.

    Returns:
      float32[B, H, W, C].
    """
    _, h, w, _ = inputs.shape
    x = resize_bilinear(inputs, (scaled_size(h, scale), scaled_size(w, scale)))
    out = _call(apply_fn, variables, x)
    if not hasattr(out, "ndim") or out.ndim != 4 or out.shape[0] != x.shape[0]:
        raise ValueError(f"apply_fn must return logits float[B, h, w, C] for input "
                         f"{tuple(x.shape)}, got {getattr(out, 'shape', type(out).__name__)}")
    logits = resize_bilinear(out.astype(jnp.float32), (h, w))
    if flip:
        flipped = _call(apply_fn, variables, x[:, :, ::-1]).astype(jnp.float32)
        logits = logits + resize_bilinear(flipped, (h, w))[:, :, ::-1]
    return logits


def multi_scale_logits(apply_fn: ApplyFn, images: jax.Array | np.ndarray, *,
                       variables: Any = None, scales: Sequence[float] = DEFAULT_SCALES,
                       flip: bool = False, normalize: Normalize = "caffe") -> jax.Array:
    """Sum over scales (and flips) of full-size logits. images: [B, H, W, 3] -> float32[B, H, W, C].

    `normalize` turns the RGB images into network input ("caffe", "imagenet", None, a function).
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3] RGB, got shape {tuple(images.shape)}")
    if not scales:
        raise ValueError("scales must name at least one scale")
    for s in scales:
        if not s > 0:
            raise ValueError(f"scales must be > 0, got {tuple(scales)}")
    inputs = normalize_images(images, normalize)
    total = None
    for s in scales:
        logits = scale_logits(apply_fn, variables, inputs, scale=float(s), flip=bool(flip))
        total = logits if total is None else total + logits
    return total


def _interp_matrix(out_len: int, in_len: int, dst: jax.Array, src: jax.Array) -> jax.Array:
    """float32[out_len, in_len]: bilinear resize of the first `src` of `in_len` samples onto the
    first `dst` of `out_len` (half-pixel centres, edges clamped: OpenCV's INTER_LINEAR); rows from
    `dst` on are zero. dst, src: int scalars (traced: one per image)."""
    o = jnp.arange(out_len, dtype=jnp.float32)
    src_f, dst_f = src.astype(jnp.float32), dst.astype(jnp.float32)
    x = jnp.clip((o + 0.5) * (src_f / dst_f) - 0.5, 0.0, src_f - 1.0)
    x0 = jnp.floor(x)
    frac = x - x0
    i0 = x0.astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, src.astype(jnp.int32) - 1)
    cols = jnp.arange(in_len)[None, :]
    m = ((1.0 - frac)[:, None] * (cols == i0[:, None])
         + frac[:, None] * (cols == i1[:, None]))
    return jnp.where((o < dst_f)[:, None], m, 0.0)


def _resize_region(x: jax.Array, out_hw: tuple[int, int], dst: jax.Array,
                   src: jax.Array) -> jax.Array:
    """Per image: x[b, :src_h, :src_w] resized bilinearly to [:dst_h, :dst_w] of an out_hw
    canvas (zero elsewhere). x: float[B, H, W, C]; dst, src: int[B, 2]."""
    def one(img, d, s):
        my = _interp_matrix(out_hw[0], img.shape[0], d[0], s[0])
        mx = _interp_matrix(out_hw[1], img.shape[1], d[1], s[1])
        return jnp.einsum("oh,hwc,pw->opc", my, img, mx, precision=jax.lax.Precision.HIGHEST)
    return jax.vmap(one)(x, dst, src)


def _flip_region(x: jax.Array, width: jax.Array) -> jax.Array:
    """Per image: columns [:width[b]] of x float[B, H, W, C] mirrored, the rest kept."""
    cols = jnp.arange(x.shape[2])[None, :]
    idx = jnp.where(cols < width[:, None], width[:, None] - 1 - cols, cols)
    return jnp.take_along_axis(x, idx[:, None, :, None], axis=2)


@functools.partial(jax.jit, static_argnames=("apply_fn", "scale", "size", "flip"))
def canvas_scale_logits(apply_fn: ApplyFn, variables: Any, inputs: jax.Array, hw: jax.Array,
                        fill: jax.Array, *, scale: float | None = None, size: int | None = None,
                        flip: bool = False) -> jax.Array:
    """Logits of one scale for images padded at the top left of a canvas (see `canvas_logits`).

    Args:
      apply_fn, variables: the network (see `scale_logits`).
      inputs: float32[B, S, S', 3] normalised canvases; hw: int[B, 2] each image's real size.
      fill: float32[3] the network-input value of the padding (the normalised mean colour).
      scale: the real image resized to round(scale*h) x round(scale*w) (aspect kept), at the top
        left of a ceil(scale*S) x ceil(scale*S') canvas; or
      size: the real image warped to size x size (aspect not kept).
      flip: also run the mirrored image and add its mirrored-back logits.

    Returns:
      float32[B, S, S', C]: each image's logits (the part of the output grid its real region
      covers) resized bilinearly to (h, w) at the top left; zero elsewhere.
    """
    _, big_h, big_w, _ = inputs.shape
    hw = hw.astype(jnp.int32)
    if size is not None:
        side = (int(size), int(size))
        dst = jnp.full_like(hw, int(size))
    else:
        side = (math.ceil(big_h * scale), math.ceil(big_w * scale))
        dst = jnp.maximum(1, jnp.round(hw.astype(jnp.float32) * scale).astype(jnp.int32))
    x = _resize_region(inputs, side, dst, hw)
    inside = ((jnp.arange(side[0])[None, :, None] < dst[:, 0, None, None])
              & (jnp.arange(side[1])[None, None, :] < dst[:, 1, None, None]))
    x = jnp.where(inside[..., None], x, fill)
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
        return _resize_region(out.astype(jnp.float32), (big_h, big_w), hw, cover)

    logits = logits_of(x)
    if flip:
        logits = logits + _flip_region(logits_of(_flip_region(x, dst[:, 1])), hw[:, 1])
    return logits


def canvas_logits(apply_fn: ApplyFn, images: jax.Array | np.ndarray, hw: jax.Array | np.ndarray,
                  *, variables: Any = None, scales: Sequence[float] | None = DEFAULT_SCALES,
                  sizes: Sequence[int] | None = None, flip: bool = False,
                  normalize: Normalize = "caffe",
                  fill: Sequence[float] = MEAN_RGB_UINT8) -> jax.Array:
    """Multi-scale logits of a batch of images of different sizes, each at the top left of a
    canvas: the batch the training pipeline gives (and may shard over devices: the arrays keep
    their sharding, one jitted call per scale).

    Unlike `multi_scale_logits` on the padded canvases (DeepLab's padding: the network sees the
    canvas scaled), each image's real region is scaled on its own and padded after scaling, and
    its logits come from the output cells its region covers: the result of an image does not
    depend on the canvas it was padded to (up to the padding the network sees at the scaled
    canvas' border).

    Args:
      apply_fn, variables: the network (see `scale_logits`).
      images: [B, S, S', 3] RGB canvases, image b in [:h_b, :w_b].
      hw: int[B, 2] real sizes (h_b, w_b).
      scales: image scales, aspect kept (the test protocol, DESIGN.md 2.5); or
      sizes: sides the image is warped to, aspect not kept (the pseudo-label protocol, DESIGN.md
        2.4: 241, 321, 401); exactly one of scales / sizes (sizes wins when given).
      flip: add the mirrored image's logits at every scale.
      normalize: RGB -> network input (see `normalize_images`).
      fill: RGB colour of the padding of the scaled canvases (normalised like the images).

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
    inputs = normalize_images(images, normalize)
    fill_in = normalize_images(jnp.asarray(fill, jnp.float32).reshape(1, 1, 1, 3),
                               normalize).reshape(3)
    total = None
    for st in steps:
        logits = canvas_scale_logits(apply_fn, variables, inputs, hw, fill_in, flip=bool(flip),
                                     **st)
        total = logits if total is None else total + logits
    return total


def label_mask(image_labels: np.ndarray | None, num_classes: int, batch: int) -> np.ndarray | None:
    """bool[B, C] of allowed classes (background always allowed), or None for all classes."""
    if image_labels is None:
        return None
    allowed = np.asarray(image_labels, bool)
    if allowed.shape != (batch, num_classes):
        raise ValueError(f"image_labels must be bool[{batch}, {num_classes}], got "
                         f"{allowed.shape}")
    allowed = allowed.copy()
    allowed[:, 0] = True
    return allowed


def segment(apply_fn: ApplyFn, images: np.ndarray, *, variables: Any = None,
            scales: Sequence[float] = DEFAULT_SCALES, flip: bool = False,
            normalize: Normalize = "caffe", crf: bool = False,
            crf_params: Mapping[str, Any] | None = None, crf_processes: int | None = None,
            image_labels: np.ndarray | None = None) -> Segmentation:
    """Multi-scale (+ flip) prediction of a batch, optionally refined by the full-size CRF.

    Args:
      apply_fn, variables: the network (see `scale_logits`).
      images: uint8[B, H, W, 3] RGB (the CRF needs uint8 colours; with crf=False any dtype).
      scales: image scales (default 0.75, 1, 1.25).
      flip: add the mirrored image's logits at every scale.
      normalize: RGB -> network input ("caffe", "imagenet", None, or a function).
      crf: run pydensecrf2 at full resolution on softmax(logits) (unary -log P).
      crf_params: overrides of the test-time CRF (`dsrg_jax.ops.crf.TEST_CRF`).
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
           crf_params: Mapping[str, Any] | None = None,
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
        params = {**TEST_CRF, **dict(crf_params or {})}
        q = dense_crf_host_batch(images_np, probs, processes=crf_processes, **params)
        if allowed is not None:
            q = np.where(allowed[:, None, None, :], q, 0.0)
        out.update(probs_crf=q, labels_crf=np.argmax(q, axis=-1).astype(np.uint8))
    return Segmentation(**out)


def group_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices in batches of equal (H, W), at most `batch_size` each, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        groups.setdefault(tuple(hw), []).append(i)
    return [idx[k:k + batch_size] for idx in groups.values()
            for k in range(0, len(idx), batch_size)]


def pad_to_canvas(images: Sequence[np.ndarray], canvas: int, *,
                  fill: Sequence[int] = MEAN_RGB_UINT8) -> np.ndarray:
    """Images uint8[h_i, w_i, 3] (h_i, w_i <= canvas) -> uint8[B, canvas, canvas, 3], each at the
    top left, the rest filled with the mean colour (0 after Caffe mean subtraction), as DeepLab's
    test-time padding."""
    out = np.empty((len(images), canvas, canvas, 3), np.uint8)
    out[:] = np.asarray(fill, np.uint8)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        if h > canvas or w > canvas:
            raise ValueError(f"image {i} is {h}x{w}, larger than the canvas {canvas}x{canvas}")
        out[i, :h, :w] = im
    return out


def predict_records(apply_fn: ApplyFn, records: Sequence[Any], *, variables: Any = None,
                    batch_size: int = 8, canvas: int | None = None,
                    out_dir: str | pathlib.Path | None = None, use_labels: bool = False,
                    scales: Sequence[float] = DEFAULT_SCALES, flip: bool = False,
                    normalize: Normalize = "caffe", crf: bool = False,
                    crf_params: Mapping[str, Any] | None = None,
                    crf_processes: int | None = None) -> dict[str, np.ndarray]:
    """Predicts every record (`dsrg_jax.data.Record`: image, labels) of a split.

    Two ways to batch images of different sizes:
      * canvas None: batches of equal-size images only (exact; one compile per size and scale).
      * canvas S: every image padded to S x S with the mean colour (DeepLab's test-time padding;
        VOC: 500), one compile per scale; the logits are cropped back to each image. Near the
        padded border the network sees the padding, so results differ slightly from canvas None.

    Args:
      apply_fn, variables: the network (see `scale_logits`).
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
    from dsrg_jax.data.files import write_label_png

    net = dict(variables=variables, scales=scales, flip=flip, normalize=normalize)
    post = dict(crf=crf, crf_params=crf_params, crf_processes=crf_processes)
    out: dict[str, np.ndarray] = {}

    def emit(recs, seg):
        for r, pred in zip(recs, seg.final):
            out[r.image_id] = pred
            if out_dir is not None:
                write_label_png(pathlib.Path(out_dir) / f"{r.image_id}.png", pred)

    def labels_of(recs):
        return np.stack([r.labels for r in recs]) if use_labels else None

    if canvas is None:
        for batch in group_by_size([r.image.shape[:2] for r in records], batch_size):
            recs = [records[i] for i in batch]
            emit(recs, segment(apply_fn, np.stack([r.image for r in recs]),
                               image_labels=labels_of(recs), **net, **post))
        return out
    for start in range(0, len(records), batch_size):
        recs = list(records[start:start + batch_size])
        for r in recs:
            if max(r.image.shape[:2]) > canvas:
                raise ValueError(f"image {r.image_id!r} is {r.image.shape[0]}x"
                                 f"{r.image.shape[1]}, larger than canvas={canvas}")
        logits = np.asarray(multi_scale_logits(
            apply_fn, pad_to_canvas([r.image for r in recs], canvas), **net))
        # Crops of equal size go through softmax / CRF together (the CRF pool sees a batch).
        for group in group_by_size([r.image.shape[:2] for r in recs], len(recs)):
            h, w = recs[group[0]].image.shape[:2]
            sub = [recs[i] for i in group]
            emit(sub, finish(logits[group, :h, :w], np.stack([r.image for r in sub]),
                             image_labels=labels_of(sub), **post))
    return out
