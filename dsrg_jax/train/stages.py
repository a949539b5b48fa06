"""The DSRG pipeline as stages over a workdir: cues -> dsrg -> pseudo -> retrain -> eval.

Each stage reads its inputs from and writes its outputs to the workdir and is skipped when its
output exists (`<stage>/done.json`); training stages resume from their latest checkpoint.

  cues    train the CAM classifier; seed cues of the train split -> cues.npz (a CueSet), the cue
          quality on train and the CAM segmentation mIoU on val (or import --cues instead)
  dsrg    segmentation net trained with region growing; supervision quality per epoch
  pseudo  CRF-refined multi-scale predictions of the dsrg net on train -> pseudo_labels/<id>.png
  retrain fresh net, fully supervised on the pseudo-labels
  eval    val mIoU of the dsrg and retrain nets (multi-scale, CRF) -> results.json, figures
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from dsrg_jax.data.cues import CueSet, import_official_cues, load_cues
from dsrg_jax.data.pipeline import Pipeline
from dsrg_jax.ops.cam import class_activation_maps, seed_cues_from_cams
from dsrg_jax.ops.metrics import confusion_matrix, cue_quality, iou_per_class, mean_iou
from dsrg_jax.sharding import global_batch, make_mesh, replicate, to_host
from dsrg_jax.train import data as D
from dsrg_jax.train import figures
from dsrg_jax.train import steps as S
from dsrg_jax.train.checkpoint import Checkpoints
from dsrg_jax.train.config import Config, ConfigError, OptimConfig
from dsrg_jax.train.logging import MetricsWriter, is_writer, log
from dsrg_jax.train.loop import train_loop
from dsrg_jax.train.optim import caffe_sgd, lr_schedule
from dsrg_jax.weights import get_input_convention

STAGES = ("pretrain", "cues", "dsrg", "pseudo", "retrain", "eval")


@dataclasses.dataclass
class Experiment:
    """A config, its workdir, the device mesh and the metrics writer."""
    cfg: Config
    workdir: pathlib.Path
    mesh: Any
    writer: MetricsWriter

    @classmethod
    def create(cls, cfg: Config, workdir, *, num_devices: int | None = None) -> "Experiment":
        workdir = pathlib.Path(workdir).absolute()
        check_resumed_config(cfg, workdir / "config.json")
        if is_writer():
            workdir.mkdir(parents=True, exist_ok=True)
            tmp = workdir / "config.json.tmp"
            tmp.write_text(cfg.to_json())
            tmp.replace(workdir / "config.json")
        return cls(cfg, workdir, make_mesh(num_devices), MetricsWriter(workdir))

    def path(self, *parts: str) -> pathlib.Path:
        return self.workdir.joinpath(*parts)

    def done(self, stage: str) -> dict | None:
        p = self.path(stage, "done.json")
        return json.loads(p.read_text()) if p.is_file() else None

    def mark_done(self, stage: str, info: dict) -> None:
        if is_writer():
            p = self.path(stage, "done.json")
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(p)
        _sync(f"done-{stage}")


# Fields a resumed run may change: they steer logging and checkpoint bookkeeping only.
RESUMABLE_FIELDS = ("run.checkpoint_every", "run.log_every", "run.keep_checkpoints",
                    "run.image_log_every", "run.num_figure_images")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: Config) -> list[str]:
    """'field: old -> new' for each field of `new` that differs from the saved config `old`
    (a dict read from config.json), the `RESUMABLE_FIELDS` left out. A field the saved config
    lacks (written by an older version) counts as its default value."""
    new_flat = _flatten(json.loads(new.to_json()))
    old_flat = _flatten(old)
    default = _flatten(json.loads(Config().to_json()))
    out = []
    for key, value in new_flat.items():
        if key in RESUMABLE_FIELDS:
            continue
        before = old_flat.get(key, default.get(key))
        if before != value:
            out.append(f"{key}: {json.dumps(before)} -> {json.dumps(value)}")
    return out


def check_resumed_config(cfg: Config, path: pathlib.Path) -> None:
    """Raises ConfigError when `path` (the workdir's config.json from an earlier run) holds a
    config that differs from `cfg` in more than the logging fields (`RESUMABLE_FIELDS`)."""
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}): use a new workdir, or delete it if "
                          f"the workdir holds no results yet") from None
    diffs = config_differences(old, cfg)
    if diffs:
        raise ConfigError(
            f"{path.parent} was started with another config; differing fields (old -> new): "
            f"{'; '.join(diffs)}. Use a new --workdir, or pass the same flags as the earlier run")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------ models


def build_model(cfg: Config, kind: str, seed: int, backbone: Any = None):
    """(model, variables, input convention) of the CAM classifier ("cam"), segmentation net
    ("seg") or the small trunk's pretraining classifier ("pretrain"). The real models start from
    ImageNet weights (model.init_weights; model.classifier_init_weights for the CAM net when
    given), the small ones from the pretrained trunk `backbone` (params of the "backbone"
    subtree, see `run_pretrain`) when given."""
    m = cfg.model
    num_fg = cfg.data.num_classes - 1
    rng = jax.random.key(seed)
    convention = get_input_convention(cfg.data.input_convention or "caffe")
    name = m.classifier if kind == "cam" else m.segmentation
    if name == "small":
        from dsrg_jax.train.small_models import SmallCAM, SmallClassifier, SmallDeepLab

        if kind == "pretrain":
            model = SmallClassifier(num_fg, widths=m.widths, convs_per_block=m.convs_per_block)
        elif kind == "cam":
            model = SmallCAM(num_fg, widths=m.widths, head_width=m.head_width,
                             convs_per_block=m.convs_per_block)
        else:
            model = SmallDeepLab(cfg.data.num_classes, widths=m.widths, head_width=m.head_width,
                                 convs_per_block=m.convs_per_block, dilations=m.small_dilations,
                                 dropout_rate=m.dropout_rate)
        variables = model.init(rng, jnp.zeros((1, 64, 64, 3)), train=False)
        if backbone is not None:
            variables = _with_backbone(variables, backbone)
        return model, variables, convention
    import warnings

    from dsrg_jax.models import create_model
    from dsrg_jax.weights import init_model

    model = create_model(name, num_classes=num_fg if kind == "cam" else cfg.data.num_classes)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        weights = (m.classifier_init_weights or m.init_weights) if kind == "cam" else \
            m.init_weights
        variables, info = init_model(model, rng, weights=weights,
                                     input_convention=cfg.data.input_convention)
    return model, variables, info.input_convention


def _with_backbone(variables, backbone):
    """variables with params["backbone"] replaced by `backbone` (same tree and shapes)."""
    params = dict(variables["params"])
    want = jax.tree.map(lambda a: (a.shape, a.dtype), params["backbone"])
    got = jax.tree.map(lambda a: (a.shape, a.dtype), backbone)
    if want != got:
        raise ValueError("pretrained backbone does not fit the model (different widths or "
                         "layers): delete the workdir's pretrain/ folder and rerun")
    params["backbone"] = jax.tree.map(jnp.asarray, backbone)
    return {**variables, "params": params}


def split_variables(variables) -> tuple[Any, Any]:
    """(params, frozen collections)."""
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def output_grid(model, variables, size: int) -> tuple[int, int]:
    """(h, w) of the model's output for a size x size input."""
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                         jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    shape = (out[1] if isinstance(out, tuple) else out).shape
    return int(shape[1]), int(shape[2])


def _pipeline(exp: Experiment, source, transform, batch: int, *, train: bool,
              state: dict | None = None) -> Pipeline:
    return Pipeline(source, global_batch=batch, transform=transform, seed=exp.cfg.run.seed,
                    shuffle=train, num_epochs=None if train else 1, drop_remainder=train,
                    num_workers=exp.cfg.data.num_workers, state=state)


def _train_stage(exp: Experiment, stage: str, *, model, variables, optim: OptimConfig,
                 make_step, source, transform, hook=None, on_step=None, seed_offset: int = 0):
    """Builds state/optimiser/checkpoints and runs `train_loop`; returns the final variables."""
    params, frozen = split_variables(variables)
    tx = caffe_sgd(params, optim)
    state = replicate(S.create_state(params, tx, frozen=frozen,
                                     seed=exp.cfg.run.seed + seed_offset), exp.mesh)
    ckpt = Checkpoints(exp.path(stage, "checkpoints"), keep=exp.cfg.run.keep_checkpoints)
    step_fn = make_step(tx)
    schedule = lr_schedule(optim)
    state, last = train_loop(
        stage=stage, state=state, step_fn=step_fn, mesh=exp.mesh, max_steps=optim.max_steps,
        make_pipeline=lambda st: _pipeline(exp, source, transform, optim.batch_size, train=True,
                                           state=st),
        checkpoints=ckpt, writer=exp.writer, lr_fn=lambda s: float(schedule(s)), hook=hook,
        checkpoint_every=exp.cfg.run.checkpoint_every, log_every=exp.cfg.run.log_every,
        on_step=on_step)
    ckpt.close()
    return {"params": state["params"], **state["frozen"]}, last


def load_stage_variables(exp: Experiment, stage: str, kind: str, seed_offset: int = 0):
    """The final variables of a finished training stage (from its last checkpoint)."""
    model, variables, convention = build_model(exp.cfg, kind, exp.cfg.run.seed + seed_offset)
    params, frozen = split_variables(variables)
    optim = {"pretrain": exp.cfg.pretrain.optim, "cues": exp.cfg.cues.optim,
             "dsrg": exp.cfg.dsrg.optim, "retrain": exp.cfg.retrain.optim}[stage]
    tx = caffe_sgd(params, optim)
    like = replicate(S.create_state(params, tx, frozen=frozen), exp.mesh)
    ckpt = Checkpoints(exp.path(stage, "checkpoints"), keep=exp.cfg.run.keep_checkpoints)
    state, _ = ckpt.restore(like)
    ckpt.close()
    return model, {"params": state["params"], **state["frozen"]}, convention


# -------------------------------------------------------------------------------- inference


def inference_batch(batch: int, num_devices: int, process_count: int | None = None) -> int:
    """`batch` rounded up to a multiple of the mesh's device count (and of the process count):
    inference batches (pseudo, eval, cue extraction) then split evenly over hosts and devices
    whatever their number; the pipeline marks the extra rows invalid and they are skipped."""
    if batch <= 0:
        raise ConfigError(f"inference batch must be positive, got {batch} (--eval-batch-size)")
    process_count = jax.process_count() if process_count is None else process_count
    m = math.lcm(int(num_devices), int(process_count))
    return -(-int(batch) // m) * m


def _iterate(exp: Experiment, source, transform, batch: int):
    """(host batch numpy, global batch) over a split once, each host its share; `batch` is
    rounded up to a multiple of the device count (`inference_batch`)."""
    batch = inference_batch(batch, exp.mesh.size)
    pipe = _pipeline(exp, source, transform, batch, train=False)
    try:
        for b in pipe:
            yield b, global_batch(b, exp.mesh)
    finally:
        pipe.close()


def multiscale_logits(predict, variables, gb: dict, *, mode: str, values,
                      flip: bool = False) -> np.ndarray:
    """This host's rows of the summed multi-scale logits of a global batch of padded canvases
    (`dsrg_jax.inference.canvas_logits`; the batch stays sharded over the mesh).

    Args:
      predict: (variables, uint8/float RGB images) -> logits (`steps.make_predict`: it
        normalises, so the library passes it RGB).
      gb: global batch with "image" [B, S, S, 3] padded canvases and "hw" int[B, 2] real sizes.
      mode: "warp" (each real image warped to v x v, the pseudo-label stage) or "scale"
        (aspect kept, times v, the evaluation).
    Returns:
      float32[B', S, S, C] (B' >= this host's batch: rows padded for the devices), image i's
      logits in [:h_i, :w_i].
    """
    from dsrg_jax import inference

    kw = dict(sizes=tuple(values)) if mode == "warp" else dict(scales=tuple(values))
    return to_host(inference.canvas_logits(predict, gb["image"], gb["hw"], variables=variables,
                                           flip=flip, normalize=None, **kw))


def predict_batch(predict, variables, hb: dict, gb: dict, *, mode: str, values, crf: bool,
                  restrict: bool = False, flip: bool = False) -> list:
    """`dsrg_jax.inference.Segmentation` of each image of a host batch (padded canvases, "hw",
    "labels"), cropped to its real size: multi-scale logits, softmax, the full-size CRF
    (pydensecrf on every core) if `crf`, argmax (over the labelled classes if `restrict`)."""
    from dsrg_jax import inference

    logits = multiscale_logits(predict, variables, gb, mode=mode, values=values, flip=flip)
    n = len(hb["image"])
    hws = [tuple(int(v) for v in hb["hw"][i]) for i in range(n)]
    out: list = [None] * n
    for group in inference.group_by_size(hws, n):  # equal sizes go to the CRF pool together
        h, w = hws[group[0]]
        seg = inference.finish(logits[group, :h, :w], hb["image"][group, :h, :w],
                               image_labels=hb["labels"][group] if restrict else None, crf=crf)
        for k, i in enumerate(group):
            out[i] = inference.Segmentation(**{
                f.name: None if getattr(seg, f.name) is None else getattr(seg, f.name)[k]
                for f in dataclasses.fields(seg)})
    return out


def predict_labels(predict, variables, hb: dict, gb: dict, *, mode: str, values, crf: bool,
                   restrict: bool = False, flip: bool = False) -> list[np.ndarray]:
    """uint8[h, w] final label maps of a host batch (see `predict_batch`)."""
    return [seg.final for seg in predict_batch(predict, variables, hb, gb, mode=mode,
                                               values=values, crf=crf, restrict=restrict,
                                               flip=flip)]


def _canvas(exp: Experiment) -> int:
    return exp.cfg.eval.canvas or exp.cfg.data.image_size


def evaluate_model(exp: Experiment, predict, variables, *, crf: bool, tag: str,
                   out_dir: pathlib.Path | None = None, samples: dict | None = None) -> dict:
    """mIoU, pixel accuracy and per-class IoU of a segmentation net on the val split.

    With `out_dir`: each prediction written as `out_dir/predictions/<id>.png` (VOC palette; each
    process writes the images it predicted) and the score table (`dsrg_jax.evaluate`'s format)
    as `out_dir/scores.txt` (process 0). With `samples` (a dict): the first
    `run.num_figure_images` val images of this process go there as {"ids", "images", "gt",
    "pred", "pred_crf"} for the overlay figure.
    """
    from dsrg_jax.data.files import write_label_png
    from dsrg_jax.evaluate import scores_from_confusion

    cfg = exp.cfg
    source = D.make_source(cfg, "val", with_saliency=False)
    conf = np.zeros((cfg.data.num_classes,) * 2, np.int64)
    count = 0
    keep = cfg.run.num_figure_images if samples is not None else 0
    if samples is not None:
        samples.update(ids=[], images=[], gt=[], pred=[], pred_crf=[])
    for hb, gb in _iterate(exp, source, D.infer_transform(_canvas(exp), with_mask=True),
                           cfg.eval.batch_size):
        segs = predict_batch(predict, variables, hb, gb, mode="scale", values=cfg.eval.scales,
                             crf=crf, flip=cfg.eval.flip)
        for i, seg in enumerate(segs):
            if not hb["valid"][i]:
                continue
            pred = seg.final
            h, w = pred.shape
            gt = hb["mask"][i, :h, :w]
            conf += np.asarray(confusion_matrix(pred, gt, cfg.data.num_classes), np.int64)
            count += 1
            image_id = source.ids[int(hb["index"][i])]
            if out_dir is not None:
                write_label_png(out_dir / "predictions" / f"{image_id}.png", pred)
            if keep and int(hb["index"][i]) < keep:
                samples["ids"].append(image_id)
                samples["images"].append(hb["image"][i, :h, :w])
                samples["gt"].append(gt)
                samples["pred"].append(seg.labels)
                samples["pred_crf"].append(seg.labels_crf)
    conf = _allsum(conf)
    count = int(_allsum(np.array(count)))
    iou = iou_per_class(conf)
    res = {"miou": mean_iou(conf), "pixel_accuracy": float(np.trace(conf) / max(conf.sum(), 1)),
           "iou_per_class": [None if np.isnan(v) else float(v) for v in iou], "crf": crf}
    if out_dir is not None:
        scores = scores_from_confusion(conf, _class_names(cfg), num_images=count)
        if is_writer():
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "scores.txt").write_text(scores.table() + "\n")
        res["predictions"] = str(out_dir / "predictions")
    log(f"[eval] {tag}: mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_accuracy']:.2f}"
        f" (val, scales {list(cfg.eval.scales)}, flip {cfg.eval.flip}, crf {crf})")
    return res


def _allsum(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x)).sum(0)


