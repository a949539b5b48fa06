"""The VOC path end to end on real data: the 16 voc_mini images, SEC's real cue file (read with
its input list), the real DeepLab-v2 ASPP-L VGG16 (random init), 2 steps per training stage,
every stage from the cue import to the eval, through the command line `experiments.voc.main`
(so its up-front data checks run), and the outputs a user reads afterwards.

The official cues live on the 41x41 grid of a 321 input; to keep the run to a few minutes on a
CPU the test brings them to the 21x21 grid of a 161 input (nearest neighbour) and imports that
cue set as a .npz, the same way a user passes `--cues cues.npz`; the config's small sizes come
from a patched `get_config` (the command line has no flags for them). A second command line
run, `--stage cues` only, imports the pickle itself on its 41x41 grid. Inference runs without a
canvas (`--canvas 0`): each image alone at its own size, as the official scripts do. A
random-init net is never 85% sure of a class, so the growth thresholds are 0 here: every cell
of a cue's connected region of confident argmax grows, which shows growth reaching the losses.
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
from experiments import voc
from experiments.configs import voc as voc_config

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
    changes = {"data.train_split": "train", "data.input_size": INPUT, "data.crop_size": INPUT,
               "data.num_workers": 1, "pseudo.sizes": (INPUT,), "eval.scales": (0.5,),
               "dsrg.theta_fg": 0.0, "dsrg.theta_bg": 0.0, "run.checkpoint_every": 1,
               "run.log_every": 1, "run.image_log_every": 1, "run.num_figure_images": 2}
    small = override(voc_config.get_config(), **changes)
    workdir = tmp / "run"
    argv = ["--data-dir", str(voc_mini), "--workdir", str(workdir), "--cues",
            str(tmp / "cues.npz"), "--labels-from", "cues", "--canvas", "0", "--max-steps", "2",
            "--batch-size", "2", "--eval-batch-size", "2", "--num-devices", "2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(voc_config, "get_config", lambda: small)
        results = voc.main(argv)
    return workdir, results, train, cues


def test_every_stage_finishes_with_scores(voc_run, voc_mini):
    workdir, results, train, _ = voc_run
    val_ids = read_id_list(voc_mini / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt")
    for stage in ("cues", "dsrg", "pseudo", "retrain", "eval"):
        assert (workdir / stage / "done.json").is_file(), stage
    assert json.loads((workdir / "cues" / "done.json").read_text())["num_images"] == len(train)
    config = json.loads((workdir / "config.json").read_text())
    assert config["eval"]["canvas"] is None and config["dsrg"]["optim"]["max_steps"] == 2
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


def test_imported_cue_coverage_is_recorded(voc_run):
    """cues/done.json: the fraction of the train grid cells with a cue, and per class."""
    workdir, _, train, cues = voc_run
    done = json.loads((workdir / "cues" / "done.json").read_text())
    cov = done["coverage"]
    assert done["grid"] == list(GRID)
    assert cov["cells"] == pytest.approx(cues.any(-1).mean())
    np.testing.assert_allclose(cov["per_class"], cues.mean((0, 1, 2)))
    assert 0.05 < cov["cells"] < 0.95 and cov["per_class"][0] > 0   # background cues exist
    assert sum(v > 0 for v in cov["per_class"][1:]) >= 3            # and several classes


def test_cli_imports_the_real_sec_pickle_with_its_input_list(voc_mini, sec_cue_file,
                                                            sec_input_list, tmp_path):
    """`--cues localization_cues.pickle.gz --stage cues`: the pickle read with the input list
    beside it, at its own 41x41 grid, its coverage of the train images in cues/done.json."""
    assert sec_input_list.parent == sec_cue_file.parent   # where the importer looks for it
    official = cue_io.import_official_cues(sec_cue_file, sec_input_list)
    train = read_id_list(voc_mini / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt")
    dense = np.stack([official[i][0] for i in train])
    small = override(voc_config.get_config(), **{"data.train_split": "train"})
    argv = ["--data-dir", str(voc_mini), "--workdir", str(tmp_path / "run"), "--cues",
            str(sec_cue_file), "--labels-from", "cues", "--stage", "cues", "--num-devices", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(voc_config, "get_config", lambda: small)
        voc.main(argv)
    done = json.loads((tmp_path / "run" / "cues" / "done.json").read_text())
    assert done["num_images"] == len(official) == 10582 and done["grid"] == [41, 41]
    assert done["coverage"]["cells"] == pytest.approx(dense.any(-1).mean())
    np.testing.assert_allclose(done["coverage"]["per_class"], dense.mean((0, 1, 2)))
    saved = cue_io.load_cues(tmp_path / "run" / "cues.npz")
    for i in train:
        np.testing.assert_array_equal(saved[i][0], official[i][0])


def test_pseudo_labels_are_palette_pngs_of_every_train_image(voc_run, voc_mini):
    workdir, _, train, _ = voc_run
    pngs = sorted((workdir / "pseudo_labels").glob("*.png"))
    assert [p.stem for p in pngs] == sorted(train)
    for p in pngs:
        with Image.open(p) as im, Image.open(voc_mini / "VOC2012" / "JPEGImages"
                                             / f"{p.stem}.jpg") as photo:
            assert im.mode == "P" and im.size == photo.size
            assert set(np.unique(np.asarray(im))) <= set(range(21))


def test_the_dsrg_step_grew_the_cues_on_a_deeplab_net(voc_run):
    workdir, _, _, _ = voc_run
    done = json.loads((workdir / "dsrg" / "done.json").read_text())
    assert done["grid"] == list(GRID)
    assert np.isfinite(done["last"]["loss"]) and np.isfinite(done["last"]["constrain_loss"])
    snap = np.load(sorted((workdir / "dsrg" / "growth").glob("epoch_*.npz"))[-1])
    assert snap["grown"].shape[1:3] == GRID
    assert np.all(snap["grown"] >= snap["cues"])   # cues are only ever added
    # The step's own counts (done.json): the grown supervision of the trained images finds
    # more of their ground-truth cells than their original cues did.
    first, last = done["supervision"][0], done["supervision"][-1]
    assert first["epoch"] == 0 and last["epoch"] >= 1
    assert last["recall"] > first["recall"]
