"""Read a ``torch.save`` state dict into numpy arrays, without importing torch: the zip format (torch's default
since 1.6) and the legacy one.

The zip format is a zip archive whose one top folder (``archive/`` or the file's stem) holds ``data.pkl``, the
pickled object whose tensors point at storages through persistent ids ``("storage", type, key, location,
numel)``, and ``data/<key>``, each storage's raw little-endian bytes (``byteorder`` says so when present).

The legacy format is five things back to back: a pickled magic number, a pickled protocol version, a pickled
dict of system info (endianness, type sizes), the pickled object itself, whose tensors point at storages
through persistent ids, and a pickled list of storage keys; then, for each key in that order, an int64
element count followed by the storage's raw bytes.

Unpickling runs arbitrary code when a pickle names arbitrary globals, so every pickle here goes through
:class:`_RestrictedUnpickler`, which resolves only the few globals a state dict needs (listed as data in
``_STORAGE_DTYPES`` and ``_CALLABLES``) and raises :class:`pickle.UnpicklingError` naming any other.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import ml_dtypes
import numpy as np

__all__ = ["check_filename_hash", "load_state_dict", "sha256_prefix_from_name"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch's legacy storage classes -> the numpy dtype of their elements.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.<X>Storage`` while unpickling: only its element dtype matters."""

    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes come after the object pickle."""

    key: str
    dtype: np.dtype
    numel: int
    view: tuple[str, int, int] | None  # (view key, element offset, element count) for legacy storage views


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor waiting for its storage's bytes: storage plus offset, shape and strides in elements."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: _StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...],
                       requires_grad: bool = False, backward_hooks: Any = None, metadata: Any = None) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_tensor_v2``; records the view, materialised once bytes are read."""
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 expects a storage, got {type(storage).__name__}")
    return _TensorRef(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data: _TensorRef, requires_grad: bool = False, backward_hooks: Any = None) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_parameter``: a parameter is its data."""
    return data


_CALLABLES: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a state dict needs; storages come back as :class:`_StorageRef`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CALLABLES:
            return _CALLABLES[module, name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a torch state dict only needs "
            f"{sorted(f'{m}.{n}' for m, n in _CALLABLES)} and torch.<X>Storage"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, *view = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id names {storage_type!r}, not a torch storage type")
        view_meta = view[0] if view else None
        if view_meta is not None:
            view_meta = (str(view_meta[0]), int(view_meta[1]), int(view_meta[2]))
        return _StorageRef(str(key), storage_type.dtype, int(numel), view_meta)


def _unpickle(f: BinaryIO) -> Any:
    """One restricted pickle from the stream."""
    return _RestrictedUnpickler(f).load()


def _read_storages(f: BinaryIO, keys: list[str], refs: dict[str, _StorageRef]) -> dict[str, np.ndarray]:
    """The raw storages that follow the pickles: per key an int64 element count, then the elements."""
    storages = {}
    for key in keys:
        if key not in refs:
            raise pickle.UnpicklingError(f"storage key {key!r} is listed but no tensor uses it")
        ref = refs[key]
        (numel,) = np.frombuffer(_read_exact(f, 8), "<i8")
        if numel != ref.numel:
            raise pickle.UnpicklingError(f"storage {key!r}: header says {numel} elements, pickle says {ref.numel}")
        data = _read_exact(f, int(numel) * ref.dtype.itemsize)
        storages[key] = np.frombuffer(data, ref.dtype.newbyteorder("<"))
    if f.read(1):
        raise pickle.UnpicklingError("trailing bytes after the last storage")
    return storages


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Exactly ``n`` bytes, or an error saying the file is truncated."""
    data = f.read(n)
    if len(data) != n:
        raise pickle.UnpicklingError(f"file truncated: wanted {n} bytes, got {len(data)}")
    return data


def _materialise(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    """A fresh, contiguous numpy array for a tensor view, bounds-checked against its storage."""
    flat = storages[ref.storage.key]
    if ref.storage.view is not None:
        _, start, count = ref.storage.view
        flat = flat[start:start + count]
    if any(s < 0 for s in ref.shape) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise pickle.UnpicklingError(f"negative shape/stride/offset in tensor {ref}")
    if 0 in ref.shape:
        return np.zeros(ref.shape, flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if last >= flat.size:
        raise pickle.UnpicklingError(f"tensor view reaches element {last} of a storage of {flat.size}")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], ref.shape, tuple(s * flat.itemsize for s in ref.stride), writeable=False
    )
    return np.array(view, order="C")


