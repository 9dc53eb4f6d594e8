"""``--backbone keras:PATH[@TAP]``: a user's saved Keras model (``.keras`` or a legacy ``.h5`` from
``model.save``), e.g. a ``keras.applications`` base under their own head, as a zoo backbone.

* **Which base.** The model's layer names (its ``config.json``, or the ``.h5``'s ``model_config``; nested models
  flattened) are matched against every Keras zoo family's name map (:data:`FAMILIES`, data): a family is a
  candidate when the model holds every layer its map names, and the first candidate (largest map first, so VGG19
  before VGG16) whose shapes all fit is the base (widths such as MobileNetV2's alpha differ only in shapes).
* **Its weights.** A ``.keras`` file stores layers by class and position (``layers/functional/layers/conv2d_3``);
  those paths are rebuilt from the config (Keras numbers each class per container, in ``model.layers`` order), so
  the user's head cannot be mistaken for the base. The head itself is ignored.
* **Where to cut.** ``@TAP`` names one of the family's taps (``jaxheads backbones list`` shows them); the default
  is the family's last tap, the base's output, which the user's head pooled.

The backbone's name is the spec as given (what a saved head records and ``predict`` loads again); its weights
id is the file's sha256 prefix, as for any weights file, and its input size the model's own when it has one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn

from jaxheads.backbones.base import BackboneConfig, Variables, sha256_file
from jaxheads.backbones.keras_convert import (ANONYMOUS, KerasWeights, KerasWeightsError, LayerSpec, _cached,
                                              read_keras_weights)

PREFIX = "keras:"
SUFFIXES = (".keras", ".h5")
CONTAINERS = frozenset({"Functional", "Sequential", "Model"})
"""Config classes whose layers are nested models (flattened, their own ``layers/`` in a ``.keras`` file)."""


def _family_maps() -> dict[str, tuple[Callable[[str], Sequence[LayerSpec]], Callable[..., dict]]]:
    """Zoo family (module class) -> (backbone name -> its Keras body map, the family's converter)."""
    from jaxheads.backbones import efficientnet, mobilenet, resnet, vgg, xception

    return {
        "VGG": (lambda n: vgg.body_map(vgg._DEPTHS[n]), vgg.convert),
        "ResNet": (lambda n: resnet.body_map(resnet.STAGES[n]), resnet.convert),
        "MobileNetV1": (lambda n: mobilenet.v1_body_map(), mobilenet.convert_v1),
        "MobileNetV2": (lambda n: mobilenet.v2_body_map(), mobilenet.convert_v2),
        "EfficientNet": (lambda n: efficientnet.body_map(*efficientnet.VARIANTS[n][:2]), efficientnet.convert),
        "Xception": (lambda n: xception.body_map(), xception.convert),
    }


FAMILIES = ("VGG", "ResNet", "MobileNetV1", "MobileNetV2", "EfficientNet", "Xception")
"""The zoo families a Keras model's base is looked for in (named in the refusal)."""


def is_spec(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def parse(spec: str) -> tuple[Path, str | None]:
    """``keras:PATH[@TAP]`` -> (PATH, TAP or None); one line when PATH is not a Keras model file."""
    body = spec[len(PREFIX):]
    path, sep, tap = body.rpartition("@")
    if not sep or not path.endswith(SUFFIXES):
        path, tap = body, ""
    if not path.endswith(SUFFIXES):
        raise ValueError(f"--backbone {spec}: expected keras:PATH[@TAP] with PATH a .keras or .h5 model file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--backbone {spec}: Keras model file {path} does not exist")
    return Path(path), tap or None


# ---------------------------------------------------------------------------------------------- reading


def _model_config(path: Path) -> dict[str, Any]:
    """The saved model's config: ``config.json`` of a ``.keras`` archive, ``model_config`` of a legacy ``.h5``."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise KerasWeightsError(f"{path}: not a saved Keras model (.keras or model.save .h5): {e}") from e
    if raw is None:
        raise KerasWeightsError(f"{path}: holds weights only (no model_config); save the model with model.save")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _snake(name: str) -> str:
    """Keras's ``naming.to_snake_case``: ``SeparableConv2D`` -> ``separable_conv2d``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _layers(config: dict[str, Any], prefix: str = "layers") -> Iterator[tuple[str, str, str]]:
    """(layer name, class name, ``.keras`` weights path) of every layer, nested models flattened, in order."""
    used: dict[str, int] = {}
    for layer in config.get("config", {}).get("layers", []):
        cls = layer.get("class_name", "")
        snake = _snake(cls)
        used[snake] = used.get(snake, -1) + 1  # Keras's saving_lib: conv2d, conv2d_1, ... per container
        where = f"{prefix}/{snake}" + (f"_{used[snake]}" if used[snake] else "")
        if cls in CONTAINERS:
            yield from _layers(layer, f"{where}/layers")
        else:
            yield layer.get("config", {}).get("name", ""), cls, where


def read_model(path: Path) -> tuple[KerasWeights, list[str], int | None]:
    """(the model's weights by real layer name, its layer names in order, its input side or None)."""
    config = _model_config(path)
    layers = list(_layers(config))
    weights = read_keras_weights(path)
    if not weights.named:  # a .keras archive: its positional paths -> the names the config gives them
        names = {where: name for name, _, where in layers}
        saved = {p: arrays for p, arrays in weights.layers.items() if p.startswith("layers/")}  # not the optimizer
        unknown = [p for p in saved if p not in names]
        if unknown:
            raise KerasWeightsError(f"{path}: weights {unknown[:3]} match no layer of its config.json")
        in_order = {name: saved[where] for name, _, where in layers if where in saved}  # model.layers order
        weights = KerasWeights(in_order, True, str(path))
    return weights, [name for name, _, _ in layers], _input_side(config)


def _input_side(config: dict[str, Any]) -> int | None:
    """The square input side the model was built for (its first InputLayer's shape), else None."""
    for layer in config.get("config", {}).get("layers", []):
        shape = layer.get("config", {}).get("batch_shape") or layer.get("config", {}).get("batch_input_shape")
        if layer.get("class_name") == "InputLayer" and shape and len(shape) == 4 and shape[1] == shape[2]:
            return int(shape[1]) if shape[1] else None
    return None


# ------------------------------------------------------------------------------------------- identifying


def identify(weights: KerasWeights, names: Sequence[str], source: str) -> tuple[BackboneConfig, Variables]:
    """The zoo backbone whose Keras name map and shapes the model's base fits, with its converted variables."""
    from jaxheads.backbones import get_config, list_backbones
    from jaxheads.backbones.timm_convert import family_of

    maps, present = _family_maps(), set(names)
    candidates = []
    for name in list_backbones():
        config = get_config(name)
        family = family_of(config)
        if family in maps:
            body = maps[family][0](name)
            if all(s.keras in present for s in body if not s.keras.startswith(ANONYMOUS)):
                candidates.append((-len(body), name, config, maps[family][1]))
    for _, _, config, converter in sorted(candidates, key=lambda c: c[:2]):
        try:
            return config, converter(config, weights)
        except KerasWeightsError:
            continue  # same names, other shapes: another width of the family
    first = ", ".join(names[:4])
    raise KerasWeightsError(f"{source}: no zoo architecture matches this Keras model (its layers begin {first}); "
                            f"keras: takes a base from the zoo's Keras families {', '.join(FAMILIES)}")


@functools.lru_cache(maxsize=8)
def _identified(path: str, stamp: tuple[int, int]) -> tuple[BackboneConfig, Variables, int | None]:
    """:func:`identify` of the file at ``path`` once per process (``stamp``: its mtime and size)."""
    weights, names, side = read_model(Path(path))
    config, variables = identify(weights, names, path)
    return config, variables, side


def _identify_file(path: Path) -> tuple[BackboneConfig, Variables, int | None]:
    stat = path.stat()
    return _identified(str(path.resolve()), (stat.st_mtime_ns, stat.st_size))


# --------------------------------------------------------------------------------------------- the config


@functools.cache
def _cut_class(base: type[nn.Module]) -> type[nn.Module]:
    """``base`` whose forward stops at the tap ``cut`` unless told otherwise (a truncated zoo module)."""

    class Cut(base):  # type: ignore[misc, valid-type]
        cut: str | None = None

        def __call__(self, x: Any, *, train: bool = False, taps: bool = False, until: str | None = None,
                     **kwargs: Any) -> dict[str, Any]:
            return super().__call__(x, train=train, taps=taps, until=until or self.cut, **kwargs)

    Cut.__name__ = Cut.__qualname__ = base.__name__  # family_of reads the class name
    return Cut


def _cut_build(build: Callable[..., nn.Module], tap: str) -> Callable[..., nn.Module]:
    func = getattr(build, "func", build)
    return functools.partial(_cut_class(func), *getattr(build, "args", ()), cut=tap,
                             **getattr(build, "keywords", {}))


def config_for(spec: str) -> BackboneConfig:
    """The zoo config of the base of ``keras:PATH[@TAP]``, named ``spec``, whose default weights are PATH."""
    path, tap = parse(spec)
    base, _, side = _identify_file(path)
    taps = tuple(base.taps)
    if tap is not None and tap not in taps:
        raise ValueError(f"--backbone {spec}: {tap!r} is not a tap of its base {base.name}; taps: {', '.join(taps)}")
    cut = tap if tap is not None and tap != taps[-1] else None
    return dataclasses.replace(
        base, name=spec, build=_cut_build(base.build, cut) if cut else base.build,
        preprocessing=dataclasses.replace(base.preprocessing, input_size=side or base.preprocessing.input_size),
        weights={"file": _load_file}, default_weights=str(path), weights_ids={},
        taps=taps[: taps.index(cut) + 1] if cut else taps,
        blocks=tuple(b for b in base.blocks if not cut or b not in taps or taps.index(b) <= taps.index(cut)),
    )


def _load_file(config: BackboneConfig, path: Any) -> tuple[Variables, str]:
    """The ``file`` loader of a ``keras:`` backbone: the base's variables, cached by the file's hash."""
    weights_id = sha256_file(path)[:16]
    return _cached(config, weights_id, lambda: _identify_file(Path(path))[1])


def base_name(spec: str) -> str:
    """The zoo backbone a ``keras:`` spec's base was identified as (for messages and reports)."""
    return _identify_file(parse(spec)[0])[0].name
