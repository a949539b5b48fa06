"""COCO 2014: image-level labels and ground-truth masks from the instance annotations (pycocotools).

Classes: 81 = background + the 80 COCO categories in ascending category-id order (the standard
order: class k >= 1 is category `COCO_CATEGORY_IDS[k - 1]`, 1 = person ... 80 = toothbrush).
Masks are rasterised from the instance annotations: larger instances first, so a smaller one on top
of a larger one keeps its pixels; crowd regions get their class (crowd="class", default) or 255
(crowd="ignore"). Image-level labels are every category with an annotation (crowd included).

Layout: `annotations/instances_train2014.json` + `train2014/COCO_train2014_<12 digits>.jpg`
(and val2014). Image ids are the file-name stems, so saliency maps and cues match by that name.
"""
from __future__ import annotations

import contextlib
import io
import pathlib
import warnings

import numpy as np

from dsrg_jax.data import records
from dsrg_jax.data.files import PathLike, read_image
from dsrg_jax.data.records import IGNORE_INDEX, DatasetError, Record
from dsrg_jax.data.saliency import SaliencyDir

COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)
COCO_CLASSES = (
    "background", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
NUM_COCO_CLASSES = len(COCO_CLASSES)  # 81
CATEGORY_TO_CLASS = {cid: k + 1 for k, cid in enumerate(COCO_CATEGORY_IDS)}


def _load_coco(annotation_file: pathlib.Path):
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise DatasetError("COCO needs pycocotools: pip install -r requirements.txt") from e
    if not annotation_file.is_file():
        raise DatasetError(
            f"{annotation_file}: COCO annotation file not found (download annotations_trainval2014"
            ".zip and pass annotations/instances_<split>2014.json)"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(annotation_file))
    except Exception as e:
        raise DatasetError(
            f"{annotation_file}: cannot read COCO annotations ({type(e).__name__}: {e})") from e


class CocoSource:
    """COCO images with labels and rasterised masks as `Record`s.

    Args:
      annotation_file: instances_<split>2014.json.
      image_dir: the folder of the split's JPEGs (train2014/ or val2014/).
      masks: rasterise ground-truth masks (False: labels only, faster).
      crowd: "class" (crowd regions get their class) or "ignore" (255).
      saliency, cues: as for VOCSource, matched by image id (file-name stem).
    """

    class_names = COCO_CLASSES

    def __init__(
        self,
        annotation_file: PathLike,
        image_dir: PathLike,
        *,
        masks: bool = True,
        crowd: str = "class",
        saliency: SaliencyDir | PathLike | None = None,
        cues: records.CueSource = None,
    ):
        if crowd not in ("class", "ignore"):
            raise ValueError(f"crowd must be 'class' or 'ignore', got {crowd!r}")
        self.annotation_file = pathlib.Path(annotation_file)
        self.image_dir = pathlib.Path(image_dir)
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: COCO image folder not found")
        self.coco = _load_coco(self.annotation_file)
        unknown = sorted(set(self.coco.getCatIds()) - set(COCO_CATEGORY_IDS))
        if unknown:
            raise DatasetError(
                f"{self.annotation_file}: category ids {unknown[:10]} are not COCO 2014 categories"
            )
        self.image_ids = sorted(self.coco.getImgIds())
        self.ids = [pathlib.Path(self.coco.imgs[i]["file_name"]).stem for i in self.image_ids]
        self.num_classes = NUM_COCO_CLASSES
        self.masks = masks
        self.crowd = crowd
        self.saliency = (
            saliency if isinstance(saliency, SaliencyDir) or saliency is None
            else SaliencyDir(saliency)
        )
        self.cues = cues

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> pathlib.Path:
        return self.image_dir / self.coco.imgs[self.image_ids[index]]["file_name"]

    def labels(self, index: int) -> np.ndarray:
        """bool[81]: background + every category with an annotation on the image."""
        lab = np.zeros(NUM_COCO_CLASSES, bool)
        lab[0] = True
        for a in self.coco.imgToAnns[self.image_ids[index]]:
            lab[CATEGORY_TO_CLASS[a["category_id"]]] = True
        return lab

    def mask(self, index: int) -> np.ndarray:
        """uint8[H, W] class map rasterised from the instance annotations (see module doc)."""
        info = self.coco.imgs[self.image_ids[index]]
        out = np.zeros((info["height"], info["width"]), np.uint8)
        anns = sorted(self.coco.imgToAnns[self.image_ids[index]], key=lambda a: -a["area"])
        for a in anns:
            with warnings.catch_warnings():  # pycocotools' numpy-2 `copy=` DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                m = self.coco.annToMask(a).astype(bool)
            if a.get("iscrowd", 0) and self.crowd == "ignore":
                out[m] = IGNORE_INDEX
            else:
                out[m] = CATEGORY_TO_CLASS[a["category_id"]]
        return out

    def __getitem__(self, index: int) -> Record:
        image_id = self.ids[index]
        image = read_image(self.image_path(index))
        info = self.coco.imgs[self.image_ids[index]]
        if image.shape[:2] != (info["height"], info["width"]):
            raise DatasetError(
                f"{self.image_path(index)}: image is {image.shape[0]}x{image.shape[1]} (HxW), "
                f"{self.annotation_file.name} says {info['height']}x{info['width']}"
            )
        mask = self.mask(index) if self.masks else None
        sal = None if self.saliency is None else self.saliency.load(image_id, image.shape[:2])
        return Record(image_id, image, self.labels(index), mask=mask,
                      cues=records.lookup_cues(self.cues, image_id), saliency=sal)

    def check_item(self, index: int) -> list[records.Problem]:
        return records.check_by_loading(self, index)
