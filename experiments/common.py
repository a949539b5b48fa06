"""Shared CLI plumbing for the experiments: flags -> config overrides -> `pipeline.run`."""
from __future__ import annotations

import argparse
import errno
import sys
import time

from dsrg_jax import cli

STAGE_CHOICES = ("pretrain", "cues", "dsrg", "pseudo", "retrain", "eval", "all")
# CPU devices per process unless the flag or the environment says otherwise: the 2 cores of the
# machine the documented runs were made on, and a count every digits / VOC batch divides.
DEFAULT_CPU_DEVICES = 2


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """Flags every experiment has."""
    add_distributed_flags(p)
    p.add_argument("--stage", default="all", choices=STAGE_CHOICES,
                   help="run one stage (its inputs must exist in the workdir) or all of them in "
                        "order; finished stages are skipped, interrupted ones resume")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of initialisation, data order, augmentation and dropout")
    p.add_argument("--max-steps", type=int, default=None,
                   help="training steps of each training stage (pretrain, cues, dsrg, retrain)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="global batch of each training stage, whatever the device count")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="compute dtype of the nets (model.dtype): bfloat16 runs the "
                        "convolutions in bf16 on GPU / TPU; parameters, optimiser state, CRF, "
                        "growth and losses stay float32 (default: the config's, float32)")
    cli.add_debug_flag(p)
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="JAX's persistent compilation cache: compiled programs are read back "
                        "from DIR instead of compiled again (same numbers, less time); 'off' "
                        "turns it off (default: $DSRG_JAX_COMPILE_CACHE, else "
                        "~/.cache/dsrg_jax/xla)")
    p.add_argument("--num-devices", type=int, default=None,
                   help="use only the first N devices (default: all devices of all hosts)")
    p.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                   help="CPU devices JAX makes in this process, one per core it may use: XLA "
                        "runs these small nets' convolutions on about one core per device, so "
                        "a batch split over 2 devices trains ~2x faster on 2 cores (default: "
                        f"{DEFAULT_CPU_DEVICES}, or the count JAX_NUM_CPU_DEVICES / XLA_FLAGS="
                        "--xla_force_host_platform_device_count sets; the result depends on "
                        "the device count at float rounding, docs/results.md); no effect on "
                        "GPU / TPU devices")
    p.add_argument("--predict-split", default=None, metavar="NAME",
                   help="after the stages of --stage (finished ones are skipped, so on a "
                        "finished workdir this only predicts), write the final net's "
                        "predictions of split NAME (no masks needed) as VOC palette PNGs "
                        "<id>.png with the eval settings (scales, flip, CRF) to "
                        "WORKDIR/predict/NAME/ (VOC: under results/VOC2012/Segmentation/"
                        "comp6_test_cls/, the test server's layout). NAME: VOC "
                        "ImageSets/Segmentation/NAME.txt (e.g. test, val), COCO NAME "
                        "(e.g. val2014), digits train or val")


def apply_run_flags(cfg, args):
    """The config with the common flags applied.

    A value the config refuses (e.g. --max-steps 0) exits with one line naming the flag's field."""
    from dsrg_jax.config import ConfigError, override

    changes = {}
    if args.seed is not None:
        changes["run.seed"] = args.seed
    if getattr(args, "dtype", None) is not None:
        changes["model.dtype"] = args.dtype
    for stage in ("pretrain", "cues", "dsrg", "retrain"):
        if args.max_steps is not None:
            changes[f"{stage}.optim.max_steps"] = args.max_steps
        if args.batch_size is not None:
            changes[f"{stage}.optim.batch_size"] = args.batch_size
    try:
        return override(cfg, **changes) if changes else cfg.validate()
    except ConfigError as e:
        sys.exit(f"error: {e} (--max-steps / --batch-size / --seed)")


def stages_of(args):
    from dsrg_jax.pipeline import STAGES

    return STAGES if args.stage == "all" else (args.stage,)


