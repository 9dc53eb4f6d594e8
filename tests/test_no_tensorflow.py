"""jaxheads in its default install, which has no TensorFlow (issue 27, item 1). Each test runs a child interpreter
whose ``sitecustomize`` hides, as if they were not installed, every distribution outside the default install: the
closure of pyproject.toml's core requirements (this checkout's) over the installed metadata. TensorFlow and Keras are
hidden whatever that says. Hidden means the import system does not find them, ``importlib.util.find_spec`` answers
None (as TFDS, etils and flax ask) and ``importlib.metadata`` does not list them; so a package that only an extra
brings fails the child as it would fail a user (jax.export's flatbuffers once came with TensorFlow), while optional
imports fall back as they would. In the child, ``import jaxheads``, a tiny sweep through the public API with its
head saved and exported, and ``sweep --help`` run; a TFDS dataset prepared as ArrayRecord is built and read; and one
prepared as TFRecord only fails with one line that names the extra to install.

The children run this file as a script (``python test_no_tensorflow.py CHILD ARGS``), so their code is plain Python;
the TFRecord preparation runs in the test process, which has TensorFlow (the test extra includes ``[tfrecord]``).
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pytest

ALWAYS_HIDDEN = ("tensorflow", "keras", "tf_keras")
ALWAYS_HIDDEN_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "keras", "tf-keras")
HARNESS = ("pytest", "pluggy", "iniconfig", "packaging", "pip", "setuptools")
"""Distributions the child may use although the default install may not hold them: pytest (this file imports it)
and what every venv has."""

# The child's sitecustomize: sys.meta_path's PathFinder is replaced by one that does not see the hidden top-level
# modules or the hidden distributions' metadata; everything else is found as before.
SITECUSTOMIZE = """
import sys
from importlib.machinery import PathFinder

HIDDEN, HIDDEN_DISTRIBUTIONS = {modules!r}, {distributions!r}


class _PathFinderOfTheDefaultInstall:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return PathFinder.find_spec(name, path, target)

    @staticmethod
    def find_distributions(*args, **kwargs):
        for dist in PathFinder.find_distributions(*args, **kwargs):
            if (dist.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-") not in HIDDEN_DISTRIBUTIONS:
                yield dist

    @staticmethod
    def invalidate_caches():
        PathFinder.invalidate_caches()


sys.meta_path[:] = [_PathFinderOfTheDefaultInstall if f is PathFinder else f for f in sys.meta_path]
"""


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _core_closure() -> set[str]:
    """The distributions the default install holds: pyproject.toml's core requirements (this checkout's, not the
    installed metadata, which dates from the last ``pip install -e``), then the installed requirements of each,
    transitively, with the extras each names (``etils[epath]``)."""
    import tomllib

    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    seen: set[tuple[str, frozenset[str]]] = {("jaxheads", frozenset())}
    todo = [(_canon(r.name), frozenset(r.extras)) for r in map(Requirement, pyproject["project"]["dependencies"])]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            requires = metadata.distribution(name).requires or ()
        except metadata.PackageNotFoundError:
            continue
        for req in map(Requirement, requires):
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((_canon(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


@functools.cache
def _sitecustomize() -> str:
    """The child's sitecustomize, hiding every installed distribution outside the default install (and harness)."""
    keep = _core_closure() | set(HARNESS)
    installed = {_canon(d.metadata["Name"] or "") for d in metadata.distributions()}
    distributions = sorted((installed - keep) | set(ALWAYS_HIDDEN_DISTRIBUTIONS))
    modules = sorted({module for module, dists in metadata.packages_distributions().items()
                      if not any(_canon(d) in keep for d in dists)} | set(ALWAYS_HIDDEN))
    return SITECUSTOMIZE.format(modules=tuple(modules), distributions=tuple(distributions))


CLASSES = ("dark", "light", "red")
DATASET = "jaxheads_no_tf_shades"


