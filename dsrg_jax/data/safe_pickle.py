"""Restricted unpickling of the official data files: plain data and numeric arrays, never code.

`pickle.load` calls whatever the file names, so a crafted file runs code. The official cue files
(Python-2 pickles, read with `encoding="latin1"`) and the WSSS `cls_labels.npy` files hold only
dicts, lists, tuples, numbers, strings and numpy arrays. The unpickler here admits exactly the
globals those need, as inert stand-ins, and builds each array itself with `np.frombuffer`:

  numpy.core.multiarray._reconstruct (numpy 2: numpy._core.multiarray), numpy.ndarray,
  numpy.dtype (bool, int, uint, float, complex only), numpy.core.multiarray.scalar, and
  _codecs.encode(str, "latin1") and bytes() (how Python 3 writes bytes in protocols 0-2).

Everything else (`os.system`, `builtins.eval`, object or structured dtypes, ndarray subclasses
such as `numpy.matrix`) is refused with a `DatasetError` naming the file and the global.
Gzip'd files are recognised by their magic bytes, whatever their suffix.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pathlib
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

from dsrg_jax.data.records import DatasetError

_GZIP_MAGIC = b"\x1f\x8b"
_DTYPE_NAME = re.compile(r"[biufc][0-9]{1,2}")  # "b1", "i8", "u1", "f4", "c16", ...
_ALLOWED = "dicts, lists, tuples, numbers, strings and numeric (bool/int/float) numpy arrays"


class _Refused(DatasetError):
    """The file asks for something a data file never holds; raised as is, never rewrapped."""


class _NdarrayMarker:
    """Stands for `numpy.ndarray`; only accepted as the first argument of `_reconstruct`."""

    __slots__ = ()


class _DtypeStub:
    """A dtype under construction: `numpy.dtype(name, align, copy)`, then its state."""

    def __init__(self, name: str):
        self.dtype = np.dtype(name)

    def __setstate__(self, state: Any) -> None:
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
              and state[1] in ("<", ">", "|", "=") and all(s is None for s in state[2:5])
              and (len(state) == 8 or state[8] is None))
        if not ok:
            raise _Refused(f"a numpy dtype state {state!r:.80}")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


class _ObjectDtype:
    """Stands for dtype('O'): allowed only for the 0-d root array of an `np.save`d object."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[1] == "|"
                and all(s is None for s in state[2:5])):
            raise _Refused(f"an object dtype state {state!r:.80}")


class _ArrayStub:
    """An array under construction: `_reconstruct(ndarray, ...)`, then its state."""

    def __init__(self):
        self.value: np.ndarray | None = None
        self.objects: list | None = None  # contents of an object array (only as the root)

    def __setstate__(self, state: Any) -> None:
        if self.value is not None or self.objects is not None:
            raise _Refused("an array state set twice")
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # (version, shape, dtype, fortran, data)
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Refused(f"an array state of {type(state).__name__} (expected a 5-tuple)")
        shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and all(type(s) is int and s >= 0 for s in shape)):
            raise _Refused(f"an array shape {shape!r:.80}")
        if isinstance(dtype, _ObjectDtype):
            if not isinstance(data, list) or len(data) != math.prod(shape):
                raise _Refused("an object array whose contents are not a list of its size")
            self.objects = data
            return
        if not isinstance(dtype, _DtypeStub):
            raise _Refused(f"an array dtype of {type(dtype).__name__}")
        if isinstance(data, str):
            data = data.encode("latin1")  # a Python-2 str read with encoding="latin1"
        if not isinstance(data, bytes):
            raise _Refused(f"array data of {type(data).__name__} (expected bytes)")
        count = math.prod(shape)
        if len(data) != count * dtype.dtype.itemsize:
            raise _Refused(f"array data of {len(data)} bytes for shape {shape} and dtype "
                           f"{dtype.dtype}")
        flat = np.frombuffer(data, dtype=dtype.dtype, count=count)
        self.value = flat.reshape(shape, order="F" if fortran else "C").astype(
            dtype.dtype.newbyteorder("="), order="C")