def _collect_storages(obj: Any, out: dict[str, _StorageRef]) -> None:
    """Every storage the unpickled object refers to, by key."""
    if isinstance(obj, _TensorRef):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for value in obj.values():
            _collect_storages(value, out)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _collect_storages(value, out)


def _replace_tensors(obj: Any, storages: dict[str, np.ndarray]) -> Any:
    """The unpickled object with every tensor placeholder replaced by its numpy array."""
    if isinstance(obj, _TensorRef):
        return _materialise(obj, storages)
    if isinstance(obj, dict):
        return type(obj)((k, _replace_tensors(v, storages)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_replace_tensors(v, storages) for v in obj)
    return obj


def _load_legacy(f: BinaryIO) -> Any:
    """Parse the legacy stream: header pickles, the object, storage keys, raw storages."""
    if _unpickle(f) != LEGACY_MAGIC:
        raise pickle.UnpicklingError("not a legacy torch.save file (bad magic number; zip-format files differ)")
    if (protocol := _unpickle(f)) != LEGACY_PROTOCOL:
        raise pickle.UnpicklingError(f"unsupported legacy protocol {protocol!r}")
    sys_info = _unpickle(f)
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
        raise pickle.UnpicklingError(f"only little-endian files are supported, sys info: {sys_info!r}")
    obj = _unpickle(f)
    keys = _unpickle(f)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise pickle.UnpicklingError(f"expected a list of storage keys, got {type(keys).__name__}")
    refs: dict[str, _StorageRef] = {}
    _collect_storages(obj, refs)
    return _replace_tensors(obj, _read_storages(f, keys, refs))


def _load_zip(data: bytes, path: str | Path) -> Any:
    """Parse the zip format: the ``data.pkl`` object, then each storage it names from ``data/<key>``."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                raise pickle.UnpicklingError(f"{path}: a zip torch.save file holds one <folder>/data.pkl, found "
                                             f"{pickles or 'none'}")
            folder = pickles[0][: -len("data.pkl")]
            order = archive.read(f"{folder}byteorder").decode() if f"{folder}byteorder" in archive.namelist() \
                else "little"
            if order != "little":
                raise pickle.UnpicklingError(f"{path}: only little-endian files are supported, this one is {order}")
            obj = _unpickle(io.BytesIO(archive.read(pickles[0])))
            refs: dict[str, _StorageRef] = {}
            _collect_storages(obj, refs)
            storages = {key: _zip_storage(archive, f"{folder}data/{key}", ref) for key, ref in refs.items()}
    except (zipfile.BadZipFile, KeyError) as e:
        raise pickle.UnpicklingError(f"{path}: a damaged zip torch.save file ({e})") from e
    return _replace_tensors(obj, storages)


def _zip_storage(archive: zipfile.ZipFile, name: str, ref: _StorageRef) -> np.ndarray:
    """One storage's elements from its zip entry, its size checked against the pickle's element count."""
    data = archive.read(name)
    if len(data) != ref.numel * ref.dtype.itemsize:
        raise pickle.UnpicklingError(f"storage {name}: {len(data)} bytes, the pickle says {ref.numel} elements of "
                                     f"{ref.dtype.itemsize} bytes")
    return np.frombuffer(data, ref.dtype.newbyteorder("<"))


def sha256_prefix_from_name(path: str | Path) -> str | None:
    """The hex hash prefix in a name like ``model-1a2b3c4d.pth``, or None when the name carries none."""
    match = _HASH_IN_NAME.search(Path(path).name)
    return match.group(1) if match else None


def check_filename_hash(path: str | Path, data: bytes) -> str:
    """The sha256 of ``data``; raises ValueError when the file name carries a hash prefix that differs."""
    digest = hashlib.sha256(data).hexdigest()
    prefix = sha256_prefix_from_name(path)
    if prefix is not None and not digest.startswith(prefix):
        raise ValueError(f"{path}: sha256 {digest[:len(prefix)]}... does not match the prefix {prefix} in its name "
                         "(corrupt or substituted file)")
    return digest


def load_state_dict(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Read a ``torch.save`` file, zip or legacy: (its object with tensors as numpy arrays, the file's sha256).

    Checks the sha256 prefix in the file name (if it has one) before unpickling anything.
    """
    data = Path(path).read_bytes()
    digest = check_filename_hash(path, data)
    if data.startswith(b"PK\x03\x04"):  # zip format, torch's default since 1.6
        return _load_zip(data, path), digest
    return _load_legacy(io.BytesIO(data)), digest