_WRITE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EACCES: "permission denied",
                 errno.EROFS: "the file system is read-only", errno.EDQUOT: "the disk quota is "
                 "exceeded", errno.EIO: "input/output error"}


def run_and_report(cfg, workdir, stages, num_devices=None, predict=None,
                   args_debug: bool = False) -> dict:
    """Prints the config in one line, runs the stages; a failure -> one line and an exit status.

    Failures: signals, NaN, missing data, bad files, a locked, read-only or full workdir. The exit
    status is 128 + signal after a save, 1 for errors; `args_debug`: also the traceback."""
    from dsrg_jax.pipeline import run
    from dsrg_jax.train.logging import log
    from dsrg_jax.train.loop import Preempted

    log(cfg.summary() + f" (all fields: {workdir}/config.json)")
    t0 = time.perf_counter()
    try:
        out = run(cfg, workdir, stages=stages, num_devices=num_devices, predict=predict)
    except Preempted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except OSError as e:
        if e.errno not in _WRITE_ERRORS:      # a missing input file, an undecodable image, ...
            cli.fail(e, debug=args_debug)
        # A read-only or full workdir, a vanished file system, ...
        cli.fail(f"cannot write or read {e.filename or workdir}: {_WRITE_ERRORS[e.errno]}; "
                 f"nothing finished was lost (the last checkpoint and done stages stay): fix it "
                 f"and rerun the same command to resume", debug=args_debug, exc=e)
    except cli.expected_errors() as e:    # bad data or config, damaged checkpoint, lock held
        cli.fail(e, debug=args_debug)
    log(f"total wall time {time.perf_counter() - t0:.1f} s")
    if "miou" in out:
        log(summary_text(out, workdir))
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def summary_text(results: dict, workdir) -> str:
    """The end-of-run summary. `results`: results.json's dict.

    Each stage's val mIoU and wall time, the supervision quality at the first and last epoch (the
    paper's Fig. 4 measure), the dataset card's numbers and where the figures are."""
    miou, seconds = results.get("miou", {}), results.get("seconds", {})
    lines = [f"summary of {workdir} (all numbers: {workdir}/results.json)",
             "  stage     val mIoU (%)  wall (s)"]
    for stage, key in (("pretrain", None), ("cues", "cues"), ("dsrg", "dsrg"),
                       ("pseudo", None), ("retrain", "retrain"), ("eval", None)):
        if stage in seconds and seconds[stage] is not None:
            value = _pct(miou.get(key)) if key else ""
            lines.append(f"  {stage:<9} {value:>12}  {seconds[stage]:>8.1f}")
    notes = []
    if "pretrain_val_accuracy" in results:
        acc = _pct(results['pretrain_val_accuracy'])
        notes.append(f"pretrain single-digit val accuracy {acc}%")
    if "pseudo_label_train_miou" in results:
        notes.append(f"pseudo-labels on train {_pct(results['pseudo_label_train_miou'])} mIoU")
    if "cues" in miou:
        notes.append("cues row = the CAM segmentation")
    if notes:
        lines.append("  (" + "; ".join(notes) + ")")
    sup = results.get("supervision") or []
    if sup:
        def pri(q):
            return " / ".join(f"{100 * q[k]:.1f}" for k in ("precision", "recall", "iou"))
        lines.append(f"  supervision P / R / IoU (%): epoch {sup[0]['epoch']} {pri(sup[0])} -> "
                     f"epoch {sup[-1]['epoch']} {pri(sup[-1])}")
    card = results.get("dataset") or {}
    if card:
        parts = [f"foreground {100 * card['fg_fraction']:.1f}% of pixels"]
        if card.get("width_cells"):
            parts.append(f"objects {100 * card['share_at_least_2_cells']:.0f}% >= 2 cells thick "
                         f"(median {card['width_cells']['median']:.1f})")
        if "cue_fg_precision" in card:
            parts.append(f"CAM foreground cues {100 * card['cue_fg_precision']:.1f}% precise, "
                         f"{100 * card['cue_fg_recall']:.1f}% of object cells covered")
        lines.append("  dataset (train, output grid): " + ", ".join(parts))
    lines.append(f"  figures: {workdir}/figures/")
    return "\n".join(lines)


