"""TFDS as a source of images and image-level labels, on tfds.testing.mock_data (no download).

Skips locally without tensorflow-datasets; fails under CI (env CI=true), which installs it.
"""
import os

import numpy as np
import pytest

try:
    import tensorflow_datasets as tfds
except ImportError as e:
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI must run the TFDS test, but tensorflow-datasets is missing ({e}); "
                    "install requirements-test.txt (it includes requirements-tfds.txt)",
                    pytrace=False)
    pytest.skip("tensorflow-datasets not installed (pip install -r requirements-tfds.txt)",
                allow_module_level=True)

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
