"""Seeds from other CAM methods (`dsrg_jax.data.seeds`) on the 16 real voc_mini images: seed PNGs
against an independent numpy cell-centre sampling, IRN / SEAM / CLIP-ES style CAM files against
`seed_cues_from_cams` on the same CAMs, refusals and missing files named, the dispatch, the CLI
and the pipeline's import of a seed folder."""
import fractions
import gzip
import json
import pathlib
import pickle
import subprocess
import sys
import types

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dsrg_jax.config import Config, override
from dsrg_jax.data import seeds
from dsrg_jax.data.cues import load_cues
from dsrg_jax.data.files import write_id_list, write_label_png
from dsrg_jax.data.records import DatasetError
from dsrg_jax.ops.cam import seed_cues_from_cams
from dsrg_jax.pipeline import Experiment
from dsrg_jax.pipeline.cues import run_cues

GRID = 41
C = 21


@pytest.fixture(scope="module")
def masks(voc_mini):
    """{id: uint8[H, W]} of the 16 real masks (palette indices 0..20, 255)."""
    folder = voc_mini / "VOC2012" / "SegmentationClass"
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _write_pngs(folder: pathlib.Path, labels: dict, mode: str) -> pathlib.Path:
    """Writes each label map as `<id>.png`: a VOC palette PNG ("P") or greyscale ("L")."""
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, label in labels.items():
        if mode == "P":
            write_label_png(folder / f"{image_id}.png", label)
        else:
            Image.fromarray(label, mode="L").save(folder / f"{image_id}.png")
    return folder


def _centre_sample(label: np.ndarray, h: int = GRID, w: int = GRID) -> np.ndarray:
    """Independent oracle: output cell i reads input index floor((i + 0.5) * H / h)."""
    rows = np.floor((np.arange(h) + 0.5) * label.shape[0] / h).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * label.shape[1] / w).astype(int)
    return np.array([[label[r, c] for c in cols] for r in rows], np.uint8)


def _one_hot(grid_label: np.ndarray) -> np.ndarray:
    return np.stack([grid_label == k for k in range(C)], axis=-1)


def _labels_of(label: np.ndarray) -> np.ndarray:
    out = np.zeros(C, bool)
    out[0] = True
    out[[k for k in np.unique(label) if k < C]] = True
    return out


# ------------------------------------------------------------------------------- seed PNGs


@pytest.mark.parametrize("mode", ["P", "L"])
def test_seed_pngs_at_image_size_sample_the_cell_centres(masks, tmp_path, mode):
    folder = _write_pngs(tmp_path / "seeds", masks, mode)
    if mode == "P":
        assert Image.open(folder / f"{next(iter(masks))}.png").mode == "P"
    cue_set = seeds.load_seed_pngs(folder, list(masks), GRID, C)
    assert cue_set.ids == tuple(masks) and cue_set.grid_size == (GRID, GRID)
    for image_id, mask in masks.items():
        cues, labels = cue_set[image_id]
        np.testing.assert_array_equal(cues, _one_hot(_centre_sample(mask)), err_msg=image_id)
        np.testing.assert_array_equal(labels, _labels_of(mask))
        assert not cues[_centre_sample(mask) == 255].any()  # 255 = no cue


def test_seed_pngs_on_the_grid_load_unchanged_and_other_grids_resample(masks, tmp_path):
    on_grid = {i: _centre_sample(m) for i, m in masks.items()}
    cue_set = seeds.load_seed_pngs(_write_pngs(tmp_path / "g41", on_grid, "P"), None, GRID, C)
    assert cue_set.ids == tuple(sorted(masks))
    for image_id, label in on_grid.items():
        np.testing.assert_array_equal(cue_set[image_id][0], _one_hot(label))
    fine = {i: _centre_sample(m, 97, 130) for i, m in masks.items()}
    cue_set = seeds.load_seed_pngs(_write_pngs(tmp_path / "g97", fine, "L"), list(fine), GRID, C)
    for image_id, label in fine.items():
        np.testing.assert_array_equal(cue_set[image_id][0], _one_hot(_centre_sample(label)))
    np.testing.assert_array_equal(seeds.cell_centre_nearest(masks["2007_000032"], (20, 30)),
                                  _centre_sample(masks["2007_000032"], 20, 30))


