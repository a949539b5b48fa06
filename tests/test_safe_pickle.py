"""The restricted unpickler: plain data and numeric arrays load; code, objects and damage do not."""
import gzip
import io
import os
import pickle

import numpy as np
import pytest

from dsrg_jax.data import safe_pickle
from dsrg_jax.data.records import DatasetError
from dsrg_jax.data.voc import load_cls_labels, save_cls_labels


class _WritesAFile:
    """Unpickling this with plain pickle creates `target` (a stand-in for any code)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


class _RunsAShell:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def _write(path, obj, *, protocol=2, gz=False):
    data = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_the_payload_is_live_under_plain_pickle(tmp_path):
    # Guards the tests below: if this stopped writing a file, "writes nothing" would prove nothing.
    target = tmp_path / "written_by_plain_pickle"
    pickle.loads(pickle.dumps({"0_cues": _WritesAFile(target)}, protocol=2)).get("0_cues").close()
    assert target.exists()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_code_in_the_file_is_refused_and_runs_nothing(tmp_path, gz, protocol):
    target = tmp_path / "pwned"
    path = _write(tmp_path / "evil.pickle", {"0_labels": np.array([3]),
                                             "0_cues": _WritesAFile(target)},
                  protocol=protocol, gz=gz)
    with pytest.raises(DatasetError, match=r"evil\.pickle: refused to load cue file: .*io\.open"):
        safe_pickle.load(path)
    assert not target.exists()
    shell = _write(tmp_path / "shell.pickle", [_RunsAShell(target)], protocol=protocol, gz=gz)
    with pytest.raises(DatasetError, match=r"shell\.pickle: refused .*(posix|os)\.system"):
        safe_pickle.load(shell)
    assert not target.exists()


@pytest.mark.parametrize("obj, refused", [
    (np.array([1, "a"], dtype=object), "numpy dtype 'O8'"),
    (np.zeros(2).view(np.recarray), "recarray"),
    (np.ma.array([1, 2]), r"numpy\.ma\.core"),
    (np.zeros(2, dtype=[("a", "i4")]), "numpy dtype 'V4'"),
    (np.array(["ab"]), "numpy dtype 'U2'"),
    ({1, 2}, r"__builtin__\.set"),
    (np.dtype("i4"), r"a value of type numpy\.dtype"),
])
def test_anything_but_plain_numeric_arrays_is_refused(tmp_path, obj, refused):
    path = _write(tmp_path / "odd.pickle", {"x": obj})
    with pytest.raises(DatasetError, match=rf"odd\.pickle: refused to load cue file: .*{refused}"):
        safe_pickle.load(path)


def test_eval_is_refused_whatever_the_protocol(tmp_path):
    for protocol, name in ((2, r"__builtin__\.eval"), (4, r"builtins\.eval")):
        path = tmp_path / f"eval{protocol}.pickle"
        path.write_bytes(pickle.dumps(_Eval(), protocol=protocol))
        with pytest.raises(DatasetError, match=name):
            safe_pickle.load(path)


class _Eval:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_a_stand_in_cannot_be_changed_by_the_file(tmp_path):
    # GLOBAL numpy.dtype, then BUILD (None, {"allow_object": True}) on it: must fail, and must
    # not let a later load through with an object dtype.
    attack = (b"\x80\x02cnumpy\ndtype\nN}X\x0c\x00\x00\x00allow_object\x88s\x86b.")
    path = tmp_path / "build.pickle"
    path.write_bytes(attack)
    with pytest.raises(DatasetError, match=r"build\.pickle"):
        safe_pickle.load(path)
    with pytest.raises(DatasetError, match="'O8'"):
        safe_pickle.load(_write(tmp_path / "obj.pickle", np.array([None])))


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_plain_data_and_numeric_arrays_load_as_plain_pickle_does(tmp_path, protocol):
    data = {
        "0_labels": np.array([3, 15]),
        "0_cues": np.arange(12, dtype=np.int64).reshape(3, 4),
        "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3)),
        "bool": np.array([[True, False]]),
        "empty": np.zeros((3, 0), np.int32),
        "scalar": np.int32(7),
        "plain": [1, 2.5, "s", b"\x00\xff", (None, True), {"k": -3}],
    }
    path = _write(tmp_path / "ok.pickle", data, protocol=protocol, gz=protocol == 2)
    loaded = safe_pickle.load(path)
    expected = pickle.loads(pickle.dumps(data, protocol=protocol))
    assert loaded.keys() == expected.keys()
    for key in expected:
        if isinstance(expected[key], np.ndarray):
            assert type(loaded[key]) is np.ndarray and loaded[key].shape == expected[key].shape
            assert loaded[key].dtype.kind == expected[key].dtype.kind
            np.testing.assert_array_equal(loaded[key], expected[key])
        else:
            assert loaded[key] == expected[key] and type(loaded[key]) is type(expected[key])
    with open(path, "rb") as f:  # an open file works too, gzip told by its first bytes
        assert safe_pickle.load(f).keys() == expected.keys()
    assert safe_pickle.load(io.BytesIO(path.read_bytes()))["scalar"] == 7


def test_damaged_files_give_one_line_errors_naming_the_file(tmp_path):
    good = pickle.dumps({f"{i}_cues": np.arange(300) for i in range(50)}, protocol=2)
    cases = {
        "empty.pickle": b"",
        "garbage.pickle": b"this is a text file, not a pickle\n",
        "truncated.pickle": good[: len(good) // 2],
        "truncated.pickle.gz": gzip.compress(good)[:-40],
        "trailing.pickle": good + b"more",
        "not_gzip.pickle.gz": b"\x1f\x8bthis is not a gzip stream at all",
    }
    damaged = bytearray(gzip.compress(good))
    damaged[len(damaged) // 2] ^= 0xFF
    cases["damaged.pickle.gz"] = bytes(damaged)
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DatasetError) as info:
            safe_pickle.load(path, what="cue file")
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        assert "cue file" in message
    with pytest.raises(DatasetError, match=r"missing\.pickle: cue file not found"):
        safe_pickle.load(tmp_path / "missing.pickle")


def test_npy_object_files_load_restricted(tmp_path):
    table = {"2007_000032": np.array([1, 0, 1], np.float32), "2007_000039": np.zeros(3)}
    np.save(tmp_path / "labels.npy", np.array(table, dtype=object), allow_pickle=True)
    loaded = safe_pickle.load_npy_object(tmp_path / "labels.npy")
    assert loaded.keys() == table.keys()
    np.testing.assert_array_equal(loaded["2007_000032"], table["2007_000032"])

    target = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", np.array({"a": _WritesAFile(target)}, dtype=object),
            allow_pickle=True)
    with pytest.raises(DatasetError, match=r"evil\.npy: refused to load labels file: .*io\.open"):
        safe_pickle.load_npy_object(tmp_path / "evil.npy")
    assert not target.exists()

    np.save(tmp_path / "nested.npy", np.array({"a": np.array([None, 1])}, dtype=object),
            allow_pickle=True)
    with pytest.raises(DatasetError, match=r"nested\.npy: refused .*object array"):
        safe_pickle.load_npy_object(tmp_path / "nested.npy")
    np.save(tmp_path / "numeric.npy", np.zeros(3))
    with pytest.raises(DatasetError, match=r"numeric\.npy: expected a \.npy of one pickled"):
        safe_pickle.load_npy_object(tmp_path / "numeric.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(DatasetError, match=r"text\.npy: not a \.npy labels file"):
        safe_pickle.load_npy_object(tmp_path / "text.npy")


def test_class_labels_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(0)
    table = {f"2007_{i:06d}": np.r_[True, rng.random(20) < 0.2] for i in range(30)}
    path = tmp_path / "cls_labels.npz"
    save_cls_labels(path, table)
    assert [p.name for p in tmp_path.iterdir()] == ["cls_labels.npz"]
    with np.load(path, allow_pickle=False) as f:  # raises if anything in it needs pickle
        assert f["labels"].dtype == bool and f["labels"].shape == (30, 21)
    loaded = load_cls_labels(path)
    assert list(loaded) == list(table)
    for key in table:
        np.testing.assert_array_equal(loaded[key], table[key])
    save_cls_labels(tmp_path / "old_name.npy", table)  # written at exactly the path given
    assert load_cls_labels(tmp_path / "old_name.npy").keys() == table.keys()
    with pytest.raises(DatasetError, match=r"cls_labels\.npz: expected ids str\[N\] and labels "
                                           r"bool\[N, 5\]"):
        load_cls_labels(path, num_classes=5)


def test_the_wsss_cls_labels_npy_is_read_restricted(voc_mini):
    path = voc_mini / "lists" / "irn_voc12" / "cls_labels.npy"
    trusted = np.load(path, allow_pickle=True).item()  # the real file, trusted, int keys
    loaded = load_cls_labels(path)
    assert len(loaded) == len(trusted) == 12031
    for key, vec in list(trusted.items())[::500]:
        image_id = f"{str(int(key))[:4]}_{str(int(key))[4:]}"
        np.testing.assert_array_equal(loaded[image_id], np.r_[True, vec > 0.5])


def test_a_crafted_class_labels_file_is_refused_with_how_to_regenerate(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "cls_labels.npy"
    np.save(path, np.array({"2007_000032": _WritesAFile(target)}, dtype=object),
            allow_pickle=True)
    with pytest.raises(DatasetError, match=r"cls_labels\.npy: refused .*io\.open.*"
                                           r"regenerate it without pickles"):
        load_cls_labels(path)
    assert not target.exists()
    (tmp_path / "notes.npy").write_text("2007_000032 1 15\n")
    with pytest.raises(DatasetError, match=r"notes\.npy: not a labels file"):
        load_cls_labels(tmp_path / "notes.npy")
    np.savez(tmp_path / "other.npz", ids=np.array(["a"]))
    with pytest.raises(DatasetError, match=r"other\.npz: not a dsrg_jax labels file"):
        load_cls_labels(tmp_path / "other.npz")
