"""Saliency maps from a directory of greyscale PNGs, matched by image id."""
import numpy as np
import pytest
from PIL import Image

from dsrg_jax.data import fake
from dsrg_jax.data.check import check_dataset
from dsrg_jax.data.records import DatasetError
from dsrg_jax.data.voc import VOCSource


@pytest.fixture
def tree(tmp_path):
    masks = fake.write_voc_tree(tmp_path, ["2007_000001", "2007_000002"], ["2007_000003"])
    sal = tmp_path / "saliency"
    sal.mkdir()
    maps = {}
    for i, m in masks.items():
        arr = np.random.default_rng(len(maps)).integers(0, 256, m.shape, dtype=np.uint8)
        Image.fromarray(arr, mode="L").save(sal / f"{i}.png")
        maps[i] = arr
    return tmp_path / "VOCdevkit" / "VOC2012", sal, maps


def test_maps_are_matched_by_id_and_scaled_to_unit_range(tree):
    root, sal, maps = tree
    src = VOCSource(root, "trainval", saliency=sal)
    for k in range(len(src)):
        rec = src[k]
        assert rec.saliency.dtype == np.float32
        np.testing.assert_allclose(rec.saliency, maps[rec.image_id] / 255.0, atol=1e-6)


def test_missing_or_misfit_map_is_named(tree):
    root, sal, maps = tree
    (sal / "2007_000002.png").unlink()
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(sal / "2007_000001.png")
    with pytest.raises(DatasetError) as err:
        check_dataset(VOCSource(root, "train", saliency=sal))
    msg = str(err.value)
    assert f"{sal / '2007_000002.png'}: saliency map not found" in msg
    assert f"{sal / '2007_000001.png'}: saliency map is 3x3" in msg
