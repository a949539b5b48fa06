"""Bad input is caught up front with an error naming file and problem, or skipped on opt-in."""
import logging

import numpy as np
import pytest
from PIL import Image

from dsrg_jax.data import fake
from dsrg_jax.data.check import check_dataset, check_files
from dsrg_jax.data.check import main as check_main
from dsrg_jax.data.files import write_id_list
from dsrg_jax.data.records import DatasetError
from dsrg_jax.data.voc import VOCSource, derive_cls_labels, save_cls_labels

TRAIN = ["2007_000001", "2007_000002", "2008_000003", "2009_000004"]
VAL = ["2007_000005", "2010_000006"]


@pytest.fixture
def root(tmp_path):
    fake.write_voc_tree(tmp_path, TRAIN, VAL)
    return tmp_path / "VOCdevkit" / "VOC2012"


def _check_fails(src, *patterns):
    with pytest.raises(DatasetError) as err:
        check_dataset(src)
    for p in patterns:
        assert p in str(err.value), str(err.value)
    return str(err.value)


def test_clean_tree_passes(root):
    src, report = check_dataset(VOCSource(root, "trainval"))
    assert report.problems == [] and report.num_ok == 6 and len(src) == 6


def test_corrupt_jpeg(root):
    path = root / "JPEGImages" / "2008_000003.jpg"
    fake.corrupt_jpeg(path)
    _check_fails(VOCSource(root, "train"), str(path), "cannot decode image")


def test_missing_mask(root):
    path = root / "SegmentationClass" / "2007_000002.png"
    path.unlink()
    _check_fails(VOCSource(root, "train"), str(path), "label mask not found")


def test_id_in_list_without_image(root):
    write_id_list(root / "ImageSets" / "Segmentation" / "train.txt", TRAIN + ["2012_999999"])
    _check_fails(VOCSource(root, "train"), str(root / "JPEGImages" / "2012_999999.jpg"),
                 "image file not found")


def test_mask_value_outside_range(root):
    path = root / "SegmentationClass" / "2009_000004.png"
    with Image.open(path) as im:
        arr = np.asarray(im).copy()
        pal = im.getpalette()
    arr[0, 0] = 30
    bad = Image.fromarray(arr, mode="P")
    bad.putpalette(pal)
    bad.save(path)
    _check_fails(VOCSource(root, "train"), str(path), "values [30]", "expected 0..20 or 255")


def test_labels_file_for_another_split(root, tmp_path):
    labels = tmp_path / "train_labels.npy"
    save_cls_labels(labels, derive_cls_labels(root / "SegmentationClass", TRAIN))
    with pytest.raises(DatasetError, match=r"train_labels.npy.*none of the 2 ids.*another split"):
        VOCSource(root, "val", labels=labels)
    # Partly overlapping: the check names the file and each id without labels.
    save_cls_labels(labels, derive_cls_labels(root / "SegmentationClass", TRAIN[:3]))
    _check_fails(VOCSource(root, "train", labels=labels), str(labels), "2009_000004",
                 "another split")


def test_mask_size_differs_from_image(root):
    path = root / "SegmentationClass" / "2007_000001.png"
    from dsrg_jax.data.files import write_label_png

    write_label_png(path, np.zeros((5, 5), np.uint8))
    _check_fails(VOCSource(root, "train"), str(path), "mask is 5x5")


def test_skip_flag_skips_and_counts_every_bad_item(root, caplog):
    fake.corrupt_jpeg(root / "JPEGImages" / "2008_000003.jpg")
    (root / "SegmentationClass" / "2007_000002.png").unlink()
    src = VOCSource(root, "train")
    msg = _check_fails(src, "2 of 4 items are bad", "skip_bad=True")
    assert "2008_000003.jpg" in msg and "2007_000002.png" in msg
    with caplog.at_level(logging.WARNING):
        good, report = check_dataset(src, skip_bad=True, name="voc train")
    assert report.num_skipped == 2 and report.num_ok == 2
    assert good.ids == ["2007_000001", "2009_000004"]
    assert [good[k].image_id for k in range(len(good))] == good.ids
    assert "skipped 2 of 4 items" in caplog.text
    assert "2008_000003.jpg" in caplog.text and "2007_000002.png" in caplog.text


def test_error_message_names_no_cli_flag_that_does_not_exist(root):
    fake.corrupt_jpeg(root / "JPEGImages" / "2008_000003.jpg")
    msg = _check_fails(VOCSource(root, "train"), "skip_bad=True")
    assert "--skip-bad-data" not in msg


