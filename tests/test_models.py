"""Models and ImageNet weight import.

Oracles: Caffe's pooling arithmetic written out here, PyTorch's own shape rules, the parameter
counts of the DeepLab prototxt and of torchvision's ResNet-101, and plain-PyTorch VGG16 /
ResNet-101 modules written here with torchvision's parameter names (random weights saved as
.pth and .safetensors, converted by our loader).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrg_jax import convention as C
from dsrg_jax import weights as W
from dsrg_jax.models import (
    VGG16CAM,
    DeepLabV2ResNet101,
    DeepLabV2VGG16,
    classifier_mask,
    count_params,
    create_model,
)
from dsrg_jax.models import layers as L

torch = pytest.importorskip("torch")
tnn = torch.nn
safetensors_torch = pytest.importorskip("safetensors.torch")

RTOL = 1e-4  # relative error budget of the cross-framework checks
# Non-square, and 64 rows make Caffe's ceil-mode pooling differ from floor mode (64 -> 33, not 32).
EQUIV_HW = (64, 71)


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    print(f"relative error {err:.2e} over {ref.shape}")
    return err


def nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def torch_conv(kernel) -> torch.Tensor:
    """Flax HWIO kernel -> torch OIHW weight."""
    return torch.from_numpy(np.array(kernel).transpose(3, 2, 0, 1).copy())


def random_images(seed: int, hw=EQUIV_HW, batch: int = 2) -> np.ndarray:
    """RGB 0-255 float[B, H, W, 3], normalised with torchvision's ImageNet mean/std."""
    rgb = np.random.default_rng(seed).uniform(0, 255, (batch, *hw, 3)).astype(np.float32)
    return C.TORCHVISION.normalize(rgb)


# ----------------------------------------------------------------- PyTorch reference models
# Written from the torchvision / DeepLab-v2 definitions, not from our Flax code.

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M"]


class TorchVGG16(tnn.Module):
    """torchvision.models.vgg16 (names features.N / classifier.N), random init."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(tnn.MaxPool2d(2, 2))
            else:
                layers += [tnn.Conv2d(cin, v, 3, padding=1), tnn.ReLU(inplace=True)]
                cin = v
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
        self.classifier = tnn.Sequential(
            tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(4096, 1000),
        )
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, tnn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                                   * math.sqrt(2 / fan_in))
                    m.bias.uniform_(-0.1, 0.1, generator=gen)
                elif isinstance(m, tnn.Linear):
                    m.weight.normal_(0, 0.01, generator=gen)
                    m.bias.uniform_(-0.1, 0.1, generator=gen)


def caffe_vgg16_features(vgg: TorchVGG16, *, pool4_stride=1, conv5_dilation=2) -> tnn.Sequential:
    """VGG16 convs with DeepLab's prototxt pooling (3x3, pad 1, ceil mode), same indices."""
    layers = []
    n_pool = 0
    for m in vgg.features:
        if isinstance(m, tnn.MaxPool2d):
            n_pool += 1
            if n_pool <= 3:
                layers.append(tnn.MaxPool2d(3, 2, 1, ceil_mode=True))
            elif n_pool == 4:
                layers.append(tnn.MaxPool2d(3, pool4_stride, 1, ceil_mode=True))
            else:
                layers.append(tnn.Identity())  # pool5 belongs to the heads
        elif isinstance(m, tnn.Conv2d) and n_pool == 4:
            conv = tnn.Conv2d(m.in_channels, m.out_channels, 3, padding=conv5_dilation,
                              dilation=conv5_dilation)
            conv.load_state_dict(m.state_dict())
            layers.append(conv)
        else:
            layers.append(m)
    return tnn.Sequential(*layers)


