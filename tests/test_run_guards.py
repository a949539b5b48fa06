"""Guards of the pipeline (`dsrg_jax.pipeline`): a resumed workdir keeps its config, an imported
cue file covers the train split, inference batches fit any device count, training batches name
the flag, and the CAM classifier gets its own weights."""
import gzip
import json
import pickle

import numpy as np
import pytest

from dsrg_jax.config import Config, ConfigError, override
from dsrg_jax.data import fake
from dsrg_jax.data.files import write_id_list
from dsrg_jax.data.records import DatasetError
from dsrg_jax.pipeline import STAGES, Experiment, nets, runner, splits
from dsrg_jax.pipeline.cues import run_cues
from dsrg_jax.pipeline.sources import inference_transform

TRAIN = ["2007_000001", "2007_000002", "2008_000003", "2009_000004"]
VAL = ["2007_000005", "2010_000006"]


@pytest.fixture
def voc_cfg(tmp_path):
    fake.write_voc_tree(tmp_path / "data", TRAIN, VAL)
    return override(Config(), **{"data.data_dir": str(tmp_path / "data" / "VOCdevkit"),
                                 "data.train_split": "train"})


# ------------------------------------------------------------------ resumed workdir config


def test_rerun_with_the_same_config_resumes(tmp_path):
    cfg = Config()
    Experiment.create(cfg, tmp_path).writer.close()
    Experiment.create(cfg, tmp_path).writer.close()


def test_rerun_may_change_logging_fields(tmp_path):
    Experiment.create(Config(), tmp_path).writer.close()
    cfg = override(Config(), **{"run.log_every": 5, "run.checkpoint_every": 7})
    Experiment.create(cfg, tmp_path).writer.close()
    assert json.loads((tmp_path / "config.json").read_text())["run"]["log_every"] == 5


def test_rerun_with_other_flags_names_the_fields(tmp_path):
    Experiment.create(Config(), tmp_path).writer.close()
    saved = (tmp_path / "config.json").read_text()
    cfg = override(Config(), **{"dsrg.theta_fg": 0.9, "run.seed": 3,
                                "retrain.optim.batch_size": 4})
    with pytest.raises(ConfigError) as e:
        Experiment.create(cfg, tmp_path)
    msg = str(e.value)
    for part in ("dsrg.theta_fg: 0.85 -> 0.9", "run.seed: 0 -> 3",
                 "retrain.optim.batch_size: 10 -> 4", "new --workdir", "same flags"):
        assert part in msg, msg
    assert "\n" not in msg
    assert (tmp_path / "config.json").read_text() == saved  # left as it was


def test_a_field_the_saved_config_lacks_counts_as_its_default(tmp_path):
    old = json.loads(Config().to_json())
    del old["model"]["classifier_init_weights"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    Experiment.create(Config(), tmp_path).writer.close()
    cfg = override(Config(), **{"model.classifier_init_weights": "vgg16.pth"})
    with pytest.raises(ConfigError, match=r"model.classifier_init_weights: null -> \"vgg16.pth\""):
        Experiment.create(cfg, tmp_path)


# --------------------------------------------------------------------------- imported cues


def _sec_pickle(path, n):
    raw = {}
    for i in range(n):
        raw[f"{i}_labels"] = np.array([1 + i % 20])
        raw[f"{i}_cues"] = np.array([[0, 1 + i % 20], [0, 3], [0, 4]])
    with gzip.open(path, "wb") as f:
        pickle.dump(raw, f)
    return path


def test_cue_pickle_without_its_input_list_fails_before_marking_done(voc_cfg, tmp_path):
    (tmp_path / "sec").mkdir()
    cue_file = _sec_pickle(tmp_path / "sec" / "localization_cues.pickle.gz", len(TRAIN))
    exp = Experiment.create(override(voc_cfg, **{"data.cues_file": str(cue_file)}),
                                   tmp_path / "w")
    with pytest.raises(DatasetError) as e:
        run_cues(exp)
    msg = str(e.value)
    assert "4 of the 4 train ids have no cues" in msg and "2007_000001" in msg
    assert str(tmp_path / "sec" / "input_list.txt") in msg and "\n" not in msg
    assert not (tmp_path / "w" / "cues.npz").exists()
    assert exp.done("cues") is None
    # With the list beside the pickle the same call imports and finishes.
    write_id_list(tmp_path / "sec" / "input_list.txt",
                  [f"/JPEGImages/{i}.jpg {k}" for k, i in enumerate(TRAIN)])
    info = run_cues(exp)
    assert info["num_images"] == 4 and (tmp_path / "w" / "cues.npz").is_file()
    exp.writer.close()


# -------------------------------------------------------------------------------- batches


def test_inference_batch_is_rounded_up_to_the_devices():
    assert splits.inference_batch(10, 1, 1) == 10
    assert splits.inference_batch(10, 8, 1) == 16
    assert splits.inference_batch(10, 4, 4) == 12
    assert splits.inference_batch(10, 8, 2) == 16
    with pytest.raises(ConfigError):
        splits.inference_batch(0, 8, 1)


def test_iterate_with_a_batch_that_is_no_multiple_of_the_devices(voc_cfg, tmp_path):
    """batch 3 on 8 devices: one rounded batch of 8 with every train image once, rest padding."""
    exp = Experiment.create(voc_cfg, tmp_path / "w")
    assert exp.mesh.size == 8
    src = exp.dataset.source(voc_cfg.data, "train", with_saliency=False)
    got = []
    for hb, gb in splits.iterate(exp, src, inference_transform(64, with_mask=False), 3):
        assert hb["image"].shape[0] == 8 and gb["image"].shape[0] == 8
        got += hb["index"][hb["valid"]].tolist()
    assert sorted(got) == [0, 1, 2, 3]
    exp.writer.close()


def test_training_batch_the_hosts_cannot_share_names_the_flag():
    cfg = Config()  # dsrg batch 20, retrain batch 10
    runner.check_training_batches(cfg, STAGES, 8, 2)
    with pytest.raises(ConfigError) as e:
        runner.check_training_batches(cfg, ("retrain",), 16, 4)
    msg = str(e.value)
    assert "retrain" in msg and "(10)" in msg and "--batch-size" in msg
    assert "host) count (4" in msg and "16 devices" in msg
    # stages that do not train are not checked (cues from a file, retrain off)
    cfg = override(cfg, **{"data.cues_file": "x.npz", "retrain.enabled": False,
                           "dsrg.optim.batch_size": 8})
    runner.check_training_batches(cfg, STAGES, 16, 4)


# ------------------------------------------------------------------ classifier weights


def test_cam_classifier_gets_its_own_weights(monkeypatch):
    used = {}

    def fake_init(model, rng, *, weights, input_convention):
        used[type(model).__name__] = weights
        return {}, type("Info", (), {"input_convention": None})()

    monkeypatch.setattr(nets, "init_model", fake_init)
    cfg = override(Config(), **{"model.segmentation": "deeplab_resnet101",
                                "model.init_weights": "resnet101.pth",
                                "model.classifier_init_weights": "vgg16.pth"})
    nets.build_model(cfg, "cues")
    nets.build_model(cfg, "dsrg")
    assert sorted(used.values()) == ["resnet101.pth", "vgg16.pth"]
    cam_name = [k for k, v in used.items() if v == "vgg16.pth"][0]
    assert "CAM" in cam_name.upper() or "VGG" in cam_name.upper(), used
    used.clear()  # without its own file the classifier falls back to init_weights
    nets.build_model(override(cfg, **{"model.classifier_init_weights": None}), "cues")
    assert list(used.values()) == ["resnet101.pth"]
