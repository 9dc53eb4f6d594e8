"""Fine-tune the chosen head together with the top of its backbone, on images, and save the whole model.

The last step of the data flow. ``finetune(head_dir, dataset, out_dir=...)`` starts from a head written by
``jaxheads sweep`` (``OUT/head``: its meta names the backbone, the weights and their id) and:

* unfreezes the top ``unfreeze`` entries of ``config.blocks`` (for EfficientNet-Lite0: ``head``, ``block15``,
  ...); the others get ``optax.set_to_zero`` and a ``stop_gradient`` in the forward pass, so no backward work is
  spent below the lowest unfrozen block;
* trains head and unfrozen blocks with two learning rates (``optax.multi_transform``: the backbone's is smaller);
* keeps batch-norm statistics frozen (``freeze_bn=True``: every BN layer normalises with its running statistics,
  as at inference) or lets them train (``freeze_bn=False``: the backbone runs in train mode, so every BN layer —
  frozen blocks' included, as the module has one ``train`` flag — uses batch statistics and updates its averages);
* reads images, not cached features: each epoch decodes the train split in a seeded shuffled order at
  ``crop_scale`` x the input size and takes a random crop and a random horizontal flip inside the jitted step;
* runs one jitted, data-parallel step: the batch is sharded over every device of ``parallel.make_mesh(1)``, the
  variables are replicated; the last (ragged) batch is padded to the compiled shape with copies of its own images
  and the copies are masked out of the loss;
* evaluates on ``val`` after every epoch (epoch 0 is the starting model), keeps the best weights, and stops early
  after ``patience`` epochs without improvement;
* writes a checkpoint after every epoch (through :mod:`jaxheads.checkpoint`, i.e. orbax), so a killed run started
  again with the same arguments resumes from the last finished epoch and ends with the same model as an
  uninterrupted run (the order, the crops and the dropout masks are functions of (seed, epoch, step));
* saves the best model — backbone and head variables, the head spec and the provenance — as ``OUT/model``.

A fine-tune runs in one process (on all its devices); the run's identity (settings, head weights, backbone
weights, dataset fingerprints, device count) is stored with every checkpoint, and a checkpoint of another run in
the same ``out_dir`` is refused, never mixed in.

``load_model(OUT/model)`` gives a :class:`Model` whose jitted ``predict(images)`` returns probabilities (and
``logits(images)`` the logits) for uint8 RGB images of the model's input size.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxheads import backbones, checkpoint, data, heads, heads_io, metrics, parallel
from jaxheads.backbones import Preprocessing
from jaxheads.heads import HeadSpec

__all__ = ["FinetuneConfig", "FinetuneResult", "Model", "finetune", "load_model", "model_logits"]

MODEL_KIND = "jaxheads.model"
STATE_KIND = "jaxheads.finetune_state"
MODEL_DIR = "model"
STATE_DIR = "finetune_state"
RESULT_FILE = "finetune.json"
KEEP_CHECKPOINTS = 2

Variables = dict[str, Any]


# ------------------------------------------------------------------------------------------------ the settings


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Every setting of a fine-tune, as data (stored with each checkpoint: a resume must use the same ones).

    unfreeze: how many of the backbone's top ``config.blocks`` train (0: the head alone).
    freeze_bn: batch norm uses (and keeps) its running statistics; False lets them train (see the module doc).
    learning_rate / backbone_learning_rate: Adam(W) step sizes of the head and of the unfrozen blocks.
    weight_decay: decoupled weight decay (AdamW) for both.
    epochs, batch_size, patience: the loop; ``patience=None`` never stops early.
    image_size: the input size (default: the backbone's); crop_scale: images are decoded at
        ``round(image_size * crop_scale)`` and randomly cropped to ``image_size`` (1.0: no crop); flip: random
        horizontal flips.
    seed: decides the shuffles, crops, flips and dropout masks.
    """

    unfreeze: int = 1
    freeze_bn: bool = True
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 1e-4
    weight_decay: float = 0.0
    epochs: int = 10
    batch_size: int = 32
    patience: int | None = 3
    image_size: int | None = None
    crop_scale: float = 1.125
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "unfreeze": self.unfreeze >= 0,
            "learning_rate": self.learning_rate >= 0,
            "backbone_learning_rate": self.backbone_learning_rate >= 0,
            "weight_decay": self.weight_decay >= 0,
            "epochs": self.epochs >= 0,
            "batch_size": self.batch_size >= 1,
            "patience": self.patience is None or self.patience >= 1,
            "image_size": self.image_size is None or self.image_size >= 8,
            "crop_scale": self.crop_scale >= 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"FinetuneConfig.{name}: invalid value {getattr(self, name)!r}")


