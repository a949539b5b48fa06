"""MS-COCO 2014 (train2014 / val2014), 80 classes + background, the official COCO protocol."""
from dsrg_jax.config import Config, DataConfig, EvalConfig, PseudoConfig


def get_config() -> Config:
    """The VOC recipe on COCO (81 classes) with the official COCO scripts' test protocol.

    The test protocol: pseudo-labels from a single 481 warp (`test-coco.py`), evaluation at scale 1
    only (`test-coco-f.py`). The official repository has no COCO training prototxt or solver, so
    training is the VOC recipe. Images are up to 640 px: a 640 canvas for batched inference (a
    deviation for speed, as VOC's; `eval.canvas=None` / `--canvas 0` is the official
    one-image-at-a-time protocol)."""
    return Config(name="coco",
                  data=DataConfig(dataset="coco", num_classes=81, train_split="train2014",
                                  val_split="val2014", input_size=321, crop_size=321),
                  pseudo=PseudoConfig(sizes=(481,)),
                  eval=EvalConfig(scales=(1.0,), canvas=640))
