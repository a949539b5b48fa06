"""Writes the notebooks in this folder from the cell sources below (run after editing them).

    python notebooks/_make_notebooks.py

The .ipynb files are committed without outputs; `tests/test_notebooks.py` executes them.
"""
from __future__ import annotations

import pathlib

import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent

SETUP = r'''# Setup: on Colab, clone the repository and install it; locally, use the checkout.
import os, pathlib, subprocess, sys

IN_COLAB = "google.colab" in sys.modules
REPO_URL = os.environ.get("DSRG_JAX_REPO", "https://github.com/YOUR-ACCOUNT/dsrg_jax")  # <- edit

if IN_COLAB:
    ROOT = pathlib.Path("/content/dsrg_jax")
    if not ROOT.exists():
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(ROOT)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True)
else:  # a local checkout: this notebook lives in ROOT/notebooks
    ROOT = next(p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
                if (p / "dsrg_jax" / "__init__.py").exists())
sys.path.insert(0, str(ROOT))  # importable without restarting the runtime
os.chdir(ROOT)
WORKDIR = pathlib.Path(os.environ.get("DSRG_NOTEBOOK_WORKDIR", ROOT / "runs" / "notebooks"))
WORKDIR.mkdir(parents=True, exist_ok=True)
print("repository:", ROOT, "| outputs:", WORKDIR)'''


