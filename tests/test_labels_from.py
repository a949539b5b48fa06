"""data.labels_from: the dsrg stage's image-level labels come from the masks or, as in the
published DSRG/SEC code, from the cue file's per-image labels ("<i>_labels")."""
import numpy as np
import pytest

from dsrg_jax.config import Config, ConfigError, override
from dsrg_jax.data import cues as cue_io
from dsrg_jax.data.records import DatasetError
from dsrg_jax.data.registry import get_dataset
from dsrg_jax.pipeline.sources import dsrg_train_source, dsrg_transform

# VOC 2012 2011_000025: the cue file says bus only; its mask also holds car pixels.
DIFFERS = "2011_000025"
BUS, CAR = 6, 7


@pytest.fixture(scope="module")
def official(sec_cue_file, sec_input_list):
    return cue_io.import_official_cues(sec_cue_file, sec_input_list)


def _cfg(voc_mini, split, labels_from):
    return override(Config(), **{"data.data_dir": str(voc_mini), "data.train_split": split,
                                 "data.labels_from": labels_from})


def _record(source, image_id):
    return source[list(source.ids).index(image_id)]


@pytest.mark.parametrize("labels_from", ["masks", "cues"])
def test_dsrg_records_take_the_labels_the_config_names(voc_mini, official, labels_from):
    cfg = _cfg(voc_mini, "train", labels_from)
    source = dsrg_train_source(cfg, get_dataset("voc").source(cfg.data, "train", cues=official,
                                                              with_saliency=False), official)
    rec = _record(source, DIFFERS)
    cue_labels = official[DIFFERS][1]
    assert sorted(np.flatnonzero(cue_labels)) == [0, BUS]
    if labels_from == "cues":
        np.testing.assert_array_equal(rec.labels, cue_labels)
        # what the growth sees: the dsrg transform's "labels" (batch["labels"] in crf_and_grow)
        ex = dsrg_transform(321, (41, 41), with_mask=True)(rec, np.random.default_rng(0))
        np.testing.assert_array_equal(ex["labels"], cue_labels)
    else:
        assert sorted(np.flatnonzero(rec.labels)) == [0, BUS, CAR]
    assert rec.mask is not None and CAR in np.unique(rec.mask)  # the mask itself is kept
    assert rec.cues is not None and rec.cues.shape == (41, 41, 21)
    # on the other images the two agree
    for i, image_id in enumerate(source.ids):
        if image_id != DIFFERS:
            np.testing.assert_array_equal(source[i].labels, official[image_id][1])


def test_image_without_cues_is_a_clear_error(voc_mini, official):
    cfg = _cfg(voc_mini, "trainval", "cues")  # the 2 val images are not in train_aug's cues
    with pytest.raises(DatasetError, match=r"2007_000129.*--labels-from masks"):
        dsrg_train_source(cfg, get_dataset("voc").source(cfg.data, "train",
                                                         with_saliency=False), official)


def test_unknown_value_names_the_field_when_the_config_is_built(voc_mini):
    with pytest.raises(ConfigError, match=r"data\.labels_from.*\"xml\""):
        _cfg(voc_mini, "train", "xml")
