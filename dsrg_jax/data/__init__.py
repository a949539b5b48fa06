"""Data: datasets, cue files, transforms and the input pipeline (I/O lives here).

Every source (VOC, COCO, TFDS, the embedded `digits`) yields `Record`s; `transforms` turn records
into fixed-shape examples; `Pipeline` batches them per host, deterministically and resumably;
`check_dataset` reads everything up front and names each bad file.

Names are imported on first use, so `python -m dsrg_jax.data.<module>` runs each module once.
"""
import importlib

_EXPORTS = {
    "check": ("CheckReport", "check_dataset"),
    "digits": ("DIGIT_CLASSES", "DigitsSource", "make_digits_example"),
    "files": ("VOC_PALETTE", "read_id_list", "read_image", "read_label_png", "write_label_png"),
    "pipeline": ("Pipeline",),
    "records": ("IGNORE_INDEX", "DatasetError", "Problem", "Record", "Subset", "labels_from_mask"),
    "saliency": ("SaliencyDir",),
    "voc": ("VOC_CLASSES", "VOCSource", "derive_cls_labels", "derive_train_aug",
            "load_cls_labels"),
    "coco": ("COCO_CLASSES", "CocoSource"),
    "tfds": ("TfdsSource",),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'dsrg_jax.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dsrg_jax.data.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