def quickstart() -> nbformat.NotebookNode:
    cells = [
        v4.new_markdown_cell(r'''# dsrg_jax quickstart

DSRG (*Deep Seeded Region Growing*, Huang et al., CVPR 2018) learns semantic segmentation from
image-level labels: small, precise **seed cues** are grown, at every training step, into the pixels
the network is confident about. `dsrg_jax.dsrg_grow` is that growth as one jitted JAX function.

This notebook
1. installs the package (on Colab) or uses your checkout,
2. grows **real cue layouts** from SEC's published cue file on a few VOC images,
3. runs the full DSRG pipeline on the embedded `digits` dataset in its quick form and shows its
   figures (cue growth over training, supervision quality, per-class IoU, predictions).

Runs on a CPU; a GPU/TPU runtime only makes it faster.'''),
        v4.new_code_cell(SETUP),
        v4.new_code_cell(r'''import numpy as np
import jax
from IPython.display import Image, display

import dsrg_jax
from dsrg_jax import viz
from dsrg_jax.data import VOC_CLASSES, read_image, read_label_png
from dsrg_jax.data.cues import import_official_cues, load_cues
from dsrg_jax.data.synthetic import synthetic_probs
from dsrg_jax.ops.grow_scipy import dsrg_grow_scipy

print("jax", jax.__version__, "on", jax.devices()[0].platform)'''),
        v4.new_markdown_cell(r'''## 1. Real seed cues from SEC's cue file

`localization_cues.pickle.gz` (from the SEC repository, MIT licence) holds SEC's seed cues of all
10,582 VOC 2012 train_aug images on a 41x41 grid over the image warped to 321x321. DSRG's
published runs used the authors' own `localization_cues-sal.pickle` (same layout and input list,
saliency background cues); it reads the same way. Set
`DSRG_CUE_FILE` (or edit `CUE_FILE`) to where yours is; a converted `.npz` works too. `VOC_ROOT`
(optional) is a `VOCdevkit/VOC2012` folder for the pictures and ground truth.'''),
        v4.new_code_cell(r'''SHARED = ROOT.parent / "shared" / "data"  # the project's test data
CUE_FILE = pathlib.Path(os.environ.get("DSRG_CUE_FILE",
                                       SHARED / "sec" / "localization_cues.pickle.gz"))
VOC_ROOT = pathlib.Path(os.environ.get("DSRG_VOC_ROOT", SHARED / "voc_mini" / "VOC2012"))

if not CUE_FILE.exists() and IN_COLAB:  # fetch the public file (a few MB) on Colab only
    import urllib.request
    CUE_FILE = pathlib.Path("/content/localization_cues.pickle.gz")
    urllib.request.urlretrieve("https://github.com/kolesman/SEC/raw/master/training/"
                               "localization_cues/localization_cues.pickle.gz", CUE_FILE)
if not CUE_FILE.exists():
    raise FileNotFoundError(f"cue file {CUE_FILE} not found: download SEC's training/"
                            "localization_cues/localization_cues.pickle.gz and set DSRG_CUE_FILE")

cue_set = load_cues(CUE_FILE) if CUE_FILE.suffix == ".npz" else import_official_cues(CUE_FILE)
print(len(cue_set), "images with cues on a", cue_set.grid_size, "grid")

with_pictures = [i for i in cue_set.ids
                 if (VOC_ROOT / "JPEGImages" / f"{i}.jpg").exists()] if VOC_ROOT.exists() else []
ids = (with_pictures or list(cue_set.ids))[:4]
cues, labels = cue_set.dense_batch([cue_set.index_of(i) for i in ids])
for i, lab in zip(ids, labels):
    print(i, [VOC_CLASSES[c] for c in np.flatnonzero(lab)])'''),
        v4.new_markdown_cell(r'''## 2. Grow them

A trained network's class probabilities would go here; these are smooth synthetic maps around
the cues (`synthetic_probs`), enough to see the rule at work: a pixel joins a cue's region when it
is connected to it and the network gives that class more than `theta_fg` (0.85; background
`theta_bg`, 0.99). The result is checked against the plain numpy/scipy version of the rules.'''),
        v4.new_code_cell(
            r'''probs = synthetic_probs(cues, labels, np.random.default_rng(0))  # [B, 41, 41, 21]
grow = jax.jit(dsrg_jax.dsrg_grow, static_argnames=("theta_fg", "theta_bg"))
grown = np.asarray(grow(probs, cues, labels))                      # bool[B, 41, 41, 21]
grown_low = np.asarray(grow(probs, cues, labels, theta_fg=0.7))
assert np.array_equal(grown, dsrg_grow_scipy(probs, cues, labels))

print(f"{'image':<14}{'cue pixels':>11}{'grown':>8}{'grown (0.7)':>13}")
for i, c, g, g7 in zip(ids, cues, grown, grown_low):
    cover = [x.any(-1).mean() for x in (c, g, g7)]
    print(f"{i:<14}{cover[0]:>11.1%}{cover[1]:>8.1%}{cover[2]:>13.1%}")'''),
        v4.new_code_cell(r'''import cv2

def picture(image_id):
    path = VOC_ROOT / "JPEGImages" / f"{image_id}.jpg"
    return read_image(path) if path.exists() else np.full((321, 321, 3), 200, np.uint8)

def truth(image_id):
    path = VOC_ROOT / "SegmentationClass" / f"{image_id}.png"
    return read_label_png(path, 21) if path.exists() else None

# The cue grid covers the whole image warped to 321x321: show pictures and truth warped so too.
warp = lambda a, interp: cv2.resize(a, (321, 321), interpolation=interp)
images = np.stack([warp(picture(i), cv2.INTER_LINEAR) for i in ids])
gts = [truth(i) for i in ids]
gts = (np.stack([warp(g, cv2.INTER_NEAREST) for g in gts])
       if all(g is not None for g in gts) else None)
viz.save_cue_growth_figure(
    WORKDIR / "quickstart_growth.png", images, cues,
    {"synthetic probs (argmax)": np.argmax(np.where(labels[:, None, None], probs, -1), -1),
     "grown, theta_fg=0.85": grown, "grown, theta_fg=0.7": grown_low},
    ground_truth=gts, image_ids=ids, class_names=VOC_CLASSES,
    title="dsrg_grow on real SEC cue layouts")
display(Image(str(WORKDIR / "quickstart_growth.png")))'''),
        v4.new_markdown_cell(
            r'''Black: background cues; colours: object cues (VOC palette); light: no cue
(unlabelled).
The grown cues are the supervision of the balanced seed loss at this step; in training the
network's own (CRF-refined) probabilities take the place of the synthetic maps, and growth
restarts from the original cues at every step.'''),
    ]
    cells += digits_cells()
    return _notebook(cells, "quickstart")


