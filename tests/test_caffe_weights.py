"""The authors' Caffe weights: `.caffemodel` reading, writing and import into DeepLab VGG16.

Oracles: protobuf wire bytes encoded by hand here from caffe.proto's field numbers (V2, V1 and
V0 layers, legacy 4D blobs, double data, fields the reader must skip); a plain-PyTorch DeepLab
ASPP-L (tests/test_models.py) whose weights, in Caffe's own OIHW layout, are written under the
official DSRG layer names; and the existing torchvision `.pth` import of the same VGG16.
"""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization

from dsrg_jax import caffe_weights as C
from dsrg_jax import weights as W
from dsrg_jax.models import create_model

torch = pytest.importorskip("torch")
from test_models import (  # noqa: E402  (the torch reference models; needs torch)
    RTOL,
    TorchDeepLabVGG16,
    TorchVGG16,
    assert_trees_equal,
    nchw,
    nhwc,
    rel_err,
)

# Layer names with weights in the official DSRG train-s.prototxt / train-f.prototxt /
# deploy.prototxt, in file order (fc8-SEC is the Eltwise sum, no weights).
OFFICIAL_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                  "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
OFFICIAL_BRANCHES = [[f"fc6_{i}", f"fc7_{i}", f"fc8-SEC_{i}"] for i in range(1, 5)]
CAFFE_MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)  # the prototxts' mean_value
HW = (65, 65)


# ----------------------------------------------------------- hand-encoded protobuf bytes


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, payload: bytes | int | str) -> bytes:
    """One field: ints as varints (wire type 0), bytes/str length-delimited (wire type 2)."""
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    payload = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def blob(array: np.ndarray, *, legacy: bool = False, double: bool = False) -> bytes:
    """BlobProto: shape = 7 (BlobShape dim = 1, packed) or num/channels/height/width = 1..4;
    data = 5 (packed float) or double_data = 8 (packed double)."""
    if legacy:
        head = b"".join(field(k, d) for k, d in zip((1, 2, 3, 4), array.shape))
    else:
        head = field(7, field(1, b"".join(varint(d) for d in array.shape)))
    values = field(8, array.astype("<f8").tobytes()) if double else \
        field(5, array.astype("<f4").tobytes())
    return values + field(6, np.zeros(3, "<f4").tobytes()) + head  # diff = 6: skipped


def v2_layer(name: str, blobs: list[bytes]) -> bytes:
    """LayerParameter: name = 1, type = 2, bottom = 3, blobs = 7; convolution_param = 106."""
    return (field(1, name) + field(2, "Convolution") + field(3, "data")
            + b"".join(field(7, b) for b in blobs) + field(106, field(1, 64)))


def v1_layer(name: str, blobs: list[bytes]) -> bytes:
    """V1LayerParameter: bottom = 2, name = 4, type = 5 (CONVOLUTION = 4), blobs = 6."""
    return field(2, "data") + field(4, name) + field(5, 4) + b"".join(field(6, b) for b in blobs)


def v0_layer(name: str, blobs: list[bytes]) -> bytes:
    """V1LayerParameter.layer = 1 holding a V0LayerParameter: name = 1, type = 2, blobs = 50."""
    return field(1, field(1, name) + field(2, "conv") + b"".join(field(50, b) for b in blobs))


