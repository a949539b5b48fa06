"""`python -m dsrg_jax.evaluate` against an independent numpy computation, on real VOC masks."""
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from dsrg_jax import evaluate
from dsrg_jax.data.files import read_label_png, write_label_png

VOC_GT = ("VOC2012", "SegmentationClass")


def oracle(preds: dict, gts: dict, num_classes: int) -> dict:
    """Per-class TP/FP/FN by class masks over every image (no bincount, no confusion matrix)."""
    tp = np.zeros(num_classes, np.int64)
    fp = np.zeros(num_classes, np.int64)
    fn = np.zeros(num_classes, np.int64)
    correct = counted = 0
    for k, gt in gts.items():
        pred = preds[k]
        valid = gt != 255
        counted += int(valid.sum())
        correct += int(((pred == gt) & valid).sum())
        for c in range(num_classes):
            tp[c] += int(((gt == c) & (pred == c) & valid).sum())
            fp[c] += int(((gt != c) & (pred == c) & valid).sum())
            fn[c] += int(((gt == c) & (pred != c) & valid).sum())
    union = tp + fp + fn
    iou = [100.0 * t / u if u else float("nan") for t, u in zip(tp, union)]
    defined = [v for v in iou if not np.isnan(v)]
    return {"iou": np.array(iou), "miou": float(np.mean(defined)),
            "acc": 100.0 * correct / counted}


def read_gts(gt_dir: pathlib.Path) -> dict:
    return {p.stem: read_label_png(p, 21) for p in sorted(gt_dir.glob("*.png"))}


def write_preds(pred_dir: pathlib.Path, preds: dict) -> None:
    for k, v in preds.items():
        write_label_png(pred_dir / f"{k}.png", v.astype(np.uint8))


def check_against_oracle(scores, preds, gts, num_classes=21):
    want = oracle(preds, gts, num_classes)
    np.testing.assert_allclose(scores.iou, want["iou"], rtol=1e-12, equal_nan=True)
    assert scores.mean_iou == pytest.approx(want["miou"], rel=1e-12)
    assert scores.pixel_accuracy == pytest.approx(want["acc"], rel=1e-12)


def shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Mask moved by (dy, dx), the uncovered border filled by edge values; 255 -> background."""
    out = np.roll(mask, (dy, dx), axis=(0, 1))
    out[:dy] = out[dy:dy + 1]
    out[:, :dx] = out[:, dx:dx + 1]
    return np.where(out == 255, 0, out)


def test_perfect_predictions_on_real_voc_masks_score_100(voc_mini, tmp_path):
    gt_dir = voc_mini.joinpath(*VOC_GT)
    gts = read_gts(gt_dir)
    assert len(gts) == 16 and any((g == 255).any() for g in gts.values())
    write_preds(tmp_path, {k: np.where(g == 255, 0, g) for k, g in gts.items()})
    scores = evaluate.evaluate_dirs(gt_dir, tmp_path)
    assert scores.mean_iou == 100.0 and scores.pixel_accuracy == 100.0
    assert scores.num_images == 16
    present = sorted({int(c) for g in gts.values() for c in np.unique(g) if c != 255})
    # Classes absent from both ground truth and predictions (e.g. bird) have no IoU, not 0.
    assert np.flatnonzero(~np.isnan(scores.iou)).tolist() == present
    assert len(present) == 16 and 3 not in present


def test_all_background_and_shifted_predictions_match_numpy(voc_mini, tmp_path):
    gt_dir = voc_mini.joinpath(*VOC_GT)
    gts = read_gts(gt_dir)
    cases = {"background": {k: np.zeros_like(g) for k, g in gts.items()},
             "shifted": {k: shift(g, 3, 5) for k, g in gts.items()}}
    for name, preds in cases.items():
        write_preds(tmp_path / name, preds)
        scores = evaluate.evaluate_dirs(gt_dir, tmp_path / name)
        check_against_oracle(scores, preds, gts)
    bg = evaluate.evaluate_dirs(gt_dir, tmp_path / "background")
    assert np.nansum(bg.iou[1:]) == 0.0 and 0 < bg.iou[0] < 100
    shifted = evaluate.evaluate_dirs(gt_dir, tmp_path / "shifted")
    assert 50 < shifted.mean_iou < 100


def test_official_miou_formulas_on_all_background_predictions(voc_mini, tmp_path, monkeypatch):
    """All-background predictions: VOC's evaluate.py averages over the classes with a TP (only
    background), COCO's script over all 21 classes, the standard mean over the 16 present; each
    through the one `Evaluator`."""
    gt_dir = voc_mini.joinpath(*VOC_GT)
    gts = read_gts(gt_dir)
    write_preds(tmp_path, {k: np.zeros_like(g) for k, g in gts.items()})
    added = []
    monkeypatch.setattr(evaluate.Evaluator, "add",
                        lambda self, pred, gt, _add=evaluate.Evaluator.add:
                        (added.append(1), _add(self, pred, gt))[1])
    std = evaluate.evaluate_dirs(gt_dir, tmp_path)
    voc = evaluate.evaluate_dirs(gt_dir, tmp_path, miou_formula="voc-official")
    coco = evaluate.evaluate_dirs(gt_dir, tmp_path, miou_formula="coco-official")
    assert len(added) == 3 * 16
    bg = std.iou[0]
    assert std.mean_iou == pytest.approx(bg / 16)
    assert voc.mean_iou == pytest.approx(bg)
    assert coco.mean_iou == pytest.approx(bg / 21)
    np.testing.assert_array_equal(voc.confusion, std.confusion)
    ev = evaluate.Evaluator(21, "voc-official")
    for g in gts.values():
        ev.add(np.zeros_like(g), g)
    assert 100 * ev.result()["miou"] == pytest.approx(voc.mean_iou)
    with pytest.raises(ValueError, match="miou formula"):
        evaluate.Evaluator(21, "caffe")
    # The command line chooses the formula too.
    scores = evaluate.main(["--gt", str(gt_dir), "--pred", str(tmp_path), "--miou-formula",
                            "coco-official"])
    assert scores.mean_iou == pytest.approx(coco.mean_iou)


def test_id_list_selects_the_split(voc_mini, tmp_path):
    gt_dir = voc_mini.joinpath(*VOC_GT)
    val = voc_mini / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    ids = val.read_text().split()
    gts = {k: v for k, v in read_gts(gt_dir).items() if k in ids}
    preds = {k: shift(g, 2, 2) for k, g in gts.items()}
    write_preds(tmp_path, preds)  # only the val predictions exist
    scores = evaluate.evaluate_dirs(gt_dir, tmp_path, id_list=val)
    assert scores.num_images == len(ids) == 2
    check_against_oracle(scores, preds, gts)


def test_generated_masks_with_ignore_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    gts, preds = {}, {}
    for i in range(5):
        h, w = rng.integers(20, 60, size=2)
        gt = rng.integers(0, 6, size=(h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        gts[f"img{i}"] = gt
        preds[f"img{i}"] = rng.integers(0, 6, size=(h, w)).astype(np.uint8)
    write_preds(tmp_path / "gt", gts)
    # Predictions as grey ('L') PNGs: the reader takes their values as indices too.
    (tmp_path / "pred").mkdir()
    for k, v in preds.items():
        Image.fromarray(v, mode="L").save(tmp_path / "pred" / f"{k}.png")
    scores = evaluate.evaluate_dirs(tmp_path / "gt", tmp_path / "pred", num_classes=6)
    check_against_oracle(scores, preds, gts, num_classes=6)
    assert scores.class_names == tuple(f"class_{i}" for i in range(6))
    assert scores.confusion.sum() == sum(int((g != 255).sum()) for g in gts.values())


def test_missing_wrong_size_and_out_of_range_predictions_are_all_named(voc_mini, tmp_path):
    gt_dir = voc_mini.joinpath(*VOC_GT)
    gts = read_gts(gt_dir)
    ids = sorted(gts)
    preds = {k: np.where(g == 255, 0, g) for k, g in gts.items()}
    preds[ids[1]] = preds[ids[1]][:-1]                      # one row short
    preds[ids[2]] = preds[ids[2]].copy()
    preds[ids[2]][0, 0] = 255                              # an "ignore" prediction
    del preds[ids[0]]                                      # missing
    write_preds(tmp_path, preds)
    with pytest.raises(evaluate.EvaluationError) as err:
        evaluate.evaluate_dirs(gt_dir, tmp_path)
    msg = str(err.value)
    assert "3 of 16" in msg
    assert f"{ids[0]}.png: prediction missing" in msg
    assert f"{ids[1]}.png: prediction is" in msg and "ground truth" in msg
    assert f"{ids[2]}.png: prediction holds 255" in msg


def test_cli_prints_table_writes_json_and_fails_naming_files(voc_mini, tmp_path, capsys):
    gt_dir = voc_mini.joinpath(*VOC_GT)
    gts = read_gts(gt_dir)
    preds = {k: shift(g, 4, 1) for k, g in gts.items()}
    write_preds(tmp_path / "pred", preds)
    out_json = tmp_path / "scores.json"
    scores = evaluate.main(["--gt", str(gt_dir), "--pred", str(tmp_path / "pred"),
                            "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert "aeroplane" in printed and "mIoU" in printed
    assert f"{scores.mean_iou:.2f}" in printed
    data = json.loads(out_json.read_text())
    want = oracle(preds, gts, 21)
    assert data["mean_iou"] == pytest.approx(want["miou"], abs=1e-4)
    assert data["pixel_accuracy"] == pytest.approx(want["acc"], abs=1e-4)
    assert data["iou"]["bird"] is None  # no bird in voc_mini: no IoU, not 0
    assert np.array(data["confusion"]).sum() == sum(int((g != 255).sum()) for g in gts.values())

    (tmp_path / "pred" / f"{sorted(gts)[3]}.png").unlink()
    with pytest.raises(SystemExit) as ex:
        evaluate.main(["--gt", str(gt_dir), "--pred", str(tmp_path / "pred")])
    assert ex.value.code == 2
    assert f"{sorted(gts)[3]}.png: prediction missing" in capsys.readouterr().err


def test_scores_from_confusion_hand_case():
    conf = np.array([[3, 1, 0], [1, 3, 0], [2, 0, 0]])
    s = evaluate.scores_from_confusion(conf, ["a", "b", "c"])
    np.testing.assert_allclose(s.iou, [100 * 3 / 7, 100 * 3 / 5, 0.0])
    assert s.pixel_accuracy == pytest.approx(60.0)
    assert "c" in s.table()
