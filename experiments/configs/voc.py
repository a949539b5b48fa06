"""PASCAL VOC 2012 (train_aug / val), VGG16 DeepLab-ASPP-L: the official DSRG setup."""
from dsrg_jax.config import Config, DataConfig


def get_config() -> Config:
    """Every default is the official DSRG/Caffe value; see dsrg_jax.config, docs/fidelity.md."""
    return Config(name="voc",
                  data=DataConfig(dataset="voc", num_classes=21, train_split="train_aug",
                                  val_split="val", input_size=321, crop_size=321))
