"""The official cue file: importer facts on the real file, and the pickle-free array format."""
import gzip
import pickle

import numpy as np
import pytest

from dsrg_jax.data import cues as cue_io


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
    with pytest.raises(ValueError, match=r"bad.pickle.*'0_cues'.*41x41"):
        cue_io.import_official_cues(bad, input_list=None)
    with pytest.raises(ValueError, match="input_list.txt lists 10582 images but .* has cues for 1"):
        cue_io.import_official_cues(bad, input_list=sec_input_list)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        cue_io.load_cues(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a dsrg_jax cue file"):
        cue_io.load_cues(tmp_path / "other.npz")
    good = tmp_path / "good.pickle"
    with open(good, "wb") as f:
        pickle.dump({"0_labels": np.array([3]), "0_cues": np.array([[3], [40], [2]])}, f)
    with pytest.raises(KeyError, match="'2007_000032' has no cues"):
        cue_io.import_official_cues(good)["2007_000032"]
