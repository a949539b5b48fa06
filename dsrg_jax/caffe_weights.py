"""The authors' Caffe weights (`.caffemodel`) without Caffe: read, write, load into DeepLab VGG16.

    layers = read_caffemodel("model-s_iter_8000.caffemodel")   # {"conv1_1": [w, b], ...}
    model = create_model("deeplab_vgg16", num_classes=21)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 65, 65, 3)))
    variables, info = load_caffe_deeplab_vgg16(variables, "model-s_iter_8000.caffemodel")
    logits = model.apply(variables, info.input_convention.normalize(images_rgb_0_255))

A `.caffemodel` is a binary protobuf `caffe.NetParameter`. Only the fields holding weights are
declared here (numbers as in Caffe's `caffe.proto`); everything else is skipped. V2 files
(`layer`), V1 files (`layers`) and V0 layers nested in V1 all read.

Layer names are those of the official DSRG `train-s.prototxt` / `deploy.prototxt`: conv1_1 ..
conv5_3 (the trunk, same names in our tree), fc6_{i}, fc7_{i}, fc8-SEC_{i} for the ASPP branch
i = 1..4 (our `aspp_{i}/fc6`, `fc7`, `classifier`). Caffe weights take BGR 0-255 images minus
the mean (104, 117, 123): `info.input_convention` is the "caffe" convention.

Command line: `python -m dsrg_jax.caffe_weights IN.caffemodel --out OUT.msgpack` writes the
model variables (`flax.serialization.msgpack_restore` reads them back); `--list` prints the
file's layers.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from dsrg_jax.models import create_model
from dsrg_jax.models.vgg16 import VGG16_CONVS
from dsrg_jax.weights import (
    PathLike,
    WeightsError,
    WeightsInfo,
    _set_leaves,
    get_input_convention,
)

# ------------------------------------------------------------------- protobuf messages

_F = descriptor_pb2.FieldDescriptorProto
# (message, [(field, number, label, type, type_name, packed)]); numbers from caffe.proto.
# `data` / `double_data` are `repeated float|double [packed = true]` there: a packed field is
# one length-delimited run of little-endian values, the wire format of `bytes`, so they are
# declared as bytes and read with np.frombuffer (no Python float per value).
_MESSAGES = (
    ("BlobShape", [("dim", 1, _F.LABEL_REPEATED, _F.TYPE_INT64, None, True)]),
    ("BlobProto", [
        ("num", 1, _F.LABEL_OPTIONAL, _F.TYPE_INT32, None, False),
        ("channels", 2, _F.LABEL_OPTIONAL, _F.TYPE_INT32, None, False),
        ("height", 3, _F.LABEL_OPTIONAL, _F.TYPE_INT32, None, False),
        ("width", 4, _F.LABEL_OPTIONAL, _F.TYPE_INT32, None, False),
        ("data", 5, _F.LABEL_REPEATED, _F.TYPE_BYTES, None, False),
        ("shape", 7, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, "BlobShape", False),
        ("double_data", 8, _F.LABEL_REPEATED, _F.TYPE_BYTES, None, False),
    ]),
    ("LayerParameter", [
        ("name", 1, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None, False),
        ("type", 2, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None, False),
        ("blobs", 7, _F.LABEL_REPEATED, _F.TYPE_MESSAGE, "BlobProto", False),
    ]),
    ("V0LayerParameter", [
        ("name", 1, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None, False),
        ("type", 2, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None, False),
        ("blobs", 50, _F.LABEL_REPEATED, _F.TYPE_MESSAGE, "BlobProto", False),
    ]),
    ("V1LayerParameter", [
        ("layer", 1, _F.LABEL_OPTIONAL, _F.TYPE_MESSAGE, "V0LayerParameter", False),
        ("name", 4, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None, False),
        ("type", 5, _F.LABEL_OPTIONAL, _F.TYPE_ENUM, "V1LayerParameter.LayerType", False),
        ("blobs", 6, _F.LABEL_REPEATED, _F.TYPE_MESSAGE, "BlobProto", False),
    ]),
    ("NetParameter", [
        ("name", 1, _F.LABEL_OPTIONAL, _F.TYPE_STRING, None, False),
        ("layers", 2, _F.LABEL_REPEATED, _F.TYPE_MESSAGE, "V1LayerParameter", False),
        ("layer", 100, _F.LABEL_REPEATED, _F.TYPE_MESSAGE, "LayerParameter", False),
    ]),
)
# A few V1LayerParameter.LayerType values; other values parse as unknown fields (unused here).
_V1_TYPES = (("NONE", 0), ("CONVOLUTION", 4), ("INNER_PRODUCT", 14))
_PACKAGE = "dsrg_jax.caffe"


def _message_classes() -> dict[str, type]:
    """Builds the message classes in a private descriptor pool (no protoc, no caffe.proto)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="dsrg_jax/caffe_weights.proto", package=_PACKAGE, syntax="proto2")
    for msg_name, fields in _MESSAGES:
        msg = file.message_type.add(name=msg_name)
        for name, number, label, ftype, type_name, packed in fields:
            field = msg.field.add(name=name, number=number, label=label, type=ftype)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
            if packed:
                field.options.packed = True
        if msg_name == "V1LayerParameter":
            enum = msg.enum_type.add(name="LayerType")
            for value_name, value in _V1_TYPES:
                enum.value.add(name=value_name, number=value)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptors = {name: pool.FindMessageTypeByName(f"{_PACKAGE}.{name}") for name, _ in _MESSAGES}
    if not hasattr(message_factory, "GetMessageClass"):  # protobuf releases before 4.22
        factory = message_factory.MessageFactory(pool)
        return {name: factory.GetPrototype(d) for name, d in descriptors.items()}
    return {name: message_factory.GetMessageClass(d) for name, d in descriptors.items()}