# ---------------------------------------------------------------------------------- stage: cues


def cueset_from_dense(ids, cues: np.ndarray, labels: np.ndarray) -> CueSet:
    """CueSet of dense cues bool[N, h, w, C] and labels bool[N, C]."""
    offsets = np.zeros(len(ids) + 1, np.int64)
    cls, rows, cols = [], [], []
    for n in range(len(ids)):
        r, c, k = np.nonzero(cues[n])
        cls.append(k.astype(np.uint8)); rows.append(r.astype(np.uint8)); cols.append(c.astype(np.uint8))
        offsets[n + 1] = offsets[n] + len(k)
    return CueSet(ids=tuple(ids), offsets=offsets, cue_class=np.concatenate(cls),
                  cue_row=np.concatenate(rows), cue_col=np.concatenate(cols),
                  image_labels=labels.astype(bool), grid_size=tuple(cues.shape[1:3]))


def _cams_of_batch(cam_predict, variables, batch, labels_fg):
    logits, features = cam_predict(variables, batch)
    weights = variables["params"]["classifier"]["kernel"]
    return class_activation_maps(features, weights, labels_fg)


# -------------------------------------------------------------------------------- pretrain


def _backbone_file(exp: Experiment) -> pathlib.Path:
    return exp.path("pretrain", "backbone.msgpack")


