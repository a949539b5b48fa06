"""PASCAL VOC 2012 (+ SBD's SegmentationClassAug): the standard VOCdevkit layout, read directly.

Layout (root = `VOCdevkit/VOC2012`, or `VOCdevkit` holding it):
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png        palette PNGs, indices 0..20, 255 = ignore
  SegmentationClassAug/<id>.png     (optional) grey or palette PNGs, 12,031 train_aug + val ids
  ImageSets/Segmentation/{train,val,trainval,test}.txt
  ImageSets/SegmentationAug/train_aug.txt   (written by `python -m dsrg_jax.data.sbd`)
  Annotations/<id>.xml              (optional) object names, for XML image-level labels

train_aug = SBD train + SBD val + VOC train, minus VOC val: 10,582 ids (`derive_train_aug`).
"""
from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from dsrg_jax.data import records, safe_pickle
from dsrg_jax.data.files import PathLike, find_folder, read_id_list, read_image, read_label_png
from dsrg_jax.data.records import DatasetError, Record, labels_from_mask
from dsrg_jax.data.saliency import SaliencyDir

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # index = class id in the masks; 0 = background
NUM_VOC_CLASSES = len(VOC_CLASSES)  # 21


def find_voc_root(root: PathLike) -> pathlib.Path:
    """The VOC2012 folder: `root` itself if it holds JPEGImages, else `root/VOC2012`."""
    return find_folder(root, "VOC2012", "JPEGImages", "a VOC 2012 folder",
                       "download VOCtrainval_11-May-2012.tar and pass its VOCdevkit/VOC2012 "
                       "folder")


def derive_train_aug(
    voc_train: Iterable[str], voc_val: Iterable[str], sbd_train: Iterable[str],
    sbd_val: Iterable[str],
) -> list[str]:
    """train_aug = (SBD train | SBD val | VOC train) - VOC val, sorted (the standard 10,582 ids)."""
    ids = (set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val)
    return sorted(ids)


def decode_int_id(key) -> str:
    """IRN's int-encoded ids: 2007000032 -> '2007_000032'; string ids are returned unchanged."""
    if isinstance(key, (int, np.integer)):
        s = str(int(key))
        return f"{s[:4]}_{s[4:]}"
    return str(key)


_CLS_LABELS_FORMAT = "dsrg_jax.cls_labels/1"
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def load_cls_labels(path: PathLike, num_classes: int = NUM_VOC_CLASSES) -> dict[str, np.ndarray]:
    """Reads an image-level labels file: id -> bool[C] (channel 0, background, True).

    Two formats, told apart by their first bytes, whatever the suffix:
      - ours (`save_cls_labels`): an `.npz` of `ids` str[N] and `labels` bool[N, C], read with
        `allow_pickle=False`;
      - the WSSS `cls_labels.npy` (IRN, SEAM): a pickled dict id -> float[C-1] or float[C], read
        with a restricted unpickler that admits plain data and numeric arrays only, never code.
        Keys may be strings ("2007_000032") or IRN's ints (2007000032); vectors without
        background (C-1 entries) get background prepended.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: labels file not found")
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_ZIP_MAGIC):
        return _load_cls_labels_npz(path, num_classes)
    if head != _NPY_MAGIC:
        raise DatasetError(f"{path}: not a labels file (expected the .npz of save_cls_labels or "
                           f"a cls_labels.npy; first bytes {head!r})")
    try:
        table = safe_pickle.load_npy_object(path, what="labels file")
    except DatasetError as e:
        raise DatasetError(
            f"{e}; regenerate it without pickles: save_cls_labels(path, "
            f"derive_cls_labels(mask_dir, ids)), or pass labels='mask' or 'xml'") from None
    if not isinstance(table, dict):
        raise DatasetError(f"{path}: expected a pickled dict id -> label vector (cls_labels.npy), "
                           f"got {type(table).__name__}")
    out = {}
    for key, vec in table.items():
        vec = np.asarray(vec).reshape(-1)
        if vec.shape[0] == num_classes - 1:
            vec = np.concatenate([[1], vec])
        elif vec.shape[0] != num_classes:
            raise DatasetError(
                f"{path}: label vector for {decode_int_id(key)!r} has {vec.shape[0]} entries, "
                f"expected {num_classes - 1} (no background) or {num_classes}"
            )
        lab = vec > 0.5
        lab[0] = True
        out[decode_int_id(key)] = lab
    return out


def _load_cls_labels_npz(path: pathlib.Path, num_classes: int) -> dict[str, np.ndarray]:
    """Reads the `.npz` of `save_cls_labels`: id -> bool[C]."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "format" not in f.files or str(f["format"]) != _CLS_LABELS_FORMAT:
                raise DatasetError(f"{path}: not a dsrg_jax labels file (expected format "
                                   f"{_CLS_LABELS_FORMAT!r}, keys found: {sorted(f.files)})")
            ids, labels = f["ids"], f["labels"]
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot read labels file ({type(e).__name__}: {e})") from e
    if ids.ndim != 1 or ids.dtype.kind != "U" or labels.dtype != bool \
            or labels.shape != (ids.shape[0], num_classes):
        raise DatasetError(f"{path}: expected ids str[N] and labels bool[N, {num_classes}], got "
                           f"{ids.dtype}{list(ids.shape)} and {labels.dtype}{list(labels.shape)}")
    out = {str(i): lab.copy() for i, lab in zip(ids, labels)}
    for lab in out.values():
        lab[0] = True
    return out


