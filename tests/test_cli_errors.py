"""Every command line of the package reports an expected failure in one line `error: ...` on stderr
with a non-zero exit status, and shows the traceback only with --debug."""
import os
import subprocess
import sys

import pytest

from dsrg_jax import caffe_weights, cli, evaluate
from dsrg_jax.data import check, pipeline, sbd, seeds
from dsrg_jax.data.records import DatasetError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bad_pickle(tmp_path):
    path = tmp_path / "localization_cues.pickle"
    path.write_bytes(b"not a pickle at all\n")
    return path


# (main, argv from tmp_path, exit status, words of the one line)
CASES = {
    "cues --pickle": (seeds.main, lambda t: ["--pickle", str(_bad_pickle(t)), "--out",
                                             str(t / "o.npz")], 1, "not a readable cue file"),
    "cues convert": (seeds.main, lambda t: ["convert", str(_bad_pickle(t)), "--out",
                                            str(t / "o.npz")], 1, "localization_cues.pickle"),
    "sbd": (sbd.main, lambda t: ["--voc", str(t / "voc"), "--sbd", str(t / "sbd")], 1,
            "not a VOC 2012 folder"),
    "evaluate": (evaluate.main, lambda t: ["--gt", str(t / "gt"), "--pred", str(t)], 2,
                 "folder not found"),
    "check": (check.main, lambda t: ["--data-dir", str(t / "voc")], 1, "data dir"),
    "caffe_weights": (caffe_weights.main, lambda t: [str(_bad_pickle(t)), "--list"], 1,
                      "not a binary Caffe NetParameter"),
    "pipeline": (pipeline.main, lambda t: ["--dataset", "voc", "--voc-root", str(t / "voc")], 1,
                 "data dir"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_line_without_debug_traceback_with_it(name, tmp_path, capsys):
    main, argv, status, words = CASES[name]
    with pytest.raises(SystemExit) as e:
        main(argv(tmp_path))
    assert e.value.code == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main([*argv(tmp_path), "--debug"])
    assert e.value.code == status
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1].startswith("error: ") and words in err.splitlines()[-1]
    assert not (tmp_path / "o.npz").exists()


def test_the_cues_module_run_as_a_program_gives_one_line(tmp_path):
    """`python -m dsrg_jax.data.cues` (its __main__ goes through dsrg_jax.data.seeds)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dsrg_jax.data.cues", "--pickle", str(_bad_pickle(tmp_path)),
         "--out", str(tmp_path / "o.npz")], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert str(tmp_path / "localization_cues.pickle") in proc.stderr


def test_one_line_joins_a_listing_and_names_the_file_of_an_os_error():
    err = DatasetError("train: 2 of 4 items are bad:\n  a.jpg: bad\n  b.png: missing\nFix them.")
    assert cli.one_line(err) == "train: 2 of 4 items are bad: a.jpg: bad; b.png: missing; Fix them."
    assert cli.one_line(PermissionError(13, "Permission denied", "/w/x.json")) == \
        "/w/x.json: Permission denied"


def test_an_unexpected_error_keeps_its_traceback():
    """A bug (here a KeyError) is not hidden behind one line."""
    with pytest.raises(KeyError):
        cli.run(lambda: {}["missing"])