def pretrained_backbone(exp: Experiment):
    """The pretrained trunk's params (host numpy tree), or None when pretraining is off."""
    if not exp.cfg.pretrain.enabled:
        return None
    from flax import serialization

    path = _backbone_file(exp)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the pretrain stage first "
                                "(--stage pretrain, or --stage all)")
    return serialization.msgpack_restore(path.read_bytes())


def run_pretrain(exp: Experiment) -> dict:
    """Stage `pretrain` (digits only; the stand-in for ImageNet weights): `SmallClassifier`
    (trunk, GAP, linear) learns a 10-way task on single-digit images (`GlyphSource`, softmax
    cross-entropy); its trunk is saved to pretrain/backbone.msgpack and initialises every later
    net. Skipped when disabled. Output: pretrain/done.json with the single-digit val accuracy."""
    cfg, p = exp.cfg, exp.cfg.pretrain
    if not p.enabled:
        return {}
    if (info := exp.done("pretrain")) is not None:
        log(f"[pretrain] done already ({_backbone_file(exp)}); skipping")
        return info
    if cfg.model.classifier != "small" or cfg.data.dataset != "digits":
        raise ValueError("pretrain.enabled needs data.dataset='digits' and model.classifier="
                         "'small'; real datasets start from model.init_weights (ImageNet)")
    from flax import serialization

    from dsrg_jax.data.digits import GlyphSource

    t0 = time.perf_counter()
    model, variables, conv = build_model(cfg, "pretrain", cfg.run.seed + 3)
    canvas = cfg.data.image_size
    train = GlyphSource("train", num_images=p.num_images, size=p.image_size, canvas=canvas)
    variables, last = _train_stage(
        exp, "pretrain", model=model, variables=variables, optim=p.optim,
        make_step=lambda tx: S.make_cam_train_step(model, tx, conv, exp.mesh, single_label=True),
        source=train, transform=D.cls_transform(p.image_size, flip=False), seed_offset=3)
    predict = S.make_predict(model, conv)
    val = GlyphSource("val", num_images=1000, size=p.image_size, canvas=canvas)
    counts = np.zeros(2, np.int64)
    for hb, gb in _iterate(exp, val, D.cls_transform(p.image_size, flip=False),
                           cfg.eval.batch_size):
        logits = to_host(predict(variables, gb["image"])[0])
        n = int(hb["valid"].sum())
        counts += np.array([(logits[:n].argmax(-1) == hb["labels"][:n, 1:].argmax(-1)).sum(), n])
    correct, total = (int(v) for v in _allsum(counts))
    if is_writer():
        path = _backbone_file(exp)
        path.write_bytes(serialization.msgpack_serialize(
            jax.device_get(variables["params"]["backbone"])))
    info = {"val_accuracy": correct / max(total, 1), "num_val": total, "classifier": last,
            "seconds": round(time.perf_counter() - t0, 1)}
    log(f"[pretrain] single-digit val accuracy {100 * info['val_accuracy']:.1f}% "
        f"({total} images); trunk saved to {_backbone_file(exp)}")
    exp.mark_done("pretrain", info)
    return info


