"""DSRG on MS-COCO 2014: cues -> dsrg -> pseudo-labels -> retrain -> eval, on all devices.

    python -m experiments.coco --data-dir DIR --workdir DIR --init-weights vgg16.pth [--tpu]

Nothing is downloaded: the dataset, ImageNet weights, saliency maps and cue files come from the
paths given. Rerunning with the same workdir resumes.
"""
from __future__ import annotations

from experiments import common

DATA_HELP = 'COCO root with train2014/, val2014/ and annotations/instances_{train,val}2014.json'


def parse_args(argv=None):
    return common.dataset_parser("python -m experiments.coco", "DSRG (CVPR 2018) on MS-COCO 2014.",
                                 DATA_HELP).parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from dsrg_jax.data.registry import COCO_HINT
    from experiments.configs.coco import get_config

    return common.dataset_main(args, get_config, COCO_HINT)


if __name__ == "__main__":
    main()
