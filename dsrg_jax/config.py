"""Experiment configuration: every hyperparameter of the pipeline in one nested dataclass.

Defaults are the official DSRG/Caffe values (docs/fidelity.md lists each with its source);
`experiments/configs/*.py` derive one config per experiment. The resolved config is saved as JSON
in the workdir. Fields with a fixed set of values are `Literal`s, checked when the config is built
(`Config.validate`, run by `config_from_dict` / `override` and by the runner), so a bad value fails
at start, naming the field and the allowed values.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Literal

from dsrg_jax.ops.crf import TRAIN_CRF, CRFParams


class ConfigError(ValueError):
    """A config that cannot run as given; the message says what to change.

    E.g. a batch the hosts cannot share, or flags that differ from the run a workdir was started
    with."""


@dataclasses.dataclass
class DataConfig:
    """Dataset and input sizes."""
    dataset: Literal["voc", "coco", "digits"] = "voc"
    data_dir: str | None = None            # VOCdevkit / COCO root (not used by digits)
    train_split: str = "train_aug"
    val_split: str = "val"
    num_classes: int = 21                  # background included
    input_size: int = 321                  # DSRG: whole image warped to 321x321
    crop_size: int = 321                   # retrain: random 321 crop
    num_train: int | None = None           # digits only: images per split (None: dataset default)
    num_val: int | None = None
    image_size: int = 112                  # digits canvas side
    saliency_dir: str | None = None        # greyscale saliency PNGs named by image id
    cues_file: str | None = None           # official cue file (.pickle[.gz]) or our .npz
    # Image-level labels of the dsrg stage's train images: "masks" (from the ground-truth masks)
    # or "cues" (the cue set's labels: with the official cue file, SEC's "<i>_labels", as the
    # published DSRG trains; they differ on a few images). The CAM classifier always uses masks.
    labels_from: Literal["masks", "cues"] = "masks"
    # None: from the weights file ("caffe" for random init).
    input_convention: Literal["caffe", "torchvision", None] = None
    num_workers: int = 2                   # loader threads
    flip: bool = True                      # random horizontal flips when training (all stages;
                                           # off for digits: a mirrored digit is not a digit)


@dataclasses.dataclass
class ModelConfig:
    """Networks: the segmentation net, the CAM classifier ("small": the digits' reduced nets)."""
    segmentation: Literal["deeplab_vgg16", "deeplab_resnet101", "small"] = "deeplab_vgg16"
    classifier: Literal["cam_vgg16", "small"] = "cam_vgg16"
    init_weights: str | None = None        # ImageNet .pth / .safetensors (None: from scratch)
    # The CAM classifier's (VGG16) ImageNet weights; None: init_weights.
    classifier_init_weights: str | None = None
    widths: tuple[int, ...] = (16, 32, 64)  # "small" models only
    head_width: int = 64
    convs_per_block: int = 1
    small_dilations: tuple[int, ...] = (1, 2, 4, 6)
    small_cam_dilation: int = 2            # "small" CAM net's conv6/conv7 dilation
    small_seg_head_width: int | None = None  # "small" DeepLab's ASPP width (None: head_width)
    # Compute dtype of every net: "bfloat16" runs the convolutions in bf16 (parameters, the
    # optimiser, the CRF, the growth and the losses stay float32; logits come back float32).
    dtype: Literal["float32", "bfloat16"] = "float32"
    dropout_rate: float = 0.5


@dataclasses.dataclass
class OptimConfig:
    """Caffe SGD: lr inside the momentum buffer, weight decay, lr multipliers, schedule."""
    optimizer: Literal["caffe_sgd", "adam"] = "caffe_sgd"   # adam: the from-scratch digits nets
    base_lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["step", "poly", "constant"] = "step"
    step_size: int = 1000                  # official code: x0.33 every 1000 (paper: /10 / 2000)
    gamma: float = 0.33
    power: float = 0.9                     # poly
    bias_lr_mult: float = 2.0
    classifier_lr_mult: float = 10.0
    classifier_bias_lr_mult: float = 20.0
    batch_size: int = 20
    max_steps: int = 8000


@dataclasses.dataclass
class PretrainConfig:
    """Stage `pretrain`: the digits' stand-in for ImageNet weights.

    When enabled, the small CAM classifier is first trained on single-digit images (a 10-way task,
    `GlyphSource`) and its trunk ("backbone") initialises the CAM, DSRG and retrain nets, as the
    ImageNet VGG16 does on VOC. Real datasets use model.init_weights instead and leave this off."""
    enabled: bool = False
    image_size: int = 32                   # glyph crops (digits at their size on the canvas)
    num_images: int = 6000
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        optimizer="adam", base_lr=1e-3, schedule="constant", batch_size=64, max_steps=1000,
        weight_decay=0.0, classifier_lr_mult=1.0, classifier_bias_lr_mult=1.0))


@dataclasses.dataclass
class CueConfig:
    """Stage `cues`: CAM classifier training and seed cues."""
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        base_lr=1e-3, schedule="step", step_size=2000, gamma=0.1, max_steps=6000))
    fg_rule: Literal["relative", "top_fraction"] = "relative"  # SEC code: cam > 0.2 max;
                                                                # paper: top 20%
    fg_threshold: float = 0.2
    fg_top_fraction: float = 0.2
    bg_saliency_threshold: float = 0.06
    bg_cam_threshold: float = 0.1          # without saliency: max present CAM < 0.1 -> background