def check_cues_cover(cueset: CueSet, ids, path: pathlib.Path, split: str) -> None:
    """Raises DatasetError (one line) unless every id of the train split has cues in `cueset`
    (imported from `path`): says how many are missing, shows a few, and for the SEC pickle
    where its input_list.txt must lie."""
    from dsrg_jax.data.records import DatasetError

    missing = [i for i in ids if i not in cueset]
    if not missing:
        return
    msg = (f"cue file {path}: {len(missing)} of the {len(ids)} {split} ids have no cues (e.g. "
           f"{', '.join(missing[:5])}); the file names its {len(cueset)} images "
           f"{', '.join(list(cueset.ids)[:3])}, ...")
    if path.suffix != ".npz":
        msg += (f"; the SEC pickle is indexed by the train_aug input_list.txt, which must lie "
                f"beside it as {path.parent / 'input_list.txt'} (without it the images are "
                f"named 0..{len(cueset) - 1}), or convert it first with `python -m "
                f"dsrg_jax.data.cues --pickle {path} --input-list LIST --out cues.npz`")
    else:
        msg += "; is it the cue file of this dataset and split?"
    raise DatasetError(msg)


def run_cues(exp: Experiment) -> dict:
    """Stage `cues` (DESIGN.md 2.1). Output: cues.npz + cues/done.json."""
    cfg = exp.cfg
    if (info := exp.done("cues")) is not None:
        log(f"[cues] done already ({exp.path('cues.npz')}); skipping")
        return info
    t0 = time.perf_counter()
    if cfg.data.cues_file:
        path = pathlib.Path(cfg.data.cues_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"cue file {path} not found: download SEC's localization_cues.pickle.gz "
                f"(github.com/kolesman/SEC, training/localization_cues/) or pass no --cues")
        cueset = load_cues(path) if path.suffix == ".npz" else import_official_cues(path)
        check_cues_cover(cueset, D.make_source(cfg, "train", with_saliency=False).ids, path,
                         cfg.data.train_split)
        if is_writer():
            cueset.save(exp.path("cues.npz"))
        info = {"source": str(path), "num_images": len(cueset)}
        exp.mark_done("cues", info)
        return info

    model, variables, conv = build_model(cfg, "cam", cfg.run.seed, pretrained_backbone(exp))
    size = cfg.data.input_size
    train_src = D.make_source(cfg, "train")
    variables, last = _train_stage(
        exp, "cues", model=model, variables=variables, optim=cfg.cues.optim,
        make_step=lambda tx: S.make_cam_train_step(model, tx, conv, exp.mesh),
        source=train_src, transform=D.cls_transform(size, flip=cfg.data.flip))
    cam_predict = S.make_predict(model, conv)
    grid = output_grid(model, variables, size)
    c = cfg.cues
    fields = ("image", "labels", "mask") if _has_masks(train_src) else ("image", "labels")
    use_sal = cfg.data.saliency_dir is not None
    if use_sal:
        fields += ("saliency",)
    from dsrg_jax.data import transforms as T

    transform = T.dsrg_transform(size, cue_size=None, fields=fields, flip=False)
    all_cues, all_labels, all_idx = [], [], []
    counts = np.zeros((cfg.data.num_classes, 3), np.int64)
    for hb, gb in _iterate(exp, train_src, transform, cfg.eval.batch_size):
        cams = _cams_of_batch(cam_predict, variables, gb["image"], gb["labels"][:, 1:])
        sal = None
        if use_sal:
            sal = jnp.asarray(np.stack([cv2.resize(s, (grid[1], grid[0]),
                                                   interpolation=cv2.INTER_AREA)
                                        for s in hb["saliency"]]))
        cues = seed_cues_from_cams(
            cams, gb["labels"][:, 1:], sal, fg_rule=c.fg_rule, fg_threshold=c.fg_threshold,
            fg_top_fraction=c.fg_top_fraction, bg_saliency_threshold=c.bg_saliency_threshold,
            bg_cam_threshold=c.bg_cam_threshold)
        cues = to_host(cues)
        n = int(hb["valid"].sum())
        all_cues.append(cues[:n]); all_labels.append(hb["labels"][:n]); all_idx.append(hb["index"][:n])
        if "mask" in hb:
            gm = np.stack([D.grid_nearest(m, grid) for m in hb["mask"][:n]])
            from dsrg_jax.ops.metrics import cue_counts

            counts += np.asarray(cue_counts(jnp.asarray(cues[:n]), jnp.asarray(gm)), np.int64)
    cues = np.concatenate(all_cues)
    labels = np.concatenate(all_labels)
    idx = np.concatenate(all_idx)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        cues, labels, idx = (np.concatenate(list(multihost_utils.process_allgather(a)))
                             for a in (cues, labels, idx))
    order = np.argsort(idx)
    ids = [train_src.ids[i] for i in idx[order]]
    cueset = cueset_from_dense(ids, cues[order], labels[order])
    if is_writer():
        cueset.save(exp.path("cues.npz"))
    info = {"source": "cam", "background": "saliency" if use_sal else "low CAM "
            f"(max present CAM < {c.bg_cam_threshold})", "num_images": len(ids),
            "grid": list(grid), "classifier": last}
    if counts.sum():
        info["train_quality"] = cue_quality(_allsum(counts))
    info.update(cam_bg_threshold_curve(exp, cam_predict, variables, train_src, grid))
    info["val_cam"] = _cam_val_miou(exp, cam_predict, variables)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"[cues] {len(ids)} images, background from {info['background']}; train cue quality "
        f"{_fmt(info.get('train_quality'))}; CAM segmentation val mIoU "
        f"{100 * info['val_cam']['miou']:.2f}")
    exp.mark_done("cues", info)
    return info


