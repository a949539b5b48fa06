"""PASCAL VOC 2012 (train_aug / val), VGG16 DeepLab-ASPP-L: the official DSRG setup."""
from dsrg_jax.config import Config, DataConfig


def get_config() -> Config:
    """Every default is the official DSRG/Caffe value (dsrg_jax.config, docs/fidelity.md) but one.

    The one: the eval canvas (`eval.canvas=513`, a deviation for speed: one compilation per scale
    instead of one per image size; `eval.canvas=None` / `--canvas 0` runs each image alone at its
    own size, as `test-ms-f.py`)."""
    return Config(name="voc",
                  data=DataConfig(dataset="voc", num_classes=21, train_split="train_aug",
                                  val_split="val", input_size=321, crop_size=321))
