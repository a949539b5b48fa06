"""The official cue files (DSRG's and SEC's): importer facts on the real SEC file, a DSRG-style
file, refusal of code and damage, and the pickle-free array format."""
import gzip
import io
import pickle
import pickletools
import struct

import numpy as np
import pytest

from dsrg_jax.data import cues as cue_io
from dsrg_jax.data import safe_pickle
from dsrg_jax.data.records import DatasetError

# The globals a Python-2 numpy pickle of int arrays references (the real SEC file holds these).
PY2_NUMPY_GLOBALS = {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's _reconstruct, wherever this numpy keeps it


class _Py2Pickler(pickle._Pickler):
    """Writes protocol 2 as Python 2's cPickle did for numpy data: bytes as Python-2 str
    (BINSTRING, not Python 3's _codecs.encode) and _reconstruct under numpy.core.multiarray."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _globals_of(data: bytes) -> set[str]:
    found = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.add(arg)
    except ValueError:  # a prefix of a stream ends mid-opcode
        pass
    return found


@pytest.fixture(scope="module")
def official(sec_cue_file, sec_input_list):
    return cue_io.import_official_cues(sec_cue_file, sec_input_list)


def test_real_file_has_10582_images_with_cues_inside_the_grid(official):
    assert len(official) == 10582
    assert official.grid_size == (41, 41) and official.num_classes == 21
    assert official.cue_row.max() < 41 and official.cue_col.max() < 41
    assert official.ids[0] == "2008_007028"  # first line of input_list.txt


def test_every_cue_class_is_background_or_in_the_image_labels(official):
    image_of_entry = np.repeat(np.arange(len(official)), np.diff(official.offsets))
    assert np.all(official.image_labels[image_of_entry, official.cue_class])
    assert np.all(official.image_labels[:, 0])
    # every image has at least one foreground label and some foreground cue
    assert np.all(official.image_labels[:, 1:].any(axis=1))


def test_about_a_quarter_of_the_pixels_are_cues(official):
    indices = np.arange(0, len(official), 7)
    cues, _ = official.dense_batch(indices)
    covered = cues.any(axis=-1).mean()
    assert 0.2 < covered < 0.3, covered


def test_dense_cues_match_the_raw_pickle(official, sec_cue_file):
    with gzip.open(sec_cue_file, "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    for i in (0, 1, 5000, 10581):
        cues, labels = official.dense(i)
        assert cues.dtype == bool and cues.shape == (41, 41, 21)
        klass, row, col = raw[f"{i}_cues"]
        expected = np.zeros((41, 41, 21), bool)
        expected[row, col, klass] = True
        np.testing.assert_array_equal(cues, expected)
        assert sorted(np.flatnonzero(labels)) == [0, *sorted(raw[f"{i}_labels"].tolist())]
    np.testing.assert_array_equal(official[official.ids[5000]][0], official.dense(5000)[0])


def test_restricted_import_matches_plain_pickle_import(official, sec_cue_file, sec_input_list,
                                                       monkeypatch):
    # The importer as it was, with plain pickle, on the real (trusted) file.
    def plain_load(path, *, what):
        with gzip.open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")

    monkeypatch.setattr(safe_pickle, "load", plain_load)
    plain = cue_io.import_official_cues(sec_cue_file, sec_input_list)
    assert plain.ids == official.ids
    for field in ("offsets", "cue_class", "cue_row", "cue_col", "image_labels"):
        np.testing.assert_array_equal(getattr(official, field), getattr(plain, field), field)


def test_the_py2_writer_references_what_the_real_file_does(sec_cue_file):
    with gzip.open(sec_cue_file, "rb") as f:
        real = _globals_of(f.read(1 << 16))
    assert real == PY2_NUMPY_GLOBALS
    assert _globals_of(_py2_pickle({"0_cues": np.zeros((3, 2), np.int64)})) == PY2_NUMPY_GLOBALS


DSRG_IDS = ["2007_000032", "2007_000039", "2011_003276"]
DSRG_RAW = {  # CAM foreground + saliency background cues, as in localization_cues-sal.pickle
    "0_labels": np.array([1, 15]),
    "0_cues": np.array([[0, 0, 1, 15, 15], [0, 40, 20, 30, 30], [0, 40, 20, 10, 11]]),
    "1_labels": np.array([20]),
    "1_cues": np.array([[20, 0], [5, 6], [7, 8]]),
    "2_labels": np.array([7]),
    "2_cues": np.zeros((3, 0), np.int64),
}


@pytest.mark.parametrize("name, gz, writer", [
    ("localization_cues-sal.pickle", False, "py2"),  # as the DSRG pylayer opens it: plain
    ("localization_cues-sal.pickle.gz", True, "py2"),
    ("localization_cues-sal.pickle", False, "py3-protocol0"),
    ("renamed.pickle", True, "py3-protocol4"),  # gzip told by its bytes, not the suffix
])
def test_a_dsrg_style_file_imports_to_its_cues(tmp_path, name, gz, writer):
    data = (_py2_pickle(DSRG_RAW) if writer == "py2"
            else pickle.dumps(DSRG_RAW, protocol=int(writer[-1])))
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    (tmp_path / "input_list.txt").write_text(
        "".join(f"{image_id}.jpg {i}\n" for i, image_id in enumerate(DSRG_IDS)))
    cue_set = cue_io.import_official_cues(path)  # input list found beside the file
    assert cue_set.ids == tuple(DSRG_IDS)
    cues, labels = cue_set["2007_000032"]
    assert np.flatnonzero(labels).tolist() == [0, 1, 15]
    assert cues.sum() == 5 and cues[0, 0, 0] and cues[40, 40, 0] and cues[20, 20, 1]
    assert cues[30, 10, 15] and cues[30, 11, 15]
    cues, labels = cue_set["2007_000039"]
    assert np.flatnonzero(labels).tolist() == [0, 20]
    assert np.argwhere(cues).tolist() == [[5, 7, 20], [6, 8, 0]]
    cues, labels = cue_set["2011_003276"]
    assert not cues.any() and np.flatnonzero(labels).tolist() == [0, 7]


class _WritesAFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


def test_a_crafted_cue_file_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "localization_cues-sal.pickle"
    path.write_bytes(pickle.dumps({**DSRG_RAW, "1_cues": _WritesAFile(target)}, protocol=2))
    with pytest.raises(DatasetError, match=r"localization_cues-sal\.pickle: refused .*io\.open"):
        cue_io.import_official_cues(path)
    assert not target.exists()
    with pytest.raises(DatasetError, match=r"localization_cues-sal\.pickle: refused"):
        cue_io.main(["--pickle", str(path), "--out", str(tmp_path / "out.npz")])
    assert not target.exists() and not (tmp_path / "out.npz").exists()


def test_damaged_cue_files_name_the_file(tmp_path, sec_cue_file):
    truncated = tmp_path / "localization_cues.pickle.gz"
    truncated.write_bytes(sec_cue_file.read_bytes()[:100_000])
    cases = {truncated: "truncated, damaged or not a pickle",
             tmp_path / "empty.pickle": "empty file",
             tmp_path / "notes.pickle": "not a readable cue file"}
    (tmp_path / "empty.pickle").write_bytes(b"")
    (tmp_path / "notes.pickle").write_text("0_labels: 3\n")
    for path, problem in cases.items():
        with pytest.raises(DatasetError, match=problem) as info:
            cue_io.import_official_cues(path)
        assert str(info.value).startswith(f"{path}: ")
    floats = tmp_path / "floats.pickle"
    floats.write_bytes(_py2_pickle({"0_labels": np.array([3]), "0_cues": np.zeros((3, 1))}))
    with pytest.raises(DatasetError, match=r"floats\.pickle: '0_cues' must hold integers"):
        cue_io.import_official_cues(floats)


def test_npz_round_trip_loads_without_pickle(official, tmp_path):
    path = tmp_path / "cues.npz"
    official.save(path)
    with np.load(path, allow_pickle=False) as f:  # would raise if any entry needed pickle
        assert {"ids", "offsets", "cue_class", "image_labels"} <= set(f.files)
    loaded = cue_io.load_cues(path)
    assert loaded.ids == official.ids
    for i in (0, 4242, 10581):
        np.testing.assert_array_equal(loaded.dense(i)[0], official.dense(i)[0])
        np.testing.assert_array_equal(loaded.dense(i)[1], official.dense(i)[1])
    assert path.stat().st_size < 20 * 2**20


def test_convert_cli(sec_cue_file, sec_input_list, tmp_path, capsys):
    out = tmp_path / "voc_cues.npz"
    cue_io.main(["--pickle", str(sec_cue_file), "--input-list", str(sec_input_list),
                 "--out", str(out)])
    assert "10582 images" in capsys.readouterr().out
    assert len(cue_io.load_cues(out)) == 10582


def test_errors_name_the_file_and_problem(tmp_path, sec_input_list):
    bad = tmp_path / "bad.pickle"
    with open(bad, "wb") as f:
        pickle.dump({"0_labels": np.array([3]), "0_cues": np.array([[3], [50], [2]])}, f)
    with pytest.raises(DatasetError, match=r"bad.pickle.*'0_cues'.*41x41"):
        cue_io.import_official_cues(bad, input_list=None)
    with pytest.raises(DatasetError,
                       match="input_list.txt lists 10582 images but .* has cues for 1"):
        cue_io.import_official_cues(bad, input_list=sec_input_list)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        cue_io.load_cues(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match="not a dsrg_jax cue file"):
        cue_io.load_cues(tmp_path / "other.npz")
    good = tmp_path / "good.pickle"
    with open(good, "wb") as f:
        pickle.dump({"0_labels": np.array([3]), "0_cues": np.array([[3], [40], [2]])}, f)
    with pytest.raises(KeyError, match="'2007_000032' has no cues"):
        cue_io.import_official_cues(good)["2007_000032"]
