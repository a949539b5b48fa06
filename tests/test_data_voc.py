"""VOC 2012 + SBD reading: masks as palette indices, lists, image-level labels, SBD conversion."""
import numpy as np
import pytest
from PIL import Image

from dsrg_jax.data import fake
from dsrg_jax.data.files import VOC_PALETTE, read_id_list, read_label_png, write_label_png
from dsrg_jax.data.records import DatasetError
from dsrg_jax.data.sbd import build_voc_aug, read_sbd_mat
from dsrg_jax.data.voc import (
    VOCSource,
    derive_cls_labels,
    derive_train_aug,
    load_cls_labels,
    save_cls_labels,
)

TRAIN = ["2007_000001", "2007_000002", "2008_000003", "2009_000004"]
VAL = ["2007_000005", "2010_000006"]


@pytest.fixture
def voc_tree(tmp_path):
    masks = fake.write_voc_tree(tmp_path, TRAIN, VAL)
    return tmp_path / "VOCdevkit" / "VOC2012", masks


def test_generated_tree_masks_decode_to_the_written_indices(voc_tree):
    root, masks = voc_tree
    src = VOCSource(root.parent, "trainval")  # VOCdevkit or VOC2012 both work
    assert src.ids == TRAIN + VAL
    for i, rec in enumerate(src[k] for k in range(len(src))):
        truth = masks[src.ids[i]]
        np.testing.assert_array_equal(rec.mask, truth)
        assert rec.image.shape == truth.shape + (3,)  # odd sizes survive
        assert (truth == 255).any()  # the boundary band is there and stays 255
        expect = np.zeros(21, bool)
        expect[0] = True
        expect[[c for c in np.unique(truth) if c < 255]] = True
        np.testing.assert_array_equal(rec.labels, expect)