def _has_masks(source) -> bool:
    try:
        return source[0].mask is not None
    except Exception:  # noqa: BLE001
        return False


def _fmt(q: dict | None) -> str:
    if not q:
        return "n/a"
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in q.items())


def _cam_val_miou(exp: Experiment, cam_predict, variables) -> dict:
    """mIoU of the CAM segmentation on val: each pixel the present class with the largest
    normalised CAM, or background where none reaches `cues.bg_cam_threshold` (image labels from
    the ground truth, CAMs upsampled bilinearly)."""
    cfg = exp.cfg
    source = D.make_source(cfg, "val", with_saliency=False)
    conf = np.zeros((cfg.data.num_classes,) * 2, np.int64)
    size = cfg.data.input_size
    from dsrg_jax.data import transforms as T

    tf = T.dsrg_transform(size, cue_size=None, fields=("image", "labels", "mask"), flip=False)
    for hb, gb in _iterate(exp, source, tf, cfg.eval.batch_size):
        cams = to_host(_cams_of_batch(cam_predict, variables, gb["image"], gb["labels"][:, 1:]))
        for i in range(int(hb["valid"].sum())):
            up = cv2.resize(cams[i], (size, size), interpolation=cv2.INTER_LINEAR)
            if up.ndim == 2:
                up = up[..., None]
            scores = np.concatenate(
                [np.full((size, size, 1), cfg.cues.bg_cam_threshold, np.float32),
                 np.where(hb["labels"][i][1:], up, -1.0)], axis=-1)
            pred = np.argmax(scores, -1).astype(np.uint8)
            conf += np.asarray(confusion_matrix(pred, hb["mask"][i], cfg.data.num_classes),
                               np.int64)
    conf = _allsum(conf)
    return {"miou": mean_iou(conf), "pixel_accuracy": float(np.trace(conf) / max(conf.sum(), 1))}


BG_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 11))  # 0.05 .. 0.5


def cam_bg_threshold_curve(exp: Experiment, cam_predict, variables, source, grid,
                           thresholds=BG_THRESHOLDS) -> dict:
    """The low-CAM background rule (background where the strongest present CAM < t; config
    `cues.bg_cam_threshold`) over a range of t, in one pass over the train CAMs.

    Per t: precision / recall / IoU / mIoU of the seed cues against the ground truth on the cue
    grid (as `info["train_quality"]`, which is the curve at the configured t), and the mIoU of the
    CAM segmentation at the input size (present class with the largest CAM, background where none
    exceeds t; as `_cam_val_miou` on val). Returns {"bg_threshold_curve": {...}}, or {} when the
    train split has no masks or the background comes from saliency.
    """
    cfg, c = exp.cfg, exp.cfg.cues
    if cfg.data.saliency_dir is not None or not _has_masks(source):
        return {}
    from dsrg_jax.data import transforms as T
    from dsrg_jax.ops.metrics import cue_counts

    ts = sorted(set(float(t) for t in thresholds) | {float(c.bg_cam_threshold)})
    num_classes, size = cfg.data.num_classes, cfg.data.input_size

    @jax.jit
    def counts(cams, labels_fg, mask, grid_mask, valid):
        # Rows padded for the devices (or past the split's end) count nothing.
        mask = jnp.where(valid[:, None, None], mask, 255)
        grid_mask = jnp.where(valid[:, None, None], grid_mask, 255)
        up = jax.image.resize(cams, (cams.shape[0], size, size, cams.shape[-1]), "bilinear",
                              antialias=False)
        up = jnp.where(labels_fg[:, None, None, :], up, -1.0)
        strongest, best = jnp.max(up, -1), jnp.argmax(up, -1) + 1

        def one(t):
            cues = seed_cues_from_cams(cams, labels_fg, None, fg_rule=c.fg_rule,
                                       fg_threshold=c.fg_threshold,
                                       fg_top_fraction=c.fg_top_fraction, bg_cam_threshold=t)
            pred = jnp.where(strongest > t, best, 0)
            return cue_counts(cues, grid_mask), confusion_matrix(pred, mask, num_classes)

        return jax.vmap(one)(jnp.asarray(ts, jnp.float32))

    tf = T.dsrg_transform(size, cue_size=None, fields=("image", "labels", "mask"), flip=False)
    cue_n = np.zeros((len(ts), num_classes, 3), np.int64)
    conf = np.zeros((len(ts), num_classes, num_classes), np.int64)
    for hb, gb in _iterate(exp, source, tf, cfg.eval.batch_size):
        masks = global_batch({"mask": hb["mask"], "valid": hb["valid"],
                              "grid": np.stack([D.grid_nearest(m, grid) for m in hb["mask"]])},
                             exp.mesh)
        cams = _cams_of_batch(cam_predict, variables, gb["image"], gb["labels"][:, 1:])
        cc, cm = counts(cams, gb["labels"][:, 1:], masks["mask"], masks["grid"], masks["valid"])
        cue_n += np.asarray(cc, np.int64)
        conf += np.asarray(cm, np.int64)
    cue_n, conf = _allsum(cue_n), _allsum(conf)
    curve: dict[str, Any] = {"thresholds": ts, "configured": float(c.bg_cam_threshold)}
    for k in range(len(ts)):
        for key, v in cue_quality(cue_n[k]).items():
            curve.setdefault(key, []).append(v)
        curve.setdefault("cam_miou", []).append(mean_iou(conf[k]))
    best = int(np.nanargmax(curve["cam_miou"]))
    log(f"[cues] low-CAM background threshold on train: CAM segmentation mIoU "
        f"{100 * curve['cam_miou'][best]:.2f} at t={ts[best]} (configured t={c.bg_cam_threshold}: "
        f"{100 * curve['cam_miou'][ts.index(float(c.bg_cam_threshold))]:.2f})")
    return {"bg_threshold_curve": curve}


# ---------------------------------------------------------------------------------- stage: dsrg


