"""Figures are written in VOC palette colours; the pure helpers compute what they say."""
import numpy as np
import pytest
from PIL import Image

from dsrg_jax import viz
from dsrg_jax.data.files import VOC_PALETTE, read_image, read_label_png
from dsrg_jax.data.voc import VOC_CLASSES


def colours_in(path) -> set:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in c) for c in np.unique(rgb, axis=0)}


def palette(c: int) -> tuple:
    return tuple(int(v) for v in VOC_PALETTE[c])


@pytest.fixture(scope="module")
def voc_pair(voc_mini):
    root = voc_mini / "VOC2012"
    image_id = "2007_000032"  # aeroplanes (1) and people (15)
    image = read_image(root / "JPEGImages" / f"{image_id}.jpg")
    mask = read_label_png(root / "SegmentationClass" / f"{image_id}.png", 21)
    return image_id, image, mask


def test_overlay_blends_class_pixels_and_keeps_background():
    image = np.full((4, 5, 3), 100, np.uint8)
    label = np.zeros((4, 5), np.uint8)
    label[1, 1], label[2, 3], label[0, 4] = 15, 1, 255
    out = viz.overlay(image, label, alpha=0.5)
    np.testing.assert_array_equal(out[1, 1], np.round(0.5 * VOC_PALETTE[15] + 50))
    np.testing.assert_array_equal(out[2, 3], np.round(0.5 * VOC_PALETTE[1] + 50))
    keep = np.ones((4, 5), bool)
    keep[1, 1] = keep[2, 3] = False
    np.testing.assert_array_equal(out[keep], image[keep])  # background and 255 untouched
    with pytest.raises(ValueError, match="H, W"):
        viz.overlay(image, label[:3])


def test_to_rgb_kinds():
    cues = np.zeros((3, 3, 21), bool)
    cues[0, 0, 0] = cues[1, 1, 15] = cues[1, 1, 2] = True
    rgb = viz.to_rgb(cues)
    assert tuple(rgb[0, 0]) == palette(0)
    assert tuple(rgb[1, 1]) == palette(15)   # overlap: highest class shown
    assert tuple(rgb[2, 2]) == palette(255)  # no cue: VOC "void" colour
    label = np.array([[0, 1], [15, 255]], np.uint8)
    np.testing.assert_array_equal(viz.to_rgb(label), VOC_PALETTE[label])
    with pytest.raises(ValueError, match="cannot draw"):
        viz.to_rgb(np.zeros((2, 2, 5), np.float32))


def test_cue_growth_figure_shows_cues_growth_and_truth_in_voc_colours(voc_pair, tmp_path):
    image_id, image, mask = voc_pair
    cues = np.zeros((2, 41, 41, 21), bool)
    cues[:, 2:6, 2:6, 0] = True
    cues[:, 18:22, 18:22, 1] = True
    later = cues.copy()
    later[:, 13:28, 13:28, 1] = True
    grown = {0: cues, 4: later}
    pred = np.where(mask == 255, 0, mask)
    path = tmp_path / "fig" / "cue_growth.png"
    viz.save_cue_growth_figure(path, np.stack([image, image]), cues, grown,
                               predictions=np.stack([pred, pred]),
                               ground_truth=np.stack([mask, mask]),
                               image_ids=[image_id, "copy"], class_names=VOC_CLASSES)
    assert path.is_file()
    found = colours_in(path)
    for c in (0, 1, 15, 255):  # background, aeroplane, person, void/no-cue
        assert palette(c) in found, c
    with Image.open(path) as im:
        assert im.size[0] > im.size[1]  # 6 columns, 2 rows
    with pytest.raises(ValueError, match="predictions has 1 images"):
        viz.save_cue_growth_figure(tmp_path / "x.png", np.stack([image, image]), cues, grown,
                                   predictions=pred[None])


def test_supervision_curves_from_records_or_lists(tmp_path):
    history = [{"epoch": 0, "precision": 0.626, "recall": 0.321, "iou": 0.300},
               {"epoch": 6, "precision": 0.635, "recall": 0.60, "iou": 0.52},
               {"epoch": 12, "precision": 0.639, "recall": 0.654, "iou": 0.571}]
    viz.save_supervision_curves(tmp_path / "a.png", history)
    viz.save_supervision_curves(tmp_path / "b.png", {"precision": [62.6, 63.9],
                                                     "recall": [32.1, 65.4],
                                                     "iou": [30.0, 57.1]})
    assert (tmp_path / "a.png").stat().st_size > 5000 and (tmp_path / "b.png").is_file()
    with pytest.raises(ValueError, match="recall"):
        viz.save_supervision_curves(tmp_path / "c.png", {"precision": [1, 2], "recall": [1],
                                                         "iou": [1, 2]})


def test_class_iou_bars_in_class_colours(tmp_path):
    iou = np.linspace(20, 90, 21)
    iou[3] = np.nan
    path = tmp_path / "iou.png"
    viz.save_class_iou_bars(path, iou, VOC_CLASSES)
    found = colours_in(path)
    assert palette(15) in found and palette(1) in found
    with pytest.raises(ValueError, match="class names"):
        viz.save_class_iou_bars(path, iou[:5], VOC_CLASSES)


def test_overlay_figure_with_and_without_crf(voc_pair, tmp_path):
    image_id, image, mask = voc_pair
    pred = np.where(mask == 255, 0, mask)
    rough = np.roll(pred, 9, axis=1)
    path = tmp_path / "overlay.png"
    viz.save_overlay_figure(path, image[None], rough[None], predictions_crf=pred[None],
                            ground_truth=mask[None], image_ids=[image_id],
                            class_names=VOC_CLASSES)
    assert path.is_file()
    with Image.open(path) as im:
        assert im.size[0] > 3 * im.size[1] / 2  # 4 panels in one row


def test_growth_figure_keeps_working_with_label_maps(tmp_path):
    cues = np.zeros((8, 8, 21), bool)
    cues[:4, :4, 0] = True
    rows = [{"cues": cues, "argmax": viz.label_colours(np.full((8, 8), 7)),
             "labels": np.full((8, 8), 3)}]
    viz.save_growth_figure(tmp_path / "g.png", rows, title="t")
    found = colours_in(tmp_path / "g.png")
    assert palette(7) in found and palette(3) in found