@dataclasses.dataclass
class FinetuneResult:
    """What a fine-tune did. ``before``/``best`` are val metrics of the starting model and of the saved one;
    ``improved`` is False when no epoch beat the starting model (the saved model is then the starting one); an
    epoch beats another by a higher val metric or, on a tie, a lower val loss."""

    model_dir: Path
    metric: str
    before: dict[str, float]
    best: dict[str, float]
    best_epoch: int
    epochs_run: int
    improved: bool
    trainable_blocks: tuple[str, ...]
    history: list[dict[str, Any]]
    resumed_from_epoch: int
    config: FinetuneConfig
    weight_change: dict[str, float] = dataclasses.field(default_factory=dict)
    """Max |change| of each backbone block's parameters (``params/<block>``) and statistics
    (``batch_stats/<block>``), and of the head (``head``), from the start to the last epoch trained."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_dir"] = str(self.model_dir)
        d["trainable_blocks"] = list(self.trainable_blocks)
        return d


class TrainState(NamedTuple):
    """Everything the jitted step updates: the step counter (keys the augmentation), the trainable tree
    ``{"backbone": params, "head": params}``, the statistics tree ``{"backbone": ..., "head": ...}`` and the
    optimiser state."""

    step: jax.Array
    params: Variables
    stats: Variables
    opt_state: Any


# --------------------------------------------------------------------------------------------- the forward pass


def _pool_for_head(fmap: jax.Array, spec: HeadSpec) -> jax.Array:
    """The backbone's map as the head takes it: pooled (N, C) for ``pooling="none"`` heads, else the map."""
    return fmap.astype(jnp.float32).mean(axis=(1, 2)) if spec.pooling == "none" else fmap.astype(jnp.float32)


def model_logits(variables: Variables, images: jax.Array, *, module: Any, preprocessing: Preprocessing,
                 spec: HeadSpec) -> jax.Array:
    """Inference logits of backbone + head for RGB images in [0, 255] (N, S, S, 3): BN with running statistics,
    no dropout. ``variables = {"backbone": {"params", "batch_stats"}, "head": {"params", "batch_stats"}}``."""
    fmap = module.apply(variables["backbone"], preprocessing(images), train=False)["features"]
    return heads.apply_head(variables["head"], _pool_for_head(fmap, spec), spec)


@functools.lru_cache(maxsize=8)
def _predict_fn(module: Any, preprocessing: Preprocessing, spec: HeadSpec) -> Callable[[Variables, Any], jax.Array]:
    """One jitted :func:`model_logits` per (module, preprocessing, spec), shared by fine-tunes and loaded models."""
    return jax.jit(functools.partial(model_logits, module=module, preprocessing=preprocessing, spec=spec))


def _augment(images: jax.Array, words: jax.Array, size: int, flip: bool) -> jax.Array:
    """Random ``size`` x ``size`` crops (one offset per image) and random horizontal flips of uint8 images.

    Draws come from :func:`jaxheads.heads.hash_uniform` (a value per (seed words, salt, row)): cheap to compile
    (jax.random's threefry costs seconds of XLA compile per call site on a small CPU) and the same whatever the
    sharding of the batch."""
    n, h, w = images.shape[:3]
    u = heads.hash_uniform(words, 101, (n, 3))
    ys = jnp.floor(u[:, 0] * (h - size + 1)).astype(jnp.int32)
    xs = jnp.floor(u[:, 1] * (w - size + 1)).astype(jnp.int32)
    crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (size, size, 3)))(images, ys, xs)
    if flip:
        crop = jnp.where((u[:, 2] < 0.5)[:, None, None, None], crop[:, :, ::-1, :], crop)
    return crop


@dataclasses.dataclass(frozen=True)
class _Program:
    """The static (hashable) description of one fine-tune's compiled programs."""

    module: Any
    preprocessing: Preprocessing
    spec: HeadSpec
    trainable: tuple[str, ...]
    config: FinetuneConfig
    image_size: int


