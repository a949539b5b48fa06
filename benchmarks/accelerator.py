"""Our DSRG step on an accelerator against the PyTorch-port step, and the parts of both alone.

Three parts (`--parts step,peer,parts`), on synthetic images and cues (no dataset needed: 1-3
object classes per image as textured ellipses, cues as blobs on ~25% of the output grid):

  1. step: our jitted DSRG train step (`make_dsrg_train_step` on a 1-device mesh, Caffe SGD):
     network, the lattice CRF (`dense_crf`), region growing (`dsrg_grow`) and losses, all on the
     device. ms/step, images/s, compile time, peak device memory, the time of the DSRG stage and
     of the retrain stage at that speed; in float32 and with bf16 compute (`--dtypes`; the
     training switch `--dtype bfloat16`: float32 parameters, CRF, growth and losses).
  2. peer: the PyTorch ports' step: the same network in PyTorch on the device (eager, and
     `torch.compile` when it works), the CRF by pydensecrf2 and the growth by the scipy
     reference on the host, image by image, with the transfers between them.
  3. parts: `dsrg_grow` on the device vs `dsrg_grow_scipy`; the lattice CRF on the device vs
     pydensecrf2 per image; multi-scale inference (`segment_canvases`, scales 0.75/1/1.25) of
     one VOC-size image (500x375) with and without the host CRF.

Times are medians of `--repeats` runs after a warm-up (the peer and the host-CRF parts: at most
`--peer-repeats`); compile times apart. The defaults are VOC's (batch 20, 321x321, 21 classes,
DeepLab-v2 VGG16 and ResNet-101, random init); `--tiny` runs the digits config's small net on a
few 65x65 images, for a CPU. Without pydensecrf2 the peer and the host-CRF parts are skipped,
with a note. Run from the project root:

  python benchmarks/accelerator.py --out accelerator.json
  python benchmarks/accelerator.py --tiny --repeats 2 --out /tmp/accelerator.json
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

if __name__ == "__main__":
    # JAX would take 75% of the accelerator's memory when it starts, leaving too little for the
    # PyTorch peer in the same process: allocate on demand instead (set before JAX starts).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:     # run as a script: benchmarks/ is on the path, the root is not
    sys.path.insert(0, str(ROOT))

from dsrg_jax.config import DSRGConfig, RetrainConfig  # noqa: E402
from dsrg_jax.convention import get_input_convention  # noqa: E402
from dsrg_jax.crf_host import dense_crf_host  # noqa: E402
from dsrg_jax.inference import DEFAULT_SCALES, segment_canvases  # noqa: E402
from dsrg_jax.models import ResNetTrunk, create_model, model_for  # noqa: E402
from dsrg_jax.ops.crf import dense_crf  # noqa: E402
from dsrg_jax.ops.grow import dsrg_grow  # noqa: E402
from dsrg_jax.ops.grow_scipy import dsrg_grow_scipy  # noqa: E402
from dsrg_jax.sharding import global_batch, make_mesh, replicate  # noqa: E402
from dsrg_jax.train import steps as S  # noqa: E402
from dsrg_jax.train.optim import caffe_sgd  # noqa: E402
from experiments.configs.digits import get_config as digits_config  # noqa: E402

VOC_MODELS = ("deeplab_vgg16", "deeplab_resnet101")
VOC_IMAGE_HW = (375, 500)          # a typical VOC photograph, landscape
TINY_IMAGE_HW = (120, 160)
GIB = 2.0 ** 30
NO_CRF = "pydensecrf2 is not installed"


def log(msg: str) -> None:
    print(f"[accelerator] {msg}", file=sys.stderr, flush=True)


@functools.cache
def has_pydensecrf() -> bool:
    """Whether pydensecrf2's extension imports (the peer and the host-CRF parts need it)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------ synthetic data


