"""The CLIs explain every flag and fail with one clear line when data or weights are missing."""
import os
import pathlib
import subprocess
import sys

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


REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cpu_flags,have", [((), 2), (("--cpu-devices", "3"), 3)])
def test_num_devices_above_the_device_count_is_one_line_from_the_command_line(tmp_path,
                                                                              cpu_flags, have):
    """The real CLI in a fresh process with no device count in the environment: JAX makes
    --cpu-devices CPU devices (default 2, one per core of the documented machine); --num-devices
    above that is exit 1, one line naming the flag and the count, no traceback, nothing
    written."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
    env.pop("JAX_NUM_CPU_DEVICES", None)
    proc = subprocess.run([sys.executable, "-m", "experiments.digits", "--quick", "--workdir",
                           str(tmp_path / "w"), "--num-devices", str(have + 1), *cpu_flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: --num-devices must be in 1..{have} "), proc.stderr
    assert f"got {have + 1}" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_cpu_devices_below_one_is_one_line(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
    proc = subprocess.run([sys.executable, "-m", "experiments.digits", "--quick", "--workdir",
                           str(tmp_path / "w"), "--cpu-devices", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr == "error: --cpu-devices must be >= 1, got 0\n"
    assert not (tmp_path / "w").exists()


def test_cpu_devices_after_jax_started_keeps_its_devices_or_says_why_not():
    """In a process where JAX already made its devices (here the tests' 8): the default and
    the same count change nothing; another count is one line, not a RuntimeError."""
    import jax

    from experiments import common

    common.set_cpu_devices(None)
    common.set_cpu_devices(jax.device_count())
    assert jax.device_count() == 8
    with pytest.raises(SystemExit) as e:
        common.set_cpu_devices(3)
    assert str(e.value) == ("error: --cpu-devices 3: JAX already made its 8 CPU device(s) in "
                            "this process; pass the flag to a fresh process")


def test_an_image_with_a_corrupt_header_is_named_at_start(voc_dir, tmp_path, captured):
    bad = voc_dir / "VOC2012" / "JPEGImages" / f"{VAL[1]}.jpg"
    bad.write_bytes(b"GIF89a broken")
    with pytest.raises(SystemExit) as e:
        voc.main(["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w")])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg
    assert f"{bad}: cannot read the image" in msg
    assert "cfg" not in captured  # nothing ran


def test_cam_to_cue_rule_flags_reach_the_config(voc_dir, tmp_path, captured):
    """--fg-rule / --fg-threshold / --fg-top-fraction / --bg-cam-threshold /
    --bg-saliency-threshold set the cues.* fields a CAM .npy folder given to --cues (or the
    CAM classifier) is made cues with."""
    cams = tmp_path / "cams"
    cams.mkdir()
    base = ["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w"), "--cues", str(cams)]
    voc.main(base)
    default = captured["cfg"].cues
    voc.main(base + ["--fg-rule", "top_fraction", "--fg-threshold", "0.3", "--fg-top-fraction",
                     "0.15", "--bg-cam-threshold", "0.05", "--bg-saliency-threshold", "0.1"])
    c = captured["cfg"].cues
    assert (c.fg_rule, c.fg_threshold, c.fg_top_fraction, c.bg_cam_threshold,
            c.bg_saliency_threshold) == ("top_fraction", 0.3, 0.15, 0.05, 0.1)
    assert (default.fg_rule, default.fg_threshold) == ("relative", 0.2)
    assert captured["cfg"].data.cues_file == str(cams)
    with pytest.raises(SystemExit) as e:
        voc.main(base + ["--fg-threshold", "1.5"])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "fg_threshold" in msg and "\n" not in msg


def test_miou_formula_flag_reaches_the_eval_config(voc_dir, tmp_path, captured):
    """--miou-formula sets eval.miou_formula (default: the standard mean); a bad one is refused
    by the config's field check."""
    base = ["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w")]
    voc.main(base)
    assert captured["cfg"].eval.miou_formula == "standard"
    voc.main(base + ["--miou-formula", "voc-official"])
    assert captured["cfg"].eval.miou_formula == "voc-official"
    from dsrg_jax.config import ConfigError, override

    with pytest.raises(ConfigError, match="eval.miou_formula"):
        override(captured["cfg"], **{"eval.miou_formula": "caffe"})


def test_help_names_every_kind_of_weights_and_cues():
    text = _dataset_help()
    assert ".caffemodel" in text
    for kind in (".npz", "localization_cues-sal.pickle", "seed PNGs", "CAM files <id>.npy"):
        assert kind in text
    for flag in ("--fg-rule", "--fg-threshold", "--fg-top-fraction", "--bg-cam-threshold",
                 "--bg-saliency-threshold"):
        assert flag in text


def _dataset_help() -> str:
    from experiments import common

    return " ".join(common.dataset_parser("x", "y", "z").format_help().split())


