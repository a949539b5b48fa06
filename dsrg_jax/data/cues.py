"""Seed-cue files: the official DSRG/SEC cue pickles and our plain array format.

DSRG's published setup trains from DSRG's own `localization_cues-sal.pickle` (CAM foreground cues,
DRFI saliency background cues; the DSRG authors distribute it, and their training prototxt names
it). SEC's `localization_cues.pickle.gz` (SEC's own cues) has the same layout. Both are Python-2
pickles, plain (DSRG's) or gzip'd (SEC's), of a dict: `"{i}_labels"` = int array of the foreground
classes 1..20 of image i, `"{i}_cues"` = int array [3, K] of rows (class, row, col) on the 41x41
grid laid over the whole image warped to 321x321 (class 0 = background). `i` is the line of the
train_aug input list (`"<image file> i"`).

The pickle is read with a restricted unpickler (`safe_pickle`: plain data and numeric arrays only,
never code), once, and converted to an `.npz` that loads with `allow_pickle=False`:

    python -m dsrg_jax.data.cues --pickle localization_cues-sal.pickle \
        --input-list input_list.txt --out voc_cues.npz

`CueSet` holds the cues sparsely (one (class, row, col) triple per cue pixel, as the file does) and
returns dense multi-hot `bool[H, W, C]` cues per image.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from dsrg_jax.data import safe_pickle
from dsrg_jax.data.records import DatasetError

# Grid and classes of the official file: 321x321 input, output stride 8 -> 41x41; VOC 20 + bg.
OFFICIAL_GRID_SIZE = 41
VOC_NUM_CLASSES = 21

_NPZ_FORMAT = "dsrg_jax.cues/1"


@dataclasses.dataclass(frozen=True)
class CueSet:
    """Sparse seed cues for a list of images.

    Attributes:
      ids: image ids (file stem, e.g. "2008_007028"), in file order.
      offsets: int64[N + 1]; the cue pixels of image n are entries offsets[n]:offsets[n + 1].
      cue_class, cue_row, cue_col: uint8[K] class and grid position of each cue pixel.
      image_labels: bool[N, C] classes present; channel 0 (background) is always True.
      grid_size: (H, W) of the cue grid.
    """
    ids: tuple[str, ...]
    offsets: np.ndarray
    cue_class: np.ndarray
    cue_row: np.ndarray
    cue_col: np.ndarray
    image_labels: np.ndarray
    grid_size: tuple[int, int] = (OFFICIAL_GRID_SIZE, OFFICIAL_GRID_SIZE)

    def __post_init__(self):
        n = len(self.ids)
        if self.offsets.shape != (n + 1,):
            raise ValueError(f"CueSet: offsets must be int[{n + 1}], got {self.offsets.shape}")
        if self.image_labels.ndim != 2 or self.image_labels.shape[0] != n:
            raise ValueError(
                f"CueSet: image_labels must be bool[{n}, C], got {self.image_labels.shape}")
        object.__setattr__(self, "_index", {image_id: i for i, image_id in enumerate(self.ids)})

    @property
    def num_classes(self) -> int:
        return self.image_labels.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._index

    def index_of(self, image_id: str) -> int:
        try:
            return self._index[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id!r} has no cues in this cue set "
                           f"({len(self)} images)") from None

    def dense(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Cues and labels of the n-th image: (bool[H, W, C], bool[C])."""
        lo, hi = self.offsets[n], self.offsets[n + 1]
        cues = np.zeros((*self.grid_size, self.num_classes), dtype=bool)
        cues[self.cue_row[lo:hi], self.cue_col[lo:hi], self.cue_class[lo:hi]] = True
        return cues, self.image_labels[n].copy()

    def __getitem__(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Cues and labels of an image by id: (bool[H, W, C], bool[C])."""
        return self.dense(self.index_of(image_id))

    def dense_batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Cues and labels of several images: (bool[B, H, W, C], bool[B, C])."""
        pairs = [self.dense(int(i)) for i in indices]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def save(self, path: str | os.PathLike) -> None:
        """Writes a compressed `.npz` that loads without pickle."""
        np.savez_compressed(
            path, format=np.array(_NPZ_FORMAT), ids=np.array(self.ids, dtype=str),
            offsets=self.offsets, cue_class=self.cue_class, cue_row=self.cue_row,
            cue_col=self.cue_col, image_labels=self.image_labels,
            grid_size=np.array(self.grid_size, dtype=np.int64))


def cueset_from_dense(ids: Sequence[str], cues: Sequence[np.ndarray],
                      labels: np.ndarray) -> CueSet:
    """CueSet of per-image dense cues bool[h, w, C] and labels bool[N, C]."""
    offsets = np.zeros(len(ids) + 1, np.int64)
    triples = []
    for n, dense in enumerate(cues):
        triples.append(np.stack(np.nonzero(dense)).astype(np.uint8))  # (row, col, class)
        offsets[n + 1] = offsets[n] + triples[-1].shape[1]
    stacked = np.concatenate(triples, axis=1) if triples else np.zeros((3, 0), np.uint8)
    grid = tuple(cues[0].shape[:2]) if len(cues) else (0, 0)
    return CueSet(ids=tuple(ids), offsets=offsets, cue_class=stacked[2], cue_row=stacked[0],
                  cue_col=stacked[1], image_labels=np.asarray(labels, bool), grid_size=grid)


def load_cues(path: str | os.PathLike) -> CueSet:
    """Loads a cue file written by `CueSet.save` (no pickle involved)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"cue file {path} not found; convert the official pickle with "
            f"`python -m dsrg_jax.data.cues --pickle ... --out {path}`")
    with np.load(path, allow_pickle=False) as f:
        if "format" not in f.files or str(f["format"]) != _NPZ_FORMAT:
            raise DatasetError(f"{path} is not a dsrg_jax cue file (expected format "
                               f"{_NPZ_FORMAT!r}, keys found: {sorted(f.files)})")
        return CueSet(ids=tuple(str(s) for s in f["ids"]), offsets=f["offsets"],
                      cue_class=f["cue_class"], cue_row=f["cue_row"], cue_col=f["cue_col"],
                      image_labels=f["image_labels"],
                      grid_size=tuple(int(s) for s in f["grid_size"]))


def read_input_list(path: str | os.PathLike) -> list[str]:
    """Image ids of the official input list, by key index (`"<file> <i>"` per line)."""
    path = pathlib.Path(path)
    ids: dict[int, str] = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetError(
                f"{path}:{line_number}: expected '<image file> <index>', got {line!r}")
        ids[int(parts[1])] = pathlib.PurePath(parts[0]).stem
    if sorted(ids) != list(range(len(ids))):
        raise DatasetError(f"{path}: indices must be 0..{len(ids) - 1} without gaps")
    return [ids[i] for i in range(len(ids))]


def import_official_cues(pickle_path: str | os.PathLike,
                         input_list: str | os.PathLike | None = None, *,
                         num_classes: int = VOC_NUM_CLASSES,
                         grid_size: int = OFFICIAL_GRID_SIZE) -> CueSet:
    """Reads an official cue pickle: DSRG's `localization_cues-sal.pickle` or SEC's file.

    The file may be plain or gzip'd (told by its first bytes), Python 2 or 3; it is read with a
    restricted unpickler that admits plain data and numeric arrays only, never code.

    Args:
      pickle_path: DSRG's `localization_cues-sal.pickle` (the published setup) or SEC's
        `localization_cues.pickle[.gz]`.
      input_list: the train_aug `input_list.txt` that maps key index -> image file; default: the
        file of that name beside the pickle, else ids are the key indices as strings.
      num_classes: classes including background (21 for VOC).
      grid_size: side of the cue grid (41 for a 321x321 input).

    Raises:
      FileNotFoundError when the file is missing.
      DatasetError naming the file: unreadable (empty, truncated, damaged gzip, not a pickle),
        refused (it references code or non-numeric objects), or a key missing or out of range.
    """
    pickle_path = pathlib.Path(pickle_path)
    if not pickle_path.is_file():
        raise FileNotFoundError(
            f"official cue pickle {pickle_path} not found (DSRG's localization_cues-sal.pickle, "
            f"distributed by the DSRG authors, or SEC's localization_cues.pickle.gz)")
    raw = safe_pickle.load(pickle_path, what="cue file")
    if not isinstance(raw, dict):
        raise DatasetError(f"{pickle_path}: expected a dict of '<i>_labels'/'<i>_cues', "
                           f"got {type(raw).__name__}")
    count = sum(1 for key in raw if str(key).endswith("_cues"))

    if input_list is None and (pickle_path.parent / "input_list.txt").is_file():
        input_list = pickle_path.parent / "input_list.txt"
    ids = read_input_list(input_list) if input_list is not None else [str(i) for i in range(count)]
    if len(ids) != count:
        raise DatasetError(f"{input_list} lists {len(ids)} images but {pickle_path} has cues for "
                         f"{count}: is it the input list of this cue file?")

    offsets = np.zeros(count + 1, dtype=np.int64)
    triples, labels = [], np.zeros((count, num_classes), dtype=bool)
    labels[:, 0] = True
    for i in range(count):
        for suffix in ("labels", "cues"):
            if f"{i}_{suffix}" not in raw:
                raise DatasetError(f"{pickle_path}: key '{i}_{suffix}' is missing")
        fg = np.asarray(raw[f"{i}_labels"]).reshape(-1)
        cues = np.asarray(raw[f"{i}_cues"])
        for key, value in ((f"{i}_labels", fg), (f"{i}_cues", cues)):
            if value.dtype.kind not in "iu":
                raise DatasetError(f"{pickle_path}: '{key}' must hold integers, got dtype "
                                   f"{value.dtype}")
        if fg.size and (fg.min() < 1 or fg.max() >= num_classes):
            raise DatasetError(f"{pickle_path}: '{i}_labels' = {fg.tolist()} outside "
                               f"1..{num_classes - 1}")
        if cues.ndim != 2 or cues.shape[0] != 3:
            raise DatasetError(f"{pickle_path}: '{i}_cues' must be int[3, K] rows "
                               f"(class, row, col), got shape {cues.shape}")
        if cues.size and (cues[0].min() < 0 or cues[0].max() >= num_classes
                          or cues[1:].min() < 0 or cues[1:].max() >= grid_size):
            raise DatasetError(f"{pickle_path}: '{i}_cues' has a class outside "
                               f"0..{num_classes - 1} or a position outside the "
                               f"{grid_size}x{grid_size} grid")
        labels[i, fg] = True
        triples.append(cues.astype(np.uint8))
        offsets[i + 1] = offsets[i] + cues.shape[1]
    stacked = np.concatenate(triples, axis=1) if triples else np.zeros((3, 0), np.uint8)
    return CueSet(ids=tuple(ids), offsets=offsets, cue_class=stacked[0], cue_row=stacked[1],
                  cue_col=stacked[2], image_labels=labels, grid_size=(grid_size, grid_size))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags of the official-pickle conversion (`python -m dsrg_jax.data.cues --pickle`)."""
    from dsrg_jax import cli

    parser = argparse.ArgumentParser(
        prog="python -m dsrg_jax.data.cues",
        description="Convert an official cue pickle (DSRG's localization_cues-sal.pickle or "
                    "SEC's localization_cues.pickle.gz) to a plain .npz (loads without pickle) "
                    "and print a summary.",
        epilog="Seed PNGs, CAM .npy files (IRN, SEAM, CLIP-ES, ...) and other sources: "
               "`python -m dsrg_jax.data.cues convert --help`.")
    parser.add_argument("--pickle", required=True,
                        help="localization_cues-sal.pickle (DSRG) or localization_cues.pickle.gz "
                             "(SEC)")
    parser.add_argument("--input-list", default=None,
                        help="train_aug input_list.txt (default: beside the pickle)")
    parser.add_argument("--out", required=True, help="output .npz path")
    cli.add_debug_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Converts the official pickle the flags name; raises what `import_official_cues` raises.

    The command line reports it in one line: `dsrg_jax.data.seeds.main`."""
    convert_official(parse_args(argv))


def convert_official(args: argparse.Namespace) -> None:
    """Writes the .npz of `parse_args`'s flags and prints a summary."""
    cue_set = import_official_cues(args.pickle, args.input_list)
    cue_set.save(args.out)
    pixels = len(cue_set) * cue_set.grid_size[0] * cue_set.grid_size[1]
    print(f"{len(cue_set)} images, {cue_set.cue_class.size} cue entries "
          f"({cue_set.cue_class.size / pixels:.1%} of grid pixels) -> {args.out}")


if __name__ == "__main__":
    # The command line also has `convert` (any cue source), which lives in `seeds`, a module
    # built on this one; run as __main__, this file is not `dsrg_jax.data.cues`, so no cycle.
    from dsrg_jax.data.seeds import main as convert_or_official_main
    convert_or_official_main()
