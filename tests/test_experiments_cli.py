"""The CLIs explain every flag and fail with one clear line when data or weights are missing."""
import pytest

from dsrg_jax.data import fake
from dsrg_jax.data.files import write_id_list
from experiments import coco, digits, voc


@pytest.mark.parametrize("module,flags", [
    (voc, ["--tpu", "--data-dir", "--workdir", "--backbone", "--stage", "--init-weights",
           "--cam-init-weights", "--cues", "--saliency-dir", "--max-steps", "--batch-size",
           "--eval-batch-size", "--seed", "--labels-from"]),
    (coco, ["--tpu", "--data-dir", "--workdir", "--backbone", "--stage", "--init-weights",
            "--cam-init-weights", "--cues", "--saliency-dir", "--max-steps", "--batch-size",
            "--eval-batch-size", "--seed", "--labels-from"]),
    (digits, ["--workdir", "--quick", "--ablation", "--stage", "--seed"]),
])
def test_help_lists_every_flag(module, flags, capsys):
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in [*flags, "--predict-split"]:
        assert flag in text


@pytest.mark.parametrize("module,what", [(voc, "VOCtrainval_11-May-2012.tar"),
                                         (coco, "train2014.zip")])
def test_missing_data_dir_says_what_to_download(module, what, tmp_path):
    with pytest.raises(SystemExit) as e:
        module.main(["--data-dir", str(tmp_path / "nope"), "--workdir", str(tmp_path / "w")])
    msg = str(e.value.code)
    assert "not found" in msg and what in msg and "\n" not in msg


def test_missing_weights_file_says_what_to_download(tmp_path):
    with pytest.raises(SystemExit) as e:
        voc.main(["--data-dir", str(tmp_path), "--workdir", str(tmp_path / "w"),
                  "--init-weights", str(tmp_path / "vgg16.pth")])
    msg = str(e.value.code)
    assert "vgg16-397923af.pth" in msg and "\n" not in msg


TRAIN = ["2007_000001", "2007_000002", "2008_000003"]
VAL = ["2007_000005", "2010_000006"]


@pytest.fixture
def voc_dir(tmp_path):
    """A fake VOCdevkit with the train_aug list the voc experiment reads."""
    fake.write_voc_tree(tmp_path / "data", TRAIN, VAL)
    voc2012 = tmp_path / "data" / "VOCdevkit" / "VOC2012"
    write_id_list(voc2012 / "ImageSets" / "SegmentationAug" / "train_aug.txt", TRAIN)
    return tmp_path / "data" / "VOCdevkit"


@pytest.fixture
def captured(monkeypatch):
    """Runs the CLI up to `run_and_report` and keeps the config it would run."""
    from experiments import common

    got = {}
    monkeypatch.setattr(common, "run_and_report",
                        lambda cfg, workdir, stages, num_devices=None, predict=None, **kw:
                        got.update(cfg=cfg, predict=predict))
    return got


def test_resnet101_without_cues_needs_vgg16_weights_for_the_classifier(voc_dir, tmp_path):
    weights = tmp_path / "resnet101-63fe2227.pth"
    weights.write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        voc.main(["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w"),
                  "--backbone", "resnet101", "--init-weights", str(weights)])
    msg = str(e.value.code)
    assert "--cam-init-weights" in msg and "--cues" in msg and "\n" not in msg
    assert not (tmp_path / "w").exists()  # stopped before anything ran


def test_cam_weights_and_eval_batch_reach_the_config(voc_dir, tmp_path, captured):
    res, vgg = tmp_path / "resnet101-63fe2227.pth", tmp_path / "vgg16-397923af.pth"
    res.write_bytes(b"x")
    vgg.write_bytes(b"x")
    voc.main(["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w"), "--backbone",
              "resnet101", "--init-weights", str(res), "--cam-init-weights", str(vgg),
              "--eval-batch-size", "12"])
    cfg = captured["cfg"]
    assert cfg.model.classifier_init_weights == str(vgg) and cfg.model.init_weights == str(res)
    assert cfg.pseudo.batch_size == 12 and cfg.eval.batch_size == 12
    with pytest.raises(SystemExit) as e:
        voc.main(["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w"),
                  "--cam-init-weights", str(tmp_path / "nope.pth")])
    assert "vgg16-397923af.pth" in str(e.value.code) and "not found" in str(e.value.code)