def save_cls_labels(path: PathLike, labels: Mapping[str, np.ndarray]) -> None:
    """Writes id -> bool[C] (channel 0 = background) as a pickle-free `.npz` at exactly `path`.

    The file holds `ids` str[N] and `labels` bool[N, C]; `load_cls_labels` reads it back.
    """
    ids = list(labels)
    table = np.stack([np.asarray(labels[i], bool).reshape(-1) for i in ids]) if ids else \
        np.zeros((0, NUM_VOC_CLASSES), bool)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez_compressed(f, format=np.array(_CLS_LABELS_FORMAT),
                            ids=np.array(ids, dtype=str), labels=table)


def labels_from_xml(path: PathLike, class_names: Sequence[str] = VOC_CLASSES) -> np.ndarray:
    """Image-level labels from a VOC Annotations XML file (every <object><name>). bool[C]."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation XML not found")
    try:
        names = [o.findtext("name", "").strip() for o in ET.parse(path).getroot().iter("object")]
    except ET.ParseError as e:
        raise DatasetError(f"{path}: cannot parse annotation XML ({e})") from e
    lab = np.zeros(len(class_names), bool)
    lab[0] = True
    index = {n: i for i, n in enumerate(class_names)}
    for n in names:
        if n not in index:
            raise DatasetError(f"{path}: object name {n!r} is not a VOC class")
        lab[index[n]] = True
    return lab


def derive_cls_labels(
    mask_dir: PathLike, ids: Iterable[str], num_classes: int = NUM_VOC_CLASSES
) -> dict[str, np.ndarray]:
    """Image-level labels from the masks: id -> bool[C] (classes with a pixel, plus background)."""
    mask_dir = pathlib.Path(mask_dir)
    return {
        i: labels_from_mask(read_label_png(mask_dir / f"{i}.png", num_classes), num_classes)
        for i in ids
    }


class VOCSource:
    """VOC 2012 images of one split as `Record`s.

    Args:
      root: VOCdevkit/VOC2012 (or VOCdevkit).
      split: a split name ("train", "val", "trainval", "test" from ImageSets/Segmentation,
        "train_aug" from ImageSets/SegmentationAug) or the path of an id list file.
      masks: mask folder name under root; "auto" = SegmentationClassAug if present, else
        SegmentationClass; None = no masks (test split).
      labels: where image-level labels come from: "mask" (from the masks), "xml" (Annotations/),
        a cls_labels.npy path, or a mapping id -> bool[C].
      saliency: a SaliencyDir or a folder of greyscale PNGs named by id; None for none.
      cues: seed cues by id (mapping or callable returning bool[h, w, C]); None for none.
      image_ext: image file extension in JPEGImages/.
      class_names: class names, index = mask value (default VOC's 21; e.g. DIGIT_CLASSES for an
        exported digits tree).
    """

    def __init__(
        self,
        root: PathLike,
        split: str | PathLike = "train",
        *,
        masks: str | None = "auto",
        labels: str | PathLike | Mapping[str, np.ndarray] = "mask",
        saliency: SaliencyDir | PathLike | None = None,
        cues: records.CueSource = None,
        image_ext: str = ".jpg",
        class_names: Sequence[str] = VOC_CLASSES,
    ):
        self.class_names = tuple(class_names)
        self.root = find_voc_root(root)
        self.list_path = self._split_path(split)
        self.ids = read_id_list(self.list_path)
        self.image_ext = image_ext
        self.num_classes = len(self.class_names)
        if masks == "auto":
            masks = "SegmentationClassAug"
            if not (self.root / masks).is_dir():
                masks = "SegmentationClass"
        self.mask_dir = None if masks is None else self.root / masks
        if self.mask_dir is not None and not self.mask_dir.is_dir():
            raise DatasetError(f"{self.mask_dir}: mask folder not found")
        self.labels_kind, self.labels_path, self.label_table = self._labels(labels)
        self.saliency = (
            saliency if isinstance(saliency, SaliencyDir) or saliency is None
            else SaliencyDir(saliency)
        )
        self.cues = cues

    def _split_path(self, split) -> pathlib.Path:
        p = pathlib.Path(split)
        if p.suffix == ".txt" or p.is_file():
            return p
        for sub in ("Segmentation", "SegmentationAug"):
            cand = self.root / "ImageSets" / sub / f"{split}.txt"
            if cand.is_file():
                return cand
        hint = " (make it with `python -m dsrg_jax.data.sbd`)" if split == "train_aug" else ""
        raise DatasetError(
            f"{self.root / 'ImageSets'}: no list for split {split!r} in Segmentation/ or "
            f"SegmentationAug/{hint}"
        )

    def _labels(self, labels):
        if isinstance(labels, Mapping):
            return "mapping", None, {k: np.asarray(v, bool) for k, v in labels.items()}
        if labels == "mask":
            if self.mask_dir is None:
                raise DatasetError("labels='mask' needs masks; this split has none (masks=None)")
            return "mask", None, None
        if labels == "xml":
            return "xml", self.root / "Annotations", None
        path = pathlib.Path(labels)
        table = load_cls_labels(path, self.num_classes)
        missing = [i for i in self.ids if i not in table]
        if len(missing) == len(self.ids):
            raise DatasetError(
                f"{path}: labels file has none of the {len(self.ids)} ids of {self.list_path} "
                f"(first: {self.ids[0]!r}); is it the labels file of another split?"
            )
        return "file", path, table

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> pathlib.Path:
        return self.root / "JPEGImages" / f"{image_id}{self.image_ext}"

    def mask_path(self, image_id: str) -> pathlib.Path | None:
        return None if self.mask_dir is None else self.mask_dir / f"{image_id}.png"

    def _image_labels(self, image_id: str, mask: np.ndarray | None) -> np.ndarray:
        if self.labels_kind == "mask":
            return labels_from_mask(mask, self.num_classes)
        if self.labels_kind == "xml":
            return labels_from_xml(self.labels_path / f"{image_id}.xml", self.class_names)
        where = self.labels_path or "the labels mapping"
        if image_id not in self.label_table:
            raise DatasetError(
                f"{where}: no image-level labels for {image_id!r} of {self.list_path}; "
                "is it the labels file of another split?"
            )
        lab = self.label_table[image_id]
        if lab.shape != (self.num_classes,):
            raise DatasetError(f"{where}: labels of {image_id!r} have shape {lab.shape}, "
                               f"expected ({self.num_classes},)")
        return lab

    def __getitem__(self, index: int) -> Record:
        image_id = self.ids[index]
        image = read_image(self.image_path(image_id))
        mask = None
        if self.mask_dir is not None:
            mask = read_label_png(self.mask_path(image_id), self.num_classes)
            if mask.shape != image.shape[:2]:
                raise DatasetError(
                    f"{self.mask_path(image_id)}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW), "
                    f"the image is {image.shape[0]}x{image.shape[1]}"
                )
        labels = self._image_labels(image_id, mask)
        sal = None if self.saliency is None else self.saliency.load(image_id, image.shape[:2])
        cues = records.lookup_cues(self.cues, image_id)
        return Record(image_id, image, labels, mask=mask, cues=cues, saliency=sal)

    def check_item(self, index: int) -> list[records.Problem]:
        """The problem with item `index` ([] if none); reads (fully decodes) all its files."""
        return records.check_by_loading(self, index)