_PROTO = _message_classes()

# ------------------------------------------------------------------------ read / write


def _blob_array(blob: Any, where: str) -> np.ndarray:
    """BlobProto -> float32 array in Caffe's shape (legacy 4D num/channels/height/width too)."""
    legacy = [f for f in ("num", "channels", "height", "width") if blob.HasField(f)]
    if legacy:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = tuple(int(d) for d in blob.shape.dim)
    raw, dtype = b"".join(blob.data), np.dtype("<f4")
    if not raw and blob.double_data:
        raw, dtype = b"".join(blob.double_data), np.dtype("<f8")
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise WeightsError(f"{where}: shape {shape} needs {count} values, the file has "
                           f"{len(raw) / dtype.itemsize:g} ({dtype.itemsize}-byte) values")
    return np.frombuffer(raw, dtype).astype(np.float32).reshape(shape)


def read_caffemodel(path: PathLike) -> dict[str, list[np.ndarray]]:
    """Reads a binary `.caffemodel`: layer name -> its blobs, float32 in Caffe's shape.

    A convolution's blobs are [weight float[O, I, kh, kw], bias float[O]] (V1-era files give
    the bias as float[1, 1, 1, O]). Layers without blobs (ReLU, pooling, ...) are left out.

    Raises:
      FileNotFoundError: no such file.
      WeightsError: not a NetParameter, a blob whose values do not fill its shape, or two
        layers of one name.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caffemodel not found: {path}")
    net = _PROTO["NetParameter"]()
    try:
        net.ParseFromString(path.read_bytes())
    except Exception as e:  # the parser's DecodeError carries no detail worth keeping
        raise WeightsError(f"{path}: not a binary Caffe NetParameter (.caffemodel): {e}") from e
    entries = [(layer.name, layer.blobs) for layer in net.layer]
    for v1 in net.layers:  # V1, possibly wrapping a V0 layer
        entries.append((v1.name, v1.blobs) if v1.name or v1.blobs or not v1.HasField("layer")
                       else (v1.layer.name, v1.layer.blobs))
    layers: dict[str, list[np.ndarray]] = {}
    for name, blobs in entries:
        if not blobs:
            continue
        if name in layers:
            raise WeightsError(f"{path}: two layers named {name!r} hold weights")
        layers[name] = [_blob_array(b, f"{path}: layer {name!r} blob {i}")
                        for i, b in enumerate(blobs)]
    return layers


def write_caffemodel(path: PathLike, layers: Mapping[str, Sequence[np.ndarray]], *,
                     name: str = "") -> None:
    """Writes layers (name -> blobs, any shapes) as a V2 binary NetParameter, float32 data."""
    net = _PROTO["NetParameter"](**({"name": name} if name else {}))
    for layer_name, blobs in layers.items():
        if not isinstance(layer_name, str) or not layer_name:
            raise ValueError(f"layers: expected non-empty string layer names, got {layer_name!r}")
        layer = net.layer.add(name=layer_name)
        for blob in blobs:
            array = np.ascontiguousarray(blob, dtype="<f4")
            proto = layer.blobs.add()
            proto.shape.dim.extend(array.shape)
            proto.data.append(array.tobytes())
    pathlib.Path(path).write_bytes(net.SerializeToString())


# ----------------------------------------------------------------- DeepLab VGG16 mapping

CONV_LAYERS: tuple[str, ...] = tuple(name for name, _ in VGG16_CONVS)  # conv1_1 .. conv5_3
# Classifier names of the official DSRG prototxts ("fc8-SEC_1" .. "fc8-SEC_4").
DSRG_FC8 = "fc8-SEC"


@dataclasses.dataclass(frozen=True)
class CaffeWeightsInfo(WeightsInfo):
    """`WeightsInfo` of a `.caffemodel` import, with what was loaded and what was not.

    Attributes:
      loaded: file layers copied into the model.
      kept_init: model layers (e.g. "aspp_1/classifier") that keep their initialisation.
      ignored: file layers not used (another classifier, the shared fc6/fc7, ...).
      notes: one line per decision worth knowing.
    """

    loaded: tuple[str, ...] = ()
    kept_init: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "loaded": list(self.loaded),
                "kept_init": list(self.kept_init), "ignored": list(self.ignored),
                "notes": list(self.notes)}


def _conv_shapes(kernel: Any) -> list[tuple[int, ...]]:
    """Flax kernel [kh, kw, I, O] -> Caffe blob shapes [(O, I, kh, kw), (O,)]."""
    kh, kw, cin, cout = kernel.shape
    return [(cout, cin, kh, kw), (cout,)]


def _fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Caffe's rule: a legacy 4D blob fits `expected` padded with leading ones to 4 axes."""
    if len(shape) == 4 and len(expected) < 4:
        return shape == (1,) * (4 - len(expected)) + tuple(expected)
    return tuple(shape) == tuple(expected)


