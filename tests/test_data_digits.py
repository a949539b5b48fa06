"""The embedded digits dataset: deterministic, labels agree with masks, disjoint train/val."""
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from dsrg_jax.data import digits as D
from dsrg_jax.data import digits_export


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
    # and differs from the ring of background just outside; a mask shifted by a stroke width
    # (the bold strokes are 15-19% of the side) is not.
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
            shifted.append(img[np.roll(core, D.DEFAULT_SIZE // 5, axis=1)].std(0).max())
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
    subprocess.run([sys.executable, "-m", "dsrg_jax.data.digits", "--figure", str(out), "--num",
                    "4", "--size", "64"], check=True, capture_output=True, timeout=300)
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_exported_voc_tree_reads_back_through_the_voc_reader(tmp_path):
    from dsrg_jax.data.voc import VOCSource

    digits_export.main(["--export", str(tmp_path), "--num-train", "5", "--num-val", "3",
                        "--size", "64"])
    for split, n in (("train", 5), ("val", 3)):
        digits = D.DigitsSource(split, num_images=n, size=64)
        voc = VOCSource(tmp_path, split, image_ext=".png", class_names=D.DIGIT_CLASSES)
        assert voc.ids == digits.ids
        for i in range(n):
            a, b = digits[i], voc[i]
            np.testing.assert_array_equal(a.image, b.image)
            np.testing.assert_array_equal(a.mask, b.mask)
            np.testing.assert_array_equal(a.labels, b.labels)


def test_dataset_card_bounds_hold_on_a_sample():
    """The properties the embedded benchmark is built for (docs/results.md, dataset card), at
    the digits config's size and output grid (56 px -> 15x15): objects at least ~2 cells thick,
    foreground 20-35% of the pixels, 1-3 digits per image."""
    from dsrg_jax.data.card import mask_statistics

    for split in ("train", "val"):
        stats = mask_statistics(D.DigitsSource(split, num_images=150, size=56), (15, 15),
                                max_images=None)
        assert 0.20 <= stats["fg_fraction"] <= 0.35, stats
        assert stats["share_at_least_2_cells"] >= 0.9, stats
        assert stats["width_cells"]["median"] >= 2.3, stats
        assert 1.3 <= stats["objects_per_image"] <= 2.2, stats


def test_stroke_width_measures_bars_and_discs():
    from dsrg_jax.data.card import object_widths, stroke_width

    for width in (3, 8, 15):
        bar = np.zeros((60, 60), bool)
        bar[10:50, 20:20 + width] = True
        assert abs(stroke_width(bar) - width) <= 1.0, width
    yy, xx = np.mgrid[:61, :61]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 <= 20 ** 2
    assert abs(stroke_width(disc) - 41) <= 2
    mask = np.zeros((56, 56), np.uint8)
    mask[:, 10:18] = 3        # 8 px = 8 / (56 / 14) = 2 cells of a 14x14 grid
    mask[0, 0] = 255          # ignore: not an object
    (cls, cells), = object_widths(mask, (14, 14))
    assert cls == 3 and abs(cells - 2.0) <= 0.25


def test_kept_images_are_the_drawn_bytes_and_read_only():
    """A split that fits in memory is drawn once: the kept records are the generator's bytes,
    and read-only, so no transform can change what a later epoch sees."""
    kept, fresh = D.DigitsSource("val", num_images=4, size=56), \
        D.DigitsSource("val", num_images=4, size=56, cache=False)
    for i in range(4):
        a, b = kept[i], fresh[i]
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert kept[i].image is a.image            # the kept copy, not drawn again
        assert fresh[i].image is not b.image
        with pytest.raises(ValueError, match="read-only"):
            a.image[0, 0, 0] = 1
    glyphs = D.GlyphSource("val", num_images=3)
    assert glyphs[1].image is glyphs[1].image
    # Every source of the same split shares the kept images (each stage makes its own source).
    assert D.DigitsSource("val", num_images=4, size=56)[2].image is kept[2].image
    # A split too large for CACHE_BYTES is drawn on every access.
    assert not D.DigitsSource("train", num_images=3000, size=512)._drawn.keep
