"""DSRG on MS-COCO 2014: cues -> dsrg -> pseudo-labels -> retrain -> eval, on all devices.

    python -m experiments.coco --data-dir DIR --workdir DIR --init-weights vgg16.pth [--tpu]

Nothing is downloaded: the dataset, ImageNet weights, saliency maps and cue files come from the
paths given. Rerunning with the same workdir resumes.
"""
from __future__ import annotations

import argparse
import sys

from experiments import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m experiments.coco",
                                description="DSRG (CVPR 2018) on MS-COCO 2014.")
    p.add_argument("--tpu", action="store_true",
                   help="multi-host TPU run: calls jax.distributed.initialize() first and fails "
                        "if no TPU is found")
    p.add_argument("--data-dir", required=True, help="COCO root with train2014/, val2014/ and annotations/instances_{train,val}2014.json")
    p.add_argument("--workdir", required=True,
                   help="output folder: checkpoints, cues, pseudo-labels, metrics, results.json")
    p.add_argument("--backbone", default="vgg16", choices=("vgg16", "resnet101"),
                   help="segmentation backbone: DeepLab-v2 VGG16 ASPP-L or ResNet-101 ASPP")
    p.add_argument("--init-weights", default=None,
                   help="ImageNet weights (.pth or .safetensors; torchvision vgg16-397923af.pth "
                        "or resnet101-63fe2227.pth); without it the nets train from scratch")
    p.add_argument("--cues", default=None,
                   help="official cue file (SEC/DSRG localization_cues.pickle[.gz]) or a "
                        "dsrg_jax cues .npz; skips the CAM classifier (the published setup)")
    p.add_argument("--saliency-dir", default=None,
                   help="folder of greyscale saliency PNGs named <image id>.png for the "
                        "background cues (without it: low-CAM background)")
    common.add_run_flags(p)
    return p.parse_args(argv)


def init_tpu() -> None:
    """jax.distributed.initialize() for a TPU pod slice; a clear error without a TPU."""
    import jax

    try:
        jax.distributed.initialize()
    except Exception as e:  # noqa: BLE001
        sys.exit(f"error: --tpu: jax.distributed.initialize() failed ({e}); run on a TPU VM "
                 f"with jax[tpu] installed, or drop --tpu")
    if jax.devices()[0].platform != "tpu":
        sys.exit(f"error: --tpu given but JAX found no TPU (devices: {jax.devices()}); "
                 f"install jax[tpu] on a TPU VM, or drop --tpu")


def main(argv=None) -> dict:
    args = parse_args(argv)
    import pathlib

    from experiments.configs.coco import get_config
    from dsrg_jax.train.config import override
    from dsrg_jax.train.data import COCO_HINT

    if not pathlib.Path(args.data_dir).is_dir():
        sys.exit(f"error: data dir {args.data_dir} not found: {COCO_HINT}")
    if args.init_weights is not None and not pathlib.Path(args.init_weights).is_file():
        sys.exit(f"error: weights file {args.init_weights} not found: download torchvision's "
                 f"ImageNet weights (https://download.pytorch.org/models/vgg16-397923af.pth or "
                 f"resnet101-63fe2227.pth) and pass their path to --init-weights")
    if args.tpu:
        init_tpu()
    cfg = get_config()
    changes = {"data.data_dir": args.data_dir, "model.init_weights": args.init_weights,
               "data.saliency_dir": args.saliency_dir, "data.cues_file": args.cues,
               "model.segmentation": f"deeplab_{args.backbone}"}
    if args.backbone == "resnet101":
        changes["data.input_convention"] = "torchvision"
    cfg = common.apply_run_flags(override(cfg, **changes), args)
    return common.run_and_report(cfg, args.workdir, common.stages_of(args), args.num_devices)


if __name__ == "__main__":
    main()