def add_distributed_flags(p: argparse.ArgumentParser) -> None:
    """Flags that make this process one of several JAX processes forming one device mesh."""
    g = p.add_argument_group("several hosts (JAX multi-controller; every process runs the same "
                             "command on a workdir all of them share)")
    g.add_argument("--distributed", action="store_true",
                   help="jax.distributed.initialize() with the cluster auto-detected (TPU pods, "
                        "SLURM, Open MPI)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address, for any other cluster (with --num-processes and "
                        "--process-id)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N")
    g.add_argument("--process-id", type=int, default=None, metavar="I")


def cpu_devices_preset() -> bool:
    """True when the environment already fixes JAX's CPU device count.

    JAX_NUM_CPU_DEVICES (read by JAX's config) or XLA_FLAGS'
    --xla_force_host_platform_device_count, as the tests and multi-process runs set it."""
    import os

    import jax

    return (jax.config.jax_num_cpu_devices >= 0
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""))


def set_cpu_devices(n: int | None) -> None:
    """Makes JAX create `n` CPU devices (None: DEFAULT_CPU_DEVICES unless preset).

    Must run before JAX's first computation. Exits with one line for n < 1, or when n was
    asked for but JAX already made its devices in this process (another count); the default is
    then left as it is."""
    import jax

    if n is not None and n < 1:
        sys.exit(f"error: --cpu-devices must be >= 1, got {n}")
    explicit = n is not None
    if not explicit:
        if cpu_devices_preset():
            return
        n = DEFAULT_CPU_DEVICES
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:   # JAX already made its devices in this process (a notebook, a test)
        have = len(jax.devices("cpu"))
        if explicit and n != have:
            sys.exit(f"error: --cpu-devices {n}: JAX already made its {have} CPU device(s) in "
                     f"this process; pass the flag to a fresh process")


def init_jax(args) -> None:
    """Sets JAX up as the flags ask, before any device is used.

    The CPU device count (`--cpu-devices`), the persistent compilation cache
    (`--compile-cache`), then JAX's multi-controller runtime (`--distributed`, `--coordinator`,
    `--tpu`)."""
    import jax

    from dsrg_jax import compile_cache

    set_cpu_devices(getattr(args, "cpu_devices", None))
    try:
        compile_cache.enable(args.compile_cache or compile_cache.default_dir())
    except OSError as e:
        sys.exit(f"error: --compile-cache: {cli.one_line(e)}")

    explicit = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in explicit) and None in explicit:
        sys.exit("error: --coordinator, --num-processes and --process-id go together (got "
                 f"{args.coordinator!r}, {args.num_processes!r}, {args.process_id!r})")
    if getattr(args, "tpu", False) or args.distributed or args.coordinator:
        kw = {}
        if args.coordinator:
            if not 0 <= args.process_id < args.num_processes:
                sys.exit(f"error: --process-id must be in [0, {args.num_processes}), got "
                         f"{args.process_id}")
            kw = dict(coordinator_address=args.coordinator, num_processes=args.num_processes,
                      process_id=args.process_id)
            # Collectives between CPU devices of several processes (only CPU arrays use it).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        flag = "--tpu" if getattr(args, "tpu", False) else (
            "--coordinator" if args.coordinator else "--distributed")
        try:
            jax.distributed.initialize(**kw)
        except Exception as e:  # noqa: BLE001  (any failure: one line)
            hint = ("run on a TPU VM with jax[tpu] installed, or drop --tpu" if flag == "--tpu"
                    else "check that every process runs the same command and reaches the "
                         "coordinator")
            sys.exit(f"error: {flag}: jax.distributed.initialize() failed "
                     f"({' '.join(str(e).split())[:300]}); {hint}")
    if getattr(args, "tpu", False) and jax.devices()[0].platform != "tpu":
        sys.exit(f"error: --tpu given but JAX found no TPU (devices: {jax.devices()}); "
                 f"install jax[tpu] on a TPU VM, or drop --tpu")


