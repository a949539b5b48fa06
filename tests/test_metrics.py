"""Confusion matrix, mIoU, pixel accuracy and cue quality against numpy and hand-made cases."""
import numpy as np
import pytest

import dsrg_jax


def test_confusion_matrix_matches_numpy_and_ignores_255():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 21, size=(3, 50, 40))
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 21, size=gt.shape)
    valid = gt != 255
    expected = np.bincount(gt[valid] * 21 + pred[valid], minlength=441).reshape(21, 21)
    conf = np.asarray(dsrg_jax.confusion_matrix(pred, gt, num_classes=21))
    np.testing.assert_array_equal(conf, expected)
    assert conf.sum() == valid.sum()


def test_miou_on_a_hand_made_case():
    gt = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 1, 0],
                     [0, 0, 2, 2]])
    conf = np.asarray(dsrg_jax.confusion_matrix(pred, gt, num_classes=4))
    # class 0: TP 3, FP 3 (two 2s and one 1 predicted 0), FN 1 -> 3/7
    # class 1: TP 3, FP 1, FN 1 -> 3/5;  class 2: TP 0, FP 0, FN 2 -> 0;  class 3: absent -> NaN
    iou = dsrg_jax.iou_per_class(conf)
    np.testing.assert_allclose(iou[:3], [3 / 7, 3 / 5, 0.0])
    assert np.isnan(iou[3])
    assert dsrg_jax.mean_iou(conf) == pytest.approx((3 / 7 + 3 / 5 + 0) / 3)
    assert dsrg_jax.pixel_accuracy(conf) == pytest.approx(6 / 10)


def test_perfect_prediction_scores_one():
    gt = np.random.default_rng(1).integers(0, 21, size=(2, 30, 30))
    conf = dsrg_jax.confusion_matrix(gt, gt, num_classes=21)
    assert dsrg_jax.mean_iou(conf) == 1.0 and dsrg_jax.pixel_accuracy(conf) == 1.0


def test_cue_counts_and_quality_match_numpy():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 5, size=(2, 9, 8))
    gt[rng.random(gt.shape) < 0.1] = 255
    cues = rng.random((2, 9, 8, 5)) < 0.3
    counts = np.asarray(dsrg_jax.cue_counts(cues, gt))
    valid = gt != 255
    for c in range(5):
        assert counts[c, 0] == (cues[..., c] & (gt == c)).sum()
        assert counts[c, 1] == (cues[..., c] & (gt != c) & valid).sum()
        assert counts[c, 2] == (~cues[..., c] & (gt == c)).sum()
    quality = dsrg_jax.cue_quality(counts)
    tp, fp, fn = counts.sum(axis=0)
    assert quality["precision"] == pytest.approx(tp / (tp + fp))
    assert quality["recall"] == pytest.approx(tp / (tp + fn))
    assert quality["iou"] == pytest.approx(tp / (tp + fp + fn))
    fg_tp, fg_fp, fg_fn = counts[1:].sum(axis=0)
    assert quality["fg_precision"] == pytest.approx(fg_tp / (fg_tp + fg_fp))
    assert quality["fg_recall"] == pytest.approx(fg_tp / (fg_tp + fg_fn))
    assert quality["bg_precision"] == pytest.approx(counts[0, 0] / counts[0, :2].sum())
    assert quality["bg_recall"] == pytest.approx(counts[0, 0] / (counts[0, 0] + counts[0, 2]))


def test_cue_quality_hand_made():
    gt = np.array([[[0, 1, 1, 255]]])
    cues = np.zeros((1, 1, 4, 2), bool)
    cues[0, 0, 0, 0] = True    # right
    cues[0, 0, 1, 0] = True    # wrong (gt 1)
    cues[0, 0, 3, 1] = True    # on an ignored pixel: not counted
    quality = dsrg_jax.cue_quality(dsrg_jax.cue_counts(cues, gt))
    assert quality["precision"] == 0.5
    assert quality["recall"] == pytest.approx(1 / 3)
    assert quality["iou"] == pytest.approx(1 / 4)
    # background: one right of two cues, the one bg pixel covered; class 1: no cue, two pixels
    assert (quality["bg_precision"], quality["bg_recall"]) == (0.5, 1.0)
    assert quality["fg_recall"] == 0.0 and np.isnan(quality["fg_precision"])