def _labels(params: Variables, trainable: Sequence[str]) -> Variables:
    """multi_transform labels: ``head`` for the head, ``backbone`` for unfrozen blocks, ``frozen`` otherwise."""
    backbone = {name: jax.tree.map(lambda _, n=name: "backbone" if n in trainable else "frozen", sub)
                for name, sub in params["backbone"].items()}
    return {"backbone": backbone, "head": jax.tree.map(lambda _: "head", params["head"])}


def _optimizer(prog: _Program) -> Callable[[Variables], optax.GradientTransformation]:
    """``params -> multi_transform``: AdamW at the head's and at the backbone's rate, set_to_zero for the rest."""
    cfg = prog.config

    def make(params: Variables) -> optax.GradientTransformation:
        return optax.multi_transform(
            {"head": optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay),
             "backbone": optax.adamw(cfg.backbone_learning_rate, weight_decay=cfg.weight_decay),
             "frozen": optax.set_to_zero()},
            _labels(params, prog.trainable))

    return make


def _loss(params: Variables, stats: Variables, images: jax.Array, labels: jax.Array, mask: jax.Array,
          words: jax.Array, prog: _Program) -> tuple[jax.Array, Variables]:
    """Masked mean training loss and the new statistics. Frozen blocks sit behind ``stop_gradient``."""
    cfg = prog.config
    backbone_params = {name: (sub if name in prog.trainable else jax.lax.stop_gradient(sub))
                       for name, sub in params["backbone"].items()}
    x = prog.preprocessing(_augment(images, heads.fold(words, 0), prog.image_size, cfg.flip))
    variables = {"params": backbone_params, "batch_stats": stats["backbone"]}
    if cfg.freeze_bn:
        out, new_backbone_stats = prog.module.apply(variables, x, train=False), stats["backbone"]
    else:
        out, updates = prog.module.apply(variables, x, train=True, mutable=["batch_stats"])
        new_backbone_stats = updates["batch_stats"]
    head_vars = {"params": params["head"], "batch_stats": stats["head"]}
    logits, new_head_stats = heads.forward(head_vars, _pool_for_head(out["features"], prog.spec), prog.spec,
                                           train=True, rng=heads.fold(words, 1))
    per_example = heads.example_losses(logits, labels, prog.spec)
    loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, {"backbone": new_backbone_stats, "head": new_head_stats}