def test_palette_png_is_read_as_indices_not_grey_levels(tmp_path):
    mask = np.array([[0, 1, 15], [20, 255, 7]], np.uint8)
    write_label_png(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as im:
        assert im.mode == "P"
        grey = np.asarray(im.convert("L"))
    assert not np.array_equal(grey, mask)  # the pitfall the reader avoids
    np.testing.assert_array_equal(read_label_png(tmp_path / "m.png", 21), mask)


def test_grey_and_rgb_masks_decode_to_the_same_indices(tmp_path):
    mask = np.array([[0, 1, 15], [20, 255, 7]], np.uint8)
    Image.fromarray(mask, mode="L").save(tmp_path / "grey.png")  # SegmentationClassAug style
    Image.fromarray(VOC_PALETTE[mask]).save(tmp_path / "rgb.png")  # colour-coded
    np.testing.assert_array_equal(read_label_png(tmp_path / "grey.png", 21), mask)
    np.testing.assert_array_equal(read_label_png(tmp_path / "rgb.png", 21), mask)


def test_xml_labels_and_labels_file_agree_with_mask_labels(voc_tree, tmp_path):
    root, masks = voc_tree
    from_masks = VOCSource(root, "train")
    from_xml = VOCSource(root, "train", labels="xml")
    table = derive_cls_labels(root / "SegmentationClass", TRAIN)
    save_cls_labels(tmp_path / "cls_labels.npy", table)
    from_file = VOCSource(root, "train", labels=tmp_path / "cls_labels.npy")
    for k in range(len(TRAIN)):
        np.testing.assert_array_equal(from_xml[k].labels, from_masks[k].labels)
        np.testing.assert_array_equal(from_file[k].labels, from_masks[k].labels)


def test_real_voc_masks_decode_to_official_classes(voc_mini):
    root = voc_mini / "VOC2012"
    src = VOCSource(root, "trainval")
    assert len(src) == 16
    # Independent truth: the standard cls_labels.npy (built from the VOC XML annotations).
    table = load_cls_labels(voc_mini / "lists" / "irn_voc12" / "cls_labels.npy")
    for k in range(len(src)):
        rec = src[k]
        assert set(np.unique(rec.mask)) <= set(range(21)) | {255}
        np.testing.assert_array_equal(rec.labels, table[rec.image_id], err_msg=rec.image_id)
    # The file's palette is the VOC colour map that files.voc_palette generates.
    with Image.open(root / "SegmentationClass" / "2007_000032.png") as im:
        pal = np.asarray(im.getpalette()[: 21 * 3], np.uint8).reshape(21, 3)
    np.testing.assert_array_equal(pal, VOC_PALETTE[:21])
    first = src[0]
    assert first.image_id == "2007_000032" and set(np.unique(first.mask)) == {0, 1, 15, 255}


def test_irn_and_seam_label_files_agree(voc_mini):
    irn = load_cls_labels(voc_mini / "lists" / "irn_voc12" / "cls_labels.npy")
    seam = load_cls_labels(voc_mini / "lists" / "seam_voc12" / "cls_labels.npy")
    assert len(irn) == len(seam) == 12031
    assert all(np.array_equal(irn[k], seam[k]) for k in irn)


def test_train_aug_derivation_matches_the_standard_list(voc_mini):
    lists = voc_mini / "lists" / "irn_voc12"
    standard = read_id_list(lists / "train_aug.txt")
    voc_train = read_id_list(lists / "train.txt")
    voc_val = read_id_list(lists / "val.txt")
    # Path-style lines (SEAM) give the same ids as plain ones (IRN).
    assert read_id_list(voc_mini / "lists" / "seam_voc12" / "train_aug.txt") == standard
    # SBD (not shipped here) covers the rest of train_aug and also some VOC val images; the
    # derivation must remove those and add VOC train, giving the standard sorted 10,582 list.
    sbd_only = sorted(set(standard) - set(voc_train))
    sbd_train = sbd_only[::2] + voc_val[:300]
    sbd_val = sbd_only[1::2] + voc_val[300:500] + voc_train[:100]
    derived = derive_train_aug(voc_train, voc_val, sbd_train, sbd_val)
    assert len(derived) == 10582
    assert derived == standard
    table = load_cls_labels(lists / "cls_labels.npy")
    assert all(i in table for i in derived)  # the labels file covers the derived list


def test_sbd_mat_converter_and_voc_aug(voc_tree, tmp_path):
    root, voc_masks = voc_tree
    sbd_train, sbd_val = ["2011_000100", "2007_000001"], ["2011_000101", "2010_000006"]
    shapes = {i: (33, 47) for i in sbd_train + sbd_val}
    shapes.update({i: voc_masks[i].shape for i in voc_masks})
    sbd_masks = fake.write_sbd_tree(tmp_path, sbd_train, sbd_val, shapes)
    ds = tmp_path / "benchmark_RELEASE" / "dataset"
    np.testing.assert_array_equal(read_sbd_mat(ds / "cls" / "2011_000100.mat"),
                                  sbd_masks["2011_000100"])
    for i in ["2011_000100", "2011_000101"]:  # SBD-only images need JPEGs in VOC
        Image.fromarray(np.zeros(shapes[i] + (3,), np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
    ids = build_voc_aug(root, tmp_path / "benchmark_RELEASE")
    assert ids == sorted(set(TRAIN) | {"2011_000100", "2011_000101"})  # VOC val 2010_000006 removed
    aug = VOCSource(root, "train_aug")
    assert aug.mask_dir.name == "SegmentationClassAug"
    assert aug.ids == ids
    got = {aug.ids[k]: aug[k].mask for k in range(len(aug))}
    np.testing.assert_array_equal(got["2011_000100"], sbd_masks["2011_000100"])
    np.testing.assert_array_equal(got["2007_000001"], voc_masks["2007_000001"])  # VOC mask wins


def test_missing_split_list_says_how_to_make_it(voc_tree):
    root, _ = voc_tree
    with pytest.raises(DatasetError, match=r"train_aug.*dsrg_jax.data.sbd"):
        VOCSource(root, "train_aug")