def test_seed_pngs_name_every_missing_id_and_bad_value_in_one_line(masks, tmp_path):
    folder = _write_pngs(tmp_path / "seeds", masks, "L")
    ids = list(masks)
    for image_id in ids[:3]:
        (folder / f"{image_id}.png").unlink()
    bad = masks[ids[5]].copy()
    bad[:4, :4] = 30
    Image.fromarray(bad, mode="L").save(folder / f"{ids[5]}.png")
    with pytest.raises(DatasetError) as e:
        seeds.load_seed_pngs(folder, ids, GRID, C)
    msg = str(e.value)
    assert "\n" not in msg and str(folder) in msg
    assert "3 of the 16 ids have no <id>.png" in msg and all(i in msg for i in ids[:3])
    assert f"{ids[5]}.png [30]" in msg and "0..20" in msg


# ------------------------------------------------------------------------------- CAM files


def _blob_cams(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth CAMs: a Gaussian at each present class's centroid. (float32[K, H, W], int[K])."""
    keys = np.array([k for k in np.unique(mask) if 0 < k < C], np.int64)
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    maps = []
    for k in keys:
        ys, xs = np.nonzero(mask == k)
        sigma = max(8.0, 0.5 * np.sqrt(ys.size))
        maps.append(np.exp(-((yy - ys.mean()) ** 2 + (xx - xs.mean()) ** 2) / (2 * sigma ** 2)))
    return np.array(maps, np.float32).reshape(-1, *mask.shape), keys - 1


def _expected_cues(maps: np.ndarray, keys: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    """`seed_cues_from_cams` on the CAMs brought to the grid here (INTER_AREA, / max)."""
    cams = np.zeros((GRID, GRID, C - 1), np.float32)
    for m, k in zip(maps, keys):
        small = cv2.resize(m, (GRID, GRID), interpolation=cv2.INTER_AREA)
        cams[..., k] = small / small.max()
    labels = np.zeros(C - 1, bool)
    labels[keys] = True
    saliency = kw.pop("saliency", None)
    cues = seed_cues_from_cams(jnp.asarray(cams[None]), jnp.asarray(labels[None]), saliency, **kw)
    return np.asarray(cues)[0], np.concatenate([[True], labels])


@pytest.fixture(scope="module")
def blob_cams(masks):
    return {i: _blob_cams(m) for i, m in masks.items()}


def _write_irn(folder: pathlib.Path, blob_cams: dict) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id, (maps, keys) in blob_cams.items():
        np.save(folder / f"{image_id}.npy",
                {"keys": keys, "cam": maps[:, ::4, ::4].copy(), "high_res": maps},
                allow_pickle=True)
    return folder


def test_irn_cam_files_give_the_cues_of_seed_cues_from_cams(masks, blob_cams, tmp_path):
    cue_set = seeds.load_cam_npys(_write_irn(tmp_path / "irn", blob_cams), list(masks), GRID, C)
    for image_id, (maps, keys) in blob_cams.items():
        cues, labels = cue_set[image_id]
        want_cues, want_labels = _expected_cues(maps, keys)
        np.testing.assert_array_equal(cues, want_cues, err_msg=image_id)
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(labels, _labels_of(masks[image_id]))
        for m, k in zip(maps, keys):  # the blob's peak cell is a cue of its class
            small = cv2.resize(m, (GRID, GRID), interpolation=cv2.INTER_AREA)
            assert cues[np.unravel_index(np.argmax(small), small.shape)][k + 1]
    # The stride-4 maps on request; the top-fraction rule and a threshold pass through.
    cue_set = seeds.load_cam_npys(tmp_path / "irn", None, GRID, C, cam_key="cam",
                                  fg_rule="top_fraction", fg_top_fraction=0.1, bg_threshold=0.05)
    image_id = "2007_000032"
    maps, keys = blob_cams[image_id]
    want, _ = _expected_cues(maps[:, ::4, ::4].copy(), keys, fg_rule="top_fraction",
                             fg_top_fraction=0.1, bg_cam_threshold=0.05)
    np.testing.assert_array_equal(cue_set[image_id][0], want)


def test_seam_dicts_clip_es_dicts_and_plain_arrays_match_irn(masks, blob_cams, tmp_path):
    irn = seeds.load_cam_npys(_write_irn(tmp_path / "irn", blob_cams), None, GRID, C)
    for kind in ("seam", "clip_es", "plain20", "plain21"):
        folder = tmp_path / kind
        folder.mkdir()
        for image_id, (maps, keys) in blob_cams.items():
            if kind == "seam":
                obj = {int(k): m for k, m in zip(keys, maps)}
            elif kind == "clip_es":
                obj = {"keys": keys, "attn_highres": maps.astype(np.float16)}
            else:
                obj = np.zeros((C - 1 + (kind == "plain21"), *maps.shape[1:]), np.float32)
                obj[keys + (kind == "plain21")] = maps
            np.save(folder / f"{image_id}.npy", obj, allow_pickle=True)
        got = seeds.load_cam_npys(folder, None, GRID, C)
        np.testing.assert_array_equal(got.image_labels, irn.image_labels)
        if kind == "clip_es":  # float16 maps: cues equal the float16 CAMs' own
            maps, keys = blob_cams["2007_000032"]
            want, _ = _expected_cues(maps.astype(np.float16).astype(np.float32), keys)
            np.testing.assert_array_equal(got["2007_000032"][0], want)
            continue
        for image_id in masks:
            np.testing.assert_array_equal(got[image_id][0], irn[image_id][0], err_msg=kind)


def test_saliency_folder_gives_the_background(masks, blob_cams, tmp_path):
    sal_dir = tmp_path / "sal"
    sal_dir.mkdir()
    for image_id, mask in masks.items():
        Image.fromarray(np.where(mask == 0, 0, 255).astype(np.uint8), mode="L").save(
            sal_dir / f"{image_id}.png")
    folder = _write_irn(tmp_path / "irn", blob_cams)
    cue_set = seeds.load_cam_npys(folder, None, GRID, C, saliency_dir=sal_dir)
    for image_id, (maps, keys) in blob_cams.items():
        sal = np.where(masks[image_id] == 0, 0, 1).astype(np.float32)
        sal = cv2.resize(sal, (GRID, GRID), interpolation=cv2.INTER_AREA)
        want, _ = _expected_cues(maps, keys, saliency=jnp.asarray(sal[None]))
        np.testing.assert_array_equal(cue_set[image_id][0], want, err_msg=image_id)
        np.testing.assert_array_equal(cue_set[image_id][0][..., 0], sal < 0.06)


def test_object_arrays_of_the_wrong_kind_are_refused_by_name(blob_cams, tmp_path):
    folder = _write_irn(tmp_path / "irn", dict(list(blob_cams.items())[:2]))
    ids = sorted(p.stem for p in folder.glob("*.npy"))
    target = folder / f"{ids[0]}.npy"
    holder = np.empty((), dtype=object)
    cases = {
        "list": ([1, 2, 3], "refused CAM file holding a list"),
        "dict": ({"scores": np.zeros(3)}, "dict with keys ['scores']"),
        "no map": ({"keys": np.array([0])}, "no 'high_res or attn_highres or cam'"),
        "code": ({"keys": fractions.Fraction(1, 3)}, "fractions.Fraction"),
        "keys": ({"keys": np.array([25]), "high_res": np.zeros((1, 8, 8))}, "0..19"),
        "shape": ({"keys": np.array([0, 1]), "high_res": np.zeros((1, 8, 8))}, "K=2"),
    }
    for name, (obj, part) in cases.items():
        holder[()] = obj
        np.save(target, holder, allow_pickle=True)
        with pytest.raises(DatasetError) as e:
            seeds.load_cam_npys(folder, ids, GRID, C)
        assert str(target) in str(e.value) and part in str(e.value), (name, str(e.value))
        assert "\n" not in str(e.value)
    np.save(target, np.array(["a", "b"], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match=r"got shape \(2,\) dtype object"):
        seeds.load_cam_npys(folder, ids, GRID, C)
    np.save(target, np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DatasetError, match=r"CAM array of shape \(3, 8, 8\)"):
        seeds.load_cam_npys(folder, ids, GRID, C)


def test_missing_cam_files_are_named(blob_cams, tmp_path):
    folder = _write_irn(tmp_path / "irn", blob_cams)
    ids = list(blob_cams) + ["2012_999998", "2012_999999"]
    with pytest.raises(DatasetError) as e:
        seeds.load_cam_npys(folder, ids, GRID, C)
    msg = str(e.value)
    assert "2 of the 18 ids have no <id>.npy" in msg and "2012_999998, 2012_999999" in msg
    with pytest.raises(DatasetError, match="CAM folder not found"):
        seeds.load_cam_npys(tmp_path / "nowhere", ids, GRID, C)


# --------------------------------------------------------------------------------- dispatch


def test_load_any_cues_dispatches_on_the_path(masks, blob_cams, tmp_path):
    pngs = _write_pngs(tmp_path / "seeds", masks, "P")
    npys = _write_irn(tmp_path / "irn", blob_cams)
    ids = list(masks)
    from_pngs = seeds.load_any_cues(pngs, ids, GRID, C)
    np.testing.assert_array_equal(from_pngs.cue_class,
                                  seeds.load_seed_pngs(pngs, ids, GRID, C).cue_class)
    from_npys = seeds.load_any_cues(npys, ids, GRID, C, fg_threshold=0.5)
    np.testing.assert_array_equal(
        from_npys.cue_row, seeds.load_cam_npys(npys, ids, GRID, C, fg_threshold=0.5).cue_row)
    from_pngs.save(tmp_path / "cues.npz")
    subset = seeds.load_any_cues(tmp_path / "cues.npz", ids[3:1:-1], (GRID, GRID), C)
    assert subset.ids == (ids[3], ids[2])
    np.testing.assert_array_equal(subset[ids[3]][0], from_pngs[ids[3]][0])
    assert len(seeds.load_any_cues(tmp_path / "cues.npz", None, None, C)) == 16
    with pytest.raises(DatasetError, match=r"\(41, 41\) grid, expected \(21, 21\)"):
        seeds.load_any_cues(tmp_path / "cues.npz", None, 21, C)
    with pytest.raises(DatasetError, match="1 of the 1 ids have no cues"):
        seeds.load_any_cues(tmp_path / "cues.npz", ["2012_000000"], None, C)
    with pytest.raises(DatasetError, match="give the folder"):
        seeds.load_any_cues(npys / f"{ids[0]}.npy", None, GRID, C)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="has neither"):
        seeds.load_any_cues(tmp_path / "empty", None, GRID, C)
    (tmp_path / "notes.txt").write_text("not cues")
    with pytest.raises(DatasetError, match="notes.txt"):
        seeds.load_any_cues(tmp_path / "notes.txt", None, GRID, C)
    with pytest.raises(FileNotFoundError):
        seeds.load_any_cues(tmp_path / "absent", None, GRID, C)


# ---------------------------------------------------------------------------------- the CLI


def test_convert_cli_prints_coverage_and_quality(masks, blob_cams, voc_mini, tmp_path, capsys):
    pngs = _write_pngs(tmp_path / "seeds", masks, "P")
    write_id_list(tmp_path / "ids.txt", list(masks))
    mask_dir = voc_mini / "VOC2012" / "SegmentationClass"
    seeds.main(["convert", str(pngs), "--ids", str(tmp_path / "ids.txt"), "--grid", "41",
                "--out", str(tmp_path / "cues.npz"), "--masks", str(mask_dir)])
    out = capsys.readouterr().out
    cue_set = load_cues(tmp_path / "cues.npz")
    fraction, per_class = seeds.coverage(cue_set)
    assert f"16 images on a 41x41 grid: {fraction:.1%} of grid cells have a cue" in out
    assert f"0: {per_class[0]}, 1: {per_class[1]}" in out
    # Seeds made from the masks agree with the masks brought to the grid the same way.
    assert "precision 100.0%, recall 100.0%" in out
    cells = sum((_centre_sample(m) != 255).sum() for m in masks.values())
    assert fraction == pytest.approx(cells / (16 * GRID * GRID))

    seeds.main(["convert", str(_write_irn(tmp_path / "irn", blob_cams)), "--out",
                str(tmp_path / "cam.npz"), "--masks", str(mask_dir)])
    out = capsys.readouterr().out
    quality = seeds.quality_against_masks(load_cues(tmp_path / "cam.npz"), mask_dir)
    assert f"precision {quality['precision']:.1%}, recall {quality['recall']:.1%}" in out
    assert 0.3 < quality["precision"] < 1.0


def test_module_command_line_keeps_the_official_usage_and_adds_convert(masks, tmp_path):
    raw = {"0_labels": np.array([15]), "0_cues": np.array([[0, 15], [0, 20], [1, 20]])}
    with gzip.open(tmp_path / "localization_cues.pickle.gz", "wb") as f:
        pickle.dump(raw, f)
    write_id_list(tmp_path / "input_list.txt", ["/JPEGImages/2007_000032.jpg 0"])
    seeds.main(["--pickle", str(tmp_path / "localization_cues.pickle.gz"),
                "--out", str(tmp_path / "official.npz")])
    assert load_cues(tmp_path / "official.npz").ids == ("2007_000032",)
    pngs = _write_pngs(tmp_path / "seeds", dict(list(masks.items())[:2]), "L")
    run = subprocess.run(
        [sys.executable, "-m", "dsrg_jax.data.cues", "convert", str(pngs), "--out",
         str(tmp_path / "c.npz")], capture_output=True, text=True, check=False,
        cwd=pathlib.Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert "2 images on a 41x41 grid" in run.stdout


# ---------------------------------------------------------------------------- the pipeline


def test_pipeline_imports_a_seed_folder_on_the_nets_grid(masks, voc_mini, tmp_path):
    pngs = _write_pngs(tmp_path / "seeds", masks, "P")
    cfg = override(Config(), **{"data.data_dir": str(voc_mini), "data.train_split": "train",
                                "data.cues_file": str(pngs)})
    exp = Experiment.create(cfg, tmp_path / "w")
    try:
        info = run_cues(exp)
    finally:
        exp.writer.close()
    cue_set = load_cues(tmp_path / "w" / "cues.npz")
    train = (voc_mini / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text()
    assert cue_set.ids == tuple(train.split()) and info["num_images"] == 14
    for image_id in cue_set.ids:
        np.testing.assert_array_equal(cue_set[image_id][0],
                                      _one_hot(_centre_sample(masks[image_id])))


def test_irn_files_with_torch_tensors_are_refused_with_the_fix(blob_cams, tmp_path, monkeypatch):
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        return args

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:  # pickles as IRN's CPU tensors do: a call of torch._utils._rebuild_tensor_v2
        def __reduce__(self):
            return _rebuild_tensor_v2, (0,)

    folder = tmp_path / "irn"
    folder.mkdir()
    np.save(folder / "a.npy", {"keys": Tensor(), "high_res": np.zeros((1, 4, 4))},
            allow_pickle=True)
    with pytest.raises(DatasetError) as e:
        seeds.load_cam_npys(folder, ["a"], GRID, C)
    assert "torch._utils._rebuild_tensor_v2" in str(e.value) and "re-save" in str(e.value)


def test_a_voc_run_trains_from_a_seed_png_folder(masks, voc_mini, tmp_path):
    """Another method's seed PNGs (at image size) -> `--cues FOLDER` -> 2 DSRG steps of a
    VOC config (random init; the narrow nets of `--quick` to keep it cheap; the DeepLab net's
    DSRG step is run by tests/test_experiments_voc.py): the cues it trained from are the PNGs'
    cell centres on the net's grid, and the stage finished."""
    from dsrg_jax.pipeline import run
    from experiments.configs.voc import get_config

    pngs = _write_pngs(tmp_path / "seeds", masks, "P")
    changes = {"data.data_dir": str(voc_mini), "data.train_split": "train",
               "data.cues_file": str(pngs), "data.labels_from": "cues", "data.input_size": 161,
               "data.crop_size": 161, "data.num_workers": 1, "run.checkpoint_every": 2,
               "run.log_every": 1, "run.image_log_every": 2, "run.num_figure_images": 2,
               "dsrg.optim.max_steps": 2, "dsrg.optim.batch_size": 2,
               "model.segmentation": "small", "model.widths": (8, 16, 16), "model.head_width": 16}
    workdir = tmp_path / "run"
    run(override(get_config(), **changes), workdir, stages=("cues", "dsrg"), num_devices=2)
    cue_set = load_cues(workdir / "cues.npz")
    train = (voc_mini / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text()
    assert cue_set.ids == tuple(train.split())
    grid = cue_set[cue_set.ids[0]][0].shape[:2]
    assert grid == (41, 41)   # the narrow net's stride 4 on a 161 input
    for image_id in cue_set.ids:
        np.testing.assert_array_equal(cue_set[image_id][0],
                                      _one_hot(_centre_sample(masks[image_id], *grid)))
    info = json.loads((workdir / "dsrg" / "done.json").read_text())
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    dsrg = [r for r in rows if r.get("stage") == "dsrg"]
    assert [r["step"] for r in dsrg] == [1, 2] and all(np.isfinite(r["loss"]) for r in dsrg)
    assert info["seconds"] > 0 and (workdir / "dsrg" / "checkpoints").is_dir()