# The callables the file may name. Slotted instances, so that a BUILD opcode aimed at one of
# them cannot change it.
class _Reconstruct:
    """`numpy.core.multiarray._reconstruct(numpy.ndarray, shape, typecode)`."""

    __slots__ = ()

    def __call__(self, subtype: Any, shape: Any, typecode: Any) -> _ArrayStub:
        if type(subtype) is not _NdarrayMarker:
            raise _Refused(f"numpy _reconstruct of {type(subtype).__name__}, not numpy.ndarray")
        return _ArrayStub()


class _Dtype:
    """`numpy.dtype(name, align, copy)` for bool/int/uint/float/complex names."""

    __slots__ = ()
    allow_object = False

    def __call__(self, name: Any, align: Any = False, copy: Any = True) -> Any:
        if self.allow_object and name == "O8":
            return _ObjectDtype()
        if not (isinstance(name, str) and _DTYPE_NAME.fullmatch(name)):
            raise _Refused(f"numpy dtype {name!r:.40}")
        try:
            return _DtypeStub(name)
        except TypeError as e:
            raise _Refused(f"numpy dtype {name!r} ({e})") from None


class _DtypeOrObject(_Dtype):
    """`numpy.dtype` that also admits "O8", for the root of an `np.save`d object."""

    __slots__ = ()
    allow_object = True


class _Scalar:
    """`numpy.core.multiarray.scalar(dtype, data)`: one numeric numpy scalar."""

    __slots__ = ()

    def __call__(self, dtype: Any, data: Any = None) -> np.generic:
        if not isinstance(dtype, _DtypeStub):
            raise _Refused(f"a numpy scalar of dtype {type(dtype).__name__}")
        if isinstance(data, str):
            data = data.encode("latin1")
        if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
            raise _Refused(f"numpy scalar data {data!r:.40} for dtype {dtype.dtype}")
        return np.frombuffer(data, dtype=dtype.dtype)[0]