def _train_step(prog: _Program) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step of ``prog``, shared by every fine-tune whose settings differ only in what the step does
    not see (epochs, patience, batch size and crop scale are shapes or loop settings; the seed is an argument)."""
    loop_only = {"unfreeze": 0, "epochs": 0, "batch_size": 1, "patience": None, "image_size": None,
                 "crop_scale": 1.0, "seed": 0}
    return _compiled_step(dataclasses.replace(prog, config=dataclasses.replace(prog.config, **loop_only)))


@functools.lru_cache(maxsize=8)
def _compiled_step(prog: _Program) -> Callable[..., tuple[TrainState, jax.Array]]:
    """The jitted step: augment, forward, backward through the unfrozen part, multi-transform update."""

    def step(state: TrainState, images: jax.Array, labels: jax.Array, mask: jax.Array,
             seed_words: jax.Array) -> tuple[TrainState, jax.Array]:
        """``seed_words``: (2,) uint32 of the run's seed; each step's randomness folds in the step counter."""
        words = heads.fold(seed_words, state.step)
        (loss, stats), grads = jax.value_and_grad(_loss, has_aux=True)(
            state.params, state.stats, images, labels, mask, words, prog)
        tx = _optimizer(prog)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, stats, opt_state), loss

    return jax.jit(step, donate_argnums=0)


# ------------------------------------------------------------------------------------------------ the model


@dataclasses.dataclass(frozen=True)
class Model:
    """A fine-tuned (or any backbone + head) model. ``predict``/``logits`` take uint8 RGB images
    (N, image_size, image_size, 3) and run one jitted program; :meth:`predict_files` reads and resizes files."""

    backbone: str
    spec: HeadSpec
    image_size: int
    label_names: tuple[str, ...]
    variables: Variables
    meta: Mapping[str, Any]
    module: Any
    preprocessing: Preprocessing

    def logits(self, images: np.ndarray | jax.Array) -> np.ndarray:
        """(N, num_classes) float32 logits."""
        return np.asarray(_predict_fn(self.module, self.preprocessing, self.spec)(self.variables, images))

    def predict(self, images: np.ndarray | jax.Array) -> np.ndarray:
        """(N, num_classes) probabilities: softmax (multiclass) or per-class sigmoid (multilabel)."""
        logits = self.logits(images)
        return np.asarray(jax.nn.sigmoid(logits) if self.spec.task == "multilabel" else jax.nn.softmax(logits))

    def predict_files(self, paths: Sequence[str | os.PathLike[str]], *, top: int = 3,
                      batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """For each image file, its ``top`` (label, probability) pairs (resized and centre-cropped like val)."""
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(paths), batch_size):
            chunk = [os.fspath(p) for p in paths[start:start + batch_size]]
            pixels = np.stack([data.resize_center_crop(data.load_image(p), self.image_size) for p in chunk])
            for row in self.predict(pixels):
                order = np.argsort(-row)[:top]
                out.append([(self.label_names[i], float(row[i])) for i in order])
        return out


def load_model(path: str | os.PathLike[str]) -> Model:
    """The model saved by :func:`finetune` in ``path`` (``OUT/model``)."""
    tree, meta = checkpoint.load(path)
    if meta.get("kind") != MODEL_KIND:
        raise ValueError(f"{path} is not a jaxheads model checkpoint (meta kind {meta.get('kind')!r})")
    config = backbones.get_config(meta["backbone"])
    spec = HeadSpec.from_dict(meta["spec"])
    preprocessing = dataclasses.replace(config.preprocessing, input_size=int(meta["image_size"]))
    variables = jax.tree.map(jnp.asarray, tree)
    return Model(meta["backbone"], spec, int(meta["image_size"]), tuple(meta["label_names"]), variables, meta,
                 config.build(num_classes=0), preprocessing)


# ------------------------------------------------------------------------------------------------ the loop


def finetune(
    head_dir: str | os.PathLike[str],
    dataset: str | os.PathLike[str] | data.Dataset,
    *,
    out_dir: str | os.PathLike[str],
    unfreeze: int = 1,
    freeze_bn: bool = True,
    learning_rate: float = 1e-3,
    backbone_learning_rate: float = 1e-4,
    weight_decay: float = 0.0,
    epochs: int = 10,
    batch_size: int = 32,
    patience: int | None = 3,
    image_size: int | None = None,
    crop_scale: float = 1.125,
    flip: bool = True,
    seed: int = 0,
    split_seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    strict: bool = False,
    devices: Sequence[jax.Device] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> FinetuneResult:
    """Fine-tune the head in ``head_dir`` with the top ``unfreeze`` blocks of its backbone on ``dataset``'s
    ``train`` split, select on ``val``, and save the best model to ``out_dir/model`` (see the module doc).

    ``dataset`` is anything :func:`jaxheads.data.load_dataset` takes (the same one the head was swept on, so the
    classes agree; ``split_seed`` is the sweep's ``--seed``, so val is the same images) or a
    :class:`~jaxheads.data.Dataset`. Re-running with the same arguments resumes from the last
    epoch checkpoint in ``out_dir``, or returns the finished result. ``progress`` gets a dict after each epoch.
    """
    config = FinetuneConfig(unfreeze, freeze_bn, learning_rate, backbone_learning_rate, weight_decay, epochs,
                            batch_size, patience, image_size, crop_scale, flip, seed)
    out = Path(out_dir)
    spec, head_vars, head_meta = _read_head(head_dir)
    ds = dataset if isinstance(dataset, data.Dataset) else data.load_dataset(
        dataset, data_dir=data_dir, seed=split_seed, task=spec.task)
    _check_dataset(ds, spec, head_meta, head_dir)
    backbone = _load_backbone(head_meta, head_dir)
    size = config.image_size or backbone.config.preprocessing.input_size
    _check_feature_shape(backbone, spec, head_meta, size, head_dir)
    trainable = _trainable_blocks(backbone.config, config.unfreeze)
    prog = _Program(backbone.module, dataclasses.replace(backbone.config.preprocessing, input_size=size), spec,
                    trainable, config, size)
    run_id = {"config": dataclasses.asdict(config), "head": head_meta.get("spec"), "head_weights": _digest(head_vars),
              "weights_id": backbone.weights_id, "dataset": {s: ds.fingerprint(s) for s in ("train", "val")},
              "devices": parallel.make_mesh(1, devices).size}
    done = _finished(out, run_id)
    if done is not None:
        return done
    start = {"backbone": dict(backbone.variables), "head": head_vars}
    loop = _Loop(prog, ds, start, devices, strict, progress)
    resumed = _restore(out / STATE_DIR, loop, run_id)
    if resumed is None:
        loop.begin()
    for epoch in range(loop.epoch + 1, config.epochs + 1):
        if config.patience is not None and loop.since >= config.patience:
            break
        loop.run_epoch(epoch)
        _save_state(out / STATE_DIR, loop, run_id)
    return _save_model(out, loop, backbone, head_meta, run_id, resumed or 0)


def _digest(tree: Any) -> str:
    """A short hash of a pytree's arrays (a head re-swept into the same directory must not resume an old run)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()[:16]


def _read_head(head_dir: str | os.PathLike[str]) -> tuple[HeadSpec, Variables, dict[str, Any]]:
    """Spec, variables and meta of a saved head; the meta must name the backbone it was trained on."""
    spec, variables, _ = heads_io.load_head(head_dir)
    meta = heads_io.load_meta(head_dir)
    for field in ("backbone", "weights", "weights_id"):
        if field not in meta:
            raise ValueError(f"{head_dir}: head meta has no {field!r} (was it written by `jaxheads sweep`?)")
    return spec, jax.tree.map(np.asarray, variables), meta


def _check_dataset(ds: data.Dataset, spec: HeadSpec, meta: Mapping[str, Any], head_dir: Any) -> None:
    """The dataset must have train and val and the head's task and classes (in the head's order)."""
    for split in ("train", "val"):
        if split not in ds.splits or len(ds.split(split)) == 0:
            raise data.DatasetError(f"dataset {ds.name}: fine-tuning needs a non-empty {split!r} split")
    if ds.task != spec.task or ds.num_classes != spec.num_classes:
        raise data.DatasetError(f"dataset {ds.name} is {ds.task} with {ds.num_classes} classes, but the head in "
                                f"{head_dir} is {spec.task} with {spec.num_classes}")
    names = meta.get("label_names")
    if names is not None and tuple(names) != tuple(ds.classes):
        raise data.DatasetError(f"dataset {ds.name}: classes {list(ds.classes)} differ from the head's label_names "
                                f"{list(names)} ({head_dir})")


def _load_backbone(meta: Mapping[str, Any], head_dir: Any) -> backbones.Backbone:
    """The backbone the head was trained on, refused if its weights are not those (features would differ)."""
    weights = None if meta["weights"] == "none" else meta["weights"]
    seed = int(meta["weights_id"][len("random-seed"):]) if str(meta["weights_id"]).startswith("random-seed") else 0
    backbone = backbones.load(meta["backbone"], weights, seed=seed)
    if backbone.weights_id != meta["weights_id"]:
        raise ValueError(f"{head_dir}: head was trained on {meta['backbone']} weights {meta['weights_id']}, but "
                         f"these weights are {backbone.weights_id}")
    return backbone


def _check_feature_shape(backbone: backbones.Backbone, spec: HeadSpec, meta: Mapping[str, Any], size: int,
                         head_dir: Any) -> None:
    """The head must accept the backbone's features at ``size``: channels always, the whole map for flatten."""
    shape = jax.eval_shape(lambda v, x: backbone.module.apply(v, x, train=False)["features"], backbone.variables,
                           jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).shape[1:]
    want = tuple(meta.get("feature_shape") or ())
    have = (shape[-1],) if spec.pooling == "none" else tuple(shape)
    same = have == want if spec.pooling in ("none", "flatten") else have[-1:] == want[-1:]
    if want and not same:
        raise ValueError(f"{head_dir}: head takes features {want}, but {meta['backbone']} at image_size {size} "
                         f"gives {have}")


def _trainable_blocks(config: backbones.BackboneConfig, unfreeze: int) -> tuple[str, ...]:
    """Names of the top ``unfreeze`` blocks of ``config.blocks``."""
    if unfreeze > len(config.blocks):
        raise ValueError(f"unfreeze={unfreeze}: {config.name} has {len(config.blocks)} blocks "
                         f"({', '.join(config.blocks) or 'none declared'})")
    return tuple(config.blocks[len(config.blocks) - unfreeze:]) if unfreeze else ()


class _Loop:
    """The fine-tune's mutable state between epochs: device train state, best variables and history."""

    def __init__(self, prog: _Program, ds: data.Dataset, start: Variables, devices: Sequence[jax.Device] | None,
                 strict: bool, progress: Callable[[dict[str, Any]], None] | None):
        self.prog, self.ds, self.strict, self.progress = prog, ds, strict, progress
        self.mesh = parallel.make_mesh(1, devices)
        self.rep, self.shard = parallel.replicated(self.mesh), parallel.data_sharding(self.mesh)
        cfg = prog.config
        self.batch = math.ceil(cfg.batch_size / self.mesh.size) * self.mesh.size
        self.load_size = max(prog.image_size, round(prog.image_size * cfg.crop_scale))
        self.metric = "accuracy" if prog.spec.task == "multiclass" else "macro_average_precision"
        params = {"backbone": start["backbone"]["params"], "head": start["head"]["params"]}
        stats = {"backbone": start["backbone"].get("batch_stats", {}), "head": start["head"].get("batch_stats", {})}
        opt_state = jax.jit(lambda p: _optimizer(prog)(p).init(p))(params)  # one compile, not one per leaf
        self.state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), params, stats, opt_state), self.rep)
        self.seed_words = jax.device_put(heads.seed_words(cfg.seed), self.rep)
        self.start: Variables = jax.tree.map(np.asarray, start)
        self.best_vars: Variables = self.start
        self.epoch, self.since, self.best_epoch = 0, 0, 0
        self.before: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []

    def variables(self) -> Variables:
        """The current model as ``{"backbone": {params, batch_stats}, "head": {...}}`` (device arrays)."""
        s = self.state
        return {"backbone": {"params": s.params["backbone"], "batch_stats": s.stats["backbone"]},
                "head": {"params": s.params["head"], "batch_stats": s.stats["head"]}}

    def begin(self) -> None:
        """Epoch 0: the starting model's val metrics are the bar to beat."""
        self.before = self.best = self.evaluate(self.variables())
        self.history.append({"epoch": 0, "train_loss": None, "val": self.before})
        self._report(0)

    def run_epoch(self, epoch: int) -> None:
        """One pass over train in the seeded order of ``epoch``, then val, early-stopping bookkeeping."""
        step = _train_step(self.prog)
        split = self.ds.split("train")
        order = np.random.default_rng([self.prog.config.seed, epoch]).permutation(len(split))
        losses: list[float] = []
        for images, labels, mask in self._batches(split, order, self.load_size):
            self.state, loss = step(self.state, images, labels, mask, self.seed_words)
            losses.append(float(loss))
        val = self.evaluate(self.variables())
        self.epoch = epoch
        if _score(val, self.metric) > _score(self.best, self.metric):
            self.best, self.best_epoch, self.since = val, epoch, 0
            self.best_vars = jax.tree.map(np.asarray, self.variables())
        else:
            self.since += 1
        self.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val": val})
        self._report(epoch)

    def evaluate(self, variables: Variables) -> dict[str, float]:
        """Val metrics (and mean loss) of ``variables`` on centre crops at the input size."""
        predict = _predict_fn(self.prog.module, self.prog.preprocessing, self.prog.spec)
        split = self.ds.split("val")
        logits, labels = [], []
        for images, batch_labels, mask in self._batches(split, np.arange(len(split)), self.prog.image_size):
            keep = np.asarray(mask) > 0
            logits.append(np.asarray(predict(variables, images))[keep])
            labels.append(np.asarray(batch_labels)[keep])
        if not logits:
            raise data.DatasetError(f"dataset {self.ds.name}: no readable image in the val split")
        return _val_metrics(np.concatenate(logits), np.concatenate(labels), self.prog.spec)

    def _batches(self, split: data.Split, order: np.ndarray,
                 size: int) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
        """Sharded (images, labels, mask) batches of the compiled size. A short batch (the last one, or one with
        unreadable images, which are skipped with a warning) is padded with copies of its own images — so that
        batch-norm statistics stay those of real images — and the copies get mask 0."""
        for batch in data.iter_batches(split, image_size=size, batch_size=self.prog.config.batch_size,
                                       indices=order, strict=self.strict):
            n = len(batch.images)
            if n == 0:
                continue
            rows = np.arange(self.batch) % n
            mask = (np.arange(self.batch) < n).astype(np.float32)
            yield (jax.device_put(batch.images[rows], self.shard), jax.device_put(batch.labels[rows], self.shard),
                   jax.device_put(mask, self.shard))

    def _report(self, epoch: int) -> None:
        if self.progress is not None:
            last = self.history[-1]
            self.progress({"epoch": epoch, "epochs": self.prog.config.epochs, "train_loss": last["train_loss"],
                           "val": last["val"], "best_epoch": self.best_epoch, "metric": self.metric})