def _fits_blobs(blobs: Sequence[np.ndarray], shapes: Sequence[tuple[int, ...]]) -> bool:
    return len(blobs) == len(shapes) and all(_fits(b.shape, s) for b, s in zip(blobs, shapes))


def _branches(variables: Any) -> list[str]:
    params = variables.get("params", {}) if isinstance(variables, Mapping) else {}
    branches = sorted((k for k in params if re.fullmatch(r"aspp_\d+", k)),
                      key=lambda k: int(k.split("_")[1]))
    backbone = params.get("backbone", {})
    if (not branches or any(c not in backbone for c in CONV_LAYERS)
            or any({"fc6", "fc7", "classifier"} - set(params[b]) for b in branches)):
        raise ValueError("variables: expected DeepLabV2VGG16 variables (params/backbone/"
                         "conv1_1 .. conv5_3 and params/aspp_{i}/fc6, fc7, classifier)")
    return branches


def _check_layers(path: PathLike, layers: Mapping[str, Sequence[np.ndarray]],
                  targets: Mapping[str, tuple[Any, list[tuple[int, ...]]]],
                  ignorable: set[str]) -> None:
    """Raises one WeightsError naming every missing, unexpected and misshapen layer."""
    missing = [name for name in targets if name not in layers]
    unexpected = [name for name in layers if name not in targets and name not in ignorable]
    wrong = [f"{name}: file {[tuple(a.shape) for a in layers[name]]}, expected {shapes}"
             for name, (_, shapes) in targets.items()
             if name in layers and not _fits_blobs(layers[name], shapes)]
    if missing or unexpected or wrong:
        msg = f"weights file {path} does not fit DeepLabV2VGG16 (DSRG / DeepLab-v2 names):"
        for title, items in (("missing layers", missing), ("unexpected layers", unexpected),
                             ("wrong blob shapes", wrong)):
            if items:
                msg += f"\n  {title} ({len(items)}): " + "\n    ".join([""] + items)
        raise WeightsError(msg)