class TorchDeepLabVGG16(tnn.Module):
    """DeepLab-v2 ASPP-L (DSRG deploy.prototxt), fc6/fc7 from VGG16 by the 20M recipe."""

    def __init__(self, vgg: TorchVGG16, classifiers: list[tuple[np.ndarray, np.ndarray]]):
        super().__init__()
        self.features = tnn.Sequential(
            caffe_vgg16_features(vgg),
            tnn.MaxPool2d(3, 1, 1, ceil_mode=True),  # pool5
            tnn.AvgPool2d(3, 1, 1),  # pool5a
        )
        w6 = vgg.classifier[0].weight.detach().view(4096, 512, 7, 7)[::4, :, ::3, ::3]
        b6 = vgg.classifier[0].bias.detach()[::4]
        w7 = vgg.classifier[3].weight.detach()[::4, ::4].reshape(1024, 1024, 1, 1)
        b7 = vgg.classifier[3].bias.detach()[::4]
        self.branches = tnn.ModuleList()
        for d, (k8, b8) in zip((6, 12, 18, 24), classifiers):
            fc6 = tnn.Conv2d(512, 1024, 3, padding=d, dilation=d)
            fc7 = tnn.Conv2d(1024, 1024, 1)
            fc8 = tnn.Conv2d(1024, k8.shape[-1], 1)
            with torch.no_grad():
                fc6.weight.copy_(w6), fc6.bias.copy_(b6)
                fc7.weight.copy_(w7), fc7.bias.copy_(b7)
                fc8.weight.copy_(torch_conv(k8)), fc8.bias.copy_(torch.from_numpy(np.array(b8)))
            self.branches.append(tnn.Sequential(fc6, tnn.ReLU(), tnn.Dropout(0.5), fc7,
                                                tnn.ReLU(), tnn.Dropout(0.5), fc8))

    def forward(self, x):
        f = self.features(x)
        return f, sum(b(f) for b in self.branches)


class TorchBottleneck(tnn.Module):
    """torchvision.models.resnet.Bottleneck with an explicit dilation."""

    def __init__(self, cin, width, stride, dilation):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride, padding=dilation, dilation=dilation,
                                bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(width * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != width * 4:
            self.downsample = tnn.Sequential(tnn.Conv2d(cin, width * 4, 1, stride, bias=False),
                                             tnn.BatchNorm2d(width * 4))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet101(tnn.Module):
    """torchvision.models.resnet101 names; layer3/layer4 dilated 2/4 (DeepLab-v2, stride 8)."""

    def __init__(self):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, width, stride, dilation) in enumerate(
                zip((3, 4, 23, 3), (64, 128, 256, 512), (1, 2, 1, 1), (1, 1, 2, 4)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(TorchBottleneck(cin, width, stride if j == 0 else 1, dilation))
                cin = width * 4
            setattr(self, f"layer{i}", tnn.Sequential(*blocks))
        self.avgpool = tnn.AdaptiveAvgPool2d(1)
        self.fc = tnn.Linear(2048, 1000)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, m in self.named_modules():
                if isinstance(m, tnn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen)
                                   * math.sqrt(2 / fan_in))
                elif isinstance(m, tnn.BatchNorm2d):
                    # Small gamma on the residual branch keeps 33 random blocks from exploding.
                    hi = 0.5 if name.endswith("bn3") else 1.5
                    m.weight.uniform_(0.1, hi, generator=gen)
                    m.bias.uniform_(-0.2, 0.2, generator=gen)
                    m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                    m.running_var.uniform_(0.5, 2.0, generator=gen)
        self.eval()

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    """A random VGG16 as torchvision .pth and as timm-named .safetensors."""
    torch.manual_seed(0)
    vgg = TorchVGG16().eval()
    sd = vgg.state_dict()
    d = tmp_path_factory.mktemp("vgg16")
    pth = d / "vgg16.pth"
    torch.save(sd, pth)
    # timm's names and shapes (timm.models.vgg._filter_fn).
    timm_sd = {}
    for k, v in sd.items():
        k2 = (k.replace("classifier.0", "pre_logits.fc1").replace("classifier.3", "pre_logits.fc2")
              .replace("classifier.6", "head.fc"))
        if k == "classifier.0.weight":
            v = v.reshape(4096, 512, 7, 7)
        elif k == "classifier.3.weight":
            v = v.reshape(4096, 4096, 1, 1)
        timm_sd[k2] = v.contiguous()
    st = d / "vgg16_timm.safetensors"
    safetensors_torch.save_file(timm_sd, st)
    del timm_sd
    return vgg, pth, st


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """A random ResNet-101 (frozen BN statistics) as .pth and .safetensors."""
    net = TorchResNet101()
    d = tmp_path_factory.mktemp("resnet101")
    pth, st = d / "resnet101.pth", d / "resnet101.safetensors"
    sd = net.state_dict()  # includes fc.* and bn*.num_batches_tracked, as torchvision's files
    torch.save(sd, pth)
    safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, st)
    return net, pth, st