def test_reads_v2_v1_and_v0_layers_encoded_by_hand(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    w2, b2 = rng.normal(size=(2, 4, 1, 1)), rng.normal(size=2)
    # NetParameter: name = 1, layers = 2 (V1), input_dim = 4, layer = 100 (V2).
    v2 = (field(1, "net") + field(4, 1) + field(100, v2_layer("relu", []))
          + field(100, v2_layer("conv1_1", [blob(w), blob(b)]))
          + field(100, v2_layer("fc8-SEC_1", [blob(w2, double=True), blob(b2, double=True)])))
    v1 = (field(1, "net") + field(2, v1_layer("conv1_1", [blob(w, legacy=True),
                                                          blob(b[None, None, None], legacy=True)]))
          + field(2, v0_layer("fc8-SEC_1", [blob(w2, legacy=True), blob(b2[None, None, None],
                                                                        legacy=True)])))
    for name, data in (("v2", v2), ("v1", v1)):
        (tmp_path / f"{name}.caffemodel").write_bytes(data)
    got2 = C.read_caffemodel(tmp_path / "v2.caffemodel")
    got1 = C.read_caffemodel(tmp_path / "v1.caffemodel")
    assert list(got2) == list(got1) == ["conv1_1", "fc8-SEC_1"]  # blob-less layers left out
    for got in (got2, got1):
        assert all(a.dtype == np.float32 for blobs in got.values() for a in blobs)
        np.testing.assert_array_equal(got["conv1_1"][0], w.astype(np.float32))
        np.testing.assert_array_equal(got["fc8-SEC_1"][0], w2.astype(np.float32))
    np.testing.assert_array_equal(got2["conv1_1"][1], b.astype(np.float32))
    np.testing.assert_array_equal(got1["conv1_1"][1], b.astype(np.float32)[None, None, None])


def test_write_read_round_trip_matches_the_hand_encoding(tmp_path):
    rng = np.random.default_rng(1)
    layers = {"conv1_1": [rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
                          rng.normal(size=4).astype(np.float32)],
              "fc7_2": [rng.normal(size=(5, 4, 1, 1)).astype(np.float32)]}
    path = tmp_path / "out.caffemodel"
    C.write_caffemodel(path, layers)
    got = C.read_caffemodel(path)
    assert list(got) == list(layers)
    for name in layers:
        for a, b in zip(got[name], layers[name], strict=True):
            np.testing.assert_array_equal(a, b)
    # Byte for byte the hand encoding (fields in number order, as protobuf writes them).
    by_hand = b"".join(
        field(100, field(1, name) + b"".join(field(7, field(5, a.astype("<f4").tobytes())
                                                   + field(7, field(1, b"".join(
                                                       varint(d) for d in a.shape))))
                                             for a in blobs))
        for name, blobs in layers.items())
    assert path.read_bytes() == by_hand


def test_blob_with_too_few_values_names_layer_and_blob(tmp_path):
    short = field(7, field(1, varint(2) + varint(3))) + field(5, np.zeros(5, "<f4").tobytes())
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(field(100, v2_layer("conv2_1", [short])))
    with pytest.raises(W.WeightsError, match=r"layer 'conv2_1' blob 0: shape \(2, 3\) needs 6"):
        C.read_caffemodel(path)
    with pytest.raises(FileNotFoundError, match="nope.caffemodel"):
        C.read_caffemodel(tmp_path / "nope.caffemodel")


# ------------------------------------------------- official layer names vs the torch path


@pytest.fixture(scope="module")
def caffe_net(tmp_path_factory):
    """A torch DeepLab ASPP-L dumped as a DSRG snapshot, the VGG16 .pth it came from, etc."""
    torch.manual_seed(0)
    vgg = TorchVGG16().eval()
    d = tmp_path_factory.mktemp("caffe")
    pth = d / "vgg16.pth"
    torch.save(vgg.state_dict(), pth)
    rng = np.random.default_rng(2)
    classifiers = [(rng.normal(0, 0.01, (1, 1, 1024, 21)).astype(np.float32),
                    rng.uniform(-0.1, 0.1, 21).astype(np.float32)) for _ in range(4)]
    ref = TorchDeepLabVGG16(vgg, classifiers).eval()
    del vgg
    convs = [m for m in ref.features[0] if isinstance(m, torch.nn.Conv2d)]
    modules = dict(zip(OFFICIAL_CONVS, convs, strict=True))
    for names, branch in zip(OFFICIAL_BRANCHES, ref.branches, strict=True):
        modules.update(zip(names, (branch[0], branch[3], branch[6]), strict=True))
    # torch's Conv2d weight is OIHW, Caffe's blob layout: written without any transpose.
    layers = {name: [m.weight.detach().numpy(), m.bias.detach().numpy()]
              for name, m in modules.items()}
    path = d / "model-s_iter_8000.caffemodel"
    C.write_caffemodel(path, layers, name="DSRG")
    return ref, pth, path, layers, classifiers


@pytest.fixture(scope="module")
def deeplab():
    """Our DeepLab VGG16 for 21 classes and its random init."""
    model = create_model("deeplab_vgg16", num_classes=21)
    return model, model.init(jax.random.key(3), jnp.zeros((1, *HW, 3)))


def test_snapshot_loads_every_layer_and_matches_pytorch(caffe_net, deeplab):
    ref, pth, path, _, classifiers = caffe_net
    model, init = deeplab
    variables, info = C.load_caffe_deeplab_vgg16(init, path, num_classes=21)
    assert info.input_convention == W.get_input_convention("caffe")
    assert info.kept_init == () and info.ignored == ()
    assert set(info.loaded) == set(OFFICIAL_CONVS) | {n for b in OFFICIAL_BRANCHES for n in b}
    assert info.to_json()["input_convention"] == "caffe"

    # Same tree as the torchvision .pth through the existing loader, plus the classifiers.
    expected, _ = W.load_imagenet_weights(model, init, pth)
    for i, (k8, b8) in enumerate(classifiers, start=1):
        expected["params"][f"aspp_{i}"]["classifier"] = {"kernel": k8, "bias": b8}
    assert_trees_equal(variables, expected)

    rgb = np.random.default_rng(4).uniform(0, 255, (2, *HW, 3)).astype(np.float32)
    x_ref = rgb[..., ::-1] - CAFFE_MEAN_BGR
    x = info.input_convention.normalize(rgb)
    np.testing.assert_allclose(x, x_ref)
    with torch.no_grad():
        _, ref_logits = ref(nchw(x_ref))
    logits = jax.jit(model.apply)(variables, x)
    assert logits.shape == (2, 9, 9, 21)
    assert rel_err(logits, nhwc(ref_logits)) < RTOL


def test_init_without_our_classifiers_keeps_them_and_copies_shared_fc(caffe_net, deeplab,
                                                                      tmp_path):
    """vgg16_20M-style init: fc6/fc7 once, fc8 of ImageNet's 1000 classes."""
    ref, pth, _, layers, _ = caffe_net
    init_layers = {k: v for k, v in layers.items() if k in OFFICIAL_CONVS}
    init_layers["fc6"], init_layers["fc7"] = layers["fc6_1"], layers["fc7_1"]
    init_layers["fc8"] = [np.zeros((1000, 1024, 1, 1), np.float32), np.zeros(1000, np.float32)]
    path = tmp_path / "vgg16_20M.caffemodel"
    C.write_caffemodel(path, init_layers)
    model, init = deeplab
    variables, info = C.load_caffe_deeplab_vgg16(init, path)
    expected, _ = W.load_imagenet_weights(model, init, pth)  # classifiers from `init` too
    assert_trees_equal(variables, expected)
    assert info.kept_init == tuple(f"aspp_{i}/classifier" for i in range(1, 5))
    assert info.ignored == ("fc8",)
    assert any("kept the model's initialisation" in n for n in info.notes)
    assert any("shared" in n for n in info.notes)
    # Asking for trained classifiers of 21 classes fails, naming them.
    with pytest.raises(W.WeightsError, match=r"missing layers \(4\)[\s\S]*fc8-SEC_4"):
        C.load_caffe_deeplab_vgg16(init, path, num_classes=21)


def test_only_the_official_classifier_names_load(caffe_net, deeplab, tmp_path):
    """Caffe copies layers by name: a complete fc8_voc12_{i} set that fits is not DSRG's
    fc8-SEC_{i}, so it is ignored (named) and the model's classifiers are kept."""
    _, _, _, layers, _ = caffe_net
    renamed = {(k.replace("fc8-SEC", "fc8_voc12") if k.startswith("fc8") else k): v
               for k, v in layers.items()}
    path = tmp_path / "other_names.caffemodel"
    C.write_caffemodel(path, renamed)
    _, init = deeplab
    variables, info = C.load_caffe_deeplab_vgg16(init, path)
    assert info.kept_init == tuple(f"aspp_{i}/classifier" for i in range(1, 5))
    assert set(info.ignored) == {f"fc8_voc12_{i}" for i in range(1, 5)}
    assert any("fc8_voc12_1" in n for n in info.notes)
    for i in range(1, 5):
        np.testing.assert_array_equal(variables["params"][f"aspp_{i}"]["classifier"]["kernel"],
                                      init["params"][f"aspp_{i}"]["classifier"]["kernel"])
    with pytest.raises(W.WeightsError, match=r"missing layers \(4\)[\s\S]*fc8-SEC_1"):
        C.load_caffe_deeplab_vgg16(init, path, num_classes=21)
    partial = {k: v for k, v in layers.items() if k != "fc8-SEC_3"}
    C.write_caffemodel(tmp_path / "partial.caffemodel", partial)
    with pytest.raises(W.WeightsError, match=r"missing layers \(1\)[\s\S]*fc8-SEC_3"):
        C.load_caffe_deeplab_vgg16(init, tmp_path / "partial.caffemodel")


def test_caffemodel_init_through_build_model_equals_loading_it(caffe_net, deeplab):
    """`model.init_weights` ending in .caffemodel: the pipeline's `build_model` gives the
    snapshot's weights (every layer) and the Caffe input convention."""
    from dsrg_jax.config import override
    from dsrg_jax.convention import CAFFE
    from dsrg_jax.pipeline.nets import build_model
    from experiments.configs import voc

    _, _, path, _, _ = caffe_net
    _, init = deeplab
    cfg = override(voc.get_config(), **{"model.init_weights": str(path)})
    for stage in ("dsrg", "retrain"):
        model, variables, convention = build_model(cfg, stage)
        expected, _ = C.load_caffe_deeplab_vgg16(init, path)
        assert convention == CAFFE
        assert_trees_equal(jax.tree.map(np.asarray, variables),
                           jax.tree.map(np.asarray, expected))


def test_missing_unexpected_and_misshapen_layers_in_one_message(caffe_net, deeplab, tmp_path):
    _, _, _, layers, _ = caffe_net
    bad = {k: v for k, v in layers.items() if k != "conv3_2"}
    bad["fc7_3"] = [layers["fc7_3"][0][:, :512], layers["fc7_3"][1]]
    bad["conv6"] = layers["conv5_3"]
    path = tmp_path / "bad.caffemodel"
    C.write_caffemodel(path, bad)
    _, init = deeplab
    with pytest.raises(W.WeightsError) as e:
        C.load_caffe_deeplab_vgg16(init, path)
    msg = str(e.value)
    assert "missing layers (1)" in msg and "conv3_2" in msg
    assert "unexpected layers (1)" in msg and "conv6" in msg
    assert "fc7_3: file [(1024, 512, 1, 1), (1024,)], expected [(1024, 1024, 1, 1), (1024,)]" \
        in msg
    with pytest.raises(ValueError, match="num_classes: 81, but the model has 21"):
        C.load_caffe_deeplab_vgg16(init, path, num_classes=81)
    with pytest.raises(ValueError, match="variables: expected DeepLabV2VGG16"):
        C.load_caffe_deeplab_vgg16({"params": {}}, path)


def test_cli_writes_loadable_variables(caffe_net, deeplab, tmp_path, capsys):
    _, _, path, _, _ = caffe_net
    out = tmp_path / "dsrg.msgpack"
    C.main([str(path), "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert printed["input_convention"] == "caffe" and printed["kept_init"] == []
    restored = serialization.msgpack_restore(out.read_bytes())
    expected, _ = C.load_caffe_deeplab_vgg16(deeplab[1], path)  # every layer: init unused
    assert_trees_equal(restored, jax.tree.map(np.asarray, expected))
    C.main([str(path), "--list"])
    listing = capsys.readouterr().out.splitlines()
    assert listing[0] == "conv1_1 (64, 3, 3, 3) (64,)" and len(listing) == 25
    with pytest.raises(SystemExit):
        C.main([str(path), "--out", str(tmp_path / "x.safetensors")])

