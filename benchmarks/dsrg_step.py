"""One full DSRG training step, side by side: our jitted JAX step against the same step in PyTorch.

The step, as the official training step: forward (dropout on) -> P = softmax + 1e-4, renormalised,
floored at 1e-4 -> dense CRF of P on the output grid, on the BGR image (`steps.crf_image`; the
official training CRF: unary -P, bilateral w 10, xy 80/12 px, rgb 13; Gaussian w 3, xy 3/12 px)
-> region growing from the original cues -> balanced seed loss on the grown cues + constrain loss
(official CRF pass-through gradient) -> backward -> SGD update (momentum 0.9, weight decay 5e-4,
lr multipliers 1/2/10/20).

JAX side: `dsrg_jax.train.steps.make_dsrg_train_step`, exactly as `run_dsrg` builds it (mesh of
all devices, `caffe_sgd`, the stage's input convention), on a batch that is already on the device.

PyTorch side (eager, as the official Caffe/Python code is organised): a torch.nn twin of the
network with the JAX initial weights copied in (forward checked equal before timing), the CRF by
pydensecrf2 image by image on the host (`dense_crf_host` with the config's `dsrg.crf`),
growth by `dsrg_grow_scipy` (numpy/scipy, as the official growth ran in Python), losses in torch,
`loss.backward()`, `torch.optim.SGD` (param groups for the lr multipliers and decay). torch SGD
keeps lr outside the momentum buffer (v = m v + g; w -= lr v), Caffe/ours inside (v = m v + lr g;
w -= v): identical while the lr is constant, which it is over the benchmark's steps.

Timing: warm-up excluded (JAX: compile + 1 call; torch: 2 steps), every step timed on its own
(JAX: until its outputs are ready), medians reported. The two sides run in one process, in
alternating blocks of `--steps` steps, `--repeats` times, so background load hits both alike.

Threads: by default torch uses one OpenMP thread per core and XLA its own default pool. On a CPU
shared with other jobs torch's OpenMP barriers collapse (5-15x slower steps when the load average
exceeds the core count), which flatters JAX; `--threads 1` runs both sides single-threaded (XLA
flags set before JAX starts), the comparison that stays fair under load. Read the block medians:
a block that is much slower than the others saw a load change.

  python benchmarks/dsrg_step.py --config digits --steps 5 --repeats 3 --threads 1 --profile
  python benchmarks/dsrg_step.py --config digits --steps 5 --repeats 3 \\
      --torch-variants nchw,channels_last
  python benchmarks/dsrg_step.py --config vgg16 --steps 5 --repeats 1 --threads 1 --jax-kernels auto

`--profile` also times the parts of the JAX step, each jitted on its own on the same inputs
(forward, CRF with both kernels, growth, forward+loss+backward, update), the PyTorch phases, and
the digits input pipeline (dsrg transform) against the step's demand (batch x steps/s).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

if __name__ == "__main__" and "--threads" in sys.argv:
    # XLA reads its CPU thread settings once, when JAX starts: set them before importing it.
    _n = int(sys.argv[sys.argv.index("--threads") + 1])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + (
        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if _n == 1 else
        f" intra_op_parallelism_threads={_n}")).strip()

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dsrg_jax.config import DSRGConfig, OptimConfig
from dsrg_jax.crf_host import dense_crf_host, dense_crf_host_batch
from dsrg_jax.data.digits import DigitsSource
from dsrg_jax.models import create_model, model_for
from dsrg_jax.ops.crf import dense_crf, resolve_kernel
from dsrg_jax.ops.grow import dsrg_grow
from dsrg_jax.ops.grow_scipy import dsrg_grow_scipy
from dsrg_jax.ops.losses import MIN_PROB, probs_from_logits
from dsrg_jax.pipeline.nets import output_grid
from dsrg_jax.pipeline.sources import dsrg_transform
from dsrg_jax.sharding import global_batch, make_mesh, replicate
from dsrg_jax.train import steps as S
from dsrg_jax.train.optim import caffe_sgd
from dsrg_jax.weights import get_input_convention

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONSTRAIN_CLIP = (0.05, 20.0)


# ------------------------------------------------------------------------------- the setting


@dataclasses.dataclass
class Setting:
    """One benchmark configuration: the JAX model and variables, the config, a host batch."""
    name: str
    model: Any
    variables: Any
    convention: Any
    dsrg: DSRGConfig
    batch: dict[str, np.ndarray]       # image uint8[B,H,W,3], labels bool[B,C], cues, valid
    grid: tuple[int, int]
    cue_origin: str
    torch_net: nn.Module | None = None


def _synthetic_cues(mask: np.ndarray, grid: int, num_classes: int, rng) -> np.ndarray:
    """bool[grid, grid, C] CAM-like cues from a ground-truth mask (used when no cue file exists).

    Foreground where >= 30% of a grid cell is the digit, background on 60% of the pure-bg cells."""
    out = np.zeros((grid, grid, num_classes), bool)
    for c in np.unique(mask):
        frac = cv2.resize((mask == c).astype(np.float32), (grid, grid),
                          interpolation=cv2.INTER_AREA)
        if c == 0:
            out[..., 0] = (frac > 0.999) & (rng.random((grid, grid)) < 0.6)
        else:
            out[..., int(c)] = frac >= 0.3
    return out


def digits_source(num_images: int, grid: tuple[int, int], cues_path: pathlib.Path | None):
    """The digits train split (56x56) with cues. Returns (source, origin).

    The cues: a cue file of the digits run (CueSet .npz, 15x15, 11 classes) when given, else
    synthetic CAM-like cues from the masks.

    Synthetic by default: they are deterministic, and a run's cue file depends on how well that
    run's CAM classifier trained."""
    if cues_path is not None and cues_path.is_file():
        from dsrg_jax.data.cues import load_cues

        cs = load_cues(cues_path)
        if tuple(cs.grid_size) == (15, 15) and cs.num_classes == 11:
            return (DigitsSource("train", num_images=min(num_images, len(cs)), size=56, cues=cs),
                    f"cue file {cues_path}")
        raise ValueError(f"{cues_path}: expected 15x15 cues of 11 classes, got "
                         f"{cs.grid_size} x {cs.num_classes}")
    rng = np.random.default_rng(0)
    base = DigitsSource("train", num_images=num_images, size=56)
    cues = {}
    for i in range(num_images):
        rec = base[i]
        cues[rec.image_id] = _synthetic_cues(rec.mask, 15, 11, rng)
    return (DigitsSource("train", num_images=num_images, size=56, cues=cues),
            "synthetic from the masks (fg: cells >= 30% digit; bg: 60% of the pure-bg cells)")


