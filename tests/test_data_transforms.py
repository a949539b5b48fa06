"""Transforms move image, mask, saliency and cues together; crops pad labels with 255."""
import numpy as np
import pytest

from dsrg_jax.data import transforms as T
from dsrg_jax.data.records import Record


def _record(h=30, w=50, cue_grid=(6, 10), with_cues=True):
    """An image whose left third is white, with mask/saliency/cues marking the same region."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 3] = 255
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 3] = 3
    sal = (mask > 0).astype(np.float32)
    labels = np.zeros(5, bool)
    labels[[0, 3]] = True
    cues = None
    if with_cues:
        cues = np.zeros(cue_grid + (5,), bool)
        cues[:, : cue_grid[1] // 3, 3] = True
        cues[:, -2:, 0] = True
    return Record("x", image, labels, mask=mask, cues=cues, saliency=sal)


def test_hflip_flips_all_fields_together():
    rec = _record()
    f = T.hflip(rec)
    np.testing.assert_array_equal(f.image, rec.image[:, ::-1])
    np.testing.assert_array_equal(f.mask, rec.mask[:, ::-1])
    np.testing.assert_array_equal(f.saliency, rec.saliency[:, ::-1])
    np.testing.assert_array_equal(f.cues, rec.cues[:, ::-1])
    np.testing.assert_array_equal(T.hflip(f).cues, rec.cues)


@pytest.mark.parametrize("seed", range(6))
def test_dsrg_transform_keeps_cues_on_the_image_content(seed):
    rec = _record()
    out = T.warp_transform(size=40, cue_size=10, fields=("image", "cues", "mask", "saliency"))(
        rec, np.random.default_rng(seed))
    assert out["image"].shape == (40, 40, 3) and out["cues"].shape == (10, 10, 5)
    # Independent check: in whichever orientation, class-3 cues sit where the image is white and
    # the mask says 3, background cues where it is black.
    white = out["image"][..., 0] > 127
    grid_white = white.reshape(10, 4, 10, 4).mean(axis=(1, 3)) > 0.5
    assert np.all(grid_white[out["cues"][..., 3]])
    assert not np.any(grid_white[out["cues"][..., 0]])
    np.testing.assert_array_equal(out["mask"] == 3, white)
    np.testing.assert_array_equal(out["saliency"] > 0.5, white)


def test_pad_crop_pads_labels_with_255_and_image_with_mean():
    rec = _record(h=20, w=25, with_cues=False)
    rng = np.random.default_rng(0)
    out = T.pad_crop(rec, 32, rng)
    assert out.image.shape == (32, 32, 3) and out.mask.shape == (32, 32)
    np.testing.assert_array_equal(out.mask[20:], 255)
    np.testing.assert_array_equal(out.mask[:, 25:], 255)
    np.testing.assert_array_equal(out.image[20:, 0], np.tile(T.MEAN_RGB_UINT8, (12, 1)))
    np.testing.assert_array_equal(out.mask[:20, :25], rec.mask)
    np.testing.assert_array_equal(out.image[:20, :25], rec.image)


def test_random_crop_is_a_window_of_the_original():
    rec = _record(h=50, w=60, with_cues=False)
    rec.mask[:] = np.arange(60)[None] % 20
    out = T.pad_crop(rec, 16, np.random.default_rng(3))
    # find the window by matching: the crop must equal some 16x16 window of the original
    hits = [(y, x) for y in range(35) for x in range(45)
            if np.array_equal(rec.image[y:y + 16, x:x + 16], out.image)
            and np.array_equal(rec.mask[y:y + 16, x:x + 16], out.mask)]
    assert hits


def test_crop_refuses_cues():
    with pytest.raises(ValueError, match="cannot crop cues"):
        T.pad_crop(_record(), 16, np.random.default_rng(0))


def test_multi_scale_sizes():
    rec = _record(h=30, w=50, with_cues=False)
    assert [r.image.shape[:2] for r in T.multi_scale(rec)] == [(22, 38), (30, 50), (38, 62)]
    assert [r.mask.shape for r in T.warp_sizes(rec)] == [(241, 241), (321, 321), (401, 401)]


def test_one_caffe_mean_for_training_inference_and_the_crf():
    """Training (the weights' convention), the public inference and the CRF's image all use the
    official prototxts' mean pixel (104, 117, 123), BGR."""
    from dsrg_jax import convention, inference, weights
    from dsrg_jax.ops import crf

    img = np.array([[[10, 20, 30]]], np.uint8)
    expected = [30 - 104, 20 - 117, 10 - 123]
    np.testing.assert_array_equal(weights.get_input_convention("caffe").normalize(img)[0, 0],
                                  expected)
    np.testing.assert_array_equal(
        np.asarray(inference.normalize_images(img[None], "caffe"))[0, 0, 0], expected)
    assert crf.CAFFE_MEAN_BGR == convention.CAFFE.mean == (104.0, 117.0, 123.0)


def test_sources_take_cues_from_a_cue_set_like_mapping(tmp_path):
    from dsrg_jax.data import fake
    from dsrg_jax.data.voc import VOCSource

    fake.write_voc_tree(tmp_path, ["2007_000001", "2007_000002"], ["2007_000003"])
    cue = np.zeros((41, 41, 21), bool)
    cue[:5, :7, 0] = True
    cue[20:, 30:, 15] = True
    labels = np.zeros(21, bool)
    labels[[0, 15]] = True
    cue_set = {"2007_000001": (cue, labels)}  # CueSet[id] gives (cues, labels) like this
    src = VOCSource(tmp_path / "VOCdevkit", "train", cues=cue_set)
    np.testing.assert_array_equal(src[0].cues, cue)
    assert src[1].cues is None
    out = T.warp_transform(321, 41, fields=("image", "cues"), flip=False)(src[0], None)
    np.testing.assert_array_equal(out["cues"], cue)
    with pytest.raises(Exception, match="2007_000002.*needs 'cues'"):
        T.warp_transform(321, 41)(src[1], np.random.default_rng(0))
