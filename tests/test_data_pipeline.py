"""The input pipeline: deterministic, per-host shares, exact resume from a saved position."""
import json

import numpy as np
import pytest

from dsrg_jax.data import transforms as T
from dsrg_jax.data.digits import DigitsSource
from dsrg_jax.data.pipeline import Pipeline
from dsrg_jax.data.records import DatasetError, Record


class CountingSource:
    """A tiny source: image i is filled with value i (so a batch's content names its indices)."""

    class_names = ("background", "thing")

    def __init__(self, n=23):
        self.ids = [f"img{i}" for i in range(n)]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        image = np.full((6, 8, 3), i, np.uint8)
        image[:, :4, 1] = 200  # left half marked, to see flips
        return Record(self.ids[i], image, np.array([True, i % 2 == 1]))

    def check_item(self, i):
        return []


TF = T.warp_transform(size=8, cue_size=None, fields=("image", "labels"))


def _pipe(src, **kw):
    args = dict(global_batch=4, transform=TF, seed=7, process_index=0, process_count=1,
                num_workers=2, prefetch=2)
    args.update(kw)
    return Pipeline(src, **args)


def _take(pipe, n):
    return [next(pipe) for _ in range(n)]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_gives_the_same_next_batches_as_reading_on():
    src = CountingSource()
    with _pipe(src) as ref:
        straight = _take(ref, 12)  # crosses two epochs (5 batches per epoch)
    with _pipe(src) as first:
        _take(first, 7)
        saved = json.loads(json.dumps(first.state()))  # survives a JSON checkpoint
    with _pipe(src, state=saved) as resumed:
        for a, b in zip(straight[7:], _take(resumed, 5)):
            _assert_same(a, b)


def test_same_seed_same_batches_whatever_the_worker_count():
    src = CountingSource()
    with _pipe(src, num_workers=1, prefetch=1) as a, _pipe(src, num_workers=3, prefetch=4) as b:
        for x, y in zip(_take(a, 6), _take(b, 6)):
            _assert_same(x, y)
    with _pipe(src, seed=8) as c, _pipe(src) as d:
        assert not np.array_equal(next(c)["index"], next(d)["index"])


def test_batch_content_is_the_indexed_images_and_epochs_cover_every_image_once():
    src = CountingSource(23)
    with _pipe(src, num_epochs=1, drop_remainder=False) as p:
        batches = list(p)
    assert len(batches) == 6  # ceil(23 / 4); the last is padded and marked invalid
    idx = np.concatenate([b["index"][b["valid"]] for b in batches])
    assert sorted(idx.tolist()) == list(range(23))
    for b in batches:
        np.testing.assert_array_equal(b["image"][:, 0, 0, 0], b["index"])  # pixel value = index
        np.testing.assert_array_equal(b["labels"][:, 1], b["index"] % 2 == 1)
    assert batches[-1]["valid"].tolist() == [True, True, True, False]


def test_hosts_read_disjoint_shares_of_the_global_batch():
    src = CountingSource()
    with _pipe(src) as whole, _pipe(src, process_index=0, process_count=2) as h0, \
            _pipe(src, process_index=1, process_count=2) as h1:
        for _ in range(6):
            w, a, b = next(whole), next(h0), next(h1)
            assert a["image"].shape[0] == b["image"].shape[0] == 2
            for k in w:
                np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), w[k], err_msg=k)


def test_state_from_another_setup_is_refused():
    src = CountingSource()
    with _pipe(src) as p:
        next(p)
        state = p.state()
    with pytest.raises(ValueError, match="seed=7.*seed=9"):
        _pipe(src, seed=9, state=state)
    with pytest.raises(ValueError, match="global batch|host count"):
        _pipe(src, global_batch=5, process_count=2)


def test_mixed_sizes_without_warp_name_the_images():
    class Mixed(CountingSource):
        def __getitem__(self, i):
            return Record(self.ids[i], np.zeros((5 + i, 7, 3), np.uint8), np.array([True, False]))

    with _pipe(Mixed(8), transform=T.eval_transform(None, fields=("image",)), shuffle=False) as p:
        with pytest.raises(DatasetError, match=r"cannot batch field 'image'.*img0.*img1"):
            next(p)


def test_digits_flow_through_the_dsrg_transform():
    src = DigitsSource("val", num_images=12, size=64)
    tf = T.warp_transform(size=65, cue_size=None, fields=("image", "labels", "mask"))
    with _pipe(src, transform=tf) as p:
        b = next(p)
    assert b["image"].shape == (4, 65, 65, 3) and b["image"].dtype == np.uint8
    assert b["labels"].shape == (4, 11) and b["mask"].shape == (4, 65, 65)
    for m, lab in zip(b["mask"], b["labels"]):
        present = np.zeros(11, bool)
        present[np.unique(m)] = True
        present[0] = True
        np.testing.assert_array_equal(present, lab)


def test_inference_batch_rounded_for_four_hosts_covers_every_image_once_padding_invalid():
    """An eval/pseudo batch of 10 on 4 hosts x 1 device: rounded up to 12, each host gets 3
    rows per batch, the padding rows are marked invalid, and the valid rows are every image
    exactly once."""
    from dsrg_jax.pipeline.splits import inference_batch

    batch = inference_batch(10, num_devices=4, process_count=4)
    assert batch == 12
    src = CountingSource(n=23)
    seen = []
    for host in range(4):
        with _pipe(src, global_batch=batch, process_index=host, process_count=4, shuffle=False,
                   num_epochs=1, drop_remainder=False) as pipe:
            for b in pipe:
                assert len(b["index"]) == 3
                valid = b["valid"]
                # valid rows come first within a host's share (the stages rely on it)
                assert not np.any(valid[1:] & ~valid[:-1])
                seen += b["index"][valid].tolist()
    assert sorted(seen) == list(range(23))
