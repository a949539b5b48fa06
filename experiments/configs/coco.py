"""MS-COCO 2014 (train2014 / val2014), 80 classes + background, DSRG schedule."""
from dsrg_jax.train.config import Config, DataConfig, EvalConfig


def get_config() -> Config:
    """The VOC recipe on COCO (81 classes); images up to 640 px, so a 640 canvas at eval."""
    return Config(name="coco",
                  data=DataConfig(dataset="coco", num_classes=81, train_split="train2014",
                                  val_split="val2014", input_size=321, crop_size=321),
                  eval=EvalConfig(canvas=640))
