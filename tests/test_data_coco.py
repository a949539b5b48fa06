"""COCO 2014: labels and masks from instance annotations, on a generated annotation file."""
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")

from dsrg_jax.data.check import check_dataset  # noqa: E402
from dsrg_jax.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES, CocoSource  # noqa: E402
from dsrg_jax.data.records import DatasetError  # noqa: E402


def _rect(x0, y0, x1, y1):
    """A polygon covering pixels x0..x1-1, y0..y1-1 (pycocotools' rasterisation)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco(tmp_path):
    imgs = [
        {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 30, "width": 40},
        {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": 21, "width": 17},
        {"id": 30, "file_name": "COCO_train2014_000000000030.jpg", "height": 10, "width": 10},
    ]
    anns = [  # person (1) big, dog (18) small on top of it, a crowd of cars (3) elsewhere
        {"id": 1, "image_id": 9, "category_id": 1, "segmentation": _rect(2, 2, 30, 25),
         "area": 28 * 23, "bbox": [2, 2, 28, 23], "iscrowd": 0},
        {"id": 2, "image_id": 9, "category_id": 18, "segmentation": _rect(5, 5, 10, 9),
         "area": 20, "bbox": [5, 5, 5, 4], "iscrowd": 0},
        {"id": 3, "image_id": 9, "category_id": 3, "area": 30, "bbox": [32, 0, 5, 6], "iscrowd": 1,
         "segmentation": {"size": [30, 40], "counts": None}},
        {"id": 4, "image_id": 25, "category_id": 90, "segmentation": _rect(0, 0, 17, 3),
         "area": 51, "bbox": [0, 0, 17, 3], "iscrowd": 0},
    ]
    # The crowd annotation as an uncompressed RLE (column-major runs) of the box x 32..36, y 0..5.
    crowd = np.zeros((30, 40), np.uint8)
    crowd[0:6, 32:37] = 1
    flat = crowd.flatten(order="F")
    runs, last, n = [], 0, 0
    for v in flat:
        if v != last:
            runs.append(n)
            n, last = 0, v
        n += 1
    runs.append(n)
    anns[2]["segmentation"]["counts"] = runs
    cats = [{"id": c, "name": COCO_CLASSES[k + 1]} for k, c in enumerate(COCO_CATEGORY_IDS)]
    ann_file = tmp_path / "instances_train2014.json"
    ann_file.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    img_dir = tmp_path / "train2014"
    img_dir.mkdir()
    for im in imgs:
        Image.fromarray(np.full((im["height"], im["width"], 3), 90, np.uint8)).save(
            img_dir / im["file_name"])
    return ann_file, img_dir


def test_class_order_is_background_then_category_ids_ascending():
    assert len(COCO_CATEGORY_IDS) == 80 and list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    # Known COCO category id -> name pairs (from the official annotation files).
    known = {1: "person", 18: "dog", 44: "bottle", 62: "chair", 72: "tv", 90: "toothbrush"}
    for cid, name in known.items():
        assert COCO_CLASSES[COCO_CATEGORY_IDS.index(cid) + 1] == name


def test_labels_and_masks_from_annotations(coco):
    ann_file, img_dir = coco
    src = CocoSource(ann_file, img_dir)
    assert src.ids == ["COCO_train2014_000000000009", "COCO_train2014_000000000025",
                       "COCO_train2014_000000000030"]
    rec = src[0]
    assert np.flatnonzero(rec.labels).tolist() == [0, 1, 3, 17]  # person, car, dog
    truth = np.zeros((30, 40), np.uint8)
    truth[2:25, 2:30] = 1  # person
    truth[5:9, 5:10] = 17  # dog (class of category 18) painted over the larger person
    truth[0:6, 32:37] = 3  # crowd of cars, crowd="class"
    np.testing.assert_array_equal(rec.mask, truth)
    ignore = CocoSource(ann_file, img_dir, crowd="ignore")[0].mask
    np.testing.assert_array_equal(ignore[0:6, 32:37], 255)
    rec = src[1]
    assert np.flatnonzero(rec.labels).tolist() == [0, 80]  # toothbrush = category 90
    assert (rec.mask[:3] == 80).all() and (rec.mask[3:] == 0).all()
    rec = src[2]  # no annotations: background only
    assert np.flatnonzero(rec.labels).tolist() == [0] and not rec.mask.any()


def test_missing_image_is_named(coco):
    ann_file, img_dir = coco
    (img_dir / "COCO_train2014_000000000025.jpg").unlink()
    with pytest.raises(DatasetError, match="COCO_train2014_000000000025.jpg: image file not found"):
        check_dataset(CocoSource(ann_file, img_dir))


def test_missing_annotation_file_says_what_to_download(tmp_path):
    tmp_path.joinpath("imgs").mkdir()
    with pytest.raises(DatasetError, match="annotations_trainval2014"):
        CocoSource(tmp_path / "nope.json", tmp_path / "imgs")
