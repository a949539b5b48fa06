"""dsrg_jax: Deep Seeded Region Growing (CVPR 2018) in JAX/Flax.

Public API (stable): region growing, CAMs and seed cues, the DSRG / SEC losses and the metrics.
All are pure functions over arrays, usable under `jax.jit`, `jax.vmap` and `jax.shard_map`.
"""
from dsrg_jax.models import VGG16CAM, DeepLabV2ResNet101, DeepLabV2VGG16, create_model
from dsrg_jax.ops.cam import class_activation_maps, seed_cues_from_cams
from dsrg_jax.ops.grow import dsrg_grow
from dsrg_jax.ops.losses import (
                                 balanced_seed_loss,
                                 constrain_loss,
                                 multilabel_classification_loss,
                                 probs_from_logits,
                                 sec_seed_loss,
)
from dsrg_jax.ops.metrics import (
                                 confusion_matrix,
                                 cue_counts,
                                 cue_quality,
                                 iou_per_class,
                                 mean_iou,
                                 pixel_accuracy,
)
from dsrg_jax.weights import InputConvention, init_model

__all__ = [
    "DeepLabV2ResNet101",
    "DeepLabV2VGG16",
    "InputConvention",
    "VGG16CAM",
    "create_model",
    "init_model",
    "balanced_seed_loss",
    "class_activation_maps",
    "confusion_matrix",
    "constrain_loss",
    "cue_counts",
    "cue_quality",
    "dsrg_grow",
    "iou_per_class",
    "mean_iou",
    "multilabel_classification_loss",
    "pixel_accuracy",
    "probs_from_logits",
    "sec_seed_loss",
    "seed_cues_from_cams",
]
__version__ = "0.1.0"

# Dense CRF: JAX CRF on the training grid, pydensecrf2 host CRF at full resolution.
from dsrg_jax.crf_host import (  # noqa: E402
    dense_crf_callback,
    dense_crf_host,
    dense_crf_host_batch,
    sharded_dense_crf_host,
)
from dsrg_jax.ops.crf import TEST_CRF, TRAIN_CRF, CRFParams, dense_crf, downsample_image  # noqa: E402

__all__ += [
    "CRFParams",
    "TEST_CRF",
    "TRAIN_CRF",
    "dense_crf",
    "dense_crf_callback",
    "dense_crf_host",
    "dense_crf_host_batch",
    "downsample_image",
    "sharded_dense_crf_host",
]
