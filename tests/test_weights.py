"""Weight files: input conventions, clear failures, reading formats.

Cross-framework equivalence of the converted weights is in test_models.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsrg_jax import convention as C
from dsrg_jax import weights as W
from dsrg_jax.models import VGG16CAM, DeepLabV2ResNet101, DeepLabV2VGG16

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


def test_torchvision_convention_is_imagenet_mean_std_on_rgb():
    rgb = np.array([[255.0, 0.0, 128.0]], np.float32)
    # torchvision: ToTensor() (x / 255) then Normalize(mean, std), channels R, G, B.
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(C.TORCHVISION.normalize(rgb)[0], expected, rtol=1e-6)


def test_caffe_convention_is_bgr_minus_mean():
    rgb = np.array([[[10.0, 20.0, 30.0]]], np.float32)
    np.testing.assert_array_equal(C.CAFFE.normalize(rgb)[0, 0], [30 - 104, 20 - 117, 10 - 123])


@pytest.mark.parametrize("convention", [C.TORCHVISION, C.CAFFE])
def test_conventions_round_trip_numpy_and_jax(convention):
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3)).astype(np.float32)
    x = convention.normalize(rgb)
    assert isinstance(x, np.ndarray)
    np.testing.assert_allclose(convention.denormalize(x), rgb, atol=1e-3)
    xj = convention.normalize(jnp.asarray(rgb))
    assert isinstance(xj, jax.Array)
    np.testing.assert_allclose(xj, x, rtol=1e-6, atol=1e-5)


def test_convention_names_include_the_pipeline_alias():
    assert C.get_input_convention("imagenet") is C.TORCHVISION
    assert C.get_input_convention("caffe") is C.CAFFE


def test_unknown_convention_names_the_argument():
    with pytest.raises(ValueError, match="input_convention.*'bgr'"):
        C.get_input_convention("bgr")


def test_missing_file_says_what_to_download(tmp_path):
    path = tmp_path / "vgg16.pth"
    with pytest.raises(FileNotFoundError, match="vgg16.pth") as e:
        W.init_model(VGG16CAM(), jax.random.key(0), weights=path)
    assert "vgg16-397923af.pth" in str(e.value) and "resnet101" in str(e.value)


def test_unknown_suffix_is_refused(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"weights.npz.*\.safetensors"):
        W.read_state_dict(path)


def test_mismatched_file_lists_missing_unexpected_and_wrong_shapes(tmp_path):
    path = tmp_path / "bad.safetensors"
    safetensors_torch.save_file({
        "features.0.weight": torch.zeros(64, 4, 3, 3),  # 4 input channels: wrong
        "features.0.bias": torch.zeros(64),
        "extra.weight": torch.zeros(2),
        "classifier.6.weight": torch.zeros(1000, 4096),  # ImageNet head: ignored, not listed
    }, path)
    model = DeepLabV2VGG16(num_classes=21, dilations=(6,))
    variables = jax.eval_shape(model.init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))
    with pytest.raises(W.WeightsError) as e:
        W.load_imagenet_weights(model, variables, path)
    msg = str(e.value)
    assert str(path) in msg and "DeepLabV2VGG16" in msg
    assert "missing (28)" in msg  # 12 convs x 2 + classifier.0/3 weight and bias
    assert "features.28.weight" in msg and "classifier.0.weight" in msg
    assert "unexpected (1):\n    extra.weight" in msg
    assert "features.0.weight: file (64, 4, 3, 3), expected (64, 3, 3, 3)" in msg
    assert "classifier.6" not in msg


def test_vgg_file_for_resnet_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "vgg.safetensors"
    safetensors_torch.save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    model = DeepLabV2ResNet101(num_classes=21)
    variables = jax.eval_shape(model.init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))
    with pytest.raises(W.WeightsError) as e:
        W.load_imagenet_weights(model, variables, path)
    # torchvision resnet101 minus fc and num_batches_tracked: 104 convolutions + 104 batch
    # norms x 4 tensors.
    assert "missing (520):\n    bn1.bias" in str(e.value)
    assert "unexpected (1):\n    features.0.weight" in str(e.value)
    assert "looks like a VGG state dict" in str(e.value)


def test_no_weights_warns_loudly_and_defaults_to_torchvision_convention():
    model = DeepLabV2ResNet101(num_classes=2, blocks=(1, 1, 1, 1))  # small: init is eager
    with pytest.warns(W.TrainingFromScratchWarning, match="NO IMAGENET WEIGHTS.*from scratch"):
        variables, info = W.init_model(model, jax.random.key(0), weights=None,
                                       sample_shape=(1, 33, 33, 3))
    assert info.path is None and info.input_convention == C.TORCHVISION
    assert info.to_json() == {"path": None, "naming": "none", "input_convention": "torchvision"}
    assert set(variables) == {"params", "batch_stats"}


def test_torch_checkpoint_wrappers_and_bfloat16_are_read(tmp_path):
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    pth = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {"module.a": t.to(torch.bfloat16), "module.b": t},
                "input_convention": "caffe", "epoch": 3}, pth)
    tensors, meta = W.read_state_dict(pth)
    assert set(tensors) == {"a", "b"} and meta == {"input_convention": "caffe"}
    np.testing.assert_array_equal(tensors["a"], t.numpy())
    assert tensors["a"].dtype == np.float32

    st = tmp_path / "bf16.safetensors"
    safetensors_torch.save_file({"a": t.to(torch.bfloat16), "b": t}, st)
    tensors, _ = W.read_state_dict(st)
    np.testing.assert_array_equal(tensors["a"], t.numpy())
    np.testing.assert_array_equal(tensors["b"], t.numpy())

    out = tmp_path / "copy.safetensors"
    W.save_safetensors(tensors, out, input_convention="caffe")
    again, meta = W.read_state_dict(out)
    assert meta == {"input_convention": "caffe"}
    np.testing.assert_array_equal(again["a"], t.numpy())


def test_deeplab_fc_subsampling_takes_every_4th_filter_and_taps_0_3_6():
    rng = np.random.default_rng(0)
    w6 = rng.standard_normal((4096, 25088), dtype=np.float32)
    w7 = rng.standard_normal((4096, 4096), dtype=np.float32)
    b6, b7 = np.arange(4096.0), -np.arange(4096.0)
    fc = W.deeplab_fc_from_vgg16(w6, b6, w7, b7)
    assert fc["fc6"]["kernel"].shape == (3, 3, 512, 1024)
    assert fc["fc7"]["kernel"].shape == (1, 1, 1024, 1024)
    for o, i, kh, kw in [(0, 0, 0, 0), (1023, 511, 2, 2), (5, 17, 1, 2), (300, 200, 2, 0)]:
        # torchvision flattens fc6's input as (channel, row, column) of the 7x7 pool5.
        assert fc["fc6"]["kernel"][kh, kw, i, o] == w6[4 * o, i * 49 + 3 * kh * 7 + 3 * kw]
    for o, i in [(0, 0), (1023, 1023), (7, 900)]:
        assert fc["fc7"]["kernel"][0, 0, i, o] == w7[4 * o, 4 * i]
    np.testing.assert_array_equal(fc["fc6"]["bias"], b6[::4])
    np.testing.assert_array_equal(fc["fc7"]["bias"], b7[::4])
    # timm's 4-D layout gives the same result.
    fc_timm = W.deeplab_fc_from_vgg16(w6.reshape(4096, 512, 7, 7), b6,
                                      w7.reshape(4096, 4096, 1, 1), b7)
    np.testing.assert_array_equal(fc_timm["fc6"]["kernel"], fc["fc6"]["kernel"])
    np.testing.assert_array_equal(fc_timm["fc7"]["kernel"], fc["fc7"]["kernel"])