def synthetic_scene(rng: np.random.Generator, hw: tuple[int, int],
                    num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like image uint8[H, W, 3] and its mask uint8[H, W] (0 = background).

    The image shows 1-3 object classes (1-2 textured ellipses each) on a smooth background."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h, xx / w
    image = (rng.uniform(40, 200, 3) + 60 * (yy[..., None] * rng.uniform(-1, 1, 3)
                                             + xx[..., None] * rng.uniform(-1, 1, 3)))
    mask = np.zeros((h, w), np.uint8)
    n = min(int(rng.integers(1, 4)), num_classes - 1)
    for c in rng.choice(np.arange(1, num_classes), n, replace=False):
        colour = rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(1, 3))):
            cy, cx = rng.uniform(0.25, 0.75, 2)
            ry, rx = rng.uniform(0.1, 0.22, 2)
            t = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dy * np.cos(t) + dx * np.sin(t)) / ry
            v = (dx * np.cos(t) - dy * np.sin(t)) / rx
            inside = u * u + v * v <= 1.0
            mask[inside] = c
            image[inside] = colour + rng.normal(0, 12, (int(inside.sum()), 3))
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def grid_cues(mask: np.ndarray, grid: tuple[int, int],
              num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CAM-like blob cues from a mask: grid mask uint8[h, w], cues bool[h, w, C], labels bool[C].

    The grid mask is the mask on the grid (nearest). The cues of each class (background included)
    are the cells of its region at least half (bg: 55%) of the region's largest distance from its
    border; the labels are the image labels."""
    rows = ((np.arange(grid[0]) + 0.5) * mask.shape[0] / grid[0]).astype(int)
    cols = ((np.arange(grid[1]) + 0.5) * mask.shape[1] / grid[1]).astype(int)
    g = mask[rows][:, cols]
    cues = np.zeros((*grid, num_classes), bool)
    labels = np.zeros(num_classes, bool)
    labels[0] = True
    for c in np.unique(g):
        d = ndimage.distance_transform_edt(g == c)
        cues[..., c] = d >= (0.55 if c == 0 else 0.5) * d.max()
        labels[c] = True
    return g, cues, labels


def synthetic_batch(n: int, size: int, grid: tuple[int, int], num_classes: int,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """A DSRG batch: image, cues, labels, grid_mask (the ground truth on the grid) and valid.

    image uint8[n, size, size, 3], cues bool[n, h, w, C], labels bool[n, C], grid_mask
    uint8[n, h, w], valid bool[n]."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"image": [], "cues": [], "labels": [], "grid_mask": []}
    for _ in range(n):
        image, mask = synthetic_scene(rng, (size, size), num_classes)
        g, cues, labels = grid_cues(mask, grid, num_classes)
        for k, v in zip(("image", "cues", "labels", "grid_mask"), (image, cues, labels, g)):
            out[k].append(v)
    batch = {k: np.stack(v) for k, v in out.items()}
    batch["valid"] = np.ones(n, bool)
    return batch


def confident_probs(grid_mask: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """float32[B, h, w, C] smooth, partly right probability maps (a net in training).

    Softmax of 2.5 x one-hot(mask) + blurred noise; after the CRF, growth covers ~70% of the
    grid."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(*grid_mask.shape, num_classes)),
                                    (0, 1, 1, 0)) * 6.0
    logits = 2.5 * np.eye(num_classes)[grid_mask] + noise
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Setting:
    """One row: a network with its (random-init) variables, input convention, config, batch."""
    name: str
    model: Any
    variables: Any
    convention: Any
    dsrg: DSRGConfig
    batch: dict[str, np.ndarray]
    grid: tuple[int, int]


def build_setting(name: str, tiny: bool) -> Setting:
    """The `Setting` of `name`: one of VOC_MODELS or "small"; the lattice CRF either way.

    A VOC_MODELS net: VOC, batch 20, 321x321, 21 classes, Caffe input. "small": the digits config's
    net, 65x65, 11 classes, batch 4."""
    if name == "small":
        cfg = digits_config()
        model = model_for(cfg.model, "seg", cfg.data.num_classes)
        convention = get_input_convention(cfg.data.input_convention)
        num_classes, size, batch = cfg.data.num_classes, 65, 4
    else:
        num_classes = 21
        model = create_model(name, num_classes=num_classes)
        convention = get_input_convention("caffe")
        size, batch = (65, 2) if tiny else (321, DSRGConfig().optim.batch_size)
    dsrg = dataclasses.replace(DSRGConfig(), crf_kernel="lattice")
    dsrg = dataclasses.replace(dsrg, optim=dataclasses.replace(dsrg.optim, batch_size=batch))
    variables = jax.jit(functools.partial(model.init, train=False))(
        jax.random.key(1), jnp.zeros((1, 65, 65, 3)))
    if "batch_stats" in variables:
        # He init with identity batch norm makes a random ResNet-101's layer4 reach ~1e7 and the
        # first update overflow: scale each bottleneck's last BN (the residual branch) by 0.2.
        variables = jax.tree_util.tree_map_with_path(
            lambda p, a: a * 0.2 if "bn3" in jax.tree_util.keystr(p)
            and "scale" in jax.tree_util.keystr(p) else a, variables)
    shape = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                           jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).shape
    grid = (int(shape[1]), int(shape[2]))
    return Setting(name, model, variables, convention, dsrg,
                   synthetic_batch(batch, size, grid, num_classes), grid)


# ----------------------------------------------------------------------------------- timing


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, Any]:
    """Seconds of `fn()` until its outputs are ready: the first call, then a median.

    The median is over `repeats` calls after `warmup` calls (the first included)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn())
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t0)
    return {"first_s": first, "median_s": statistics.median(runs), "runs_s": runs}