def make_batch(source, size: int, grid: tuple[int, int], batch: int, num_classes: int):
    """A host batch through the DSRG stage's own transform (warp + flip), classes padded to C."""
    tf = dsrg_transform(size, grid, with_mask=False, flip=True)
    rng = np.random.default_rng(0)
    exs = [tf(source[i], rng) for i in range(batch)]
    out = {k: np.stack([e[k] for e in exs]) for k in ("image", "labels", "cues")}
    pad = num_classes - out["labels"].shape[-1]
    if pad > 0:   # the VGG16 setting: VOC's 21 classes, digits use the first 11
        out["labels"] = np.concatenate([out["labels"], np.zeros((batch, pad), bool)], -1)
        out["cues"] = np.concatenate(
            [out["cues"], np.zeros((*out["cues"].shape[:3], pad), bool)], -1)
    out["valid"] = np.ones(batch, bool)
    return out


def _init(model, hw: tuple[int, int]):
    return jax.jit(functools.partial(model.init, train=False))(jax.random.key(1),
                                                              jnp.zeros((1, *hw, 3)))


def build_setting(name: str, cues_path: pathlib.Path | None, batch: int | None = None,
                  size: int | None = None) -> Setting:
    """The `Setting` of `name`: "digits" (56x56, batch 20) or "vgg16" (161x161, batch 2).

    (1) digits: SmallDeepLab of experiments/configs/digits.py, 56x56, batch 20, 11 classes;
    (2) vgg16: DeepLabV2VGG16 (random init, Caffe input), 161x161, batch 2, 21 classes."""
    sys.path.insert(0, str(ROOT))
    from experiments.configs.digits import get_config

    cfg = get_config()
    if name == "digits":
        model = model_for(cfg.model, "seg", cfg.data.num_classes)
        variables = _init(model, (64, 64))
        convention = get_input_convention(cfg.data.input_convention)
        dsrg = cfg.dsrg
        size = size or cfg.data.input_size
        batch = batch or dsrg.optim.batch_size
        num_classes = cfg.data.num_classes
    elif name == "vgg16":
        num_classes = 21
        model = create_model("deeplab_vgg16", num_classes=num_classes)
        variables = _init(model, (65, 65))
        convention = get_input_convention("caffe")
        dsrg = DSRGConfig(optim=OptimConfig(batch_size=batch or 2))   # the official defaults
        size = size or 161
        batch = batch or 2
    else:
        raise ValueError(f"--config must be digits or vgg16, got {name!r}")
    grid = output_grid(model, variables, size)
    source, origin = digits_source(max(batch, 64), grid, cues_path)
    hb = make_batch(source, size, grid, batch, num_classes)
    return Setting(name, model, variables, convention, dsrg, hb, grid, origin)


