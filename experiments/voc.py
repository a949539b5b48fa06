"""DSRG on PASCAL VOC 2012: cues -> dsrg -> pseudo-labels -> retrain -> eval, on all devices.

    python -m experiments.voc --data-dir DIR --workdir DIR --init-weights vgg16.pth [--tpu]

Nothing is downloaded: the dataset, ImageNet weights, saliency maps and cue files come from the
paths given. Rerunning with the same workdir resumes.
"""
from __future__ import annotations

from experiments import common

DATA_HELP = ('VOCdevkit root (containing VOCdevkit/VOC2012 or VOC2012) with SegmentationClassAug '
             'and ImageSets/SegmentationAug/train_aug.txt')


def parse_args(argv=None):
    return common.dataset_parser("python -m experiments.voc",
                                 "DSRG (CVPR 2018) on PASCAL VOC 2012.", DATA_HELP).parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from dsrg_jax.data.registry import VOC_HINT
    from experiments.configs.voc import get_config

    return common.dataset_main(args, get_config, VOC_HINT)


if __name__ == "__main__":
    main()