class _Encode:
    """`_codecs.encode(text, "latin1")`: how Python 3 writes bytes in protocols 0-2."""

    __slots__ = ()

    def __call__(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
            raise _Refused("_codecs.encode other than (str, 'latin1')")
        return text.encode("latin1")


class _EmptyBytes:
    """`bytes()`: how Python 3 writes an empty bytes object in protocols 0-2."""

    __slots__ = ()

    def __call__(self) -> bytes:
        return b""


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of plain numeric numpy data, as stand-ins."""

    def __init__(self, file: BinaryIO, *, allow_object_root: bool):
        super().__init__(file, encoding="latin1")
        reconstruct, scalar = _Reconstruct(), _Scalar()
        self._globals = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): _NdarrayMarker(),
            ("numpy", "dtype"): _DtypeOrObject() if allow_object_root else _Dtype(),
            ("numpy.core.multiarray", "scalar"): scalar,
            ("numpy._core.multiarray", "scalar"): scalar,
            ("_codecs", "encode"): _Encode(),
            ("__builtin__", "bytes"): _EmptyBytes(),
            ("builtins", "bytes"): _EmptyBytes(),
        }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._globals:
            raise _Refused(f"the global {module}.{name}")
        return self._globals[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"a persistent id {pid!r:.40}")


_STAND_IN_NAMES = {_NdarrayMarker: "numpy.ndarray", _DtypeStub: "numpy.dtype",
                   _ObjectDtype: "numpy.dtype", _Reconstruct: "function", _Dtype: "function",
                   _DtypeOrObject: "function", _Scalar: "function", _Encode: "function",
                   _EmptyBytes: "function"}


def _finish(obj: Any, memo: dict[int, Any]) -> Any:
    """The loaded object with every stand-in replaced by the real array; refuses the rest."""
    if isinstance(obj, (bool, int, float, complex, str, bytes, np.generic)) or obj is None:
        return obj
    if isinstance(obj, _ArrayStub):
        if obj.value is None:
            raise _Refused("an object array inside the data" if obj.objects is not None
                           else "an array without data")
        return obj.value
    if id(obj) in memo:
        return memo[id(obj)]
    if type(obj) is list:
        out = memo[id(obj)] = []
        out.extend(_finish(x, memo) for x in obj)
        return out
    if type(obj) is dict:
        out = memo[id(obj)] = {}
        for key, value in obj.items():
            out[_finish(key, memo)] = _finish(value, memo)
        return out
    if type(obj) is tuple:
        return tuple(_finish(x, memo) for x in obj)
    kind = _STAND_IN_NAMES.get(type(obj), type(obj).__name__)
    raise _Refused(f"a value of type {kind}")


def _unpickle(file: io.BufferedIOBase, name: str, what: str, allow_object_root: bool) -> Any:
    """Runs the restricted unpickler on an open binary file and checks it ends after the pickle."""
    head = file.peek(2)[:2]
    if not head:
        raise DatasetError(f"{name}: empty file, expected a {what} (a pickle, plain or gzip)")
    stream = gzip.GzipFile(fileobj=file, mode="rb") if head == _GZIP_MAGIC else file
    try:
        obj = _RestrictedUnpickler(stream, allow_object_root=allow_object_root).load()
        if allow_object_root:
            if not (isinstance(obj, _ArrayStub) and obj.objects is not None
                    and len(obj.objects) == 1):
                raise _Refused("a root other than a 0-d object array")
            obj = obj.objects[0]
        obj = _finish(obj, {})
        if stream.read(1):
            raise DatasetError(f"{name}: data after the end of the pickle; not a {what}")
    except _Refused as e:
        raise DatasetError(f"{name}: refused to load {what}: it references {e}; a {what} holds "
                           f"only {_ALLOWED}") from None
    except DatasetError:
        raise
    except RecursionError:
        raise DatasetError(f"{name}: {what} nested too deeply to be a data file") from None
    except Exception as e:  # truncated, damaged gzip, not a pickle, malformed opcodes
        where = "gzip stream" if stream is not file else "file"
        raise DatasetError(f"{name}: not a readable {what}: the {where} is truncated, damaged or "
                           f"not a pickle ({type(e).__name__}: {str(e)[:120]})") from None
    finally:
        if stream is not file:
            stream.close()  # the gzip reader only; `file` belongs to the caller
    return obj


class _ReadOnly(io.RawIOBase):
    """A raw reader over any object with `read(n)`, so that it can be peeked."""

    def __init__(self, file: Any):
        self._file = file

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _open(path_or_file: str | os.PathLike | BinaryIO, what: str):
    if isinstance(path_or_file, (str, os.PathLike)):
        path = pathlib.Path(path_or_file)
        if not path.is_file():
            raise DatasetError(f"{path}: {what} not found")
        return str(path), open(path, "rb"), True
    file = path_or_file
    if not hasattr(file, "peek"):
        file = io.BufferedReader(_ReadOnly(file))
    return str(getattr(path_or_file, "name", "<stream>")), file, False


def load(path_or_file: str | os.PathLike | BinaryIO, *, what: str = "cue file") -> Any:
    """Loads a pickle (plain or gzip'd, Python 2 or 3) of plain data and numeric numpy arrays.

    Args:
      path_or_file: a path, or a binary file open for reading.
      what: what the file should be, for the messages ("cue file").

    Returns:
      the unpickled dicts / lists / tuples / numbers / strings / `np.ndarray`s.

    Raises:
      DatasetError (one line, naming the file): missing, empty, truncated, damaged gzip, not a
        pickle, or it references anything else (the message names the refused global).
    """
    name, file, owned = _open(path_or_file, what)
    try:
        return _unpickle(file, name, what, allow_object_root=False)
    finally:
        if owned:
            file.close()


def load_npy_object(path: str | os.PathLike, *, what: str = "labels file") -> Any:
    """Loads the object of a `np.save(..., allow_pickle=True)`'d 0-d object array, restricted.

    The object inside may hold only what `load` admits.

    Raises:
      DatasetError naming the file, as `load` does, and when it is not a 0-d object `.npy`.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                      else np.lib.format.read_array_header_2_0(f))
        except ValueError as e:
            raise DatasetError(f"{path}: not a .npy {what} ({str(e)[:120]})") from None
        shape, _, dtype = header
        if dtype != np.dtype(object) or shape != ():
            raise DatasetError(f"{path}: expected a .npy of one pickled object (a dict), "
                               f"got shape {shape} dtype {dtype}")
        return _unpickle(f, str(path), what, allow_object_root=True)