# ------------------------------------------------------------------------------ torch twin


class TorchDeepLab(nn.Module):
    """torch.nn twin of `SmallDeepLab` (kind="small") or `DeepLabV2VGG16` (kind="vgg16").

    Convolutions are stored under their Flax path joined by "__" (e.g. "backbone__conv1_1",
    "aspp_1__fc6"), so `load_flax` copies the JAX parameters one to one. NCHW in, NCHW out.
    """

    def __init__(self, kind: str, num_classes: int, *, widths=(32, 64, 128), head_width=128,
                 convs_per_block=2, dilations=(1, 2, 3, 4), dropout_rate=0.5):
        super().__init__()
        self.kind, self.dropout_rate = kind, dropout_rate
        self.layers = nn.ModuleDict()
        self.trunk: list[tuple[str, str]] = []     # (op, layer key or pool spec)
        cin = 3
        if kind == "small":
            for b, width in enumerate(widths):
                for i in range(convs_per_block):
                    self.layers[f"backbone__conv{b + 1}_{i + 1}"] = nn.Conv2d(cin, width, 3,
                                                                             padding=1)
                    self.layers[f"backbone__norm{b + 1}_{i + 1}"] = nn.GroupNorm(
                        min(8, width), width, eps=1e-6)   # flax GroupNorm epsilon
                    self.trunk += [("conv", f"backbone__conv{b + 1}_{i + 1}"),
                                   ("norm", f"backbone__norm{b + 1}_{i + 1}"), ("relu", "")]
                    cin = width
                if b < len(widths) - 1:
                    self.trunk.append(("maxpool2", ""))
            self.branch_keys = [(f"aspp_{i}_fc6", f"aspp_{i}_fc7", f"aspp_{i}_classifier")
                                for i in range(1, len(dilations) + 1)]
        else:
            from dsrg_jax.models.vgg16 import VGG16_CONVS

            for conv, width in VGG16_CONVS:
                d = 2 if conv.startswith("conv5") else 1
                self.layers[f"backbone__{conv}"] = nn.Conv2d(cin, width, 3, padding=d,
                                                             dilation=d)
                self.trunk += [("conv", f"backbone__{conv}"), ("relu", "")]
                if conv in ("conv1_2", "conv2_2", "conv3_3"):
                    self.trunk.append(("maxpool2", ""))
                elif conv == "conv4_3":
                    self.trunk.append(("maxpool1", ""))
                cin = width
            self.trunk += [("maxpool1", ""), ("avgpool1", "")]          # pool5, pool5a
            dilations, head_width = (6, 12, 18, 24), 1024
            self.branch_keys = [(f"aspp_{i}__fc6", f"aspp_{i}__fc7", f"aspp_{i}__classifier")
                                for i in range(1, 5)]
        self.dilations = tuple(dilations)
        for (k6, k7, kc), d in zip(self.branch_keys, self.dilations):
            self.layers[k6] = nn.Conv2d(cin, head_width, 3, padding=d, dilation=d)
            self.layers[k7] = nn.Conv2d(head_width, head_width, 1)
            self.layers[kc] = nn.Conv2d(head_width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op, key in self.trunk:
            if op in ("conv", "norm"):
                x = self.layers[key](x)
            elif op == "relu":
                x = F.relu(x)
            elif op == "maxpool2":   # Caffe 3/2/1 ceil mode = torch ceil_mode
                x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
            elif op == "maxpool1":
                x = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
            else:                    # Caffe AVE 3/1/1: padding counted
                x = F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)
        total = 0.0
        for k6, k7, kc in self.branch_keys:
            y = F.dropout(F.relu(self.layers[k6](x)), self.dropout_rate, self.training)
            y = F.dropout(F.relu(self.layers[k7](y)), self.dropout_rate, self.training)
            total = total + self.layers[kc](y)
        return total

    @torch.no_grad()
    def load_flax(self, params: Any) -> None:
        """Copies Flax params (HWIO kernels, GroupNorm scale/bias) into the twin."""
        for key, layer in self.layers.items():
            p = params
            for part in key.split("__"):
                p = p[part]
            if isinstance(layer, nn.Conv2d):
                layer.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1)
                                                    .copy()))
                layer.bias.copy_(torch.from_numpy(np.asarray(p["bias"]).copy()))
            else:
                layer.weight.copy_(torch.from_numpy(np.asarray(p["scale"]).copy()))
                layer.bias.copy_(torch.from_numpy(np.asarray(p["bias"]).copy()))

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        """SGD param groups with the Caffe lr multipliers and decay of `caffe_sgd`."""
        groups: dict[tuple[float, float], list] = {}
        for name, prm in self.named_parameters():
            bias = name.endswith(".bias")
            if "classifier" in name:
                mult = optim.classifier_bias_lr_mult if bias else optim.classifier_lr_mult
            else:
                mult = optim.bias_lr_mult if bias else 1.0
            decay = 0.0 if bias else optim.weight_decay
            groups.setdefault((mult, decay), []).append(prm)
        return [{"params": ps, "lr": optim.base_lr * m, "weight_decay": wd}
                for (m, wd), ps in groups.items()]


