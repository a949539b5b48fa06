"""One config per experiment: `voc`, `coco`, `digits` (every hyperparameter, official defaults)."""