def peak_device_bytes() -> int | str:
    """The device's peak bytes in use so far (`memory_stats`), or "n/a" where unreported."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:     # backends without memory statistics
        stats = {}
    return int(stats["peak_bytes_in_use"]) if "peak_bytes_in_use" in stats else "n/a"


# ---------------------------------------------------------------------- part 1: our step


def time_our_step(s: Setting, repeats: int, dtype: str = "float32") -> dict[str, Any]:
    """Our DSRG train step on a 1-device mesh: compiled ahead of time, then timed.

    `dtype`: the nets' compute dtype (`model.dtype`; "bfloat16" keeps float32 parameters, optimiser
    state, CRF, growth and losses, as `--dtype bfloat16` in training)."""
    mesh = make_mesh(1)
    model = s.model.clone(dtype=jnp.dtype(dtype))
    # The step donates its state: copies, so that the setting's variables stay alive.
    variables = jax.tree.map(lambda a: jnp.array(a, copy=True), s.variables)
    params = variables.pop("params")
    frozen = variables
    tx = caffe_sgd(params, s.dsrg.optim)
    state = replicate(S.create_state(params, tx, frozen=frozen, seed=1), mesh)
    batch = global_batch(s.batch, mesh)
    step = S.make_dsrg_train_step(model, tx, s.convention, mesh, s.dsrg)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    try:
        m = compiled.memory_analysis()
        xla_bytes = int(m.argument_size_in_bytes + m.output_size_in_bytes
                        + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:     # not every backend reports it
        xla_bytes = "n/a"
    box: dict[str, Any] = {"state": state}

    def call():
        box["state"], box["aux"] = compiled(box["state"], batch)
        return box["state"], box["aux"]

    t = time_calls(call, repeats)
    grown = np.asarray(box["aux"]["images"]["grown"])
    b = len(s.batch["image"])
    ms = 1000 * t["median_s"]
    dsrg_steps, retrain_steps = DSRGConfig().optim.max_steps, RetrainConfig().optim.max_steps
    return {
        "model": s.name, "dtype": dtype, "batch": b, "ms_per_step": ms,
        "images_per_s": b / t["median_s"],
        "compile_s": compile_s, "first_call_s": t["first_s"],
        "runs_ms": [1000 * x for x in t["runs_s"]],
        "peak_device_bytes": peak_device_bytes(), "xla_step_bytes": xla_bytes,
        "cue_fraction": float(s.batch["cues"].any(-1).mean()),
        "grown_fraction": float(grown.any(-1).mean()),
        "dsrg_stage_steps": dsrg_steps, "dsrg_stage_h": dsrg_steps * ms / 3.6e6,
        "retrain_steps": retrain_steps, "retrain_h": retrain_steps * ms / 3.6e6,
        "retrain_note": "at the DSRG step's ms/step (the retrain step, batch "
                        f"{RetrainConfig().optim.batch_size} without CRF and growth, is not "
                        "timed): an upper bound",
    }


# --------------------------------------------------------------------- part 2: the peer


def resnet_twin(model: Any, variables: Any):
    """torch twin of `DeepLabV2ResNet101` with its JAX weights: (module, forward).

    module: an `nn.ModuleDict` of the convolutions ("backbone__layer3_5__conv2", ...) and the
    frozen batch norms as per-channel (mul, add), `requires_grad=False`; forward:
    float[B, 3, H, W] -> logits float[B, C, h, w], dropout when `module.training`.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    params, stats = variables["params"], variables["batch_stats"]
    convs, norms = nn.ModuleDict(), nn.ParameterDict()

    def at(tree, key):
        for part in key.split("__"):
            tree = tree[part]
        return tree

    def add_conv(key: str, stride: int = 1, dilation: int = 1) -> None:
        p = at(params, key)
        k = np.asarray(p["kernel"])            # HWIO
        conv = nn.Conv2d(k.shape[2], k.shape[3], k.shape[:2], stride,
                         padding=dilation * (k.shape[0] // 2), dilation=dilation,
                         bias="bias" in p)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
            if "bias" in p:
                conv.bias.copy_(torch.from_numpy(np.asarray(p["bias"]).copy()))
        convs[key] = conv

    def add_norm(key: str) -> None:
        st = {k: np.asarray(v, np.float32) for k, v in at(stats, key).items()}
        mul = st["scale"] * (1.0 / np.sqrt(st["var"] + 1e-5))
        for name, v in (("mul", mul), ("add", st["bias"] - st["mean"] * mul)):
            norms[f"{key}__{name}"] = nn.Parameter(torch.from_numpy(v.reshape(1, -1, 1, 1)),
                                                   requires_grad=False)

    geometry = ResNetTrunk(blocks=model.blocks)
    add_conv("backbone__conv1", stride=2)
    add_norm("backbone__bn1")
    blocks = []
    for stage, (n, stride, dilation) in enumerate(
            zip(geometry.blocks, geometry.strides, geometry.dilations), start=1):
        for i in range(n):
            key = f"backbone__layer{stage}_{i}"
            add_conv(f"{key}__conv1")
            add_conv(f"{key}__conv2", stride if i == 0 else 1, dilation)
            add_conv(f"{key}__conv3")
            for j in (1, 2, 3):
                add_norm(f"{key}__bn{j}")
            project = "downsample_conv" in at(params, key)
            if project:
                add_conv(f"{key}__downsample_conv", stride if i == 0 else 1)
                add_norm(f"{key}__downsample_bn")
            blocks.append((key, project))
    heads = [f"aspp_{i}__classifier" for i in range(1, len(model.dilations) + 1)]
    for key, d in zip(heads, model.dilations):
        add_conv(key, dilation=d)
    module = nn.ModuleDict({"convs": convs, "norms": norms})

    def bn(key, x):
        return x * norms[f"{key}__mul"] + norms[f"{key}__add"]

    def forward(x):
        x = F.relu(bn("backbone__bn1", convs["backbone__conv1"](x)))
        x = F.max_pool2d(x, 3, 2, 1)
        for key, project in blocks:
            y = F.relu(bn(f"{key}__bn1", convs[f"{key}__conv1"](x)))
            y = F.relu(bn(f"{key}__bn2", convs[f"{key}__conv2"](y)))
            y = bn(f"{key}__bn3", convs[f"{key}__conv3"](y))
            if project:
                x = bn(f"{key}__downsample_bn", convs[f"{key}__downsample_conv"](x))
            x = F.relu(y + x)
        x = F.dropout(x, model.dropout_rate, module.training)
        return sum(convs[key](x) for key in heads)

    return module, forward


def torch_twin(bench, s: Setting):
    """(module, forward) of the torch twin with the JAX weights.

    benchmarks/dsrg_step.py's `TorchDeepLab` for the small net and VGG16, `resnet_twin` for
    ResNet-101."""
    if s.name == "deeplab_resnet101":
        return resnet_twin(s.model, s.variables)
    kind = "digits" if s.name == "small" else "vgg16"
    net = bench.make_torch_net(dataclasses.replace(s, name=kind))
    return net, net


def check_twin(s: Setting, module, forward) -> float:
    """Max |JAX - torch| of the eval-mode logits of one image over max |logits|; raises above 1e-4.

    JAX runs at float32 matmul precision, torch on the host."""
    import torch

    image = s.batch["image"][:1]
    apply = jax.jit(functools.partial(s.model.apply, train=False))
    with jax.default_matmul_precision("highest"):
        ref = np.asarray(apply(s.variables, s.convention.normalize(jnp.asarray(image))))
    module.eval()
    x = np.ascontiguousarray(s.convention.normalize(image).transpose(0, 3, 1, 2))
    with torch.no_grad():
        out = forward(torch.from_numpy(x)).permute(0, 2, 3, 1).numpy()
    err = float(np.abs(out - ref).max() / max(1.0, float(np.abs(ref).max())))
    if out.shape != ref.shape or err > 1e-4:
        raise AssertionError(f"torch twin differs from JAX: shapes {out.shape} / {ref.shape}, "
                             f"relative max error {err:.1e}")
    return err


class PeerStep:
    """The PyTorch ports' DSRG step: network, losses and update on `device`; CRF and growth on host.

    The CRF (pydensecrf2) and the growth (scipy) run on the host, image by image. `__call__` returns
    the seconds of each phase and of the whole step."""

    def __init__(self, bench, s: Setting, module, forward, device):
        import torch

        self.torch, self.bench, self.s, self.forward, self.device = torch, bench, s, forward, device
        module.to(device).train()
        # benchmarks/dsrg_step.py's lr multipliers and decay; any module with "classifier"
        # in its classifier names takes them.
        groups = bench.TorchDeepLab.param_groups(module, s.dsrg.optim)
        self.opt = torch.optim.SGD(groups, lr=s.dsrg.optim.base_lr,
                                   momentum=s.dsrg.optim.momentum)
        self.host_images = torch.from_numpy(s.batch["image"])
        self.images = self.host_images.to(device)       # the batch is on the device, as ours
        conv = s.convention
        self.bgr = conv.channel_order == "BGR"
        self.mean = torch.tensor(conv.mean, device=device)
        self.std = torch.tensor(conv.std, device=device)
        self.grow = S.grow_options(s.dsrg)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def __call__(self) -> dict[str, float]:
        torch, bench, s = self.torch, self.bench, self.s
        t0 = time.perf_counter()
        x = self.images.float()
        x = ((x.flip(-1) if self.bgr else x) - self.mean) / self.std
        probs = bench.torch_probs(self.forward(x.permute(0, 3, 1, 2).contiguous()))
        # The CRF's image (BGR, as `crf_image`) from the host batch while the device works.
        small = np.ascontiguousarray(bench.torch_downsample(self.host_images, s.grid)[..., ::-1])
        p_np = probs.detach().cpu().numpy()               # device -> host
        t1 = time.perf_counter()
        q = np.stack([dense_crf_host(small[i], p_np[i], s.dsrg.crf) for i in range(len(p_np))])
        t2 = time.perf_counter()
        grown = dsrg_grow_scipy(q, s.batch["cues"], s.batch["labels"], **self.grow)
        t3 = time.perf_counter()
        q_t = torch.from_numpy(q).to(self.device)          # host -> device
        grown_t = torch.from_numpy(grown).to(self.device)
        loss = (bench.torch_balanced_seed_loss(probs, grown_t)
                + bench.torch_constrain_loss(probs, q_t))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sync()
        t4 = time.perf_counter()
        return {"forward + to host": t1 - t0, "CRF (host)": t2 - t1, "growth (host)": t3 - t2,
                "to device + loss + backward + update": t4 - t3, "step": t4 - t0}


def time_peer(s: Setting, repeats: int, torch_compile: str) -> list[dict[str, Any]]:
    """The peer step of one row: eager, then `torch.compile`; one entry per variant.

    `torch.compile` runs with torch_compile "on", or "auto" with a CUDA device. A variant that
    cannot run has a "skipped"."""
    import torch

    from benchmarks import dsrg_step as bench  # the torch twin and losses (imports torch)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    module, forward = torch_twin(bench, s)
    err = check_twin(s, module, forward)
    variants = [("eager", forward)]
    if torch_compile == "on" or (torch_compile == "auto" and device.type == "cuda"):
        variants.append(("torch.compile", torch.compile(forward)))
    out = []
    for name, fwd in variants:
        row = {"model": s.name, "variant": name, "device": str(device),
               "twin_forward_rel_err": err}
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step = PeerStep(bench, s, module, fwd, device)
            t0 = time.perf_counter()
            step()
            first = time.perf_counter() - t0
            step()
            phases = [step() for _ in range(repeats)]
        except Exception as e:     # e.g. torch.compile without a compiler
            log(f"peer {s.name} {name} failed:\n{traceback.format_exc()}")
            row["skipped"] = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            out.append(row)
            continue
        med = statistics.median(p["step"] for p in phases)
        b = len(s.batch["image"])
        row.update({
            "ms_per_step": 1000 * med, "images_per_s": b / med, "first_step_s": first,
            "runs_ms": [1000 * p["step"] for p in phases],
            "phases_ms": {k: 1000 * statistics.median(p[k] for p in phases)
                          for k in phases[0] if k != "step"},
            "peak_device_bytes": (int(torch.cuda.max_memory_allocated())
                                  if device.type == "cuda" else "n/a"),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "torch_cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": True,
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        })
        out.append(row)
        del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------- part 3: parts alone


def time_parts(s: Setting, repeats: int, host_repeats: int,
               image_hw: tuple[int, int]) -> dict[str, Any]:
    """Growth, the training CRF and multi-scale inference alone, device against host."""
    b, c = s.batch["cues"].shape[0], s.batch["cues"].shape[-1]
    crf_ok = has_pydensecrf()
    small = np.asarray(S.crf_image(jnp.asarray(s.batch["image"]), s.grid))
    probs = confident_probs(s.batch["grid_mask"], c)
    crf = jax.jit(lambda im, p: dense_crf(im, p, s.dsrg.crf, kernel="lattice"))
    small_d, probs_d = jnp.asarray(small), jnp.asarray(probs)
    out: dict[str, Any] = {}

    t_crf = time_calls(lambda: crf(small_d, probs_d), repeats)
    q_jax = crf(small_d, probs_d)
    row = {"batch": b, "grid": list(s.grid), "classes": c,
           "device_ms": 1000 * t_crf["median_s"], "device_compile_s": t_crf["first_s"]}
    if crf_ok:
        host = lambda: np.stack([dense_crf_host(small[i], probs[i], s.dsrg.crf)
                                 for i in range(b)])
        t_host = time_calls(host, host_repeats)
        agree = float((host().argmax(-1) == np.asarray(q_jax).argmax(-1)).mean())
        row.update(host_ms=1000 * t_host["median_s"], argmax_agreement=agree)
    else:
        row["host_skipped"] = NO_CRF
    out["crf"] = row

    q = np.asarray(q_jax)
    kw = S.grow_options(s.dsrg)
    cues_d, labels_d = jnp.asarray(s.batch["cues"]), jnp.asarray(s.batch["labels"])
    grow = jax.jit(lambda q_: dsrg_grow(q_, cues_d, labels_d, **kw))
    t_dev = time_calls(lambda: grow(q_jax), repeats)
    host_grow = lambda: dsrg_grow_scipy(q, s.batch["cues"], s.batch["labels"], **kw)
    t_host = time_calls(host_grow, repeats)
    grown = np.asarray(grow(q_jax))
    out["grow"] = {"batch": b, "device_ms": 1000 * t_dev["median_s"],
                   "device_compile_s": t_dev["first_s"], "host_ms": 1000 * t_host["median_s"],
                   "equal": bool(np.array_equal(grown, host_grow())),
                   "cue_fraction": float(s.batch["cues"].any(-1).mean()),
                   "grown_fraction": float(grown.any(-1).mean())}

    rng = np.random.default_rng(1)
    image, _ = synthetic_scene(rng, image_hw, c)
    images, hw = image[None], np.asarray([image_hw], np.int32)
    apply_fn = functools.partial(s.model.apply, train=False)
    infer = lambda crf_on: segment_canvases(
        apply_fn, images, hw, variables=s.variables, scales=DEFAULT_SCALES,
        normalize=s.convention.normalize, crf=crf_on, crf_processes=1)
    t_plain = time_calls(lambda: infer(False), repeats)
    row = {"model": s.name, "image_hw": list(image_hw), "scales": list(DEFAULT_SCALES),
           "ms": 1000 * t_plain["median_s"], "first_call_s": t_plain["first_s"]}
    if crf_ok:
        row["with_host_crf_ms"] = 1000 * time_calls(lambda: infer(True), host_repeats)["median_s"]
    else:
        row["with_host_crf_skipped"] = NO_CRF
    out["inference"] = row
    return out


# ---------------------------------------------------------------------- header and tables


def cuda_versions() -> dict[str, Any]:
    """CUDA-related versions: installed jax-cuda / nvidia runtime packages and jaxlib's report.

    The report is what jaxlib's cuda_versions module says (empty on a CPU-only install)."""
    out: dict[str, Any] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith(("jax-cuda", "jax_cuda", "nvidia-cuda-runtime", "nvidia-cudnn")):
            out[name] = dist.version
    try:
        from jax._src.lib import cuda_versions as cv
    except ImportError:
        cv = None
    for fn in ("cuda_runtime_get_version", "cuda_runtime_build_version", "cudnn_get_version",
               "cudnn_build_version", "cublas_get_version"):
        try:
            out[fn] = getattr(cv, fn)()
        except Exception:     # absent on CPU builds and in some releases
            pass
    return out


def environment(argv: list[str]) -> dict[str, Any]:
    """The header: device, versions, flags, the command line."""
    dev = jax.devices()[0]

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        info = jax.print_environment_info(return_string=True)
    except Exception as e:     # e.g. nvidia-smi hanging or missing
        info = f"unavailable: {e}"
    return {
        "device_kind": dev.device_kind, "platform": dev.platform,
        "device_count": jax.device_count(), "jax": jax.__version__,
        "jaxlib": version("jaxlib"), "cuda": cuda_versions(), "torch": version("torch"),
        "pydensecrf2": has_pydensecrf(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_client_env": {k: v for k, v in os.environ.items()
                           if k.startswith("XLA_PYTHON_CLIENT")},
        "python": platform.python_version(), "host_cpus": os.cpu_count(),
        "command": shlex.join(["python", "benchmarks/accelerator.py", *argv]),
        "environment_info": info,
    }


def _gib(x: Any) -> str:
    return f"{x / GIB:.2f}" if isinstance(x, int) else str(x)


def render(res: dict[str, Any]) -> str:
    """The markdown report of `main`'s results."""
    h, st = res["header"], res["setting"]
    lines = ["# DSRG step on the accelerator: ours (JAX, jitted) vs the PyTorch port", "",
             f"- device: {h['device_kind']} ({h['platform']}, {h['device_count']} device(s)); "
             f"jax {h['jax']}, jaxlib {h['jaxlib']}; CUDA {h['cuda'] or 'n/a'}; "
             f"torch {h['torch']}; pydensecrf2 {'yes' if h['pydensecrf2'] else 'no'}",
             f"- XLA_FLAGS={h['xla_flags']!r}; {h['xla_client_env']}; command: `{h['command']}`",
             f"- setting: batch {st['batch']}, input {st['input'][0]}x{st['input'][1]}, grid "
             f"{st['grid'][0]}x{st['grid'][1]}, {st['classes']} classes; cues on "
             f"{100 * st['cue_fraction']:.0f}% of the grid ({st['cues']}); {st['crf_kernel']} "
             f"CRF; {st['init']}; medians of {st['repeats']} runs (peer and host CRF: "
             f"{st['peer_repeats']})", ""]
    ours = {r["model"]: r for r in res.get("step", [])       # the float32 rows
            if "ms_per_step" in r and r.get("dtype", "float32") == "float32"}
    if "step" in res:
        lines += ["| model | compute dtype | batch | ms/step | images/s | compile (s) | peak "
                  f"device memory (GiB) | XLA step memory (GiB) | DSRG stage, "
                  f"{DSRGConfig().optim.max_steps} steps (h) | retrain, "
                  f"{RetrainConfig().optim.max_steps} steps (h, est.) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["step"]:
            if "ms_per_step" not in r:
                lines.append(f"| {r['model']} | {r.get('dtype', '')} | {r.get('error')} |")
                continue
            lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | "
                         f"{r['ms_per_step']:.1f} | "
                         f"{r['images_per_s']:.1f} | {r['compile_s']:.1f} | "
                         f"{_gib(r['peak_device_bytes'])} | {_gib(r['xla_step_bytes'])} | "
                         f"{r['dsrg_stage_h']:.2f} | {r['retrain_h']:.2f} |")
        lines += ["", f"Retrain estimate {res['step'][0].get('retrain_note', '')}. Peak "
                  "device memory: the process's peak so far (rows run in order); XLA step "
                  "memory: the compiled step's arguments + outputs + temporaries. Growth in the "
                  "step: random-init nets are unconfident, little grows (the JSON's "
                  "grown_fraction); part 3 times the growth on confident maps.", ""]
    if "peer" in res:
        lines += ["| model | peer | ms/step | images/s | first step (s) | phases (ms) | "
                  "ours / peer (time; < 1: ours faster) |", "|---|---|---|---|---|---|---|"]
        for r in res["peer"]:
            if "ms_per_step" not in r:
                lines.append(f"| {r['model']} | {r.get('variant', '')} | "
                             f"skipped: {r.get('skipped', r.get('error'))} | | | | |")
                continue
            ph = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_ms"].items())
            ratio = (f"{ours[r['model']]['ms_per_step'] / r['ms_per_step']:.3f}"
                     if r["model"] in ours else "n/a")
            lines.append(f"| {r['model']} | {r['variant']} ({r['device']}) | "
                         f"{r['ms_per_step']:.1f} | {r['images_per_s']:.1f} | "
                         f"{r['first_step_s']:.1f} | {ph} | {ratio} |")
        lines.append("")
    if "parts" in res:
        p = res["parts"]
        if "error" in p:
            lines += [f"parts: {p['error']}", ""]
        else:
            g, c, i = p["grow"], p["crf"], p["inference"]
            lines += ["| part | device (ms) | host (ms) | host / device | notes |",
                      "|---|---|---|---|---|",
                      f"| dsrg_grow vs dsrg_grow_scipy, batch {g['batch']} | "
                      f"{g['device_ms']:.2f} | {g['host_ms']:.2f} | "
                      f"{g['host_ms'] / g['device_ms']:.1f}x | equal: {g['equal']}; cues "
                      f"{100 * g['cue_fraction']:.0f}% -> grown {100 * g['grown_fraction']:.0f}% |"]
            host = (f"{c['host_ms']:.2f} | {c['host_ms'] / c['device_ms']:.1f}x"
                    if "host_ms" in c else f"skipped: {c['host_skipped']} |")
            lines.append(f"| lattice CRF vs pydensecrf2 per image, batch {c['batch']} at "
                         f"{c['grid'][0]}x{c['grid'][1]}, {c['classes']} classes | "
                         f"{c['device_ms']:.2f} | {host} | compile {c['device_compile_s']:.1f} s"
                         f"; argmax agreement {c.get('argmax_agreement', 'n/a')} |")
            crf = (f"{i['with_host_crf_ms']:.1f}" if "with_host_crf_ms" in i
                   else f"skipped: {i['with_host_crf_skipped']}")
            lines.append(f"| multi-scale inference {i['image_hw'][1]}x{i['image_hw'][0]} "
                         f"({i['model']}, scales {i['scales']}) | {i['ms']:.1f} | with host "
                         f"CRF: {crf} | | first call {i['first_call_s']:.1f} s |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true",
                    help="the digits config's small net, 4 images at 65x65 (for a CPU)")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    ap.add_argument("--peer-repeats", type=int, default=3,
                    help="timed runs of the peer step and of the host-CRF parts (at most "
                         "--repeats)")
    ap.add_argument("--parts", default="step,peer,parts", help="comma list of step, peer, parts")
    ap.add_argument("--models", default=None,
                    help=f"comma list (default {','.join(VOC_MODELS)}; --tiny: small)")
    ap.add_argument("--torch-compile", default="auto", choices=("auto", "on", "off"),
                    help="also time the peer under torch.compile (auto: on a CUDA device)")
    ap.add_argument("--dtypes", default="float32,bfloat16",
                    help="compute dtypes of our step (part 1), comma list of float32, bfloat16")
    a = ap.parse_args(argv)
    dtypes = [d for d in a.dtypes.split(",") if d]
    if not dtypes or not set(dtypes) <= {"float32", "bfloat16"}:
        ap.error(f"--dtypes: float32 and/or bfloat16, got {a.dtypes!r}")
    parts = {p for p in a.parts.split(",") if p}
    if not parts <= {"step", "peer", "parts"}:
        ap.error(f"--parts: unknown {sorted(parts - {'step', 'peer', 'parts'})}")
    models = a.models.split(",") if a.models else (["small"] if a.tiny else list(VOC_MODELS))
    host_repeats = max(1, min(a.peer_repeats, a.repeats))
    t_start = time.perf_counter()
    res: dict[str, Any] = {"header": environment(argv)}

    def save() -> None:     # after every part, so that a run cut short keeps what it measured
        res["wall_s"] = time.perf_counter() - t_start
        if a.out is not None:
            a.out.write_text(json.dumps(res, indent=1, default=str))

    settings = []
    for name in models:
        log(f"building {name}")
        settings.append(build_setting(name, a.tiny))
    s0 = settings[0]
    res["setting"] = {
        "batch": len(s0.batch["image"]), "input": list(s0.batch["image"].shape[1:3]),
        "grid": list(s0.grid), "classes": int(s0.batch["cues"].shape[-1]),
        "cue_fraction": float(s0.batch["cues"].any(-1).mean()), "crf_kernel": "lattice",
        "cues": "blobs in each region, 1-3 classes per image", "repeats": a.repeats,
        "peer_repeats": host_repeats, "init": "random init (ResNet: last BN of each "
                                              "bottleneck x0.2)"}
    for s in settings:
        if "step" in parts:
            for dtype in dtypes:
                log(f"part 1, our step: {s.name}, {dtype} compute")
                try:
                    res.setdefault("step", []).append(time_our_step(s, a.repeats, dtype))
                except Exception as e:     # report and go on to the other parts
                    log(traceback.format_exc())
                    res.setdefault("step", []).append({"model": s.name, "dtype": dtype,
                                                       "error": repr(e)[:300]})
                save()
        if "peer" in parts:
            log(f"part 2, the peer step: {s.name}")
            if not has_pydensecrf():
                res.setdefault("peer", []).append({"model": s.name, "skipped": NO_CRF})
                continue
            try:
                res.setdefault("peer", []).extend(time_peer(s, host_repeats, a.torch_compile))
            except Exception as e:
                log(traceback.format_exc())
                res.setdefault("peer", []).append({"model": s.name, "error": repr(e)[:300]})
            save()
    if "parts" in parts:
        log(f"part 3, parts alone ({s0.name})")
        try:
            res["parts"] = time_parts(s0, a.repeats, host_repeats,
                                      TINY_IMAGE_HW if a.tiny else VOC_IMAGE_HW)
        except Exception as e:
            log(traceback.format_exc())
            res["parts"] = {"error": repr(e)[:300]}
    save()
    print(render(res))
    print(f"\nwall {res['wall_s']:.0f} s")
    return res


if __name__ == "__main__":
    main()
