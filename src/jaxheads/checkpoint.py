"""Every orbax call in jaxheads lives here (orbax's API moves; one module to mend when it does).

A checkpoint is a directory holding an orbax pytree (``state/``) and a small JSON file (``meta.json``) with
whatever describes it (spec, label names, weights id). orbax writes into a temporary directory and renames it
when complete, so a kill leaves either no checkpoint or a whole one; ``meta.json`` is written last, atomically,
and its presence marks the checkpoint complete.

Everything jaxheads checkpoints (converted backbones, heads, fine-tuned models) is a host-side pytree that every
process holds whole, so reads and writes are process-local: orbax is told that only this process takes part
(no cross-host barrier), and in multi-host runs only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

META = "meta.json"
STATE = "state"


def save(path: str | Path, tree: Any, meta: dict[str, Any] | None = None) -> Path:
    """Write ``tree`` (a pytree of arrays) and ``meta`` (JSON-able) to ``path``, replacing an older checkpoint."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tree = jax.tree.map(np.asarray, tree)
        with _checkpointer() as checkpointer:
            checkpointer.save(staging / STATE, tree)
            checkpointer.wait_until_finished()
        write_json_atomic(staging / META, meta or {})
        old = _previous(path)
        if path.exists():  # keep the old checkpoint readable until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return path


def _previous(path: Path) -> Path:
    """Where :func:`save` parks the checkpoint it replaces, for the instant between its two renames."""
    return path.with_name(f".{path.name}.previous")


def _complete(path: Path) -> bool:
    return (path / META).is_file() and (path / STATE).is_dir()


def exists(path: str | Path) -> bool:
    """True when ``path`` holds a complete checkpoint (or a kill during its replacement left the previous one)."""
    path = Path(path).absolute()
    return _complete(path) or _complete(_previous(path))


def _whole(path: str | Path) -> Path:
    """The directory of the whole checkpoint at ``path`` (or of the one a killed save left beside it)."""
    path = Path(path).absolute()
    if not _complete(path) and _complete(_previous(path)):
        path = _previous(path)  # killed between save's two renames: the old checkpoint is whole
    if not _complete(path):
        raise FileNotFoundError(f"no complete jaxheads checkpoint at {path} (expected {STATE}/ and {META})")
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / META}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path / META}: expected a JSON object, found {type(meta).__name__}")
    return meta


def load_meta(path: str | Path) -> dict[str, Any]:
    """The meta dict of the checkpoint at ``path``, without reading its arrays."""
    return _read_meta(_whole(path))


def load(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save`: (pytree of numpy arrays, meta dict). A corrupt ``meta.json`` is a
    one-line ValueError naming it, found before the arrays are read."""
    path = _whole(path)
    meta = _read_meta(path)
    with _checkpointer() as checkpointer:
        tree = checkpointer.restore(path / STATE)
    return jax.tree.map(np.asarray, tree), meta


def _checkpointer() -> ocp.StandardCheckpointer:
    """An orbax checkpointer for this process alone (see the module docstring)."""
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def json_ready(obj: Any) -> Any:
    """``obj`` as it reads back from strict JSON: mappings with str keys, tuples as lists, numpy values as Python
    numbers, non-finite floats as None (so stored and fresh values compare equal)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return json.loads(json.dumps(obj, default=str))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes through a temporary file in the same directory, fsync, then rename over ``path``."""
    write_atomic(path, lambda f: f.write(data))


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any], *, exclusive: bool = False) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, then publish it as ``path``, so readers never
    see half a file and a kill leaves no partial one. ``exclusive``: publish only if ``path`` does not exist yet
    (the first writer wins; a hard link is atomic and fails on an existing name)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def cache_dir() -> Path:
    """Where converted backbones and default outputs go: ``$JAXHEADS_CACHE``, else ``./checkpoints``."""
    return Path(os.environ.get("JAXHEADS_CACHE", "checkpoints")).absolute()