@pytest.mark.parametrize("flags,expected", [
    ([], "masks"), (["--cues", "cues.pickle.gz"], "cues"),
    (["--cues", "cues.pickle.gz", "--labels-from", "masks"], "masks"),
    (["--labels-from", "cues"], "cues")])
def test_labels_from_defaults_to_the_cue_file_with_cues(voc_dir, tmp_path, captured, flags,
                                                        expected):
    voc.main(["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w"), *flags])
    assert captured["cfg"].data.labels_from == expected


def test_missing_image_is_named_at_start(voc_dir, tmp_path, captured):
    missing = voc_dir / "VOC2012" / "JPEGImages" / "2008_000003.jpg"
    missing.unlink()
    with pytest.raises(SystemExit) as e:
        voc.main(["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w")])
    msg = str(e.value.code)
    assert str(missing) in msg and "python -m dsrg_jax.data.check" in msg and "\n" not in msg
    assert "cfg" not in captured  # nothing ran


def test_predict_split_is_checked_up_front_and_reaches_the_run(voc_dir, tmp_path, captured):
    """--predict-split NAME: the split's list and images are checked before anything runs (no
    masks needed), then the split name reaches `run_and_report`."""
    base = ["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w")]
    with pytest.raises(SystemExit) as e:
        voc.main(base + ["--predict-split", "test"])
    assert "'test'" in str(e.value.code) and "\n" not in str(e.value.code)
    assert "cfg" not in captured  # nothing ran
    jpegs = voc_dir / "VOC2012" / "JPEGImages"
    write_id_list(voc_dir / "VOC2012" / "ImageSets" / "Segmentation" / "test.txt",
                  ["2011_000007"])
    with pytest.raises(SystemExit) as e:
        voc.main(base + ["--predict-split", "test"])
    assert "2011_000007.jpg" in str(e.value.code)
    (jpegs / "2011_000007.jpg").write_bytes((jpegs / f"{VAL[0]}.jpg").read_bytes())
    voc.main(base + ["--predict-split", "test"])
    assert captured["predict"] == "test"


@pytest.mark.parametrize("flags, field", [(["--max-steps", "0"], "max_steps"),
                                          (["--max-steps", "-3"], "max_steps"),
                                          (["--batch-size", "0"], "batch_size")])
def test_step_counts_and_batches_are_refused_before_anything_runs(tmp_path, flags, field):
    """--max-steps 0 used to mark stages done with no checkpoint; now one line, nothing run."""
    with pytest.raises(SystemExit) as e:
        digits.main(["--workdir", str(tmp_path / "w"), *flags])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and field in msg and ">= 1" in msg and "\n" not in msg
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("code, words", [(28, "the disk is full"), (13, "permission denied"),
                                         (30, "read-only")])
def test_a_full_or_read_only_workdir_is_one_line_on_stderr(monkeypatch, tmp_path, capsys, code,
                                                           words):
    """OS errors while a run writes (disk full, no permission, read-only file system): one line
    naming the path and saying the run resumes once fixed; no traceback (unless --debug)."""
    import errno
    import os

    import dsrg_jax.pipeline as pipeline
    from dsrg_jax.config import Config
    from experiments import common

    assert code == {28: errno.ENOSPC, 13: errno.EACCES, 30: errno.EROFS}[code]
    path = str(tmp_path / "w" / "config.json.tmp")

    def fail(*args, **kw):
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(pipeline, "run", fail)
    with pytest.raises(SystemExit) as e:
        common.run_and_report(Config(), tmp_path / "w", ("cues",))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert path in err and words in err and "rerun the same command to resume" in err
    with pytest.raises(SystemExit):
        common.run_and_report(Config(), tmp_path / "w", ("cues",), args_debug=True)
    assert "Traceback" in capsys.readouterr().err