def assert_trees_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


# --------------------------------------------------------------------------- output geometry


def caffe_pool(n: int, k: int = 3, s: int = 2, p: int = 1) -> int:
    """Caffe PoolingLayer::Reshape output size."""
    out = int(math.ceil((n + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= n + p:
        out -= 1
    return out


def caffe_deeplab_vgg_size(n: int) -> int:
    """pool1-3 stride 2, pool4 / pool5 / pool5a stride 1 (size-preserving), convs 'same'."""
    for _ in range(3):
        n = caffe_pool(n)
    for _ in range(3):
        n = caffe_pool(n, s=1)
    return n


def torch_pool_size(n: int, stride: int, ceil: bool) -> int:
    return tnn.functional.max_pool2d(torch.zeros(1, 1, n, 1), (3, 1), (stride, 1), (1, 0),
                                     ceil_mode=ceil).shape[2]


POOL_SHAPES = [(2, 7, 7, 3), (2, 8, 8, 3), (1, 9, 12, 2), (2, 64, 57, 4), (1, 5, 6, 1),
               (3, 1, 1, 2), (1, 2, 3, 2), (20, 56, 56, 8), (1, 41, 41, 2)]
POOL_GEOMETRIES = [(3, 2, 1), (3, 1, 1), (2, 2, 0), (3, 3, 1), (3, 2, 0)]


def _pool_input(shape, ties: bool, seed: int = 0) -> jnp.ndarray:
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    # ties: few distinct values and ReLU zeros, so most windows have several maxima.
    return jnp.asarray(np.maximum(np.round(x * 1.5), 0.0) if ties else x)


@pytest.mark.parametrize("geometry", POOL_GEOMETRIES)
def test_caffe_max_pool_slices_equal_reduce_window(geometry):
    """The strided-slice max pool (impl="slices"): forward bit for bit the reduce_window one
    (Caffe ceil-mode geometry, odd and even sizes); gradient: every window's cotangent to its
    first maximum in row-major order, as select_and_scatter routes it, ties included (integer
    cotangents, so the sums over overlapping windows are exact and the gradients are compared bit
    for bit)."""
    k, s, p = geometry

    @jax.jit
    def both(x, ct):
        outs = []
        for impl in ("slices", "reduce_window"):
            out, vjp = jax.vjp(lambda v, i=impl: L.caffe_max_pool(v, kernel=k, stride=s, pad=p,
                                                                  impl=i), x)
            outs += [out, vjp(ct)[0]]
        return outs

    for shape in POOL_SHAPES:
        if (shape[1] + 2 * p < k) or (shape[2] + 2 * p < k):
            continue
        out_shape = (shape[0], caffe_pool(shape[1], k, s, p), caffe_pool(shape[2], k, s, p),
                     shape[3])
        ct = jnp.asarray(np.random.default_rng(1).integers(-8, 9, size=out_shape), jnp.float32)
        for ties in (False, True):
            out, grad, ref, ref_grad = both(_pool_input(shape, ties), ct)
            assert out.shape == ref.shape == out_shape
            np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
            np.testing.assert_array_equal(np.asarray(grad), np.asarray(ref_grad))


@pytest.mark.parametrize("impl", ["slices", "reduce_window"])
@pytest.mark.parametrize("stride", [1, 2])
def test_caffe_max_pool_matches_torch_ceil_mode_with_gradient(stride, impl):
    """PyTorch's MaxPool2d(3, s, 1, ceil_mode=True) as a second oracle, gradients included
    (torch routes a tied window's gradient to its first maximum too)."""

    @jax.jit
    def pool(x, ct):
        out, vjp = jax.vjp(lambda v: L.caffe_max_pool(v, kernel=3, stride=stride, pad=1,
                                                          impl=impl), x)
        return out, vjp(ct)[0]

    for shape in POOL_SHAPES:
        out_shape = (shape[0], caffe_pool(shape[1], s=stride), caffe_pool(shape[2], s=stride),
                     shape[3])
        ct = np.random.default_rng(3).integers(-8, 9, size=out_shape).astype(np.float32)
        for ties in (False, True):
            x = _pool_input(shape, ties, seed=2)
            out, grad = pool(x, jnp.asarray(ct))
            xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
            ot = tnn.functional.max_pool2d(xt, 3, stride, 1, ceil_mode=True)
            np.testing.assert_array_equal(np.asarray(out),
                                          ot.detach().numpy().transpose(0, 2, 3, 1))
            ot.backward(torch.from_numpy(ct.transpose(0, 3, 1, 2).copy()))
            np.testing.assert_array_equal(np.asarray(grad), xt.grad.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("hw", [(321, 321), (513, 513), (320, 320), (353, 353), (321, 500)])
def test_deeplab_vgg16_output_grid_matches_caffe(hw):
    model = DeepLabV2VGG16(num_classes=21)
    x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    expected = tuple(caffe_deeplab_vgg_size(n) for n in hw)
    assert out.shape == (2, *expected, 21)
    # PyTorch's ceil-mode pooling (the same rule) as a second oracle.
    for n, m in zip(hw, expected):
        for stride in (2, 2, 2, 1, 1):
            n = torch_pool_size(n, stride, ceil=True)
        assert n == m
    if hw == (321, 321):
        assert expected == (41, 41)
    if hw == (513, 513):
        assert expected == (65, 65)


@pytest.mark.parametrize("hw", [(321, 321), (320, 353)])
def test_cam_classifier_grid_is_the_segmentation_grid(hw):
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    model = VGG16CAM(num_classes=20)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits, feats = jax.eval_shape(model.apply, variables, x)
    assert logits.shape == (1, 20)
    assert feats.shape == (1, *(caffe_deeplab_vgg_size(n) for n in hw), 1024)
    m16 = VGG16CAM(num_classes=20, output_stride=16)
    _, f16 = jax.eval_shape(m16.apply, jax.eval_shape(m16.init, jax.random.key(0), x), x)
    assert f16.shape[1:3] == tuple(caffe_pool(caffe_pool(caffe_pool(caffe_pool(n)))) for n in hw)


@pytest.mark.parametrize("hw,expected", [((321, 321), (41, 41)), ((513, 513), (65, 65)),
                                         ((320, 353), (40, 45))])
def test_deeplab_resnet101_output_stride_8(hw, expected):
    def torch_rule(n):  # conv1 7x7/2 p3, maxpool 3/2 p1 (floor), layer2 3x3/2 p1
        n = (n + 6 - 7) // 2 + 1
        n = torch_pool_size(n, 2, ceil=False)
        return (n + 2 - 3) // 2 + 1

    assert tuple(torch_rule(n) for n in hw) == expected
    model = DeepLabV2ResNet101(num_classes=11)
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    out = jax.eval_shape(model.apply, jax.eval_shape(model.init, jax.random.key(0), x), x)
    assert out.shape == (1, *expected, 11)


# ---------------------------------------------------------------------------- parameter counts


def test_deeplab_vgg16_aspp_l_has_37877652_parameters():
    model = create_model("deeplab_vgg16", num_classes=21)
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert count_params(params) == 37_877_652
    assert count_params(params["backbone"]) == 14_714_688  # VGG16 convs
    for i in range(1, 5):  # fc6 3x3x512x1024 + fc7 1024x1024 + fc8 1024x21, with biases
        assert count_params(params[f"aspp_{i}"]) == 5_790_741


def test_resnet101_parameter_count_matches_torchvision():
    model = DeepLabV2ResNet101(num_classes=21)
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    stats = v["batch_stats"]["backbone"]
    bn_affine = sum(count_params({k: bn[k] for k in ("scale", "bias")})
                    for bn in _bn_nodes(stats))
    # torchvision resnet101: 44,549,160 parameters, of which fc is 2048 * 1000 + 1000.
    assert count_params(v["params"]["backbone"]) + bn_affine == 44_549_160 - 2_049_000
    assert count_params({k: p for k, p in v["params"].items() if k != "backbone"}) == (
        4 * (3 * 3 * 2048 * 21 + 21))


def _bn_nodes(tree):
    if "mean" in tree:
        yield tree
        return
    for sub in tree.values():
        yield from _bn_nodes(sub)


def test_classifier_mask_marks_only_new_classifiers():
    model = DeepLabV2VGG16(num_classes=21)
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    marked = [jax.tree_util.keystr(p) for p, m in
              jax.tree_util.tree_leaves_with_path(classifier_mask(params)) if m]
    assert sorted(marked) == sorted(f"['aspp_{i}']['classifier']['{leaf}']"
                                    for i in range(1, 5) for leaf in ("bias", "kernel"))


# ------------------------------------------------------------------- dropout and frozen BN


def test_dropout_only_in_training():
    model = DeepLabV2VGG16(num_classes=3, dilations=(6,))  # one branch is enough here
    x = jnp.asarray(random_images(3, hw=(33, 33), batch=1))
    variables = model.init(jax.random.key(0), x)
    apply = jax.jit(model.apply, static_argnames="train")
    a = apply(variables, x)
    np.testing.assert_array_equal(a, apply(variables, x, rngs={"dropout": jax.random.key(1)}))
    t1 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    t2 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(t1, t2) and not np.allclose(t1, a)
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)


def test_resnet_batch_norm_is_frozen_and_outside_params():
    model = DeepLabV2ResNet101(num_classes=2, blocks=(1, 1, 1, 1))
    x = jnp.asarray(random_images(4, hw=(33, 33), batch=1))
    variables = model.init(jax.random.key(0), x)
    assert not any("mean" in jax.tree_util.keystr(p) or "var" in jax.tree_util.keystr(p)
                   for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"]))
    # Training mode needs no mutable collection: statistics are read, never updated.
    out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert out.shape == (1, 5, 5, 2)

    def loss(params):
        return model.apply({**variables, "params": params}, x).sum()

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])


# ------------------------------------------------------------- cross-framework equivalence


def test_deeplab_vgg16_matches_pytorch_from_pth_and_timm_safetensors(vgg_files):
    vgg, pth, st = vgg_files
    model = DeepLabV2VGG16(num_classes=21)
    init = model.init(jax.random.key(7), jnp.zeros((1, 64, 64, 3)))
    v_pth, info_pth = W.load_imagenet_weights(model, init, pth)
    v_st, info_st = W.load_imagenet_weights(model, init, st)
    assert (info_pth.naming, info_st.naming) == ("torchvision", "timm")
    assert info_pth.input_convention == info_st.input_convention == C.TORCHVISION
    assert_trees_equal(v_pth, v_st)
    p = v_pth["params"]

    # fc6/fc7 by the 20M recipe, index by index; identical in the four branches.
    w0 = vgg.classifier[0].weight.detach().numpy().reshape(4096, 512, 7, 7)
    k6 = np.asarray(p["aspp_1"]["fc6"]["kernel"])
    rng = np.random.default_rng(0)
    for o, i, kh, kw in zip(*(rng.integers(0, n, 20) for n in (1024, 512, 3, 3))):
        assert k6[kh, kw, i, o] == w0[4 * o, i, 3 * kh, 3 * kw]
    for i in range(2, 5):
        for layer in ("fc6", "fc7"):
            assert_trees_equal(p["aspp_1"][layer], p[f"aspp_{i}"][layer])
    # Classifiers keep their N(0, 0.01) init, zero bias, and differ between branches.
    k8 = [np.asarray(p[f"aspp_{i}"]["classifier"]["kernel"]) for i in range(1, 5)]
    assert all(abs(k.std() - 0.01) < 0.001 for k in k8) and not np.allclose(k8[0], k8[1])
    assert not np.any(np.asarray(p["aspp_1"]["classifier"]["bias"]))

    ref = TorchDeepLabVGG16(vgg, [(p[f"aspp_{i}"]["classifier"]["kernel"],
                                   p[f"aspp_{i}"]["classifier"]["bias"])
                                  for i in range(1, 5)]).eval()
    x = random_images(5)
    with torch.no_grad():
        ref_feats, ref_logits = ref(nchw(x))
    feats = jax.jit(lambda v, x: model.apply(v, x, method="features"))(v_pth, x)
    logits = jax.jit(model.apply)(v_pth, x)
    assert logits.shape == (2, 9, 10, 21)
    assert rel_err(feats, nhwc(ref_feats)) < RTOL
    assert rel_err(logits, nhwc(ref_logits)) < RTOL


def test_cam_classifier_matches_pytorch(vgg_files, tmp_path):
    vgg, pth, _ = vgg_files
    # A features-only file marked as Caffe-converted: the convention travels with the file.
    st = tmp_path / "vgg16_features.safetensors"
    features = {k: v for k, v in vgg.state_dict().items() if k.startswith("features.")}
    safetensors_torch.save_file(features, st, metadata={"input_convention": "caffe"})
    model = VGG16CAM(num_classes=20)
    variables, info = W.init_model(model, jax.random.key(3), weights=st)
    assert info.input_convention == C.CAFFE and info.to_json()["input_convention"] == "caffe"
    v_pth, info_pth = W.load_imagenet_weights(model, variables, pth, input_convention="caffe")
    assert info_pth.input_convention == C.CAFFE
    assert_trees_equal(variables, v_pth)

    p = variables["params"]
    conv6 = tnn.Conv2d(512, 1024, 3, padding=1)
    conv7 = tnn.Conv2d(1024, 1024, 3, padding=1)
    fc = tnn.Linear(1024, 20)
    with torch.no_grad():
        for m, name in ((conv6, "conv6"), (conv7, "conv7")):
            m.weight.copy_(torch_conv(p[name]["kernel"]))
            m.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
        fc.weight.copy_(torch.from_numpy(np.asarray(p["classifier"]["kernel"]).T.copy()))
        fc.bias.copy_(torch.from_numpy(np.array(p["classifier"]["bias"])))
        trunk = caffe_vgg16_features(vgg)
        x = random_images(6)
        ref_feats = torch.relu(conv7(torch.relu(conv6(trunk(nchw(x))))))
        ref_logits = fc(ref_feats.mean(dim=(2, 3)))
    logits, feats = jax.jit(model.apply)(variables, x)
    assert rel_err(feats, nhwc(ref_feats)) < RTOL
    assert rel_err(logits, ref_logits.numpy()) < RTOL
    # CAMs from the returned features: GAP of the CAM plus bias gives the logits.
    cams = jnp.einsum("bhwk,kc->bhwc", feats, p["classifier"]["kernel"])
    np.testing.assert_allclose(cams.mean(axis=(1, 2)) + p["classifier"]["bias"], logits,
                               rtol=1e-4, atol=1e-5)


def test_deeplab_resnet101_matches_pytorch_from_pth_and_safetensors(resnet_files):
    net, pth, st = resnet_files
    model = DeepLabV2ResNet101(num_classes=21)
    init = model.init(jax.random.key(8), jnp.zeros((1, 64, 64, 3)))
    v_pth, info = W.load_imagenet_weights(model, init, pth)
    v_st, _ = W.load_imagenet_weights(model, init, st)
    assert info.naming == "torchvision" and info.input_convention == C.TORCHVISION
    assert_trees_equal(v_pth, v_st)
    p = v_pth["params"]
    heads = []
    for i, d in enumerate((6, 12, 18, 24), start=1):
        conv = tnn.Conv2d(2048, 21, 3, padding=d, dilation=d)
        with torch.no_grad():
            conv.weight.copy_(torch_conv(p[f"aspp_{i}"]["classifier"]["kernel"]))
            conv.bias.copy_(torch.from_numpy(np.array(p[f"aspp_{i}"]["classifier"]["bias"])))
        heads.append(conv)
    x = random_images(9, batch=1)
    with torch.no_grad():
        ref_feats = net.features(nchw(x))
        ref_logits = sum(h(ref_feats) for h in heads)

    @jax.jit
    def forward(v, x):  # one pass; layer4 is the backbone's output
        logits, state = model.apply(
            v, x, capture_intermediates=lambda mdl, _: mdl.name == "backbone")
        return state["intermediates"]["backbone"]["__call__"][0], logits

    feats, logits = forward(v_pth, x)
    assert logits.shape == (1, 8, 9, 21)
    assert rel_err(feats, nhwc(ref_feats)) < RTOL
    assert rel_err(logits, nhwc(ref_logits)) < RTOL


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    x = jnp.asarray(random_images(10, hw=(33, 33), batch=1))
    f32 = DeepLabV2ResNet101(num_classes=2, blocks=(1, 1, 1, 1))
    variables = f32.init(jax.random.key(0), x)
    bf16 = DeepLabV2ResNet101(num_classes=2, blocks=(1, 1, 1, 1), dtype=jnp.bfloat16)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    a, b = f32.apply(variables, x), bf16.apply(variables, x)
    assert b.dtype == jnp.float32
    assert rel_err(b, a) < 0.05  # bfloat16 has an 8-bit mantissa
