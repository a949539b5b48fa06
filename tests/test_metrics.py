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


def test_official_miou_formulas_on_the_hand_made_case():
    """VOC's evaluate.py leaves out class 2 (no TP) and class 3; COCO's test-coco-f.py averages
    TP / max(1, union) over all 4 classes (class 3 counts 0)."""
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 2, 2]])
    conf = np.asarray(dsrg_jax.confusion_matrix(pred, gt, num_classes=4))
    assert dsrg_jax.mean_iou(conf, "voc-official") == pytest.approx((3 / 7 + 3 / 5) / 2)
    assert dsrg_jax.mean_iou(conf, "coco-official") == pytest.approx((3 / 7 + 3 / 5) / 4)
    full = np.array([[5, 1], [2, 4]])  # every class right somewhere: all three agree
    means = {f: dsrg_jax.mean_iou(full, f) for f in ("standard", "voc-official", "coco-official")}
    assert means["standard"] == pytest.approx((5 / 8 + 4 / 7) / 2)
    assert len({round(v, 12) for v in means.values()}) == 1
    with pytest.raises(ValueError, match="voc-official"):
        dsrg_jax.mean_iou(conf, "official")


def official_voc_jaccard(m):
    """training/tools/evaluate.py ConfusionMatrix.jaccard, line for line."""
    per_class = [m[i, i] / (np.sum(m[i, :]) + np.sum(m[:, i]) - m[i, i])
                 for i in range(len(m)) if not m[i, i] == 0]
    return np.sum(per_class) / len(per_class)


def official_coco_miou(m):
    """test-coco-f.py:183-188."""
    pos, res, tp = m.sum(1), m.sum(0), np.diag(m)
    return (tp / np.maximum(1.0, pos + res - tp)).mean()


def test_official_formulas_equal_the_official_code_on_random_confusions():
    rng = np.random.default_rng(4)
    for _ in range(20):
        m = rng.integers(0, 5, (6, 6)) * (rng.random((6, 6)) < 0.5)
        m[0, 0] += 1
        assert dsrg_jax.mean_iou(m, "voc-official") == pytest.approx(official_voc_jaccard(m))
        assert dsrg_jax.mean_iou(m, "coco-official") == pytest.approx(official_coco_miou(m))


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
