"""The CLIs explain every flag and fail with one clear line when data or weights are missing."""
import pytest

from experiments import coco, digits, voc


@pytest.mark.parametrize("module,flags", [
    (voc, ["--tpu", "--data-dir", "--workdir", "--backbone", "--stage", "--init-weights",
           "--cues", "--saliency-dir", "--max-steps", "--batch-size", "--seed"]),
    (coco, ["--tpu", "--data-dir", "--workdir", "--backbone", "--stage", "--init-weights",
            "--cues", "--saliency-dir", "--max-steps", "--batch-size", "--seed"]),
    (digits, ["--workdir", "--quick", "--ablation", "--stage", "--seed"]),
])
def test_help_lists_every_flag(module, flags, capsys):
    with pytest.raises(SystemExit) as e:
        module.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
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