def dataset_parser(prog: str, description: str, data_help: str) -> argparse.ArgumentParser:
    """The flags shared by the real-dataset CLIs (`experiments.voc`, `experiments.coco`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--tpu", action="store_true",
                   help="multi-host TPU run: calls jax.distributed.initialize() first and fails "
                        "if no TPU is found")
    p.add_argument("--data-dir", required=True, help=data_help)
    p.add_argument("--workdir", required=True,
                   help="output folder: checkpoints, cues, pseudo-labels, metrics, results.json")
    p.add_argument("--backbone", default="vgg16", choices=("vgg16", "resnet101"),
                   help="segmentation backbone: DeepLab-v2 VGG16 ASPP-L or ResNet-101 ASPP")
    p.add_argument("--init-weights", default=None,
                   help="ImageNet weights (.pth or .safetensors; torchvision vgg16-397923af.pth "
                        "or resnet101-63fe2227.pth), or a DeepLab-v2 VGG16 .caffemodel (the "
                        "authors' init vgg16_20M_mc.caffemodel or a DSRG snapshot; segmentation "
                        "net only, so give the CAM classifier --cam-init-weights or --cues); "
                        "without it the nets train from scratch")
    p.add_argument("--cam-init-weights", default=None, metavar="PATH",
                   help="ImageNet VGG16 weights for the cues stage's CAM classifier (default: "
                        "--init-weights with --backbone vgg16); needed with --backbone "
                        "resnet101 and --init-weights unless --cues is given")
    p.add_argument("--cues", default=None,
                   help="seed cues, which skip the CAM classifier: an official cue file (DSRG's "
                        "localization_cues-sal.pickle, the published setup, or SEC's "
                        "localization_cues.pickle.gz), a dsrg_jax cues .npz, a folder of seed "
                        "PNGs <id>.png (class index per pixel, 255 = no cue) or a folder of CAM "
                        "files <id>.npy (IRN, SEAM, CLIP-ES, ...; made cues by the --fg-* / "
                        "--bg-* rule)")
    p.add_argument("--labels-from", default=None, choices=("masks", "cues"),
                   help="image-level labels of the DSRG stage's train images: 'cues' = the cue "
                        "file's per-image labels (as the published DSRG trains; they "
                        "differ from the masks' on a few images), 'masks' = the classes present "
                        "in the ground-truth masks (default: cues with --cues, else masks; the "
                        "CAM classifier always uses masks)")
    p.add_argument("--saliency-dir", default=None,
                   help="folder of greyscale saliency PNGs named <image id>.png for the "
                        "background cues (without it: low-CAM background)")
    p.add_argument("--canvas", type=int, default=None, metavar="S",
                   help="inference canvas side: images are padded to S x S to batch them "
                        "(default 513 for VOC, 640 for COCO; every image must fit, checked at "
                        "start); 0 = no canvas, batches of equal-size images (the official "
                        "one-image-at-a-time protocol, slower)")
    p.add_argument("--miou-formula", default=None,
                   choices=("standard", "voc-official", "coco-official"),
                   help="the eval stage's mean IoU: standard (default; classes present in the "
                        "ground truth or the predictions) or the official scripts' own "
                        "(voc-official: classes with a true positive; coco-official: "
                        "tp / max(1, union) over all classes); docs/fidelity.md")
    p.add_argument("--eval-batch-size", type=int, default=None, metavar="N",
                   help="global batch of the pseudo-label and eval stages (default 10), rounded "
                        "up to a multiple of the device count")
    g = p.add_argument_group(
        "CAM -> cue rule (of the CAM classifier's cues, or of --cues given a folder of CAM .npy "
        "files; default: the config's, SEC's)")
    g.add_argument("--fg-rule", default=None, choices=("relative", "top_fraction"),
                   help="foreground cue where a present class's CAM is above --fg-threshold x "
                        "its maximum (relative, SEC's code) or in its top --fg-top-fraction "
                        "(top_fraction, the paper's wording)")
    g.add_argument("--fg-threshold", type=float, default=None, metavar="T",
                   help="cues.fg_threshold, in [0, 1] (default 0.2)")
    g.add_argument("--fg-top-fraction", type=float, default=None, metavar="F",
                   help="cues.fg_top_fraction, in [0, 1] (default 0.2)")
    g.add_argument("--bg-cam-threshold", type=float, default=None, metavar="T",
                   help="without --saliency-dir: background where no present class's "
                        "normalised CAM reaches T (cues.bg_cam_threshold, default 0.1)")
    g.add_argument("--bg-saliency-threshold", type=float, default=None, metavar="T",
                   help="with --saliency-dir: background where the normalised saliency is below "
                        "T (cues.bg_saliency_threshold, default 0.06)")
    add_run_flags(p)
    return p


CUE_RULE_FLAGS = {"fg_rule": "cues.fg_rule", "fg_threshold": "cues.fg_threshold",
                  "fg_top_fraction": "cues.fg_top_fraction",
                  "bg_cam_threshold": "cues.bg_cam_threshold",
                  "bg_saliency_threshold": "cues.bg_saliency_threshold"}


def check_num_devices(args) -> None:
    """Exits with one line when --num-devices is outside 1..the device count."""
    import jax

    n, have = getattr(args, "num_devices", None), jax.device_count()
    if n is not None and not 1 <= n <= have:
        sys.exit(f"error: --num-devices must be in 1..{have} (the devices JAX found: "
                 f"{have} {jax.devices()[0].platform}), got {n}")


def check_data(cfg, predict=None) -> None:
    """The up-front check, before any training; one line naming the bad files, else silence.

    The train and val id lists load, every image (and mask, and saliency map) they name exists,
    every image fits the inference canvas and every mask holds valid class indices (and the images
    of split `predict`, if given).

    The full check that decodes every file: `python -m dsrg_jax.data.check`."""
    from dsrg_jax.data.check import check_files, check_sizes_and_masks
    from dsrg_jax.data.records import DatasetError
    from dsrg_jax.data.registry import get_dataset
    from dsrg_jax.train.logging import log

    dataset = get_dataset(cfg.data.dataset)
    try:                # OSError: an unreadable file or folder (no permission, bad header, ...)
        for split in ("train", "val"):
            src = dataset.source(cfg.data, split, with_saliency=split == "train")
            name = f"{cfg.data.dataset} {split}"
            n = check_files(src, name=name, max_listed=5)
            check_sizes_and_masks(src, canvas=cfg.eval.canvas, num_classes=cfg.data.num_classes,
                                  name=name)
            log(f"data check: {name}: {n} images, all files present, sizes and masks valid")
        if predict is not None:
            src = dataset.images_of(cfg.data, predict)
            n = check_files(src, name=f"{cfg.data.dataset} {predict}", max_listed=5)
            check_sizes_and_masks(src, canvas=cfg.eval.canvas, num_classes=cfg.data.num_classes,
                                  name=f"{cfg.data.dataset} {predict}")
            log(f"data check: {cfg.data.dataset} {predict}: {n} images, all files present")
    except (DatasetError, OSError) as e:
        sys.exit(f"error: {cli.one_line(e)}")


def dataset_main(args, get_config, data_hint: str) -> dict:
    """Checks the paths, starts the TPU runtime if asked, resolves the config and runs."""
    import pathlib

    from dsrg_jax.config import ConfigError, override

    if not pathlib.Path(args.data_dir).is_dir():
        sys.exit(f"error: data dir {args.data_dir} not found: {data_hint}")
    if args.init_weights is not None and not pathlib.Path(args.init_weights).is_file():
        sys.exit(f"error: weights file {args.init_weights} not found: download torchvision's "
                 f"ImageNet weights (https://download.pytorch.org/models/vgg16-397923af.pth or "
                 f"resnet101-63fe2227.pth), or use a DeepLab-v2 VGG16 .caffemodel, and pass "
                 f"its path to --init-weights")
    if args.cam_init_weights is not None and not pathlib.Path(args.cam_init_weights).is_file():
        sys.exit(f"error: weights file {args.cam_init_weights} not found: download torchvision's "
                 f"ImageNet VGG16 weights (https://download.pytorch.org/models/vgg16-397923af.pth)"
                 f" and pass their path to --cam-init-weights")
    if (args.backbone == "resnet101" and args.cues is None and args.init_weights is not None
            and args.cam_init_weights is None and args.stage in ("cues", "all")):
        sys.exit("error: --backbone resnet101 without --cues trains the VGG16 CAM classifier, "
                 "which cannot use the ResNet-101 --init-weights: pass ImageNet VGG16 weights "
                 "(vgg16-397923af.pth) with --cam-init-weights, or official cues with --cues")
    if str(args.init_weights).endswith(".caffemodel") and args.backbone != "vgg16":
        sys.exit(f"error: --init-weights {args.init_weights}: a .caffemodel holds a DeepLab-v2 "
                 f"VGG16; with --backbone {args.backbone} pass torchvision's ImageNet weights "
                 f"(resnet101-63fe2227.pth)")
    if (str(args.init_weights).endswith(".caffemodel") and args.cues is None
            and args.cam_init_weights is None and args.stage in ("cues", "all")):
        sys.exit("error: a .caffemodel --init-weights starts the DeepLab-v2 VGG16 segmentation "
                 "net only; the CAM classifier of the cues stage needs ImageNet VGG16 weights "
                 "(vgg16-397923af.pth) with --cam-init-weights, or pass official cues with --cues")
    if str(args.cam_init_weights).endswith(".caffemodel"):
        sys.exit(f"error: --cam-init-weights {args.cam_init_weights}: the CAM classifier takes "
                 f"ImageNet VGG16 weights (.pth or .safetensors, e.g. vgg16-397923af.pth), not a "
                 f".caffemodel")
    if args.eval_batch_size is not None and args.eval_batch_size <= 0:
        sys.exit(f"error: --eval-batch-size must be positive, got {args.eval_batch_size}")
    init_jax(args)
    check_num_devices(args)
    changes = {"data.data_dir": args.data_dir, "model.init_weights": args.init_weights,
               "model.classifier_init_weights": args.cam_init_weights,
               "data.saliency_dir": args.saliency_dir, "data.cues_file": args.cues,
               "data.labels_from": args.labels_from or ("cues" if args.cues else "masks"),
               "model.segmentation": f"deeplab_{args.backbone}"}
    if args.backbone == "resnet101":
        changes["data.input_convention"] = "torchvision"
    if args.eval_batch_size is not None:
        changes["pseudo.batch_size"] = changes["eval.batch_size"] = args.eval_batch_size
    if args.canvas is not None:
        changes["eval.canvas"] = args.canvas or None
    if args.miou_formula is not None:
        changes["eval.miou_formula"] = args.miou_formula
    changes.update({field: getattr(args, flag) for flag, field in CUE_RULE_FLAGS.items()
                    if getattr(args, flag) is not None})
    try:
        cfg = override(get_config(), **changes)
    except ConfigError as e:
        sys.exit(f"error: {cli.one_line(e)}")   # names the field (the flags' help names it)
    cfg = apply_run_flags(cfg, args)
    check_data(cfg, args.predict_split)
    return run_and_report(cfg, args.workdir, stages_of(args), args.num_devices,
                          predict=args.predict_split, args_debug=args.debug)
