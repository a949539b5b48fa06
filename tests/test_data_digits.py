"""The embedded digits dataset: deterministic, labels agree with masks, disjoint train/val."""
import cv2
import numpy as np
import pytest
from PIL import Image

from dsrg_jax.data import digits as D


def test_same_seed_same_bytes_other_seed_other_images():
    a = D.DigitsSource("train", num_images=20, seed=3)
    b = D.DigitsSource("train", num_images=20, seed=3)
    c = D.DigitsSource("train", num_images=20, seed=4)
    for i in (0, 7, 19):
        assert a[i].image.tobytes() == b[i].image.tobytes()
        assert a[i].mask.tobytes() == b[i].mask.tobytes()
        assert a[i].image.tobytes() != c[i].image.tobytes()
    # Random access: item 7 does not depend on having generated items 0..6 first.
    fresh = D.DigitsSource("train", num_images=20, seed=3)
    assert fresh[7].image.tobytes() == a[7].image.tobytes()


def test_labels_agree_with_masks_and_hold_one_to_three_digits():
    src = D.DigitsSource("train", num_images=120, seed=0)
    seen = np.zeros(11, int)
    for i in range(len(src)):
        rec = src[i]
        assert rec.image.shape == (D.DEFAULT_SIZE, D.DEFAULT_SIZE, 3)
        values = set(np.unique(rec.mask).tolist())
        assert values <= set(range(11))
        assert set(np.flatnonzero(rec.labels).tolist()) == values | {0}
        assert 1 <= len(values - {0}) <= 3
        seen += rec.labels
    assert np.all(seen[1:] > 0)  # every digit class occurs
    assert seen[0] == 120


def test_mask_marks_the_pasted_strokes():
    # Independent check of mask/image alignment: each digit is painted in one solid colour chosen
    # to contrast with the photo, so inside a digit's (eroded) mask the colour is nearly uniform
    # and differs from the ring of background just outside; a mask shifted by 3 pixels is not.
    src = D.DigitsSource("val", num_images=60, seed=1)
    spread, contrast, shifted = [], [], []
    for i in range(len(src)):
        rec = src[i]
        img = rec.image.astype(float)
        for c in set(np.unique(rec.mask).tolist()) - {0}:
            m = rec.mask == c
            core = _erode(m)
            if core.sum() < 5:
                continue
            ring = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            ring &= rec.mask == 0
            spread.append(img[core].std(0).max())
            contrast.append(np.abs(np.median(img[core], 0) - np.median(img[ring], 0)).sum())
            shifted.append(img[np.roll(core, 3, axis=1)].std(0).max())
    assert len(spread) >= 60
    assert np.median(spread) < 20 and np.median(contrast) > 100
    assert np.median(shifted) > 2 * np.median(spread)


def _erode(m):
    out = m.copy()
    out[1:] &= m[:-1]
    out[:-1] &= m[1:]
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    return out


def test_train_and_val_use_disjoint_digits_and_photos():
    train, val = D.digit_pool("train"), D.digit_pool("val")
    assert len(train) == 4000 and len(val) == 1000
    assert not set(train.tolist()) & set(val.tolist())
    _, y = D.load_mnist_digits()
    assert np.bincount(y[val], minlength=10).tolist() == [100] * 10
    assert not set(D.TRAIN_PHOTOS) & set(D.VAL_PHOTOS)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split must be one of"):
        D.DigitsSource("test")
    with pytest.raises(IndexError, match="out of range"):
        D.DigitsSource("val", num_images=3)[3]


def test_figure_command_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    D.main(["--figure", str(out), "--num", "4", "--size", "64"])
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_exported_voc_tree_reads_back_through_the_voc_reader(tmp_path):
    from dsrg_jax.data.voc import VOCSource

    D.main(["--export", str(tmp_path), "--num-train", "5", "--num-val", "3", "--size", "64"])
    for split, n in (("train", 5), ("val", 3)):
        digits = D.DigitsSource(split, num_images=n, size=64)
        voc = VOCSource(tmp_path, split, image_ext=".png", class_names=D.DIGIT_CLASSES)
        assert voc.ids == digits.ids
        for i in range(n):
            a, b = digits[i], voc[i]
            np.testing.assert_array_equal(a.image, b.image)
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_array_equal(a.labels, b.labels)