def _run_child(tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run this file as a script with ``args``, TensorFlow hidden; the JSON its last output line holds."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_sitecustomize())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"child {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_import_and_a_tiny_sweep_run_without_tensorflow(tmp_path: Path) -> None:
    out = _run_child(tmp_path, "sweep", str(tmp_path))
    assert out["tensorflow_spec"] is None and out["import_error"] == "ModuleNotFoundError"
    assert out["members"] == 2 and out["ranked"] == 2 and out["help_exit"] == 0 and out["logits_shape"] == [48, 3]
    assert (tmp_path / "head.jaxexport").stat().st_size > 0
    assert out["loaded"] == []  # neither TensorFlow nor Keras was imported (nor could be)


@pytest.mark.slow
def test_tfds_array_record_dataset_is_built_and_read_without_tensorflow(tmp_path: Path) -> None:
    out = _run_child(tmp_path, "tfds", str(tmp_path / "array_record"))
    assert out["lazy"] and out["splits"] == ["test", "train", "val"]
    assert out["labels_match"] and out["batch_shape"] == [4, 8, 8, 3]
    assert out["loaded"] == []


def test_tfrecord_only_dataset_without_tensorflow_names_the_extra(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("preparing a TFRecord dataset needs TensorFlow (the [tfrecord] extra)")
    _prepare(str(tmp_path / "tfrecord"), "tfrecord")  # here, where TensorFlow is installed (the test extra)
    out = _run_child(tmp_path, "tfrecord", str(tmp_path / "tfrecord"))
    assert out["error"] == "DatasetError" and "\n" not in out["message"]
    assert out["message"].startswith(f"tfds:{DATASET}: prepared in ")
    assert 'pip install "jaxheads[tfrecord]"' in out["message"]
    assert out["loaded"] == []


# ----------------------------------------------------------------------------------------------- the children


def _hidden_modules() -> list[str]:
    """TensorFlow or Keras modules this process imported (none can be found, so none should be)."""
    return sorted(m for m in sys.modules if m.partition(".")[0] in ALWAYS_HIDDEN)


def _child_sweep(out_dir: str) -> dict[str, Any]:
    """``import jaxheads``, 2 heads trained on synthetic pooled features, the best saved (orbax) and exported
    (``jax.export``) as the main job does, and ``jaxheads sweep --help``."""
    import contextlib

    import numpy as np

    spec = importlib.util.find_spec("tensorflow")
    try:
        import tensorflow  # noqa: F401
        import_error = None
    except ImportError as err:
        import_error = type(err).__name__
    import jaxheads
    from jaxheads.cli import main as cli

    rng = np.random.default_rng(0)

    def split(n: int) -> Any:
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 8)).astype(np.float32)
        x[:, :3] += 2.0 * np.eye(3, dtype=np.float32)[y]
        return jaxheads.FeatureSplit(labels=y, pooled=x)

    splits = {"train": split(96), "val": split(48), "test": split(48)}
    sweep = jaxheads.SweepSpec(pooling=("none",), widths=(4, 8), depth=(1,), epochs=2, batch_size=(32,),
                               learning_rate=(1e-2,), patience=None, ridge_l2=())
    result = jaxheads.run_sweep(sweep, splits, num_classes=3)
    head, variables = result.head()
    jaxheads.save_head(Path(out_dir) / "head", head, variables, (8,))
    jaxheads.export_head(Path(out_dir) / "head.jaxexport", head, variables, (8,))
    _, loaded, apply_fn = jaxheads.load_head(Path(out_dir) / "head")
    logits = np.asarray(apply_fn(loaded, splits["test"].pooled))
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            help_exit = cli(["sweep", "--help"])
        except SystemExit as stop:
            help_exit = stop.code
    return {"tensorflow_spec": None if spec is None else str(spec.origin), "import_error": import_error,
            "members": len(result.members), "ranked": len(result.leaderboard), "help_exit": help_exit,
            "logits_shape": list(logits.shape), "loaded": _hidden_modules()}


@functools.cache  # TFDS registers a builder class by name: define it once per process
def _builder_class() -> Any:
    """A 3-class TFDS builder of small PNGs (21 train, 6 test); the PNGs are encoded by PIL, as TFDS needs
    TensorFlow to encode an image given as an array."""
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    class JaxheadsNoTfShades(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self) -> Any:
            features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(None, None, 3)),
                                                   "label": tfds.features.ClassLabel(names=list(CLASSES))})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
            return {"train": self._generate_examples(21, 0), "test": self._generate_examples(6, 1)}

        def _generate_examples(self, count: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
            rng = np.random.default_rng(seed)
            for i in range(count):
                pixels = rng.integers(0, 60, (9 + i % 4, 10, 3), dtype=np.uint8) + np.uint8(90 * (i % 3))
                png = io.BytesIO()
                Image.fromarray(pixels).save(png, format="PNG")
                yield f"{seed}-{i}", {"image": io.BytesIO(png.getvalue()), "label": i % 3}

    return JaxheadsNoTfShades


def _prepare(data_dir: str, file_format: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _builder_class()(data_dir=data_dir, file_format=file_format).download_and_prepare()


def _child_tfds(data_dir: str) -> dict[str, Any]:
    """Prepare the builder as ArrayRecord, then read it through jaxheads' loader and batch pipeline."""
    import numpy as np

    from jaxheads import data
    from jaxheads.data.dataset import LazyImages

    _prepare(data_dir, "array_record")
    ds = data.load_dataset(f"tfds:{DATASET}", data_dir=data_dir)
    train = ds.split("train")
    labels = np.concatenate([ds.split(name).labels for name in ("train", "val")])
    batch = next(iter(data.iter_batches(train, image_size=8, batch_size=4)))
    return {"lazy": isinstance(train.sources, LazyImages), "splits": sorted(ds.splits),
            "labels_match": sorted(labels.tolist()) == sorted(i % 3 for i in range(21)),
            "batch_shape": list(batch.images.shape), "loaded": _hidden_modules()}


def _child_tfrecord(data_dir: str) -> dict[str, Any]:
    """Read a TFRecord-only preparation: the loader's error, by type and message."""
    from jaxheads import data

    _builder_class()  # registered, as a catalogue dataset would be
    try:
        data.load_dataset(f"tfds:{DATASET}", data_dir=data_dir)
    except Exception as err:  # noqa: BLE001  (the test asserts which)
        return {"error": type(err).__name__, "message": str(err), "loaded": _hidden_modules()}
    return {"error": None, "message": "", "loaded": _hidden_modules()}


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    print(json.dumps({"sweep": _child_sweep, "tfds": _child_tfds, "tfrecord": _child_tfrecord}[command](*rest)))