@dataclasses.dataclass
class DSRGConfig:
    """Stage `dsrg`: segmentation training with seeded region growing."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    theta_fg: float = 0.85
    theta_bg: float = 0.99
    grow: bool = True                      # False: fixed cues (the ablation baseline)
    grow_fg: bool = True                   # grow foreground classes
    grow_bg: bool = True                   # grow background
    seed_loss: Literal["balanced", "sec"] = "balanced"   # balanced: DSRG; sec: the baseline
    constrain_loss: bool = True
    # JAX CRF on the output grid. "lattice" (default): pydensecrf's permutohedral approximation,
    # as the official code ran it (equal to float rounding). "exact": the exact Gaussian
    # filtering (faster on CPU up to ~49x49 grids, but a different CRF: 92-97% argmax agreement
    # with pydensecrf2). "auto": "exact" up to 2048 grid pixels.
    crf_kernel: Literal["lattice", "exact", "auto"] = "lattice"
    crf: CRFParams = TRAIN_CRF             # the official training CRF


@dataclasses.dataclass
class PseudoConfig:
    """Stage `pseudo`: CRF-refined multi-scale predictions on the train split."""
    sizes: tuple[int, ...] = (241, 321, 401)
    crf: bool = True
    restrict_to_labels: bool = False       # official: argmax over all classes
    batch_size: int = 10


@dataclasses.dataclass
class RetrainConfig:
    """Stage `retrain`: a segmentation net fully supervised on the pseudo-labels."""
    enabled: bool = True
    # "dsrg": start from the dsrg stage's final weights (official run.sh: --weights
    # model-s_iter_8000.caffemodel); "imagenet": a fresh net from the ImageNet init (a deviation).
    init: Literal["dsrg", "imagenet"] = "dsrg"
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
        base_lr=1e-3, schedule="poly", power=0.9, batch_size=10, max_steps=20000))


@dataclasses.dataclass
class EvalConfig:
    """Stage `eval`: multi-scale + CRF predictions of val, scored."""
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    crf: bool = True
    flip: bool = False
    batch_size: int = 10
    canvas: int | None = 513               # pad images to this side (None: all the same size)
    # "standard" (classes present in gt or predictions); the official scripts' own means:
    # "voc-official" (classes with a true positive), "coco-official" (tp / max(1, union), all).
    miou_formula: Literal["standard", "voc-official", "coco-official"] = "standard"


@dataclasses.dataclass
class RunConfig:
    """Checkpoints, logging, seeds."""
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 20
    keep_checkpoints: int = 2
    image_log_every: int = 1000            # TensorBoard image grids
    num_figure_images: int = 4


@dataclasses.dataclass
class Config:
    """The whole experiment."""
    name: str = "voc"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pretrain: PretrainConfig = dataclasses.field(default_factory=PretrainConfig)
    cues: CueConfig = dataclasses.field(default_factory=CueConfig)
    dsrg: DSRGConfig = dataclasses.field(default_factory=DSRGConfig)
    pseudo: PseudoConfig = dataclasses.field(default_factory=PseudoConfig)
    retrain: RetrainConfig = dataclasses.field(default_factory=RetrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def summary(self) -> str:
        """One line: the config's name and its fields that differ from the defaults."""
        flat, default = flatten(self.to_dict()), flatten(Config().to_dict())
        changed = [f"{k}={json.dumps(v)}" for k, v in flat.items() if default.get(k) != v]
        return f"config {self.name}: " + (", ".join(changed) or "the defaults")

    def validate(self) -> Config:
        """Raises ConfigError naming the first field with a value outside its allowed set or range.

        Checked: `Literal` choices, positive step counts and batches, thresholds in [0, 1]."""
        _check_choices(self, "")
        for stage in ("pretrain", "cues", "dsrg", "retrain"):
            optim = getattr(self, stage).optim
            for name in ("max_steps", "batch_size", "step_size"):
                if getattr(optim, name) < 1:
                    raise ConfigError(f"{stage}.optim.{name} must be >= 1, got "
                                      f"{getattr(optim, name)}")
        for name in ("pseudo.batch_size", "eval.batch_size", "data.num_classes"):
            section, field = name.split(".")
            if getattr(getattr(self, section), field) < 1:
                raise ConfigError(f"{name} must be >= 1, got "
                                  f"{getattr(getattr(self, section), field)}")
        for name in ("dsrg.theta_fg", "dsrg.theta_bg", "cues.fg_threshold",
                     "cues.fg_top_fraction", "cues.bg_saliency_threshold",
                     "cues.bg_cam_threshold"):
            section, field = name.split(".")
            value = getattr(getattr(self, section), field)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        return self


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_choices(obj: Any, prefix: str) -> None:
    """ConfigError for the first `Literal` field of `obj` (recursively) outside its choices."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            if type(value).__module__ == __name__:
                _check_choices(value, f"{prefix}{f.name}.")
            continue
        hint = hints.get(f.name)
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            allowed = ", ".join(json.dumps(a) for a in typing.get_args(hint))
            raise ConfigError(f"config field {prefix}{f.name} must be one of {allowed}; got "
                              f"{json.dumps(value)}")


def _from_dict(default: Any, values: dict) -> Any:
    """`default` (a dataclass instance) with the fields in `values` replaced, recursively."""
    kwargs = {}
    names = {f.name for f in dataclasses.fields(default)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"config: unknown field {type(default).__name__}.{key}")
        current = getattr(default, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[key] = _from_dict(current, value)
        elif isinstance(current, tuple) and isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return dataclasses.replace(default, **kwargs)


def config_from_dict(values: dict) -> Config:
    """Inverse of `Config.to_dict` (unknown keys are an error), validated."""
    return _from_dict(Config(), values).validate()


def override(config: Config, **dotted: Any) -> Config:
    """Copy of `config` with dotted-path fields replaced, validated.

    E.g. `override(c, **{"dsrg.optim.max_steps": 5})`."""
    values = config.to_dict()
    for path, value in dotted.items():
        node = values
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"config: unknown field {path}")
        node[leaf] = value
    return config_from_dict(values)