def make_torch_net(s: Setting) -> TorchDeepLab:
    if s.name == "digits":
        m = s.model
        net = TorchDeepLab("small", m.num_classes, widths=tuple(m.widths),
                           head_width=m.head_width, convs_per_block=m.convs_per_block,
                           dilations=tuple(m.dilations), dropout_rate=m.dropout_rate)
    else:
        net = TorchDeepLab("vgg16", s.model.num_classes, dropout_rate=s.model.dropout_rate)
    net.load_flax(s.variables["params"])
    return net


def torch_input(images: torch.Tensor, convention) -> torch.Tensor:
    """uint8[B, H, W, 3] RGB -> normalised float32[B, 3, H, W] (the convention's order)."""
    x = images.float()
    if convention.channel_order == "BGR":
        x = x.flip(-1)
    x = (x - torch.tensor(convention.mean)) / torch.tensor(convention.std)
    return x.permute(0, 3, 1, 2).contiguous()


def torch_downsample(images: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """The RGB image on the grid, uint8[B, h, w, 3] numpy: corner-aligned bilinear zoom, rounded.

    Equal to `downsample_image` with mean 0. The CRF gets its channels reversed, as
    `steps.crf_image` (the mean it subtracts and adds back cancels)."""
    x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=grid, mode="bilinear",
                      align_corners=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def torch_floor(probs: torch.Tensor) -> torch.Tensor:
    """`P < 1e-4 -> 1e-4` forward, gradient of P unchanged (as `steps.caffe_floor`)."""
    return probs + (probs.clamp_min(MIN_PROB) - probs).detach()


def torch_probs(logits_nchw: torch.Tensor) -> torch.Tensor:
    """NHWC probabilities: softmax + 1e-4, renormalised (official SoftmaxLayer)."""
    p = torch.softmax(logits_nchw.permute(0, 2, 3, 1), dim=-1) + MIN_PROB
    return p / p.sum(-1, keepdim=True)


def torch_balanced_seed_loss(probs: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
    """Per image: -sum_{S_bg} log P_0 / |S_bg| - sum_{c>=1} sum_{S_c} log P_c / |S_fg|; mean."""
    logp = torch.log(probs)
    cues = cues.to(probs.dtype)
    n_bg = cues[..., 0].sum((1, 2)).clamp_min(MIN_PROB)
    n_fg = cues[..., 1:].sum((1, 2, 3)).clamp_min(MIN_PROB)
    bg = -(cues[..., 0] * logp[..., 0]).sum((1, 2)) / n_bg
    fg = -(cues[..., 1:] * logp[..., 1:]).sum((1, 2, 3)) / n_fg
    return (bg + fg).mean()


def torch_constrain_loss(probs: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """mean_{n,h,w} sum_c Q log(clip(Q / P, 0.05, 20)), with the official CRF backward.

    The backward is dP += (1 - Q) * dL/dlogQ: log Q enters as a constant whose derivative in P
    is (1 - Q)."""
    log_q = torch.log(q) + (1.0 - q) * (probs - probs.detach())
    qq = torch.exp(log_q)
    return (qq * torch.log(torch.clamp(qq / probs, *CONSTRAIN_CLIP))).sum(-1).mean()


class TorchStep:
    """The DSRG step in eager PyTorch; `__call__` returns per-phase seconds."""

    def __init__(self, s: Setting, net: TorchDeepLab, crf_processes: int = 1,
                 channels_last: bool = False):
        self.s, self.net, self.channels_last = s, net, channels_last
        if channels_last:
            net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(net.param_groups(s.dsrg.optim), lr=s.dsrg.optim.base_lr,
                                   momentum=s.dsrg.optim.momentum)
        self.images = torch.from_numpy(s.batch["image"])
        self.cues = s.batch["cues"]
        self.labels = s.batch["labels"]
        self.crf = s.dsrg.crf
        self.grow = S.grow_options(s.dsrg)
        self.crf_processes = crf_processes
        self.last: dict[str, Any] = {}

    def crf_host(self, small: np.ndarray, probs: np.ndarray) -> np.ndarray:
        if self.crf_processes > 1:
            return dense_crf_host_batch(small, probs, self.crf, processes=self.crf_processes)
        return np.stack([dense_crf_host(small[i], probs[i], self.crf)
                         for i in range(len(probs))])

    def __call__(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.net.train()
        x = torch_input(self.images, self.s.convention)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.net(x)
        probs = torch_floor(torch_probs(logits))
        small = torch_downsample(self.images, self.s.grid)
        crf_small = np.ascontiguousarray(small[..., ::-1])  # BGR, as `steps.crf_image`
        p_np = probs.detach().numpy()
        t1 = time.perf_counter()
        q = self.crf_host(crf_small, p_np)
        t2 = time.perf_counter()
        grown = dsrg_grow_scipy(q, self.cues, self.labels, **self.grow)
        t3 = time.perf_counter()
        q_t, grown_t = torch.from_numpy(q), torch.from_numpy(grown)
        loss = torch_balanced_seed_loss(probs, grown_t) + torch_constrain_loss(probs, q_t)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        self.opt.step()
        t5 = time.perf_counter()
        self.last = {"q": q, "grown": grown, "small": small, "crf_small": crf_small,
                     "loss": float(loss.detach())}
        return {"forward": t1 - t0, "crf": t2 - t1, "grow": t3 - t2, "loss+backward": t4 - t3,
                "update": t5 - t4, "step": t5 - t0}


# -------------------------------------------------------------------------------- JAX side


def _copy(tree):
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


class JaxStep:
    """`make_dsrg_train_step` as `run_dsrg` builds it.

    `__call__` returns seconds (outputs ready).
    """

    def __init__(self, s: Setting, crf_kernel: str = "auto"):
        self.mesh = make_mesh()
        self.cfg = dataclasses.replace(s.dsrg, crf_kernel=crf_kernel)
        params, frozen = dict(s.variables), {}
        params = _copy(params.pop("params"))
        self.tx = caffe_sgd(params, self.cfg.optim)
        self.state = replicate(S.create_state(params, self.tx, frozen=frozen, seed=1), self.mesh)
        self.step = S.make_dsrg_train_step(s.model, self.tx, s.convention, self.mesh, self.cfg)
        self.batch = global_batch(s.batch, self.mesh)
        self.compile_s = None
        self.last = None

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.state, aux = self.step(self.state, self.batch)
        jax.block_until_ready((self.state, aux))
        dt = time.perf_counter() - t0
        if self.compile_s is None:
            self.compile_s = dt
        self.last = aux
        return dt


# ------------------------------------------------------------------------------- checking


def check_forward(s: Setting, net: TorchDeepLab) -> float:
    """Max |JAX logits - torch logits| (eval mode, same weights), relative to max |logits|.

    Raises if above 1e-4."""
    x = s.convention.normalize(jnp.asarray(s.batch["image"], jnp.float32))
    ref = np.asarray(jax.jit(functools.partial(s.model.apply, train=False))(s.variables, x))
    net.eval()
    with torch.no_grad():
        out = net(torch_input(torch.from_numpy(s.batch["image"]), s.convention))
    out = out.permute(0, 2, 3, 1).numpy()
    err = float(np.max(np.abs(out - ref)) / max(1.0, float(np.max(np.abs(ref)))))
    if out.shape != ref.shape or err > 1e-4:
        raise AssertionError(f"torch twin forward differs from JAX: shapes {out.shape} vs "
                             f"{ref.shape}, relative max error {err:.2e}")
    return err


def check_step_parts(s: Setting, tstep: TorchStep) -> dict[str, Any]:
    """After a torch step: checks its CRF image and grown cues equal the JAX step's.

    Its CRF image equals the JAX step's `steps.crf_image` (BGR, to 1 grey level) and its grown cues
    equal `dsrg_grow` (JAX) on the same CRF output."""
    last = tstep.last
    ref_small = np.asarray(S.crf_image(jnp.asarray(s.batch["image"]), s.grid))
    small_diff = int(np.max(np.abs(ref_small.astype(int) - last["crf_small"].astype(int))))
    grow_kw = S.grow_options(s.dsrg)
    grown_jax = np.asarray(dsrg_grow(jnp.asarray(last["q"]), jnp.asarray(s.batch["cues"]),
                                     jnp.asarray(s.batch["labels"]), **grow_kw))
    if small_diff > 1 or not np.array_equal(grown_jax, last["grown"]):
        raise AssertionError(f"torch step inputs differ: image diff {small_diff}, grown equal "
                             f"{np.array_equal(grown_jax, last['grown'])}")
    return {"crf_image_max_diff": small_diff,
            "grown_fraction": float(last["grown"].any(-1).mean()),
            "cue_fraction": float(s.batch["cues"].any(-1).mean())}


# ------------------------------------------------------------------------------- profiling


def _median_time(fn: Callable[[], Any], n: int) -> float:
    jax.block_until_ready(fn())    # compile / warm up
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def profile_jax(s: Setting, n: int) -> dict[str, float]:
    """Seconds (median of n) of the JAX step's parts, each jitted on its own, same inputs."""
    model, conv, cfg = s.model, s.convention, s.dsrg
    params = _copy(s.variables["params"])
    tx = caffe_sgd(params, cfg.optim)
    opt_state = tx.init(params)
    image = jnp.asarray(s.batch["image"])
    cues, labels = jnp.asarray(s.batch["cues"]), jnp.asarray(s.batch["labels"])
    valid = jnp.asarray(s.batch["valid"])
    key = jax.random.key(0)
    grow_kw = S.grow_options(cfg)

    def forward(p):
        x = conv.normalize(image.astype(jnp.float32))
        logits = S.apply_with_dropout(model, {"params": p}, x, key)
        probs = S.caffe_floor(probs_from_logits(logits))
        return probs, S.crf_image(image, probs.shape[1:3])

    fwd = jax.jit(forward)
    probs, small = fwd(params)
    out = {"forward (+softmax, CRF image)": _median_time(lambda: fwd(params), n)}
    qs = {}
    for kernel in ("lattice", "exact"):
        crf = jax.jit(lambda sm, pr, k=kernel: dense_crf(sm, pr, cfg.crf, kernel=k))
        qs[kernel] = crf(small, probs)
        out[f"CRF, kernel={kernel}"] = _median_time(lambda c=crf: c(small, probs), n)
    q = qs[resolve_kernel(cfg.crf_kernel, probs.shape)]
    grow = jax.jit(lambda q_: dsrg_grow(q_, cues, labels, **grow_kw))
    grown = grow(q)
    out["growth"] = _median_time(lambda: grow(q), n)

    def loss(p):
        pr, _ = forward(p)
        return S.dsrg_losses(pr, q, grown, valid, cfg)["loss"]

    g = jax.jit(jax.grad(loss))
    grads = g(params)
    out["forward + loss + backward"] = _median_time(lambda: g(params), n)
    upd = jax.jit(lambda gr, st, p: tx.update(gr, st, p))
    out["update (caffe_sgd)"] = _median_time(lambda: upd(grads, opt_state, params), n)
    return out


def profile_pipeline(s: Setting, cues_path, num_batches: int = 20) -> dict[str, float]:
    """images/s of the digits DSRG input pipeline (train transform, 2 loader threads)."""
    from dsrg_jax.data.pipeline import Pipeline, measure

    b = len(s.batch["image"])
    size = s.batch["image"].shape[1]
    source, _ = digits_source(300, s.grid, cues_path)
    tf = dsrg_transform(size, s.grid, with_mask=False, flip=True)
    with Pipeline(source, global_batch=b, transform=tf, process_index=0, process_count=1,
                  num_workers=2, prefetch=2) as pipe:
        runs = [measure(pipe, num_batches, warmup=2 if r == 0 else 0)["images_per_s"]
                for r in range(3)]
    return {"images_per_s_median": statistics.median(runs), "runs": runs}


# ------------------------------------------------------------------------------------ main


def _ms(x: float) -> str:
    return f"{1000 * x:.1f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="digits", choices=("digits", "vgg16"))
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side per repeat")
    ap.add_argument("--repeats", type=int, default=3, help="alternating blocks per side")
    ap.add_argument("--batch", type=int, default=None, help="override the config's batch")
    ap.add_argument("--size", type=int, default=None, help="override the input size")
    ap.add_argument("--jax-kernels", default="auto,lattice",
                    help="JAX step variants by DSRGConfig.crf_kernel (auto, exact, lattice; "
                         "default config: auto)")
    ap.add_argument("--torch-variants", default="nchw",
                    help="comma list of nchw (default memory format) and channels_last")
    ap.add_argument("--torch-crf-processes", type=int, default=1,
                    help="1: pydensecrf2 image by image in-process (official); >1: process pool")
    ap.add_argument("--cues", type=pathlib.Path, default=None,
                    help="a digits cue file (CueSet .npz); default: synthetic cues from masks")
    ap.add_argument("--only", default="both", choices=("both", "jax", "torch"),
                    help="time one side only (to check that the other does not slow it down)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of both sides: torch.set_num_threads and XLA's CPU intra-op "
                         "threads (default: torch the core count, XLA its own default)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads only (overrides --threads for torch)")
    ap.add_argument("--profile", action="store_true", help="also time the parts and the pipeline")
    a = ap.parse_args(argv)

    threads = os.cpu_count() or 1
    torch.set_num_threads(a.torch_threads or a.threads or threads)
    torch.manual_seed(0)
    s = build_setting(a.config, a.cues, a.batch, a.size)
    b, h = s.batch["image"].shape[:2]
    print(f"# DSRG step benchmark: config {a.config}, batch {b}, input {h}x{h}, grid "
          f"{s.grid[0]}x{s.grid[1]}, {s.batch['cues'].shape[-1]} classes; cues: {s.cue_origin}")
    print(f"# machine: {platform.processor() or platform.machine()}, {threads} cores, "
          f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} device), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), python "
          f"{platform.python_version()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; "
          f"load average at start {tuple(round(x, 2) for x in os.getloadavg())}")

    net = make_torch_net(s)
    err = check_forward(s, net)
    variants = [v for v in a.torch_variants.split(",") if v]
    if a.only == "jax":
        variants = variants[:1]
    tsteps = {v: TorchStep(s, net if i == 0 else make_torch_net(s), a.torch_crf_processes,
                           channels_last=v == "channels_last")
              for i, v in enumerate(variants)}
    tstep = tsteps[variants[0]]
    kernels = [k for k in a.jax_kernels.split(",") if k] if a.only != "torch" else []
    jsteps = {k: JaxStep(s, k) for k in kernels}

    for ts_ in tsteps.values():     # torch warm-up
        for _ in range(2):
            ts_()
    parts = check_step_parts(s, tstep)
    print(f"# checks: forward rel. max err {err:.1e}; CRF image max diff "
          f"{parts['crf_image_max_diff']}; torch growth == dsrg_grow (JAX) on the same Q; "
          f"cues cover {100 * parts['cue_fraction']:.0f}% of the grid, grown "
          f"{100 * parts['grown_fraction']:.0f}%")
    for k, js in jsteps.items():    # compile + one warm call
        js()
        js()
        print(f"# JAX ({k}) compile + first call: {js.compile_s:.1f} s")

    times: dict[str, list[float]] = {f"jax_{k}": [] for k in kernels}
    if a.only != "jax":
        times.update({f"torch_{v}": [] for v in variants})
    tparts: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    block_medians: dict[str, list[float]] = {k: [] for k in times}
    for _ in range(a.repeats):
        for k, js in jsteps.items():
            ts = [js() for _ in range(a.steps)]
            times[f"jax_{k}"] += ts
            block_medians[f"jax_{k}"].append(statistics.median(ts))
        if a.only == "jax":
            continue
        for v, step in tsteps.items():
            ts = []
            for _ in range(a.steps):
                tparts[v].append(step())
                ts.append(tparts[v][-1]["step"])
            times[f"torch_{v}"] += ts
            block_medians[f"torch_{v}"].append(statistics.median(ts))
    load_end = os.getloadavg()

    ref = f"torch_{variants[0]}"
    t_torch = statistics.median(times[ref]) if ref in times else float("nan")
    print(f"\n| side | ms/step (median of {a.steps * a.repeats}) | steps/s | images/s | "
          f"speedup vs PyTorch ({variants[0]}) | block medians (ms) |")
    print("|---|---|---|---|---|---|")
    for k in times:
        t = statistics.median(times[k])
        label = (f"PyTorch eager, {k[6:]} (pydensecrf2 + scipy growth)"
                 if k.startswith("torch") else
                 f"JAX jit, crf_kernel={k[4:]}" + (
                     f" (default: {resolve_kernel('auto', s.batch['cues'].shape)})"
                     if k == "jax_auto" else ""))
        print(f"| {label} | {_ms(t)} | {1 / t:.2f} | {b / t:.1f} | {t_torch / t:.2f}x | "
              f"{' '.join(_ms(x) for x in block_medians[k])} |")
    print(f"\n# load average at end {tuple(round(x, 2) for x in load_end)}")

    for v, tp in tparts.items():
        if tp:
            print(f"\nPyTorch step phases, {v} (median ms): " + ", ".join(
                f"{n} {_ms(statistics.median(p[n] for p in tp))}" for n in tp[0]))
    if a.profile:
        prof = profile_jax(s, max(5, a.steps))
        print("\nJAX parts, each jitted on its own (median ms):")
        for n, t in prof.items():
            print(f"  {n}: {_ms(t)}")
        bwd = prof["forward + loss + backward"] - prof["forward (+softmax, CRF image)"]
        print(f"  => loss + backward (difference): {_ms(bwd)}")
        if a.config == "digits" and kernels:
            pipe = profile_pipeline(s, a.cues)
            best = min(statistics.median(times[k]) for k in times if k.startswith("jax"))
            print(f"\nInput pipeline (digits dsrg transform, 2 threads): "
                  f"{pipe['images_per_s_median']:.0f} images/s (runs {pipe['runs']}); "
                  f"fastest step demands {b / best:.0f} images/s")


if __name__ == "__main__":
    main()
