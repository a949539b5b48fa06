"""TFDS as a source of images and image-level labels, on tfds.testing.mock_data (no download)."""
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from dsrg_jax.data.tfds import TfdsSource  # noqa: E402


@pytest.mark.parametrize("name,key", [("voc/2012", "labels"), ("coco/2014", "objects")])
def test_mock_dataset_gives_records_with_shifted_labels(name, key):
    with tfds.testing.mock_data(num_examples=4):
        src = TfdsSource(name, "train")
        # Independent read of the same mock examples, straight from TFDS.
        raw = list(tfds.as_numpy(tfds.load(name, split="train", shuffle_files=False)))
    assert len(src) == 4
    for k, ex in enumerate(raw):
        rec = src[k]
        labels = ex["labels"] if key == "labels" else ex["objects"]["label"]
        expect = np.zeros(src.num_classes, bool)
        expect[0] = True
        expect[np.asarray(labels) + 1] = True  # TFDS label k = our class k + 1
        np.testing.assert_array_equal(rec.labels, expect)
        np.testing.assert_array_equal(rec.image, ex["image"])
    assert src.num_classes == (21 if name.startswith("voc") else 81)