@functools.partial(jax.jit, static_argnames="spec")
def _metrics_of(logits: jax.Array, labels: jax.Array, spec: HeadSpec) -> dict[str, jax.Array]:
    """The sweep's scalar validation metrics for one model, plus the mean loss (one jitted call)."""
    mask = jnp.ones(labels.shape[:1], bool)
    if spec.task == "multiclass":
        values = metrics.multiclass_metrics(logits, labels, mask)
    else:
        full = metrics.multilabel_metrics(logits, labels, mask)
        values = {k: full[k] for k in ("macro_roc_auc", "macro_average_precision")}
    return {**values, "loss": heads.example_losses(logits, labels, spec).mean()}


def _val_metrics(logits: np.ndarray, labels: np.ndarray, spec: HeadSpec) -> dict[str, float]:
    """:func:`_metrics_of` as Python floats."""
    return {k: float(v) for k, v in _metrics_of(jnp.asarray(logits), jnp.asarray(labels), spec).items()}


def _score(values: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """What early stopping compares: the metric, then (on a tie, common on small val sets) the lower loss.
    Undefined values (NaN, or None after a JSON round trip) rank lowest."""
    def higher_is_better(v: Any) -> float:
        return -math.inf if v is None or math.isnan(v) else float(v)

    loss = values.get("loss")
    return higher_is_better(values.get(metric)), higher_is_better(None if loss is None else -loss)


# ---------------------------------------------------------------------------------------------- checkpoints


def _epoch_dir(root: Path, epoch: int) -> Path:
    return root / f"epoch-{epoch:04d}"


def _save_state(root: Path, loop: _Loop, run_id: Mapping[str, Any]) -> None:
    """Checkpoint the loop after an epoch into a new directory, then drop all but the newest ones: a kill at any
    moment leaves the previous complete checkpoint (``checkpoint.save`` marks completeness by its meta)."""
    state = jax.tree.map(np.asarray, loop.state)
    tree = {"state": _flat(state), "best": _flat(loop.best_vars)}
    meta = {"kind": STATE_KIND, "run": run_id, "epoch": loop.epoch, "since": loop.since,
            "best_epoch": loop.best_epoch, "before": loop.before, "best": loop.best, "history": loop.history}
    checkpoint.save(_epoch_dir(root, loop.epoch), tree, _json_ready(meta))
    complete = sorted(p for p in root.glob("epoch-*") if checkpoint.exists(p))
    for old in complete[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _restore(root: Path, loop: _Loop, run_id: Mapping[str, Any]) -> int | None:
    """Load the newest complete checkpoint of this run into ``loop``; its epoch, or None when there is none.
    A checkpoint of a different run (other settings, head, weights or data) is an error naming the fields."""
    complete = sorted(p for p in root.glob("epoch-*") if checkpoint.exists(p)) if root.is_dir() else []
    if not complete:
        return None
    tree, meta = checkpoint.load(complete[-1])
    differ = sorted(k for k in run_id if _json_ready(run_id[k]) != meta["run"].get(k))
    if meta.get("kind") != STATE_KIND or differ:
        raise ValueError(f"{root}: holds a fine-tune with other {', '.join(differ) or 'contents'}; use another "
                         "out_dir (or delete it) to start a new one")
    state = _unflat(jax.tree.map(np.asarray, loop.state), tree["state"])
    loop.state = jax.device_put(state, loop.rep)
    loop.best_vars = _unflat(loop.best_vars, tree["best"])
    loop.epoch, loop.since, loop.best_epoch = meta["epoch"], meta["since"], meta["best_epoch"]
    loop.before, loop.best, loop.history = meta["before"], meta["best"], meta["history"]
    return int(meta["epoch"])


def _flat(tree: Any) -> dict[str, np.ndarray]:
    """A pytree as ``{"00000": leaf, ...}``: orbax then stores any structure (optax NamedTuples included)."""
    return {f"{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def _unflat(template: Any, flat: Mapping[str, np.ndarray]) -> Any:
    """Inverse of :func:`_flat` given a tree of the same structure; shapes and dtypes are checked."""
    leaves, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise ValueError(f"checkpoint has {len(flat)} arrays, this fine-tune has {len(leaves)}")
    restored = []
    for i, ref in enumerate(leaves):
        value = np.asarray(flat[f"{i:05d}"])
        if value.shape != np.shape(ref):
            raise ValueError(f"checkpoint array {i}: shape {value.shape}, expected {np.shape(ref)}")
        restored.append(value.astype(np.asarray(ref).dtype))
    return jax.tree.unflatten(treedef, restored)


def _json_ready(obj: Any) -> Any:
    """``obj`` as it reads back from strict JSON (tuples -> lists, non-finite floats -> None), so stored and
    fresh values compare equal."""
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return json.loads(json.dumps(obj, default=str))


def _save_model(out: Path, loop: _Loop, backbone: backbones.Backbone, head_meta: Mapping[str, Any],
                run_id: Mapping[str, Any], resumed: int) -> FinetuneResult:
    """Write the best model to ``out/model`` and the result to ``out/finetune.json``; drop the epoch checkpoints."""
    prog = loop.prog
    result = FinetuneResult(out / MODEL_DIR, loop.metric, loop.before, loop.best, loop.best_epoch, loop.epoch,
                            loop.best_epoch > 0, prog.trainable, loop.history, resumed, prog.config,
                            _weight_change(loop.start, jax.tree.map(np.asarray, loop.variables())))
    shape = jax.eval_shape(lambda v, x: prog.module.apply(v, x, train=False)["features"], backbone.variables,
                           jax.ShapeDtypeStruct((1, prog.image_size, prog.image_size, 3), jnp.float32)).shape[1:]
    meta = {"kind": MODEL_KIND, "backbone": backbone.config.name, "weights": head_meta["weights"],
            "weights_id": backbone.weights_id, "spec": prog.spec.to_dict(), "image_size": prog.image_size,
            "feature_shape": list(shape), "label_names": list(loop.ds.classes), "run": run_id,
            "finetune": result.to_dict()}
    checkpoint.save(out / MODEL_DIR, loop.best_vars, _json_ready(meta))
    checkpoint.write_json_atomic(out / RESULT_FILE, _json_ready({"run": run_id, **result.to_dict()}))
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return result


def _weight_change(start: Variables, end: Variables) -> dict[str, float]:
    """Max |end - start| per backbone block (params and batch_stats apart) and for the whole head."""
    def delta(a: Any, b: Any) -> float:
        diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(y) - np.asarray(x)),
                                                                        initial=0.0)), a, b))
        return max(diffs, default=0.0)

    out = {f"{collection}/{block}": delta(sub, end["backbone"][collection][block])
           for collection in ("params", "batch_stats") for block, sub in start["backbone"].get(collection, {}).items()}
    out["head"] = delta(start["head"], end["head"])
    return out


def _finished(out: Path, run_id: Mapping[str, Any]) -> FinetuneResult | None:
    """The result of a completed fine-tune of this run in ``out``, if there is one."""
    try:
        saved = json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("run") != _json_ready(run_id) or not checkpoint.exists(out / MODEL_DIR):
        return None
    saved.pop("run")
    saved["model_dir"] = Path(saved["model_dir"])
    saved["trainable_blocks"] = tuple(saved["trainable_blocks"])
    saved["config"] = FinetuneConfig(**saved["config"])
    return FinetuneResult(**saved)