def digits_cells() -> list:
    return [
        v4.new_markdown_cell(r'''## 3. The whole pipeline on the embedded digits dataset

`python -m experiments.digits` runs DSRG end to end on a CPU, with no downloads: MNIST digits
pasted on photographs (both shipped inside pip packages), 10 classes + background.
Stages: **pretrain** (a single-digit classifier whose trunk starts every later net: the digits'
stand-in for ImageNet weights) -> **cues** (CAM classifier -> seed cues) -> **dsrg**
(segmentation net trained on cues grown at every step) -> **pseudo** (multi-scale + CRF
pseudo-labels) -> **retrain** -> **eval** (multi-scale + CRF, val mIoU). It writes
`results.json` and figures to its workdir.

`DIGITS_FLAGS` below are the smallest settings, so that this notebook runs in about a minute;
the numbers are then only a smoke test (all background). Remove `--max-steps 10 --batch-size 8`
for the quick run (3-5 minutes on 2 CPU cores), and `--quick` too for the full run (6-14
minutes on 2 cores, by the CPU; 39.4 val mIoU for the CAM cues and 32.1 for the DSRG net after
its one epoch, the README's figures).'''),
        v4.new_code_cell(r'''import json

DIGITS_DIR = WORKDIR / "digits"
DIGITS_FLAGS = os.environ.get("DSRG_DIGITS_FLAGS", "--quick --max-steps 10 --batch-size 8")
cmd = [sys.executable, "-m", "experiments.digits", *DIGITS_FLAGS.split(),
       "--workdir", str(DIGITS_DIR)]
print(" ".join(cmd[1:]))
done = subprocess.run(cmd, capture_output=True, text=True)
log = (done.stdout + done.stderr).splitlines()
print("\n".join(line for line in log if "finished" in line or "mIoU" in line))
if done.returncode:
    print("\n".join(log[-40:]))
    raise RuntimeError(f"experiments.digits exited with status {done.returncode}")

results = json.loads((DIGITS_DIR / "results.json").read_text())
for stage, miou in results["miou"].items():
    print(f"{stage:<8} val mIoU {100 * miou:5.1f}")'''),
        v4.new_markdown_cell(
            r'''The run's own figures: the supervision growing during the dsrg stage (the paper's
Fig. 1) and its precision / recall / IoU against the ground truth per epoch (Fig. 4).'''),
        v4.new_code_cell(r'''for name in ("growth.png", "supervision.png"):
    display(Image(str(DIGITS_DIR / "figures" / name)))'''),
        v4.new_markdown_cell(r'''## 4. Scores, predictions with and without the CRF

Per-class IoU of the final (retrained) net, and that net's multi-scale predictions on a few val
images through `dsrg_jax.inference.segment` (scales 0.75, 1, 1.25, logits summed at full size),
before and after the full-resolution dense CRF.'''),
        v4.new_code_cell(r'''from dsrg_jax import inference
from dsrg_jax.data import DIGIT_CLASSES

final = results["eval"]["retrain"]
iou = [np.nan if v is None else 100 * v for v in final["iou_per_class"]]
viz.save_class_iou_bars(WORKDIR / "digits_iou.png", iou, DIGIT_CLASSES,
                        title="digits val: IoU per class (retrained net, multi-scale + CRF)")
display(Image(str(WORKDIR / "digits_iou.png")))'''),
        v4.new_code_cell(r'''from dsrg_jax.config import config_from_dict
from dsrg_jax.pipeline import Experiment
from dsrg_jax.pipeline.nets import load_trained

cfg = config_from_dict(json.loads((DIGITS_DIR / "config.json").read_text()))
exp = Experiment.create(cfg, DIGITS_DIR)
model, variables, convention = load_trained(exp, "retrain")

val = exp.dataset.source(cfg.data, "val", with_saliency=False)   # the run's val split
records = [val[i] for i in range(4)]
seg = inference.segment(lambda v, x: model.apply(v, x, train=False),
                        np.stack([r.image for r in records]), variables=variables,
                        scales=cfg.eval.scales, normalize=convention.normalize, crf=True,
                        crf_processes=1)
viz.save_overlay_figure(WORKDIR / "digits_overlays.png", np.stack([r.image for r in records]),
                        seg.labels, predictions_crf=seg.labels_crf,
                        ground_truth=np.stack([r.mask for r in records]),
                        image_ids=[r.image_id for r in records], class_names=DIGIT_CLASSES)
display(Image(str(WORKDIR / "digits_overlays.png")))'''),
        v4.new_markdown_cell(r'''## 5. Scoring prediction folders: `python -m dsrg_jax.evaluate`

Any folder of label PNGs can be scored against ground truth with the standard protocol (one
confusion matrix over the split, 255 ignored, mean over classes). Here: the pseudo-labels the run
made for its training images, against the digits ground truth written as a VOC-style tree. The
mIoU is the one the run logged for its pseudo-labels.'''),
        v4.new_code_cell(r'''from dsrg_jax import evaluate
from dsrg_jax.data.digits_export import export_voc_tree

pseudo = DIGITS_DIR / "pseudo_labels"
voc = export_voc_tree(WORKDIR / "digits_voc", num_train=len(list(pseudo.glob("*.png"))),
                      num_val=1, size=cfg.data.image_size)
scores = evaluate.main(["--gt", str(voc / "SegmentationClass"), "--pred", str(pseudo),
                        "--list", str(voc / "ImageSets" / "Segmentation" / "train.txt"),
                        "--num-classes", "11", "--json", str(WORKDIR / "pseudo_scores.json")])
print("logged by the run:", round(100 * results["pseudo_label_train_miou"], 2))'''),
    ]