def test_fast_file_check_names_missing_files_without_decoding(root):
    fake.corrupt_jpeg(root / "JPEGImages" / "2008_000003.jpg")  # not decoded: passes
    assert check_files(VOCSource(root, "train")) == 4
    (root / "JPEGImages" / "2007_000002.jpg").unlink()
    (root / "SegmentationClass" / "2009_000004.png").unlink()
    with pytest.raises(DatasetError) as err:
        check_files(VOCSource(root, "train"), name="voc train")
    msg = str(err.value)
    assert "2 files of 2 of the 4 images are missing" in msg and "\n" not in msg
    assert str(root / "JPEGImages" / "2007_000002.jpg") in msg
    assert str(root / "SegmentationClass" / "2009_000004.png") in msg


def test_full_check_cli(root, capsys):
    check_main(["--data-dir", str(root), "--splits", "train", "val"])
    out = capsys.readouterr().out
    assert "train: 4 items, all fine" in out and "val: 2 items, all fine" in out
    fake.corrupt_jpeg(root / "JPEGImages" / "2008_000003.jpg")
    with pytest.raises(SystemExit) as e:
        check_main(["--data-dir", str(root), "--splits", "train"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "2008_000003.jpg" in err


def test_full_check_reports_every_bad_split_together(root, capsys):
    """One run of the check lists the problems of all splits, not just the first bad one."""
    fake.corrupt_jpeg(root / "JPEGImages" / f"{TRAIN[2]}.jpg")
    (root / "SegmentationClass" / f"{VAL[1]}.png").unlink()
    with pytest.raises(SystemExit) as e:
        check_main(["--data-dir", str(root), "--splits", "train", "val"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "voc train: 1 of 4 items are bad" in err and f"{TRAIN[2]}.jpg" in err
    assert "voc val: 1 of 2 items are bad" in err and f"{VAL[1]}.png" in err


def test_full_check_knows_each_dataset_s_splits_from_the_registry(tmp_path, capsys):
    """--dataset coco checks COCO's train2014 / val2014 (not VOC's train_aug / val)."""
    with pytest.raises(SystemExit):
        check_main(["--dataset", "coco", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "instances_train2014.json not found" in err
    assert "instances_val2014.json not found" in err


def test_full_check_traceback_only_with_debug(root, capsys):
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(SystemExit):
        check_main(["--data-dir", str(root), "--splits", "val"])
    err = capsys.readouterr().err
    assert err.startswith("error: voc val: ") and "no list for split 'val'" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        check_main(["--data-dir", str(root), "--splits", "val", "--debug"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: voc val: ")


def test_masks_out_of_range_and_images_over_the_canvas_are_named_before_training(root):
    """What the pseudo and eval stages would fail on hours later, caught at start."""
    from dsrg_jax.data.check import check_sizes_and_masks
    from dsrg_jax.data.files import write_label_png

    src = VOCSource(root, "train")
    check_sizes_and_masks(src, canvas=64, num_classes=21)          # all fine: silent
    bad_mask = root / "SegmentationClass" / f"{TRAIN[1]}.png"
    mask = np.zeros((64, 41), np.uint8)
    mask[3, 3] = 40                                                 # 40 is no VOC class
    write_label_png(bad_mask, mask)
    with pytest.raises(DatasetError) as e:
        check_sizes_and_masks(src, canvas=60, num_classes=21, name="voc train")
    msg = str(e.value)
    assert "\n" not in msg and "voc train: 2 problems" in msg
    assert str(bad_mask) in msg and "[40]" in msg
    assert f"{TRAIN[1]}.jpg is 64x41, larger than the inference canvas 60" in msg
    assert "--canvas 64" in msg


def test_an_image_with_a_corrupt_header_is_named_before_training(root):
    """A file PIL cannot identify is one problem naming it, not a traceback from PIL."""
    from dsrg_jax.data.check import check_sizes_and_masks

    path = root / "JPEGImages" / f"{TRAIN[0]}.jpg"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(DatasetError) as e:
        check_sizes_and_masks(VOCSource(root, "train"), canvas=513, num_classes=21,
                              name="voc train")
    msg = str(e.value)
    assert "\n" not in msg and "voc train: 1 problems" in msg
    assert f"{path}: cannot read the image" in msg
