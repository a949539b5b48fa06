"""The VOC path end to end on real data: the 16 voc_mini images, the real SEC cue file, the real
DeepLab-v2 ASPP-L VGG16 (random init), 2 steps per training stage, every stage from the cue import
to the eval, and the outputs a user reads afterwards.

The official cues live on the 41x41 grid of a 321 input; to keep the run to a few minutes on a
CPU the test brings them to the 21x21 grid of a 161 input (nearest neighbour) and imports that
cue set as a .npz, the same way a user passes `--cues cues.npz`. Inference runs without a
canvas (`--canvas 0`): each image alone at its own size, as the official scripts do.
"""
import json

import numpy as np
import pytest
from PIL import Image

from dsrg_jax.config import override
from dsrg_jax.data import cues as cue_io
from dsrg_jax.data.cues import cueset_from_dense
from dsrg_jax.data.files import read_id_list
from dsrg_jax.data.transforms import resize_cues
from dsrg_jax.pipeline import run
from experiments.configs.voc import get_config

INPUT = 161                    # DeepLab-v2 VGG16: (161 - 1) / 8 + 1 = 21
GRID = (21, 21)


@pytest.fixture(scope="module")
def voc_run(voc_mini, sec_cue_file, sec_input_list, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("voc")
    official = cue_io.import_official_cues(sec_cue_file, sec_input_list)
    train = read_id_list(voc_mini / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt")
    cues = np.stack([resize_cues(official[i][0], GRID) for i in train])
    labels = np.stack([official[i][1] for i in train])
    cueset_from_dense(train, cues, labels).save(tmp / "cues.npz")
    changes = {"data.data_dir": str(voc_mini), "data.train_split": "train",
               "data.cues_file": str(tmp / "cues.npz"), "data.labels_from": "cues",
               "data.input_size": INPUT, "data.crop_size": INPUT, "data.num_workers": 1,
               "pseudo.sizes": (INPUT,), "pseudo.batch_size": 2, "eval.scales": (0.5,),
               "eval.batch_size": 2, "eval.canvas": None, "run.checkpoint_every": 1,
               "run.log_every": 1, "run.image_log_every": 1, "run.num_figure_images": 2}
    for stage in ("dsrg", "retrain"):
        changes[f"{stage}.optim.max_steps"] = 2
        changes[f"{stage}.optim.batch_size"] = 2
    cfg = override(get_config(), **changes)
    workdir = tmp / "run"
    results = run(cfg, workdir, num_devices=2)
    return workdir, results, train


def test_every_stage_finishes_with_scores(voc_run, voc_mini):
    workdir, results, train = voc_run
    val_ids = read_id_list(voc_mini / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt")
    for stage in ("cues", "dsrg", "pseudo", "retrain", "eval"):
        assert (workdir / stage / "done.json").is_file(), stage
    assert json.loads((workdir / "cues" / "done.json").read_text())["num_images"] == len(train)
    saved = json.loads((workdir / "results.json").read_text())
    for net in ("dsrg", "retrain"):
        assert 0.0 <= saved["miou"][net] <= 1.0
        assert len(saved["eval"][net]["iou_per_class"]) == 21
        assert (workdir / "eval" / net / "scores.txt").read_text().count("mIoU") == 1
        val = sorted((workdir / "eval" / net / "predictions").glob("*.png"))
        assert [p.stem for p in val] == sorted(val_ids)
    assert saved["miou"] == results["miou"]
    # The supervision quality of the grown cues was measured against the train masks.
    assert saved["supervision"] and saved["supervision"][0]["epoch"] == 0


def test_pseudo_labels_are_palette_pngs_of_every_train_image(voc_run, voc_mini):
    workdir, _, train = voc_run
    pngs = sorted((workdir / "pseudo_labels").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(train)
    for p in pngs:
        with Image.open(p) as im, Image.open(voc_mini / "VOC2012" / "JPEGImages"
                                             / f"{p.stem}.jpg") as photo:
            assert im.mode == "P" and im.size == photo.size
            assert set(np.unique(np.asarray(im))) <= set(range(21))


def test_the_dsrg_step_grew_the_cues_on_a_deeplab_net(voc_run):
    workdir, _, _ = voc_run
    done = json.loads((workdir / "dsrg" / "done.json").read_text())
    assert done["grid"] == list(GRID)
    assert np.isfinite(done["last"]["loss"]) and np.isfinite(done["last"]["constrain_loss"])
    snap = np.load(sorted((workdir / "dsrg" / "growth").glob("epoch_*.npz"))[-1])
    assert snap["grown"].shape[1:3] == GRID
    assert np.all(snap["grown"] >= snap["cues"])   # cues are only ever added
