"""SBD (Semantic Boundaries Dataset, Hariharan et al. 2011): `.mat` masks -> VOC index PNGs.

SBD layout (root = `benchmark_RELEASE`): `dataset/cls/<id>.mat` (struct GTcls with field
Segmentation: class indices 0..20), `dataset/train.txt` (8,498 ids), `dataset/val.txt` (2,857 ids).

`python -m dsrg_jax.data.sbd --voc VOCdevkit/VOC2012 --sbd benchmark_RELEASE` writes
`SegmentationClassAug/` (VOC's own masks where VOC has one, SBD's otherwise) and
`ImageSets/SegmentationAug/train_aug.txt` (10,582 ids) into the VOC folder.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil

import numpy as np
import scipy.io

from dsrg_jax import cli
from dsrg_jax.data.files import (
    PathLike,
    find_folder,
    read_id_list,
    read_label_png,
    write_id_list,
    write_label_png,
)
from dsrg_jax.data.records import IGNORE_INDEX, DatasetError
from dsrg_jax.data.voc import NUM_VOC_CLASSES, derive_train_aug, find_voc_root


def find_sbd_dataset(root: PathLike) -> pathlib.Path:
    """The SBD `dataset` folder: `root` itself if it holds cls/, else `root/dataset`."""
    return find_folder(root, "dataset", "cls", "an SBD folder",
                       "download benchmark.tgz (SBD) and pass its benchmark_RELEASE folder")


def read_sbd_mat(path: PathLike, num_classes: int = NUM_VOC_CLASSES) -> np.ndarray:
    """Reads an SBD class `.mat` file. Returns uint8[H, W] class indices 0..20 (255 kept if any)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: SBD .mat file not found")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
        seg = np.asarray(mat["GTcls"][0, 0]["Segmentation"])
    except KeyError as e:
        raise DatasetError(f"{path}: no GTcls.Segmentation in this .mat file ({e})") from e
    except Exception as e:
        raise DatasetError(f"{path}: cannot read SBD .mat file ({type(e).__name__}: {e})") from e
    if seg.ndim != 2:
        raise DatasetError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected [H, W]")
    bad = np.unique(seg[((seg < 0) | (seg >= num_classes)) & (seg != IGNORE_INDEX)])
    if bad.size:
        raise DatasetError(f"{path}: Segmentation holds values {bad[:10].tolist()}, "
                           f"expected 0..{num_classes - 1}")
    return seg.astype(np.uint8)


def convert_sbd(sbd_root: PathLike, out_dir: PathLike, ids=None) -> int:
    """Writes every (or the listed) SBD `cls/<id>.mat` as a VOC palette PNG `out_dir/<id>.png`.

    Returns the number of files written.
    """
    ds = find_sbd_dataset(sbd_root)
    if ids is None:
        ids = sorted(p.stem for p in (ds / "cls").glob("*.mat"))
    out = pathlib.Path(out_dir)
    for i in ids:
        write_label_png(out / f"{i}.png", read_sbd_mat(ds / "cls" / f"{i}.mat"))
    return len(ids)


def build_voc_aug(voc_root: PathLike, sbd_root: PathLike) -> list[str]:
    """Writes SegmentationClassAug/ and ImageSets/SegmentationAug/{train_aug,val}.txt into VOC.

    Masks: VOC's SegmentationClass PNG where it exists (it has the 255 boundary band), the
    converted SBD mask otherwise. Returns the train_aug ids (sorted).
    """
    voc = find_voc_root(voc_root)
    ds = find_sbd_dataset(sbd_root)
    seg_sets = voc / "ImageSets" / "Segmentation"
    voc_train = read_id_list(seg_sets / "train.txt")
    voc_val = read_id_list(seg_sets / "val.txt")
    sbd_train = read_id_list(ds / "train.txt")
    sbd_val = read_id_list(ds / "val.txt")
    train_aug = derive_train_aug(voc_train, voc_val, sbd_train, sbd_val)
    out = voc / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    for i in sorted(set(train_aug) | set(voc_val)):
        voc_mask = voc / "SegmentationClass" / f"{i}.png"
        if voc_mask.is_file():
            read_label_png(voc_mask, NUM_VOC_CLASSES)  # validates before copying
            shutil.copyfile(voc_mask, out / f"{i}.png")
        else:
            write_label_png(out / f"{i}.png", read_sbd_mat(ds / "cls" / f"{i}.mat"))
    write_id_list(voc / "ImageSets" / "SegmentationAug" / "train_aug.txt", train_aug)
    write_id_list(voc / "ImageSets" / "SegmentationAug" / "val.txt", voc_val)
    return train_aug


def main(argv=None) -> None:
    """`python -m dsrg_jax.data.sbd --voc DIR --sbd DIR`; a missing or bad file -> one line."""
    p = argparse.ArgumentParser(prog="python -m dsrg_jax.data.sbd", description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--voc", required=True, help="VOCdevkit/VOC2012 folder")
    p.add_argument("--sbd", required=True, help="SBD benchmark_RELEASE folder")
    cli.add_debug_flag(p)
    a = p.parse_args(argv)
    ids = cli.run(lambda: build_voc_aug(a.voc, a.sbd), debug=a.debug)
    print("wrote SegmentationClassAug and ImageSets/SegmentationAug/train_aug.txt "
          f"({len(ids)} ids)")


if __name__ == "__main__":
    main()