class SupervisionHook:
    """Supervision quality (precision / recall / IoU of the cues against the ground truth on the
    output grid) per epoch: epoch 0 = the original cues, epoch e = the grown cues of the e-th
    pass over the train split (the paper's Fig. 4)."""

    def __init__(self, steps_per_epoch: float, num_classes: int):
        self.steps_per_epoch = steps_per_epoch
        self.c = num_classes
        self.records: list[dict] = []
        self.cur = np.zeros((num_classes, 3), np.int64)
        self.orig = np.zeros((num_classes, 3), np.int64)

    def update(self, step: int, metrics: dict) -> dict:
        if "counts_grown" not in metrics:
            return {}
        self.cur += np.asarray(metrics["counts_grown"], np.int64)
        epoch = (step - 1) / self.steps_per_epoch
        if epoch < 1:
            self.orig += np.asarray(metrics["counts_cues"], np.int64)
        out = {}
        if step % max(1, round(self.steps_per_epoch)) == 0:
            out = self._close(round(step / self.steps_per_epoch))
        return out

    def _close(self, epoch: int, partial: float | None = None) -> dict:
        if not self.records:
            self.records.append({"epoch": 0, **cue_quality(self.orig)})
        q = {"epoch": epoch, **cue_quality(self.cur)}
        if partial is not None:
            q["partial"] = partial
        self.records.append(q)
        self.cur[:] = 0
        return {f"supervision_{k}": v for k, v in q.items() if k != "epoch"}

    def finish(self, step: int) -> None:
        """Closes a last partial epoch (if any steps were counted since the last epoch end)."""
        if self.cur.sum():
            frac = step / self.steps_per_epoch
            self._close(math.ceil(frac), partial=round(frac - math.floor(frac), 3))
        elif not self.records and self.orig.sum():
            self.records.append({"epoch": 0, **cue_quality(self.orig)})

    def state(self) -> dict:
        return {"records": self.records, "cur": self.cur.tolist(), "orig": self.orig.tolist()}

    def restore(self, state: dict) -> None:
        self.records = list(state["records"])
        self.cur = np.asarray(state["cur"], np.int64)
        self.orig = np.asarray(state["orig"], np.int64)


def run_dsrg(exp: Experiment) -> dict:
    """Stage `dsrg` (DESIGN.md 2.3). Output: dsrg/checkpoints + dsrg/done.json."""
    cfg = exp.cfg
    if (info := exp.done("dsrg")) is not None:
        log("[dsrg] done already; skipping")
        return info
    t0 = time.perf_counter()
    cueset = load_cues(exp.path("cues.npz"))
    model, variables, conv = build_model(cfg, "seg", cfg.run.seed + 1, pretrained_backbone(exp))
    size = cfg.data.input_size
    grid = output_grid(model, variables, size)
    if tuple(cueset.grid_size) != grid:
        raise ValueError(f"cues are on a {cueset.grid_size} grid but the segmentation net gives "
                         f"{grid} for {size}x{size} inputs")
    source = D.make_source(cfg, "train", cues=cueset, with_saliency=False)
    source = D.with_labels_from(cfg, source, cueset)  # mask or cue-file image labels
    with_mask = _has_masks(source)
    optim = cfg.dsrg.optim
    hook = SupervisionHook(len(source) / optim.batch_size, cfg.data.num_classes)
    fig_ids = list(range(min(cfg.run.num_figure_images, len(source))))
    predict = S.make_predict(model, conv)
    snap = GrowthSnapshots(exp, source, fig_ids, grid, predict)
    on_step = _combine(snap.on_step(len(source) / optim.batch_size),
                       _image_logger(exp, cfg.run.image_log_every))
    if exp.path("dsrg", "checkpoints").exists() is False:
        snap.take(0, variables)
    variables, last = _train_stage(
        exp, "dsrg", model=model, variables=variables, optim=optim,
        make_step=lambda tx: S.make_dsrg_train_step(model, tx, conv, exp.mesh, cfg.dsrg),
        source=source, transform=D.dsrg_transform(size, grid, with_mask=with_mask,
                                                  flip=cfg.data.flip),
        hook=hook, on_step=on_step, seed_offset=1)
    hook.finish(optim.max_steps)
    snap.take(int(math.ceil(optim.max_steps / (len(source) / optim.batch_size))), variables,
              final=True)
    info = {"last": last, "supervision": hook.records, "grid": list(grid),
            "seconds": round(time.perf_counter() - t0, 1)}
    exp.mark_done("dsrg", info)
    return info


def _combine(*fns):
    def fn(*args):
        for f in fns:
            f(*args)
    return fn


def _image_logger(exp: Experiment, every: int):
    """TensorBoard grid every `every` steps: per image (rows) cues | grown cues | prediction."""

    def fn(step, batch, aux, state):
        del state
        if step % every or not is_writer():
            return
        grown = to_host(aux["images"]["grown"])
        pred = np.argmax(to_host(aux["images"]["probs"]), -1)
        pal = figures.palette(exp.cfg.data.num_classes)
        n = min(4, len(grown))
        rows = [np.concatenate([figures.cue_image(batch["cues"][i], pal),
                                figures.cue_image(grown[i], pal), pal[pred[i]]], axis=1)
                for i in range(n)]
        exp.writer.image("dsrg", step, "cues|grown|prediction", np.concatenate(rows, axis=0))

    return fn