def train_step() -> nbformat.NotebookNode:
    cells = [
        v4.new_markdown_cell(r'''# `dsrg_grow` inside your own jitted train step

`dsrg_jax.dsrg_grow(probs, seeds, image_labels)` is a pure JAX function (a `lax.while_loop` of
masked 3x3 dilations): it runs inside `jax.jit`, `jax.vmap` and `jax.shard_map` with no host round
trip, so it drops into any training loop. This notebook trains a tiny Flax network on the embedded
`digits` dataset from seed cues only, growing the cues at every step, as DSRG does.

Shapes: `probs float[B, H, W, C]` (channel 0 = background), `seeds bool[B, H, W, C]` (multi-hot;
all False = unlabelled), `image_labels bool[B, C]` -> grown cues `bool[B, H, W, C]`.'''),
        v4.new_code_cell(SETUP),
        v4.new_code_cell(r'''import time
import numpy as np
import jax, jax.numpy as jnp
import optax
from flax import linen as nn
from IPython.display import Image, display

import dsrg_jax
from dsrg_jax import viz
from dsrg_jax.data import DIGIT_CLASSES, DigitsSource

C = len(DIGIT_CLASSES)   # 11: background + digits 0-9
SIZE, STRIDE = 96, 4     # 96x96 images, 24x24 output grid
print("jax", jax.__version__, "on", jax.devices()[0].platform)'''),
        v4.new_markdown_cell(r'''## Data and seed cues

In DSRG the cues come from class activation maps and saliency. To keep this notebook about the
train step, the cues here are made from the masks the way CAM cues look: a sparse, precise subset
of each digit's cells and background far from any digit; everything else is unlabelled.'''),
        v4.new_code_cell(r'''def make_cues(mask, rng, keep=0.4, margin=2):
    """mask uint8[SIZE, SIZE] -> bool[SIZE/STRIDE, SIZE/STRIDE, C] seed cues: a random `keep`
    share of the cells mostly covered by a digit; background more than `margin` cells away."""
    g = SIZE // STRIDE
    blocks = mask.reshape(g, STRIDE, g, STRIDE).transpose(0, 2, 1, 3).reshape(g, g, -1)
    frac = np.stack([(blocks == c).mean(-1) for c in range(C)], -1)     # [g, g, C]
    cues = (frac >= 0.4) & (rng.random((g, g, 1)) < keep)
    digit = frac[..., 1:].sum(-1) > 0
    near_digit = np.zeros((g, g), bool)
    for dy in range(-margin, margin + 1):
        for dx in range(-margin, margin + 1):
            near_digit |= np.roll(digit, (dy, dx), (0, 1))
    cues[..., 0] = ~near_digit
    return cues

source = DigitsSource("train", num_images=96, size=SIZE)
rng = np.random.default_rng(0)
records = [source[i] for i in range(len(source))]
images = np.stack([r.image for r in records]).astype(np.float32) / 255.0   # [N, 96, 96, 3]
labels = np.stack([r.labels for r in records])                            # bool[N, C]
masks = np.stack([r.mask for r in records])                               # uint8[N, 96, 96]
cues = np.stack([make_cues(m, rng) for m in masks])                       # bool[N, 24, 24, C]
grid_masks = masks[:, STRIDE // 2::STRIDE, STRIDE // 2::STRIDE]           # [N, 24, 24]
print(images.shape, cues.shape, f"cues cover {cues.any(-1).mean():.1%} of the grid")'''),
        v4.new_markdown_cell(r'''## A network and a train step that grows the cues

`loss_fn` is ordinary JAX: network -> probabilities -> `dsrg_grow` (on stop-gradient
probabilities, from the **original** cues every step) -> DSRG's balanced seed loss on the grown
cues. Everything is inside one `jax.jit`.'''),
        v4.new_code_cell(r'''class TinySegNet(nn.Module):
    """Output stride 4: float[B, 96, 96, 3] -> logits float[B, 24, 24, C]."""
    @nn.compact
    def __call__(self, x):
        for width in (32, 64):
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), kernel_dilation=2)(x))
        return nn.Conv(C, (1, 1))(x)

model = TinySegNet()
params = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
tx = optax.adam(3e-3)
opt_state = tx.init(params)

@jax.jit
def train_step(params, opt_state, images, cues, image_labels):
    def loss_fn(params):
        probs = dsrg_jax.probs_from_logits(model.apply(params, images))       # [B, 24, 24, C]
        grown = dsrg_jax.dsrg_grow(jax.lax.stop_gradient(probs), cues, image_labels)
        return dsrg_jax.balanced_seed_loss(probs, grown), grown
    (loss, grown), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grown'''),
        v4.new_code_cell(r'''def grow_with(params, idx):
    """The cues of images `idx` grown from the network's current probabilities."""
    probs = dsrg_jax.probs_from_logits(model.apply(params, images[idx]))
    return np.asarray(dsrg_jax.dsrg_grow(probs, cues[idx], labels[idx])), probs

show = np.arange(4)                       # a few fixed images to look at after training
grown_at_start, _ = grow_with(params, show)
BATCH, STEPS = 16, 150
quality = []   # supervision precision / recall of the grown cues, as in the paper's Fig. 4
start = time.perf_counter()
for step in range(STEPS):
    idx = np.random.default_rng(step).choice(len(images), BATCH, replace=False)
    params, opt_state, loss, grown = train_step(params, opt_state, images[idx], cues[idx],
                                                labels[idx])
    if step % 25 == 0 or step == STEPS - 1:
        q = dsrg_jax.cue_quality(np.asarray(dsrg_jax.cue_counts(grown, grid_masks[idx])))
        quality.append({"epoch": step, **q})
        print(f"step {step:4d}  loss {float(loss):.3f}  grown cues cover "
              f"{np.asarray(grown).any(-1).mean():.1%}  precision {q['precision']:.1%}  "
              f"recall {q['recall']:.1%}")
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s")'''),
        v4.new_markdown_cell(r'''## What the supervision became

The same few images, their original cues, the cues grown from the trained network's
probabilities, its prediction and the ground truth.'''),
        v4.new_code_cell(r'''grown_now, probs = grow_with(params, show)
prediction = np.argmax(np.where(labels[show][:, None, None], probs, -1), -1)
viz.save_cue_growth_figure(
    WORKDIR / "train_step_growth.png", (images[show] * 255).astype(np.uint8), cues[show],
    {"grown, step 0": grown_at_start, f"grown, step {STEPS}": grown_now},
    predictions=prediction, ground_truth=grid_masks[show],
    class_names=DIGIT_CLASSES, title="Seed cues grown by the trained network")
viz.save_supervision_curves(WORKDIR / "train_step_supervision.png", quality, xlabel="step")
display(Image(str(WORKDIR / "train_step_growth.png")),
        Image(str(WORKDIR / "train_step_supervision.png")))'''),
        v4.new_markdown_cell(r'''## Under `vmap`, `shard_map`, and bad inputs

The same call works per image under `jax.vmap` (add the batch axis back) and per device under
`jax.shard_map` (each device grows its own shard and waits only for its own images). A wrong shape
fails when the function is traced, naming the argument.'''),
        v4.new_code_cell(r'''probs = dsrg_jax.probs_from_logits(model.apply(params, images[:8]))
one = lambda p, s, l: dsrg_jax.dsrg_grow(p[None], s[None], l[None])[0]
by_vmap = jax.vmap(one)(probs, cues[:8], labels[:8])

n = jax.device_count() if 8 % jax.device_count() == 0 else 1  # devices that split 8 images
mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
spec = jax.sharding.PartitionSpec("data")
per_device = jax.jit(jax.shard_map(dsrg_jax.dsrg_grow, mesh=mesh, in_specs=(spec, spec, spec),
                                   out_specs=spec))
sharded = [jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
           for x in (probs, cues[:8], labels[:8])]
by_shard = per_device(*sharded)
batched = dsrg_jax.dsrg_grow(probs, cues[:8], labels[:8])
print("vmap == batched:", bool(jnp.array_equal(by_vmap, batched)),
      "| shard_map over", n, "device(s) == batched:",
      bool(jnp.array_equal(by_shard, batched)))

try:
    dsrg_jax.dsrg_grow(probs, cues[:8, :12], labels[:8])
except (ValueError, TypeError) as e:
    print("error:", e)'''),
    ]
    return _notebook(cells, "train-step")


def _notebook(cells, prefix: str) -> nbformat.NotebookNode:
    for i, cell in enumerate(cells):   # stable ids: regenerating changes only what was edited
        cell.id = f"{prefix}-{i:02d}"
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.metadata["accelerator"] = "GPU"
    return nb


def main() -> None:
    for name, build in (("quickstart.ipynb", quickstart),
                        ("dsrg_grow_in_your_train_step.ipynb", train_step)):
        nb = build()
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