def test_a_caffemodel_for_the_cam_classifier_is_refused_up_front(voc_dir, tmp_path, captured):
    weights = tmp_path / "vgg16_20M_mc.caffemodel"
    weights.write_bytes(b"x")
    base = ["--data-dir", str(voc_dir), "--workdir", str(tmp_path / "w"), "--init-weights",
            str(weights)]
    with pytest.raises(SystemExit) as e:
        voc.main(base)
    assert "--cam-init-weights" in str(e.value.code) and "cfg" not in captured
    voc.main(base + ["--cues", "cues.pickle.gz"])   # the segmentation net only: fine
    assert captured["cfg"].model.init_weights == str(weights)


def test_ablation_errors_are_one_line_and_unknown_rows_refused_before_the_main_run(
        tmp_path, monkeypatch, capsys):
    from experiments import common

    ran = []
    monkeypatch.setattr(common, "run_and_report", lambda *a, **kw: ran.append(1) or {})
    with pytest.raises(SystemExit) as e:
        digits.main(["--workdir", str(tmp_path / "w"), "--ablation", "--ablation-rows", "nope"])
    assert "--ablation-rows" in str(e.value.code) and "'nope'" in str(e.value.code)
    assert ran == []
    # No finished main run in the workdir: run_ablation's FileNotFoundError, in one line.
    with pytest.raises(SystemExit) as e:
        digits.main(["--workdir", str(tmp_path / "w"), "--ablation"])
    assert e.value.code == 1 and ran == [1]
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "the main run is not finished" in err


def test_a_damaged_final_checkpoint_of_a_finished_stage_is_refused_naming_its_folder(
        tmp_path, capsys):
    """The dsrg stage is done, but its final checkpoint (step 2) no longer reads: the pseudo
    stage does not go on with the step-1 weights; one line names the folder and what to do."""
    from dsrg_jax.config import override
    from dsrg_jax.pipeline import nets
    from dsrg_jax.pipeline.workdir import Experiment
    from dsrg_jax.train.checkpoint import Checkpoints
    from experiments import common
    from experiments.configs.digits import get_config

    cfg = override(get_config(quick=True), **{
        "data.num_train": 8, "data.num_val": 4, "dsrg.optim.max_steps": 2,
        "model.widths": (4, 8, 8), "model.head_width": 8, "model.convs_per_block": 1})
    workdir = tmp_path / "w"
    exp = Experiment.create(cfg, workdir)
    _, variables, _ = nets.build_model(cfg, "dsrg")
    _, _, state = nets._optimiser_and_state(exp, "dsrg", variables)
    ckpt = Checkpoints(exp.path("dsrg", "checkpoints"), keep=cfg.run.keep_checkpoints)
    for step in (1, 2):    # what a finished 2-step stage leaves: its last two checkpoints
        ckpt.save(step, state, {"step": step})
    ckpt.close()
    exp.mark_done("dsrg", {"seconds": 1.0})
    exp.writer.close()
    folder = exp.path("dsrg", "checkpoints")
    (folder / "2" / "state" / "_METADATA").write_text('{"tree_metadata": {')
    capsys.readouterr()

    with pytest.raises(SystemExit) as e:
        common.run_and_report(cfg, workdir, ("pseudo",))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert f"the final checkpoint (step 2) of the dsrg stage in {folder} is damaged" in err
    assert str(exp.path("dsrg", "done.json")) in err
    assert not exp.path("pseudo", "done.json").exists()


COMPILE_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from dsrg_jax import compile_cache
where = compile_cache.enable(sys.argv[1], min_compile_secs=0)
x = jnp.ones((64, 64))
print(where, float(jax.jit(lambda a: jnp.sin(a) @ a.T)(x).sum()))
"""


def test_the_compile_cache_keeps_compiled_programs_and_off_keeps_none(tmp_path):
    """`dsrg_jax.compile_cache.enable(DIR)` makes JAX write its executables to DIR, a second
    process gives the same result from them; "off" writes nothing."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS="")
    cache = tmp_path / "cache"
    outs = [subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(cache)], env=env,
                           capture_output=True, text=True, timeout=300, check=True).stdout
            for _ in range(2)]
    assert outs[0] == outs[1] and outs[0].startswith(str(cache))
    assert [p for p in cache.iterdir() if p.name.startswith("jit_")], list(cache.iterdir())
    off = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, "off"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert off.startswith("None ") and not (tmp_path / "off").exists()


def test_an_unusable_compile_cache_folder_is_one_line(tmp_path):
    """--compile-cache under a plain file: exit 1 before any work, one line naming the folder."""
    (tmp_path / "file").write_text("x")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "XLA_FLAGS": ""}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    bad = tmp_path / "file" / "cache"
    proc = subprocess.run([sys.executable, "-m", "experiments.digits", "--quick", "--workdir",
                           str(tmp_path / "w"), "--compile-cache", str(bad)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: --compile-cache: {bad}: ") and "off" in proc.stderr
    assert not (tmp_path / "w").exists()