class GrowthSnapshots:
    """Grown cues of a few fixed train images after each epoch, for the growth figure."""

    def __init__(self, exp: Experiment, source, ids, grid, predict):
        self.exp, self.source, self.ids, self.grid, self.predict = exp, source, ids, grid, predict
        self.dir = exp.path("dsrg", "growth")

    def take(self, epoch: int, variables, final: bool = False) -> None:
        if not is_writer() or not self.ids:
            return
        cfg = self.exp.cfg
        recs = [self.source[i] for i in self.ids]
        from dsrg_jax.data import transforms as T

        warped = [T.warp(r, cfg.data.input_size, self.grid[0]) for r in recs]
        images = np.stack([r.image for r in warped])
        cues = np.stack([r.cues for r in warped])
        labels = np.stack([r.labels for r in warped])
        logits = self.predict(variables, jnp.asarray(images))
        from dsrg_jax.ops.losses import probs_from_logits
        from dsrg_jax.ops.crf import downsample_image

        probs = probs_from_logits(logits)
        small = downsample_image(jnp.asarray(images, jnp.float32), self.grid, mean=(0., 0., 0.))
        q, grown = S.crf_and_grow(small, probs, jnp.asarray(cues), jnp.asarray(labels), cfg.dsrg)
        self.dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(self.dir / f"epoch_{epoch:03d}.npz", images=images, cues=cues,
                            grown=np.asarray(grown), pred=np.asarray(jnp.argmax(q, -1)),
                            masks=np.stack([D.grid_nearest(r.mask, self.grid) if r.mask is not None
                                            else np.zeros(self.grid, np.uint8) for r in warped]),
                            final=np.asarray(final))

    def on_step(self, steps_per_epoch: float):
        """A `train_loop` callback that snapshots at every epoch end."""
        every = max(1, round(steps_per_epoch))

        def fn(step, batch, aux, state):
            del batch, aux
            if step % every == 0:
                self.take(step // every, {"params": state["params"], **state["frozen"]})

        return fn


# -------------------------------------------------------------------------------- stage: pseudo


def run_pseudo(exp: Experiment) -> dict:
    """Stage `pseudo` (DESIGN.md 2.4). Output: pseudo_labels/<id>.png + pseudo/done.json."""
    cfg = exp.cfg
    if (info := exp.done("pseudo")) is not None:
        log("[pseudo] done already; skipping")
        return info
    t0 = time.perf_counter()
    model, variables, conv = load_stage_variables(exp, "dsrg", "seg", 1)
    predict = S.make_predict(model, conv)
    source = D.make_source(cfg, "train", with_saliency=False)
    from dsrg_jax.data.files import write_label_png

    out_dir = exp.path("pseudo_labels")
    with_mask = _has_masks(source)
    conf = np.zeros((cfg.data.num_classes,) * 2, np.int64)
    count = 0
    for hb, gb in _iterate(exp, source, D.infer_transform(_canvas(exp), with_mask=with_mask),
                           cfg.pseudo.batch_size):
        preds = predict_labels(predict, variables, hb, gb, mode="warp", values=cfg.pseudo.sizes,
                               crf=cfg.pseudo.crf, restrict=cfg.pseudo.restrict_to_labels)
        for i, pred in enumerate(preds):
            if not hb["valid"][i]:
                continue
            write_label_png(out_dir / f"{source.ids[int(hb['index'][i])]}.png", pred)
            count += 1
            if with_mask:
                h, w = pred.shape
                conf += np.asarray(confusion_matrix(pred, hb["mask"][i, :h, :w],
                                                    cfg.data.num_classes), np.int64)
    info = {"num_images": int(_allsum(np.array(count))), "dir": str(out_dir),
            "seconds": round(time.perf_counter() - t0, 1)}
    if with_mask:
        conf = _allsum(conf)
        info["train_miou"] = mean_iou(conf)
        log(f"[pseudo] {info['num_images']} pseudo-labels, mIoU against the train ground truth "
            f"{100 * info['train_miou']:.2f}")
    exp.mark_done("pseudo", info)
    return info


# ------------------------------------------------------------------------------- stage: retrain


def run_retrain(exp: Experiment) -> dict:
    """Stage `retrain` (DESIGN.md 2.4). Output: retrain/checkpoints + retrain/done.json."""
    cfg = exp.cfg
    if (info := exp.done("retrain")) is not None:
        log("[retrain] done already; skipping")
        return info
    t0 = time.perf_counter()
    model, variables, conv = build_model(cfg, "seg", cfg.run.seed + 2, pretrained_backbone(exp))
    grid = output_grid(model, variables, cfg.data.crop_size)
    base = D.make_source(cfg, "train", with_saliency=False)
    source = D.PseudoLabelSource(base, exp.path("pseudo_labels"), cfg.data.num_classes)
    _, last = _train_stage(
        exp, "retrain", model=model, variables=variables, optim=cfg.retrain.optim,
        make_step=lambda tx: S.make_retrain_step(model, tx, conv, exp.mesh),
        source=source, seed_offset=2,
        transform=D.retrain_transform(cfg.data.crop_size, grid, flip=cfg.data.flip))
    info = {"last": last, "seconds": round(time.perf_counter() - t0, 1)}
    exp.mark_done("retrain", info)
    return info


# ---------------------------------------------------------------------------------- stage: eval


def run_eval(exp: Experiment) -> dict:
    """Stage `eval` (DESIGN.md 2.5): val mIoU of the dsrg and retrain nets; results.json."""
    cfg = exp.cfg
    if (info := exp.done("eval")) is not None:
        log("[eval] done already; skipping")
        return info
    t0 = time.perf_counter()
    results: dict[str, Any] = {"miou": {}, "eval": {}}
    cues = exp.done("cues") or {}
    if "val_cam" in cues:
        results["miou"]["cues"] = cues["val_cam"]["miou"]
    if "train_quality" in cues:
        results["cue_quality_train"] = cues["train_quality"]
    if "bg_threshold_curve" in cues:
        results["bg_threshold_curve"] = cues["bg_threshold_curve"]
    overlays: dict[str, dict] = {}
    for stage, offset in (("dsrg", 1), ("retrain", 2)):
        if exp.done(stage) is None:
            continue
        model, variables, conv = load_stage_variables(exp, stage, "seg", offset)
        samples: dict = {}
        res = evaluate_model(exp, S.make_predict(model, conv), variables, crf=cfg.eval.crf,
                             tag=stage, out_dir=exp.path("eval", stage), samples=samples)
        results["miou"][stage] = res["miou"]
        results["eval"][stage] = res
        overlays[stage] = samples
    dsrg = exp.done("dsrg") or {}
    results["supervision"] = dsrg.get("supervision", [])
    pseudo = exp.done("pseudo") or {}
    if "train_miou" in pseudo:
        results["pseudo_label_train_miou"] = pseudo["train_miou"]
    if "val_accuracy" in (pre := exp.done("pretrain") or {}):
        results["pretrain_val_accuracy"] = pre["val_accuracy"]
    results["seconds"] = {s: (exp.done(s) or {}).get("seconds") for s in STAGES[:-1]}
    results["seconds"]["eval"] = round(time.perf_counter() - t0, 1)
    if is_writer():
        (exp.workdir / "results.json").write_text(json.dumps(results, indent=2))
        figures.write_all(exp.workdir, results, class_names=_class_names(cfg),
                          overlays=overlays)
    exp.mark_done("eval", {"results": str(exp.workdir / "results.json")})
    return results


# ------------------------------------------------------------------------------ predict a split


def predict_source(cfg: Config, split_name: str):
    """The images of any split, without masks or labels (the test split has neither): VOC
    ImageSets/Segmentation/<split_name>.txt (or SegmentationAug/, or an id-list path), COCO
    DATA_DIR/<split_name> with annotations/instances_<split_name>.json, digits "train"/"val"."""
    d = cfg.data
    if d.dataset == "digits":
        if split_name not in ("train", "val"):
            raise ConfigError(f"digits has the splits 'train' and 'val', got {split_name!r}")
        return D.make_source(cfg, split_name, with_saliency=False)
    if d.dataset == "voc":
        from dsrg_jax.data.voc import VOCSource

        if d.data_dir is None or not pathlib.Path(d.data_dir).exists():
            from dsrg_jax.data.records import DatasetError

            raise DatasetError(f"VOC data dir {d.data_dir!r} not found: {D.VOC_HINT}")
        ids = VOCSource(d.data_dir, split_name, masks=None, labels={}).ids
        ones = np.ones(d.num_classes, bool)  # unused: the argmax is over all classes
        return VOCSource(d.data_dir, split_name, masks=None, labels=dict.fromkeys(ids, ones))
    return D.make_source(dataclasses.replace(cfg, data=dataclasses.replace(
        d, val_split=split_name)), "val", with_saliency=False)


def predict_dir(exp: Experiment, split_name: str) -> pathlib.Path:
    """Where `predict_split` writes: WORKDIR/predict/<split>/results/VOC2012/Segmentation/
    comp6_test_cls for VOC (the test server's layout), WORKDIR/predict/<split> otherwise."""
    base = exp.path("predict", pathlib.Path(split_name).stem)
    if exp.cfg.data.dataset == "voc":
        return base / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    return base


def predict_split(exp: Experiment, stage: str | None = None, split_name: str = "test",
                  out_dir=None) -> dict:
    """Writes a finished stage's prediction of every image of a split as `<id>.png` (VOC
    palette, the image's size), exactly as the eval stage predicts val: scales
    `eval.scales`, `eval.flip`, `eval.crf`, argmax over all classes. Needs no masks or labels.

    Args:
      stage: "retrain" or "dsrg"; None = retrain, or dsrg when retrain is disabled.
      split_name: see `predict_source`.
      out_dir: default `predict_dir(exp, split_name)`.
    Returns:
      {"split", "stage", "num_images", "dir", "seconds"}.
    """
    cfg = exp.cfg
    stage = stage or ("retrain" if cfg.retrain.enabled else "dsrg")
    offsets = {"dsrg": 1, "retrain": 2}  # as the eval stage builds them
    if stage not in offsets:
        raise ConfigError(f"predict: stage must be 'dsrg' or 'retrain', got {stage!r}")
    if exp.done(stage) is None:
        raise FileNotFoundError(f"predict: the {stage} stage is not finished in {exp.workdir} "
                                f"({exp.path(stage, 'done.json')} missing); run it first")
    from dsrg_jax.data.files import write_label_png

    t0 = time.perf_counter()
    out_dir = pathlib.Path(out_dir) if out_dir is not None else predict_dir(exp, split_name)
    source = predict_source(cfg, split_name)
    model, variables, conv = load_stage_variables(exp, stage, "seg", offsets[stage])
    predict = S.make_predict(model, conv)
    count = 0
    for hb, gb in _iterate(exp, source, D.infer_transform(_canvas(exp), with_mask=False),
                           cfg.eval.batch_size):
        preds = predict_labels(predict, variables, hb, gb, mode="scale", values=cfg.eval.scales,
                               crf=cfg.eval.crf, flip=cfg.eval.flip)
        for i, pred in enumerate(preds):
            if hb["valid"][i]:
                write_label_png(out_dir / f"{source.ids[int(hb['index'][i])]}.png", pred)
                count += 1
    count = int(_allsum(np.array(count)))
    info = {"split": split_name, "stage": stage, "num_images": count, "dir": str(out_dir),
            "seconds": round(time.perf_counter() - t0, 1)}
    log(f"[predict] {count} PNGs of {split_name} ({stage} net, scales {list(cfg.eval.scales)}, "
        f"flip {cfg.eval.flip}, crf {cfg.eval.crf}) in {out_dir}")
    if out_dir.parts[-4:] == ("results", "VOC2012", "Segmentation", "comp6_test_cls"):
        log(f"[predict] for the VOC test server: tar -C {out_dir.parents[3]} -czf results.tgz "
            f"results")
    return info


def _class_names(cfg: Config):
    if cfg.data.dataset == "digits":
        from dsrg_jax.data.digits import DIGIT_CLASSES

        return DIGIT_CLASSES
    if cfg.data.dataset == "coco":
        from dsrg_jax.data.coco import COCO_CLASSES

        return COCO_CLASSES
    from dsrg_jax.data.voc import VOC_CLASSES

    return VOC_CLASSES


def check_training_batches(cfg: Config, stages, num_devices: int, process_count: int) -> None:
    """Raises ConfigError when a training stage to run has a global batch the hosts cannot
    share (each host loads global batch / process count examples)."""
    train = {"pretrain": cfg.pretrain.enabled, "cues": not cfg.data.cues_file, "dsrg": True,
             "retrain": cfg.retrain.enabled}
    optims = {"pretrain": cfg.pretrain.optim, "cues": cfg.cues.optim, "dsrg": cfg.dsrg.optim,
              "retrain": cfg.retrain.optim}
    for stage in stages:
        if not train.get(stage):
            continue
        b = optims[stage].batch_size
        if b <= 0 or b % process_count:
            raise ConfigError(
                f"the {stage} stage's global batch ({b}) must be a positive multiple of the "
                f"process (host) count ({process_count}; {num_devices} devices): pass "
                f"--batch-size N with N a multiple of {process_count}")


RUNNERS = {"pretrain": run_pretrain, "cues": run_cues, "dsrg": run_dsrg, "pseudo": run_pseudo,
           "retrain": run_retrain, "eval": run_eval}


def run(cfg: Config, workdir, *, stages=STAGES, num_devices: int | None = None,
        predict: str | None = None) -> dict:
    """Runs the given stages in order (each skipped when done); returns results.json's dict
    (or the last stage's info). With `predict` (a split name): then `predict_split` of that
    split with the final net, its info under the key "predict"."""
    exp = Experiment.create(cfg, workdir, num_devices=num_devices)
    log(f"devices: {exp.mesh.size} ({jax.devices()[0].platform}), processes: "
        f"{jax.process_count()}; workdir {exp.workdir}")
    check_training_batches(cfg, stages, exp.mesh.size, jax.process_count())
    for name, b in (("pseudo", cfg.pseudo.batch_size), ("eval", cfg.eval.batch_size)):
        if inference_batch(b, exp.mesh.size) != b:
            log(f"{name} batch {b} rounded up to {inference_batch(b, exp.mesh.size)} (a multiple "
                f"of the {exp.mesh.size} devices; the extra rows are padding)")
    out: dict = {}
    try:
        for stage in stages:
            if stage == "retrain" and not cfg.retrain.enabled:
                continue
            t = time.perf_counter()
            out = RUNNERS[stage](exp)
            log(f"[{stage}] finished in {time.perf_counter() - t:.1f} s")
        if predict is not None:
            out = {**out, "predict": predict_split(exp, split_name=predict)}
    finally:
        exp.writer.close()
    return out
