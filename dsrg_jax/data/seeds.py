"""Seed cues from other CAM methods: folders of seed PNGs or of per-image CAM `.npy` files.

Methods such as IRN, SEAM, AFA, ToCo or CLIP-ES leave their seeds as one of:

  - a folder of seed PNGs `<id>.png` (palette or greyscale class indices, 255 = no cue), on any
    grid or at image size (`load_seed_pngs`);
  - a folder of CAM files `<id>.npy` (`load_cam_npys`): IRN's `make_cam.py` dict
    `{"keys": int[K] foreground classes (0-based), "cam": float[K, h, w] (stride 4),
    "high_res": float[K, H, W]}`, CLIP-ES's `{"keys", "attn_highres"}`, SEAM's `--out_cam` dict
    `{class (0-based foreground): float[H, W]}`, or a plain float[C - 1, H, W] (foreground) /
    float[C, H, W] (background first) array.

Both are brought to the segmentation output grid laid over the whole image (the grid of the
official cue files) and returned as a `CueSet`. `load_any_cues` dispatches on what a path is, and
the command line converts any of them (and the official pickle) to our `.npz`:

    python -m dsrg_jax.data.cues convert SRC --ids LIST --grid 41 --out cues.npz [--masks DIR]

Label maps (seeds, masks) go to the grid by nearest sampling at the cell centre: output row i
reads input row floor((i + 0.5) * H / h), and likewise for columns; a map already on the grid is
unchanged. CAMs go to the grid by `cv2.INTER_AREA` (the mean over each cell when shrinking,
bilinear when the map is smaller than the grid), then each class map is divided by its maximum
on the grid, and `dsrg_jax.ops.cam.seed_cues_from_cams` turns them into cues.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dsrg_jax.data import cues as cue_files
from dsrg_jax.data import safe_pickle
from dsrg_jax.data.cues import VOC_NUM_CLASSES, CueSet, cueset_from_dense
from dsrg_jax.data.files import read_id_list, read_label_png
from dsrg_jax.data.records import IGNORE_INDEX, DatasetError
from dsrg_jax.data.saliency import SaliencyDir
from dsrg_jax.ops.cam import FG_RELATIVE_THRESHOLD, FG_TOP_FRACTION, seed_cues_from_cams
from dsrg_jax.ops.metrics import cue_counts, cue_quality

PathLike = str | os.PathLike
Grid = int | tuple[int, int]

# Map entries of the dict formats, in order of preference: IRN's image-size CAMs, CLIP-ES's,
# then IRN's stride-4 CAMs.
CAM_KEYS = ("high_res", "attn_highres", "cam")
_SHOWN = 5  # ids / files listed in a message

_seed_cues = jax.jit(seed_cues_from_cams, static_argnames=("fg_rule", "fg_top_fraction"))


def _grid(grid: Grid) -> tuple[int, int]:
    h, w = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if not (0 < h <= 256 and 0 < w <= 256):
        raise ValueError(f"grid must be 1..256 cells a side (cues are stored as uint8), got "
                         f"{h}x{w}")
    return h, w


def cell_centre_nearest(label: np.ndarray, grid: Grid) -> np.ndarray:
    """uint8[H, W] label map -> uint8[h, w]: row i reads row floor((i + 0.5) * H / h)."""
    h, w = _grid(grid)
    rows = ((2 * np.arange(h) + 1) * label.shape[0]) // (2 * h)
    cols = ((2 * np.arange(w) + 1) * label.shape[1]) // (2 * w)
    return label[np.ix_(rows, cols)]


def _ids_in(folder: pathlib.Path, ext: str, ids: Sequence[str] | None) -> list[str]:
    if ids is not None:
        return list(ids)
    found = sorted(p.stem for p in folder.glob(f"*{ext}"))
    if not found:
        raise DatasetError(f"{folder}: no {ext} files")
    return found


def _missing_message(folder: pathlib.Path, missing: list[str], total: int, ext: str) -> str:
    return (f"{len(missing)} of the {total} ids have no <id>{ext} in {folder} (e.g. "
            f"{', '.join(missing[:_SHOWN])})")


def read_label_folder(folder: PathLike, ids: Sequence[str], num_classes: int,
                      what: str = "seed PNG") -> list[np.ndarray]:
    """Label PNGs `<folder>/<id>.png` -> list of uint8[H, W] (0..C-1 or 255).

    Raises:
      DatasetError (one line) naming every missing id and every file with values outside
        0..C-1 / 255 (a few of each listed), or the first file that does not decode.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {what} folder not found")
    missing = [i for i in ids if not (folder / f"{i}.png").is_file()]
    labels, bad = [], []
    for image_id in ids:
        if image_id in missing:
            continue
        path = folder / f"{image_id}.png"
        label = read_label_png(path, 256)  # any 8-bit value; checked below, for all files
        values = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
        if values.size:
            bad.append(f"{path.name} {values[:_SHOWN].tolist()}")
        labels.append(label)
    problems = []
    if missing:
        problems.append(_missing_message(folder, missing, len(ids), ".png"))
    if bad:
        problems.append(f"{len(bad)} {what}s hold values outside 0..{num_classes - 1} and "
                        f"{IGNORE_INDEX} ({'; '.join(bad[:_SHOWN])})")
    if problems:
        raise DatasetError(f"{what} folder {folder}: " + "; ".join(problems))
    return labels


