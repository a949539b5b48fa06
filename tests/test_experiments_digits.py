"""`python -m experiments.digits --quick`: the whole pipeline runs, writes its results and figures,
and a run stopped by SIGTERM resumes to the same numbers."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cmd(workdir):
    return [sys.executable, "-m", "experiments.digits", "--quick", "--workdir", str(workdir)]


def _env():
    env = dict(os.environ)  # conftest: 8 simulated CPU devices
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits_quick")
    proc = subprocess.run(_cmd(workdir), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc.stdout


def test_quick_run_writes_results_and_figures(quick_run):
    workdir, out = quick_run
    res = json.loads((workdir / "results.json").read_text())
    for key in ("cues", "dsrg", "retrain"):
        assert 0.0 <= res["miou"][key] <= 1.0
    assert res["supervision"][0]["epoch"] == 0
    for rec in res["supervision"]:
        assert {"epoch", "precision", "recall", "iou"} <= set(rec)
    assert (workdir / "figures" / "supervision.png").is_file()
    assert (workdir / "figures" / "growth.png").is_file()
    assert (workdir / "config.json").is_file() and (workdir / "metrics.jsonl").is_file()
    assert len(list((workdir / "pseudo_labels").glob("*.png"))) == 400
    assert "devices: 8" in out


def test_eval_writes_palette_predictions_scores_and_all_figures(quick_run):
    workdir, _ = quick_run
    res = json.loads((workdir / "results.json").read_text())
    for stage in ("dsrg", "retrain"):
        pngs = list((workdir / "eval" / stage / "predictions").glob("*.png"))
        assert len(pngs) == 100
        with Image.open(pngs[0]) as im:
            assert im.mode == "P" and im.size == (56, 56)  # VOC palette, the image's size
        table = (workdir / "eval" / stage / "scores.txt").read_text()
        assert f"{100 * res['miou'][stage]:.2f}" in table.split("mIoU")[1].split()[0]
        assert "pixel acc." in table and "(100 images)" in table
    for name in ("supervision", "growth", "class_iou", "overlays", "cam_bg_threshold"):
        assert (workdir / "figures" / f"{name}.png").stat().st_size > 1000, name
    curve = res["bg_threshold_curve"]
    cues_done = json.loads((workdir / "cues" / "done.json").read_text())
    assert cues_done["bg_threshold_curve"] == curve
    assert curve["thresholds"][0] == 0.05 and curve["thresholds"][-1] == 0.5
    for key in ("precision", "recall", "iou", "miou", "cam_miou"):
        assert len(curve[key]) == len(curve["thresholds"])
    at = curve["thresholds"].index(curve["configured"])  # the configured rule = the cues made
    for key, v in res["cue_quality_train"].items():
        assert curve[key][at] == pytest.approx(v, abs=1e-12)


def test_evaluate_cli_reproduces_the_eval_miou(quick_run, tmp_path):
    """`python -m dsrg_jax.evaluate` on the written PNGs gives results.json's mIoU."""
    from dsrg_jax.data.digits import DigitsSource
    from dsrg_jax.data.files import write_label_png

    workdir, _ = quick_run
    res = json.loads((workdir / "results.json").read_text())
    val = DigitsSource("val", num_images=100, seed=0, size=56)
    for i in range(len(val)):
        write_label_png(tmp_path / "gt" / f"{val.ids[i]}.png", val[i].mask)
    proc = subprocess.run(
        [sys.executable, "-m", "dsrg_jax.evaluate", "--gt", str(tmp_path / "gt"), "--pred",
         str(workdir / "eval" / "retrain" / "predictions"), "--num-classes", "11", "--json",
         str(tmp_path / "scores.json")], cwd=REPO, env=_env(), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["num_images"] == 100
    assert scores["mean_iou"] == pytest.approx(100 * res["miou"]["retrain"], abs=1e-3)
    assert scores["pixel_accuracy"] == pytest.approx(
        100 * res["eval"]["retrain"]["pixel_accuracy"], abs=1e-3)


def test_predict_split_writes_the_eval_stage_predictions(quick_run, tmp_path):
    """`stages.predict_split` (the `--predict-split` flag) on val: one palette PNG per image at
    the image's size, equal to the eval stage's PNGs (same net, same settings, no masks read)."""
    import numpy as np

    from dsrg_jax.sharding import make_mesh
    from dsrg_jax.train import stages
    from dsrg_jax.train.config import config_from_dict

    workdir, _ = quick_run
    cfg = config_from_dict(json.loads((workdir / "config.json").read_text()))
    exp = stages.Experiment(cfg, workdir, make_mesh(None), writer=None)
    info = stages.predict_split(exp, split_name="val", out_dir=tmp_path / "pred")
    assert info["num_images"] == 100 and info["stage"] == "retrain"
    assert stages.predict_dir(exp, "val") == workdir / "predict" / "val"
    pngs = sorted((tmp_path / "pred").glob("*.png"))
    ref = workdir / "eval" / "retrain" / "predictions"
    assert [p.name for p in pngs] == sorted(p.name for p in ref.glob("*.png"))
    for p in pngs:
        with Image.open(p) as im, Image.open(ref / p.name) as want:
            assert im.mode == "P" and im.size == (56, 56)
            assert np.array_equal(np.asarray(im), np.asarray(want)), p.name


def test_rerun_skips_finished_stages(quick_run):
    workdir, _ = quick_run
    proc = subprocess.run(_cmd(workdir), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0
    for stage in ("pretrain", "cues", "dsrg", "pseudo", "retrain", "eval"):
        assert f"[{stage}] done already" in proc.stdout


def test_sigterm_then_rerun_gives_the_same_results(quick_run, tmp_path):
    reference = json.loads((quick_run[0] / "results.json").read_text())
    workdir = tmp_path / "run"
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:  # stop in the middle of the dsrg stage
        if metrics.is_file() and '"stage": "dsrg", "step": 30' in metrics.read_text():
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM: saved stage 'dsrg'" in err
    rerun = subprocess.run(_cmd(workdir), cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "[dsrg] resumed from checkpoint at step" in rerun.stdout
    res = json.loads((workdir / "results.json").read_text())
    for key in ("cues", "dsrg", "retrain"):
        assert res["miou"][key] == pytest.approx(reference["miou"][key], abs=1e-6)
    assert len(res["supervision"]) == len(reference["supervision"])
    for a, b in zip(res["supervision"], reference["supervision"]):
        for k in ("precision", "recall", "iou"):
            assert a[k] == pytest.approx(b[k], abs=1e-6)


def _losses(workdir):
    """{(stage, step): loss} from metrics.jsonl."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec and "step" in rec:
            out[(rec["stage"], rec["step"])] = rec["loss"]
    return out


def test_one_device_gives_the_numbers_of_eight(quick_run, tmp_path):
    """The whole `--quick` pipeline on 1 device logs the same losses and ends with the same mIoU
    as on 8 simulated devices (the global batch is the configured one whatever the count)."""
    eight = quick_run[0]
    env = _env()
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    proc = subprocess.run(_cmd(tmp_path / "one"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "devices: 1" in proc.stdout
    a, b = _losses(eight), _losses(tmp_path / "one")
    assert set(a) == set(b) and len(a) > 10
    # The cross-device gradient sum adds in another order than the 1-device sum (float rounding,
    # ~1e-7); Adam's normalisation carries that into the weights, so after 120 steps the logged
    # losses agree to ~6e-4 relative (measured), not bit for bit.
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
    ra = json.loads((eight / "results.json").read_text())
    rb = json.loads((tmp_path / "one" / "results.json").read_text())
    for key in ("cues", "dsrg", "retrain"):
        assert rb["miou"][key] == pytest.approx(ra["miou"][key], abs=1e-4), key


def test_cue_diagnostics_split_the_cue_precision_into_foreground_and_background(quick_run):
    """`experiments.cue_diagnostics`: foreground and background cue precision recombine into the
    cue precision the cues stage measured (an independent count over the same cue file)."""
    from experiments import cue_diagnostics

    workdir, _ = quick_run
    out = cue_diagnostics.main(["--workdir", str(workdir), "--num-images", "40"])
    q = out["cue_file"]
    tp = q["fg_precision"] * q["fg_cells"] + q["bg_precision"] * q["bg_cells"]
    train_quality = json.loads((workdir / "cues" / "done.json").read_text())["train_quality"]
    assert tp / (q["fg_cells"] + q["bg_cells"]) == pytest.approx(train_quality["precision"],
                                                                 abs=1e-9)
    rules = out["foreground_rules"]
    assert [(r["rule"], r["value"]) for r in rules][:2] == [("relative", 0.2), ("relative", 0.4)]
    cells = [r["fg_cells"] for r in rules if r["rule"] == "relative"]
    assert cells == sorted(cells, reverse=True)  # a higher threshold never adds cue cells
