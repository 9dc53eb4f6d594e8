"""Top-k ImageNet classes of photos with a pretrained backbone: the offline demo and a check of a weight port.

Class names come from the installed tensorflow-datasets package (read as data, never imported); without it
classes are named "class N". The bundled demo photo is :func:`demo_photo_path`.
"""

from __future__ import annotations

import ast
import functools
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any, Sequence, Union

import jax
import numpy as np
from PIL import Image

from jaxheads import backbones, data
from jaxheads.ranking import top_k

ImageLike = Union[str, Path, np.ndarray, Image.Image]
Prediction = tuple[int, str, float]

# Where an installed package holds the 1000 ImageNet class names as a Python list literal: (package, file, name).
_CLASS_NAME_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("tensorflow_datasets", "datasets/siscore/labels.py", "IMAGENET_LABELS_LIST"),
)


def demo_photo_path() -> Path:
    """The bundled real photo (Chelsea the tabby cat, CC0, from scikit-image)."""
    return Path(str(importlib.resources.files("jaxheads") / "assets" / "chelsea.jpg"))


def _literal_list(path: Path, name: str) -> list[str] | None:
    """The list literal assigned to ``name`` at the top level of a Python file, parsed without executing it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            value = ast.literal_eval(node.value)
            return [str(v) for v in value] if isinstance(value, list) else None
    return None


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, from an installed package; "class N" when none has them."""
    for package, relative, name in _CLASS_NAME_SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        names = _literal_list(path, name) if path.is_file() else None
        if names is not None and len(names) == 1000:
            return tuple(names)
    return tuple(f"class {i}" for i in range(1000))


def load_image(image: ImageLike) -> np.ndarray:
    """An RGB uint8 array (H, W, 3) from a path, a PIL image, or an array of values in [0, 255] (grey or RGBA
    are converted)."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return np.asarray(Image.fromarray(array[..., :3].astype(np.uint8)))


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """:func:`jaxheads.data.resize_center_crop` of an RGB array: the one resize that features, fine-tuning and
    predict use, so the check of a weight port sees what a head sees."""
    return data.resize_center_crop(Image.fromarray(image), size)


def top_predictions(probs: np.ndarray, k: int, names: Sequence[str]) -> list[list[Prediction]]:
    """Per row of class probabilities, the k most probable (class id, name, probability), best first."""
    return [[(int(c), names[c], float(p[c])) for c in row] for p, row in zip(probs, top_k(probs, k))]


def classify(images_or_paths: ImageLike | Sequence[ImageLike], backbone: str = "efficientnet_lite0",
             top_k: int = 5) -> list[list[Prediction]]:
    """Top-k ImageNet predictions per image with ``backbone``'s pretrained classifier (loaded offline)."""
    items = [images_or_paths] if _is_single(images_or_paths) else list(images_or_paths)
    model = backbones.load(backbone, "imagenet", num_classes=1000)
    size = model.config.preprocessing.input_size
    batch = np.stack([resize_center_crop(load_image(item), size) for item in items]).astype(np.float32)
    probs = _probabilities(model.variables, batch, module=model.module, preprocessing=model.config.preprocessing)
    return top_predictions(np.asarray(probs), top_k, imagenet_class_names())


@functools.partial(jax.jit, static_argnames=("module", "preprocessing"))
def _probabilities(variables: Any, images: jax.Array, *, module: Any, preprocessing: Any) -> jax.Array:
    """Softmax over the classifier's logits for raw RGB images; compiled once per model and batch shape."""
    return jax.nn.softmax(module.apply(variables, preprocessing(images), train=False)["logits"], axis=-1)


def _is_single(x: object) -> bool:
    """True for one image (a path, a PIL image, or one (H, W[, C]) array) rather than a sequence of them."""
    return isinstance(x, (str, Path, Image.Image)) or (isinstance(x, np.ndarray) and x.ndim in (2, 3))