def load_seed_pngs(folder: PathLike, ids: Sequence[str] | None, grid: Grid,
                   num_classes: int = VOC_NUM_CLASSES) -> CueSet:
    """Seed PNGs `<id>.png` (class indices, 255 = no cue) -> CueSet on the h x w `grid`.

    Each PNG (palette, greyscale or VOC-coloured RGB; on any grid or at image size) is brought
    to the grid by nearest sampling at the cell centre (module doc). The image labels are the
    classes present in the PNG at its own size, background always.

    Args:
      folder: the seed folder.
      ids: image ids, in the order of the cue set; None: every PNG of the folder, sorted.
      grid: side of the output grid, or (h, w).
      num_classes: classes including background.

    Raises:
      DatasetError naming the folder, every missing id and every bad value (a few listed).
    """
    folder = pathlib.Path(folder)
    ids = _ids_in(folder, ".png", ids) if folder.is_dir() else list(ids or ())
    seeds = read_label_folder(folder, ids, num_classes)
    labels = np.zeros((len(ids), num_classes), bool)
    labels[:, 0] = True
    dense = []
    for n, seed in enumerate(seeds):
        present = np.unique(seed[seed < num_classes])
        labels[n, present] = True
        on_grid = cell_centre_nearest(seed, grid)
        dense.append(on_grid[..., None] == np.arange(num_classes))
    return cueset_from_dense(ids, dense, labels)


def _read_cam_file(path: pathlib.Path, num_fg: int,
                   cam_key: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One CAM `.npy` -> (float32[K, H, W] maps, int[K] 0-based foreground classes)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            _, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
        except ValueError as e:
            raise DatasetError(f"{path}: not a .npy CAM file ({str(e)[:120]})") from None
    expected = (f"expected IRN's dict {{'keys', {', '.join(map(repr, CAM_KEYS))}}}, SEAM's dict "
                f"{{class: float[H, W]}} or a float[{num_fg} or {num_fg + 1}, H, W] array")
    if dtype != np.dtype(object):
        array = np.load(path, allow_pickle=False)
        if array.ndim != 3 or array.dtype.kind not in "biuf" \
                or array.shape[0] not in (num_fg, num_fg + 1):
            raise DatasetError(f"{path}: CAM array of shape {array.shape} dtype {array.dtype}; "
                               f"{expected}")
        maps = array[-num_fg:].astype(np.float32)  # a background channel comes first
        keys = np.flatnonzero(maps.reshape(num_fg, -1).max(axis=1, initial=0) > 0)
        return maps[keys], keys
    try:
        obj = safe_pickle.load_npy_object(path, what="CAM file")
    except DatasetError as e:
        if "torch" not in str(e):
            raise
        raise DatasetError(f"{e}; IRN's make_cam.py saves 'keys' and 'cam' as torch tensors: "
                           f"re-save each file with numpy arrays (np.asarray of each value)"
                           ) from None
    if isinstance(obj, dict) and "keys" in obj:
        key = cam_key or next((k for k in CAM_KEYS if k in obj), None)
        if key not in obj:
            raise DatasetError(f"{path}: CAM dict has keys {sorted(map(str, obj))}, no "
                               f"{key or ' or '.join(CAM_KEYS)!r}; {expected}")
        keys, maps = np.asarray(obj["keys"]).reshape(-1), np.asarray(obj[key])
    elif isinstance(obj, dict) and all(isinstance(k, (int, np.integer)) for k in obj):
        keys = np.array(sorted(int(k) for k in obj), np.int64)
        try:
            maps = np.stack([np.asarray(obj[k]) for k in sorted(obj)]) if obj else \
                np.zeros((0, 1, 1), np.float32)
        except ValueError:
            raise DatasetError(f"{path}: SEAM CAM dict holds maps of different shapes") from None
    else:
        kind = (f"dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict)
                else type(obj).__name__)
        raise DatasetError(f"{path}: refused CAM file holding a {kind}; {expected}")
    if keys.dtype.kind not in "iu" or (keys.size and (keys.min() < 0 or keys.max() >= num_fg)) \
            or len(set(keys.tolist())) != keys.size:
        raise DatasetError(f"{path}: CAM class keys {keys.tolist()[:10]} must be distinct "
                           f"integers in 0..{num_fg - 1} (foreground classes, 0-based)")
    if maps.ndim != 3 or maps.shape[0] != keys.size or maps.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: CAMs must be float[K={keys.size}, H, W] for keys "
                           f"{keys.tolist()}, got shape {maps.shape} dtype {maps.dtype}")
    return maps.astype(np.float32), keys.astype(np.int64)