def load_caffe_deeplab_vgg16(
    variables: Any, path: PathLike, *, num_classes: int | None = None
) -> tuple[Any, CaffeWeightsInfo]:
    """Puts a DSRG / DeepLab-v2 ASPP-L VGG16 `.caffemodel` into DeepLabV2VGG16 `variables`.

    conv1_1 .. conv5_3 -> backbone; fc6_{i}, fc7_{i} -> aspp_{i}/fc6, fc7 (a file with one
    shared fc6/fc7, DeepLab-LargeFOV style, is copied into every branch); fc8-SEC_{i} ->
    aspp_{i}/classifier. As Caffe copies layers by name, only the official names load: another
    classifier (fc8, fc8_voc12_{i}, ...) is ignored and named in `info`. Weights are transposed
    from Caffe's OIHW to Flax's HWIO.

    Args:
      variables: `DeepLabV2VGG16(...).init(...)` output; layers the file lacks keep it.
      path: a DSRG snapshot (e.g. `model-s_iter_8000.caffemodel`: every layer loads) or an
        init such as `vgg16_20M_mc.caffemodel` (no classifiers of the model's class count:
        the model's initialised classifiers are kept, and `info` says so).
      num_classes: None: load the file's fc8-SEC_{i} when their class count is the model's,
        else (or without them) keep the model's. An int: the file must hold fc8-SEC_1..n of
        that many classes (must be the model's count), or this raises.

    Returns:
      (new variables, CaffeWeightsInfo with the "caffe" input convention: BGR, 0-255, minus
      (104, 117, 123)).

    Raises:
      FileNotFoundError: no such file.
      ValueError: `variables` are not DeepLabV2VGG16's, or `num_classes` is not the model's.
      WeightsError: one message naming every missing, unexpected and misshapen layer.
    """
    branches = _branches(variables)
    params = variables["params"]
    model_classes = int(params[branches[0]]["classifier"]["kernel"].shape[-1])
    if num_classes is not None and num_classes != model_classes:
        raise ValueError(f"num_classes: {num_classes}, but the model has {model_classes}")
    layers = read_caffemodel(path)
    n = len(branches)
    notes: list[str] = []

    # Target: Caffe layer name -> (Flax module path, expected Caffe blob shapes).
    targets = {c: (("params", "backbone", c), _conv_shapes(params["backbone"][c]["kernel"]))
               for c in CONV_LAYERS}
    per_branch = all(f"{fc}_{i}" in layers for fc in ("fc6", "fc7") for i in range(1, n + 1))
    shared = not per_branch and "fc6" in layers and "fc7" in layers
    for i, b in enumerate(branches[:1] if shared else branches, start=1):
        for fc in ("fc6", "fc7"):
            targets[fc if shared else f"{fc}_{i}"] = (
                ("params", b, fc), _conv_shapes(params[b][fc]["kernel"]))
    if shared:
        notes.append(f"fc6/fc7: one shared layer in the file, copied into all {n} branches")
    fc8_shapes = _conv_shapes(params[branches[0]]["classifier"]["kernel"])
    names8 = [f"{DSRG_FC8}_{i}" for i in range(1, n + 1)]
    present8 = [name for name in names8 if name in layers]
    fc8 = len(present8) == n and all(_fits_blobs(layers[name], fc8_shapes) for name in names8)
    # Required (missing / misshapen raise): asked for, fitting, or only part of the set there.
    if fc8 or num_classes is not None or 0 < len(present8) < n:
        targets.update({name: (("params", b, "classifier"), fc8_shapes)
                        for name, b in zip(names8, branches)})
    else:
        others = sorted(name for name in layers if name.startswith("fc8"))
        found = (f"{DSRG_FC8}_1..{n} of {layers[names8[0]][0].shape[0]} classes" if present8
                 else f"no {DSRG_FC8}_{{i}}; other classifiers ignored: "
                      f"{', '.join(others) or 'none'}")
        notes.append(f"classifiers: kept the model's initialisation (N(0, 0.01)): the file has "
                     f"{found}, the model {model_classes} classes")

    ignorable = {name for name in layers if name.startswith("fc8")}
    if per_branch:  # a shared fc6/fc7 beside the per-branch ones is not used
        ignorable |= {"fc6", "fc7"}
    _check_layers(path, layers, targets, ignorable)
    updates = {}
    for name, (module, shapes) in targets.items():
        weight, bias = (a.reshape(s) for a, s in zip(layers[name], shapes))
        updates[(*module, "kernel")] = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
        updates[(*module, "bias")] = bias
    if shared:  # one file layer feeds every branch
        for b in branches[1:]:
            for fc in ("fc6", "fc7"):
                for leaf in ("kernel", "bias"):
                    updates[("params", b, fc, leaf)] = updates[("params", branches[0], fc, leaf)]
    loaded = tuple(targets)
    kept = () if names8[0] in targets else tuple(f"{b}/classifier" for b in branches)
    ignored = tuple(name for name in layers if name not in targets)
    info = CaffeWeightsInfo(str(path), "caffe", get_input_convention("caffe"), loaded=loaded,
                            kept_init=kept, ignored=ignored, notes=tuple(notes))
    return _set_leaves(variables, updates), info