def cams_to_grid(maps: np.ndarray, grid: Grid) -> np.ndarray:
    """float[K, H, W] CAMs -> float32[h, w, K]: ReLU, INTER_AREA resize, / max per class."""
    h, w = _grid(grid)
    out = np.zeros((h, w, maps.shape[0]), np.float32)
    for k, cam in enumerate(np.maximum(maps, 0.0)):
        out[..., k] = cv2.resize(cam, (w, h), interpolation=cv2.INTER_AREA)
    peak = out.max(axis=(0, 1), keepdims=True)
    return np.where(peak > 0, out / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def load_cam_npys(folder: PathLike, ids: Sequence[str] | None, grid: Grid,
                  num_classes: int = VOC_NUM_CLASSES, *,
                  fg_rule: Literal["relative", "top_fraction"] = "relative",
                  fg_threshold: float = FG_RELATIVE_THRESHOLD,
                  fg_top_fraction: float = FG_TOP_FRACTION,
                  bg_threshold: float | None = None,
                  saliency_dir: PathLike | None = None,
                  cam_key: str | None = None) -> CueSet:
    """Per-image CAM files `<id>.npy` (module doc) -> CueSet on the h x w `grid`.

    The CAMs are brought to the grid (`cams_to_grid`) and made cues by `seed_cues_from_cams`.
    The image labels are the classes the file names (dict keys; for a plain array, the maps
    that are not all zero), background always.

    Args:
      folder: the CAM folder.
      ids: image ids, in the order of the cue set; None: every `.npy` of the folder, sorted.
      grid: side of the output grid, or (h, w).
      num_classes: classes including background.
      fg_rule, fg_threshold, fg_top_fraction: the foreground rule of `seed_cues_from_cams`.
      bg_threshold: background below this normalised saliency (with `saliency_dir`) or below
        this max present CAM (without); None: `seed_cues_from_cams`'s default for the source.
      saliency_dir: greyscale saliency PNGs `<id>.png` (`SaliencyDir`); None: low CAMs.
      cam_key: the map entry of IRN-style dicts; None: the first of `CAM_KEYS` present.

    Raises:
      DatasetError naming the folder and every missing id (a few listed), or the file that is
        unreadable or holds anything but the formats above (object arrays are unpickled with
        `safe_pickle`, never with `allow_pickle=True`).
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: CAM folder not found")
    ids = _ids_in(folder, ".npy", ids)
    missing = [i for i in ids if not (folder / f"{i}.npy").is_file()]
    if missing:
        raise DatasetError(f"CAM folder {folder}: "
                           + _missing_message(folder, missing, len(ids), ".npy"))
    saliency = SaliencyDir(saliency_dir) if saliency_dir is not None else None
    bg_kw = {} if bg_threshold is None else {
        "bg_saliency_threshold" if saliency else "bg_cam_threshold": bg_threshold}
    num_fg, (h, w) = num_classes - 1, _grid(grid)
    labels = np.zeros((len(ids), num_classes), bool)
    labels[:, 0] = True
    dense = []
    for n, image_id in enumerate(ids):
        maps, keys = _read_cam_file(folder / f"{image_id}.npy", num_fg, cam_key)
        cams = np.zeros((h, w, num_fg), np.float32)
        cams[:, :, keys] = cams_to_grid(maps, (h, w))
        labels[n, 1 + keys] = True
        sal = None
        if saliency is not None:
            sal = jnp.asarray(cv2.resize(saliency.load(image_id), (w, h),
                                         interpolation=cv2.INTER_AREA)[None])
        dense.append(np.asarray(_seed_cues(
            jnp.asarray(cams[None]), jnp.asarray(labels[n:n + 1, 1:]), sal, fg_rule=fg_rule,
            fg_threshold=fg_threshold, fg_top_fraction=fg_top_fraction, **bg_kw))[0])
    return cueset_from_dense(ids, dense, labels)


def _select(cue_set: CueSet, ids: Sequence[str], path: pathlib.Path) -> CueSet:
    """The images `ids` of a cue set, in that order; names the ids it lacks."""
    missing = [i for i in ids if i not in cue_set]
    if missing:
        raise DatasetError(f"cue file {path}: {len(missing)} of the {len(ids)} ids have no cues "
                           f"(e.g. {', '.join(missing[:_SHOWN])})")
    dense = [cue_set[i][0] for i in ids]
    return cueset_from_dense(ids, dense, cue_set.image_labels[[cue_set.index_of(i) for i in ids]])


def load_any_cues(path: PathLike, ids: Sequence[str] | None, grid: Grid | None,
                  num_classes: int = VOC_NUM_CLASSES, *, input_list: PathLike | None = None,
                  **cam_kw: Any) -> CueSet:
    """Cues of any supported source, told by what `path` is.

    Args:
      path: our `.npz`; a folder of seed PNGs (`load_seed_pngs`) or of CAM `.npy` files
        (`load_cam_npys`); any other file is read as an official `.pickle[.gz]` (with
        `input_list`, default the `input_list.txt` beside it).
      ids: image ids; for a file, the subset to keep (None: all); for a folder, the files to
        read (None: every file of its kind).
      grid: the output grid (side or (h, w)); a file's own grid must equal it. Required for
        folders; None skips the check for files.
      num_classes: classes including background.
      input_list: the official pickle's input list.
      **cam_kw: options of `load_cam_npys` (ignored for the other sources).

    Raises:
      FileNotFoundError when `path` does not exist; DatasetError for a single .png / .npy, a
        file that is not a cue file, a grid that differs, or what the loaders raise.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cue source {path} not found")
    if path.is_dir():
        if grid is None:
            raise ValueError(f"load_any_cues: {path} is a folder; give the output grid")
        if ids is None:
            kinds = {ext: len(list(path.glob(f"*{ext}"))) for ext in (".png", ".npy")}
        else:
            kinds = {ext: sum((path / f"{i}{ext}").is_file() for i in ids)
                     for ext in (".png", ".npy")}
        if kinds[".png"] == kinds[".npy"]:
            state = "both" if kinds[".png"] else "neither"
            raise DatasetError(f"{path}: a cue folder holds <id>.png seeds or <id>.npy CAMs; "
                               f"this one has {state} ({kinds['.png']} .png, {kinds['.npy']} "
                               f".npy{' for the ids' if ids is not None else ''})")
        if kinds[".png"] > kinds[".npy"]:
            return load_seed_pngs(path, ids, grid, num_classes)
        return load_cam_npys(path, ids, grid, num_classes, **cam_kw)
    if path.suffix.lower() in (".png", ".npy"):
        raise DatasetError(f"{path}: one {path.suffix} file is not a cue source: give the "
                           f"folder of <id>{path.suffix.lower()} files")
    if path.suffix == ".npz":
        cue_set = cue_files.load_cues(path)
    else:  # the official pickle, plain or gzip'd; anything else fails there by name
        cue_set = cue_files.import_official_cues(path, input_list, num_classes=num_classes)
    if grid is not None and tuple(cue_set.grid_size) != _grid(grid):
        raise DatasetError(f"cue file {path}: cues on a {cue_set.grid_size} grid, expected "
                           f"{_grid(grid)}")
    return cue_set if ids is None else _select(cue_set, ids, path)


def coverage(cue_set: CueSet) -> tuple[float, np.ndarray]:
    """(fraction of grid cells with a cue of any class, int64[C] cue cells per class)."""
    cells = len(cue_set) * cue_set.grid_size[0] * cue_set.grid_size[1]
    image = np.repeat(np.arange(len(cue_set)), np.diff(cue_set.offsets))
    flat = (image * cue_set.grid_size[0] + cue_set.cue_row) * cue_set.grid_size[1] + \
        cue_set.cue_col
    fraction = np.unique(flat).size / cells if cells else 0.0
    return fraction, np.bincount(cue_set.cue_class, minlength=cue_set.num_classes)


def quality_against_masks(cue_set: CueSet, masks_dir: PathLike) -> dict[str, float]:
    """`cue_quality` of the cues against masks `<id>.png` brought to the grid (cell centre)."""
    masks = read_label_folder(masks_dir, cue_set.ids, cue_set.num_classes, what="mask")
    counts = np.zeros((cue_set.num_classes, 3), np.int64)
    for n, mask in enumerate(masks):
        gt = cell_centre_nearest(mask, cue_set.grid_size)
        counts += np.asarray(cue_counts(jnp.asarray(cue_set.dense(n)[0][None]),
                                        jnp.asarray(gt[None])), np.int64)
    return cue_quality(counts)


def main(argv: Sequence[str] | None = None) -> None:
    """`convert SRC ...` (any source), else the official-pickle usage of `cues.main`.

    A bad cue file or flag value -> one line on stderr, exit status 1 (`--debug`: the traceback)."""
    from dsrg_jax import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "convert":
        official = cue_files.parse_args(argv)
        cli.run(lambda: cue_files.convert_official(official), debug=official.debug)
        return
    parser = argparse.ArgumentParser(
        prog="python -m dsrg_jax.data.cues convert",
        description="Convert seed cues of any source (our .npz, an official .pickle[.gz], a "
                    "folder of <id>.png seeds or of <id>.npy CAMs) to our .npz on the output "
                    "grid, and print their coverage (and quality against masks).")
    parser.add_argument("src", help="cue file or folder")
    parser.add_argument("--ids", default=None,
                        help="id list (one id or image path per line); default: every file")
    parser.add_argument("--grid", type=int, default=cue_files.OFFICIAL_GRID_SIZE,
                        help="side of the output grid (41 for 321x321 inputs)")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--masks", default=None, help="folder of <id>.png ground-truth masks")
    parser.add_argument("--num-classes", type=int, default=VOC_NUM_CLASSES)
    parser.add_argument("--input-list", default=None, help="official pickle's input_list.txt")
    parser.add_argument("--saliency", default=None, help="CAMs: saliency PNG folder")
    parser.add_argument("--fg-rule", choices=("relative", "top_fraction"), default="relative")
    parser.add_argument("--fg-threshold", type=float, default=FG_RELATIVE_THRESHOLD)
    parser.add_argument("--fg-top-fraction", type=float, default=FG_TOP_FRACTION)
    parser.add_argument("--bg-threshold", type=float, default=None,
                        help="CAMs: background threshold (default: seed_cues_from_cams')")
    parser.add_argument("--cam-key", default=None, help=f"CAM dict entry (default: first of "
                                                        f"{', '.join(CAM_KEYS)})")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv[1:])
    cli.run(lambda: _convert(args), debug=args.debug)


def _convert(args: argparse.Namespace) -> None:
    """The `convert` command of `main`, from its parsed flags."""
    ids = read_id_list(args.ids) if args.ids else None
    cue_set = load_any_cues(
        args.src, ids, args.grid, args.num_classes, input_list=args.input_list,
        fg_rule=args.fg_rule, fg_threshold=args.fg_threshold,
        fg_top_fraction=args.fg_top_fraction, bg_threshold=args.bg_threshold,
        saliency_dir=args.saliency, cam_key=args.cam_key)
    cue_set.save(args.out)
    fraction, per_class = coverage(cue_set)
    h, w = cue_set.grid_size
    print(f"{len(cue_set)} images on a {h}x{w} grid: {fraction:.1%} of grid cells have a cue "
          f"-> {args.out}")
    print("cue cells per class: " + ", ".join(
        f"{c}: {int(k)}" for c, k in enumerate(per_class) if k))
    if args.masks:
        q = quality_against_masks(cue_set, args.masks)
        print(f"against the masks in {args.masks}: precision {q['precision']:.1%}, recall "
              f"{q['recall']:.1%}, mIoU {q['miou']:.1%}")


if __name__ == "__main__":
    main()