# -------------------------------------------------------------------------- command line


CLI_DESCRIPTION = (
    "Convert a DSRG / DeepLab-v2 VGG16 .caffemodel into DeepLabV2VGG16 Flax variables (msgpack; "
    "read back with flax.serialization.msgpack_restore). Images for these weights: BGR, 0-255, "
    "minus (104, 117, 123).")


def main(argv: Sequence[str] | None = None) -> None:
    """The command line; a missing or unreadable .caffemodel -> one line.

    With `--debug`: the traceback."""
    from dsrg_jax import cli

    parser = argparse.ArgumentParser(prog="python -m dsrg_jax.caffe_weights",
                                     description=CLI_DESCRIPTION)
    parser.add_argument("caffemodel", help="IN.caffemodel")
    parser.add_argument("--out", help="OUT.msgpack")
    parser.add_argument("--num-classes", type=int, default=21,
                        help="classes of the model, background included (default 21)")
    parser.add_argument("--seed", type=int, default=0,
                        help="PRNG seed for layers the file lacks (the classifiers of an init)")
    parser.add_argument("--list", action="store_true", help="print the file's layers and exit")
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    if not args.list and (not args.out or pathlib.Path(args.out).suffix != ".msgpack"):
        parser.error("--out: expected an OUT.msgpack path (the .safetensors loader of "
                     "dsrg_jax.weights takes ImageNet VGG16 state dicts, not a whole DeepLab)")
    cli.run(lambda: _convert(args), debug=args.debug)


def _convert(args) -> None:
    """`main`'s --list or conversion, from its parsed flags."""
    if args.list:
        for name, blobs in read_caffemodel(args.caffemodel).items():
            print(name, " ".join(str(tuple(b.shape)) for b in blobs))
        return
    model = create_model("deeplab_vgg16", num_classes=args.num_classes)
    init = model.init(jax.random.key(args.seed), jnp.zeros((1, 65, 65, 3)), train=False)
    variables, info = load_caffe_deeplab_vgg16(init, args.caffemodel)
    host = jax.tree.map(np.asarray, variables)
    pathlib.Path(args.out).write_bytes(serialization.msgpack_serialize(host))
    print(json.dumps({**info.to_json(), "out": args.out}, indent=1))


if __name__ == "__main__":
    main()
