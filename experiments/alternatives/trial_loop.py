"""Part 1: the trial loop users write vs jaxheads, on the same data, backbone weights and head designs.

* **A, Keras trial loop**: for every design, a ``keras.Model`` = Rescaling -> frozen ``include_top=False`` base ->
  pooling -> Dense/Dropout head, compiled and ``fit`` for ``epochs`` with ``validation_data``. The images go
  through the backbone every epoch of every trial (train and val) — that is the cost jaxheads removes. Keras gets
  the images already decoded in memory (its best case; decoding is timed apart and not charged to A).
* **B, plain JAX loop**: its own feature pass into a cold cache (``features.extract_all``; the same arrays
  jaxheads gets), then for every design a hand-written loop: ``init_head``, ``optax.adam``, one jitted step per
  batch called from Python, validation accuracy after every epoch. One compilation per design, one dispatch per
  step.
* **jaxheads**: what ``jaxheads sweep`` does: ``job.features_for_sweep`` into a cold cache (decoding included; the
  sweep's programs compile in a thread while the backbone runs) + one ``run_sweep`` of the same designs as
  explicit members. The heads-only ratio compares B's loop with the same sweep run again with every compilation
  cache cleared (jaxheads' heads alone, compiles included).

All three: Adam at the same learning rate, the same batch size and epochs, softmax cross-entropy, ReLU, dropout
after each hidden layer, and the best validation accuracy over the epochs (what keep-best-weights reports).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxheads import data, features, job
from jaxheads import heads as H
from jaxheads.features import BackboneSource
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import MemberSpec, SweepResult, SweepSpec, run_sweep
from experiments.alternatives.backbone_pair import BackbonePair
from experiments.alternatives.config import BenchSize, HeadDesign
from experiments.alternatives.datasets import decode


# ---------------------------------------------------------------------------------------------- A: Keras
def keras_trial_model(features_model: Any, design: HeadDesign, num_classes: int) -> Any:
    """The frozen features model with ``design``'s head on top (logits out)."""
    import keras

    pool = keras.layers.GlobalAveragePooling2D() if design.pooling == "avg" else keras.layers.GlobalMaxPooling2D()
    x = pool(features_model.output)
    for width in design.hidden:
        x = keras.layers.Dense(width, activation="relu")(x)
        if design.dropout:
            x = keras.layers.Dropout(design.dropout)(x)
    return keras.Model(features_model.input, keras.layers.Dense(num_classes)(x))


def keras_trial(features_model: Any, design: HeadDesign, train: tuple[np.ndarray, np.ndarray],
                val: tuple[np.ndarray, np.ndarray], num_classes: int, size: BenchSize, seed: int) -> dict[str, Any]:
    """One trial as the Keras user runs it: build, compile, fit with validation every epoch."""
    import keras

    t = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = keras_trial_model(features_model, design, num_classes)
    model.compile(optimizer=keras.optimizers.Adam(size.learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(train[0], train[1], batch_size=size.batch_size, epochs=size.epochs,
                        validation_data=val, shuffle=True, verbose=0)
    curve = [float(a) for a in history.history["val_accuracy"]]
    return {"wall_s": time.perf_counter() - t, "val_accuracy": max(curve), "val_curve": curve}


def run_keras(pair: BackbonePair, ds: data.Dataset, designs: Sequence[HeadDesign], size: BenchSize,
              seed: int = 0) -> dict[str, Any]:
    """Baseline A over every design; ``decode_s`` (one decode of the images into float32 arrays in memory) is not
    in ``wall_s``."""
    t = time.perf_counter()
    train, val = ((images.astype(np.float32), labels) for images, labels in (
        decode(ds.split("train"), size.image_size), decode(ds.split("val"), size.image_size)))
    decode_s = time.perf_counter() - t
    features_model = pair.keras_features_model()
    trials = [keras_trial(features_model, d, train, val, ds.num_classes, size, seed) for d in designs]
    images = size.epochs * len(designs) * (len(train[1]) + len(val[1]))
    wall = sum(tr["wall_s"] for tr in trials)
    return {"wall_s": wall, "decode_s": decode_s, "trials": trials, "backbone_images": images,
            "backbone_images_per_s": images / wall}


# ------------------------------------------------------------------------------------------ B: plain JAX
def _plain_programs(spec: H.HeadSpec, learning_rate: float) -> tuple[Any, Any, optax.GradientTransformation]:
    """(jitted step, jitted accuracy, optimiser) of one head: what a JAX user writes for one trial."""
    tx = optax.adam(learning_rate)

    @jax.jit
    def step(params: Any, opt_state: Any, xb: jax.Array, yb: jax.Array, key: jax.Array,
             i: jax.Array) -> tuple[Any, Any, jax.Array]:
        def loss_fn(p: Any) -> jax.Array:
            logits = H.apply_head({"params": p, "batch_stats": {}}, xb, spec, train=True,
                                  rng=jax.random.fold_in(key, i))
            return jnp.mean(H.example_losses(logits, yb, spec))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = H.apply_head({"params": params, "batch_stats": {}}, x, spec)
        return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))

    return step, accuracy, tx


def plain_trial(design: HeadDesign, x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray], num_classes: int,
                size: BenchSize, seed: int) -> dict[str, Any]:
    """One head trained by a plain Python loop of jitted steps on cached features (drops the last partial batch,
    as the sweep does)."""
    t = time.perf_counter()
    spec = design.head_spec(num_classes)
    params = H.init_head(jax.random.key(seed), spec, x["train"].shape[1:])["params"]
    step, accuracy, tx = _plain_programs(spec, size.learning_rate)
    opt_state = tx.init(params)
    key, rng = jax.random.key(seed + 1), np.random.default_rng(seed)
    n, batch = len(y["train"]), min(size.batch_size, len(y["train"]))
    curve, i = [], 0
    for _ in range(size.epochs):
        order = rng.permutation(n)
        for s in range(n // batch):
            ids = order[s * batch:(s + 1) * batch]
            params, opt_state, _ = step(params, opt_state, x["train"][ids], y["train"][ids], key, i)
            i += 1
        curve.append(float(accuracy(params, x["val"], y["val"])))
    return {"wall_s": time.perf_counter() - t, "val_accuracy": max(curve), "val_curve": curve}


def _head_inputs(splits: Mapping[str, FeatureSplit]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """float32 maps and int labels of train/val (what a head on a pooled map trains on)."""
    x = {k: np.asarray(splits[k].maps, np.float32) for k in ("train", "val")}
    y = {k: np.asarray(splits[k].labels, np.int32) for k in ("train", "val")}
    return x, y


def run_plain(pair: BackbonePair, ds: data.Dataset, designs: Sequence[HeadDesign], size: BenchSize,
              seed: int = 0) -> tuple[dict[str, Any], dict[str, FeatureSplit]]:
    """Baseline B: its own feature pass into a cold cache (the arrays jaxheads gets), then every design's loop.
    Compilation caches are cleared first: B compiles the backbone as a process of its own would."""
    jax.clear_caches()
    with tempfile.TemporaryDirectory(prefix="bench-features-b-") as cache:
        t = time.perf_counter()
        options = features.ExtractOptions(cache_dir=Path(cache), need_maps=True, batch_size=size.feature_batch)
        splits = features.extract_all(BackboneSource.of(pair.flax), ds, options)
        feature_s = time.perf_counter() - t
    x, y = _head_inputs(splits)
    trials = [plain_trial(d, x, y, ds.num_classes, size, seed) for d in designs]
    loop_s = sum(tr["wall_s"] for tr in trials)
    return {"feature_s": feature_s, "loop_s": loop_s, "wall_s": feature_s + loop_s, "trials": trials}, splits


# -------------------------------------------------------------------------------------------- jaxheads
def sweep_spec(designs: Sequence[HeadDesign], num_classes: int, size: BenchSize, seed: int = 0) -> SweepSpec:
    """The designs as explicit sweep members, trained like the baselines (Adam, no early stopping). Depths share
    one gated group: with a few short epochs one compiled program costs less than the padded layers do
    (``experiments/sweep/bench_depth.py``), so the 16 designs are one program."""
    members = tuple(MemberSpec(d.head_spec(num_classes), learning_rate=size.learning_rate, optimizer="adam",
                               batch_size=size.batch_size, seed=seed) for d in designs)
    return SweepSpec(members=members, epochs=size.epochs, patience=None, data_seed=seed, depth_grouping="gated")


def run_jaxheads(pair: BackbonePair, ds: data.Dataset, designs: Sequence[HeadDesign], size: BenchSize,
                 seed: int = 0) -> tuple[dict[str, Any], dict[str, FeatureSplit], SweepResult]:
    """One feature pass into a cold cache + one sweep; returns timings, the features (for B) and the result."""
    with tempfile.TemporaryDirectory(prefix="bench-features-") as cache:
        t = time.perf_counter()
        sweep = sweep_spec(designs, ds.num_classes, size, seed)
        options = features.ExtractOptions(cache_dir=Path(cache), batch_size=size.feature_batch)
        splits = job.features_for_sweep(BackboneSource.of(pair.flax), ds, sweep, options)
        feature_s = time.perf_counter() - t
    t = time.perf_counter()
    result = run_sweep(sweep, splits, num_classes=ds.num_classes, label_names=list(ds.classes))
    sweep_s = time.perf_counter() - t
    images = sum(len(s) for s in splits.values())
    timing = {"wall_s": feature_s + sweep_s, "feature_s": feature_s, "sweep_s": sweep_s,
              "backbone_images": images, "sweep_breakdown": sweep_breakdown(result), "groups": _group_timings(result)}
    return timing, splits, result


def sweep_from_cold(splits: Mapping[str, FeatureSplit], designs: Sequence[HeadDesign], num_classes: int,
                    size: BenchSize, seed: int = 0) -> float:
    """Seconds of the same sweep on the cached features with every compilation cache cleared first: jaxheads'
    heads alone, compiles included (in the end-to-end run they compile while the backbone runs)."""
    jax.clear_caches()
    t = time.perf_counter()
    run_sweep(sweep_spec(designs, num_classes, size, seed), splits, num_classes=num_classes)
    return time.perf_counter() - t


def sweep_breakdown(result: SweepResult) -> dict[str, float]:
    """Seconds of the sweep by phase, summed over groups (``other``: ridge row, host bookkeeping)."""
    phases = ("init_s", "compile_s", "probe_s", "train_s", "eval_s")
    out = {p: float(sum(g["timings"].get(p, 0.0) for g in result.groups)) for p in phases}
    out["ridge_s"] = float(result.timings.get("ridge_s", 0.0))
    out["other_s"] = float(result.timings["total_s"]) - sum(out.values())
    return out


def _group_timings(result: SweepResult) -> list[dict[str, Any]]:
    return [{"group": g["group"], "members": len(g["members"]), "map_batch": g["map_batch"], **g["timings"]}
            for g in result.groups]


def train_flops_per_example(head: H.HeadSpec, shape: tuple[int, ...]) -> int:
    """FLOPs of one training example through an unpadded head: forward, weight gradients and input gradients of
    every layer (3x the forward), less the first layer's input gradient (the frozen features need none) — the
    convention of ``experiments/sweep/bench_sweep.py``'s ``train_flops``."""
    first_out = head.hidden[0] if head.hidden else head.num_classes
    return 3 * H.flops_per_example(head, shape) - 2 * H.pooled_dim(head, shape) * first_out


def sweep_useful_flops(result: SweepResult) -> dict[str, float]:
    """Useful FLOP/s of the sweep's timed epochs: :func:`train_flops_per_example` of every unpadded member x batch
    x steps, over the groups' ``train_s`` (epochs after the first, which carries compilation)."""
    shape = tuple(result.feature_shapes["maps"])
    flops, seconds = 0.0, 0.0
    for g in result.groups:
        timed_epochs = g["epochs"] - 1
        for i in g["members"]:
            head = MemberSpec.from_dict(result.members[i]["spec"]).head
            flops += train_flops_per_example(head, shape) * g["batch_size"] * g["steps_per_epoch"] * timed_epochs
        seconds += g["timings"]["train_s"]
    return {"useful_flops": flops, "train_s": seconds, "useful_gflops": flops / seconds / 1e9 if seconds else math.nan}


# ------------------------------------------------------------------------------------------- comparison
def _member_accuracy(result: SweepResult, i: int) -> tuple[float, list[float]]:
    record = result.members[i]
    return float(record["val"]["accuracy"]), [float(a) for a in record["curves"]["val"]["accuracy"]]


def compare_heads(designs: Sequence[HeadDesign], keras_run: dict, plain_run: dict, result: SweepResult,
                  n_val: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-design validation accuracy in the three systems, and whether they agree within binomial noise
    (|difference| <= 2 standard errors of a difference of two accuracies on ``n_val`` images)."""
    rows = []
    for i, design in enumerate(designs):
        acc, curve = _member_accuracy(result, i)
        keras_trial_, plain_trial_ = keras_run["trials"][i], plain_run["trials"][i]
        rows.append({"design": design.name, "params": result.members[i]["params"], "jaxheads": acc,
                     "keras": keras_trial_["val_accuracy"], "jax_loop": plain_trial_["val_accuracy"],
                     "jaxheads_curve": curve, "keras_curve": keras_trial_["val_curve"],
                     "jax_loop_curve": plain_trial_["val_curve"]})
    summary: dict[str, Any] = {"n_val": n_val}
    for other in ("keras", "jax_loop"):
        diffs = np.asarray([r[other] - r["jaxheads"] for r in rows])
        p = np.clip(np.asarray([(r[other] + r["jaxheads"]) / 2 for r in rows]), 1 / n_val, 1 - 1 / n_val)
        se = np.sqrt(2 * p * (1 - p) / n_val)
        summary[other] = {"mean_diff": float(diffs.mean()), "mean_abs_diff": float(np.abs(diffs).mean()),
                          "max_abs_diff": float(np.abs(diffs).max()),
                          "within_2se": int(np.sum(np.abs(diffs) <= 2 * se)), "heads": len(rows),
                          "typical_2se": float(np.median(2 * se))}
    return rows, summary


def run(pair: BackbonePair, ds: data.Dataset, size: BenchSize, seed: int = 0) -> dict[str, Any]:
    """Part 1 end to end: jaxheads, then B (its own feature pass), jaxheads' sweep again from cleared caches (the
    heads-only figure), then A; wall times, ratios and per-head accuracy."""
    designs = size.design_list()
    jh, splits, result = run_jaxheads(pair, ds, designs, size, seed)
    plain, plain_splits = run_plain(pair, ds, designs, size, seed)
    for name, split in splits.items():  # B trains on exactly the features jaxheads got
        np.testing.assert_array_equal(plain_splits[name].maps, split.maps)
    jh["sweep_cold_s"] = sweep_from_cold(splits, designs, ds.num_classes, size, seed)
    keras_run = run_keras(pair, ds, designs, size, seed)
    rows, agreement = compare_heads(designs, keras_run, plain, result, len(ds.split("val")))
    b_wall = plain["wall_s"]
    return {
        "dataset": ds.name, "n_train": len(ds.split("train")), "n_val": len(ds.split("val")),
        "designs": len(designs), "epochs": size.epochs, "batch_size": size.batch_size,
        "learning_rate": size.learning_rate, "feature_shape": result.feature_shapes["maps"],
        "keras": {k: v for k, v in keras_run.items() if k != "trials"} | {
            "per_trial_s": [t["wall_s"] for t in keras_run["trials"]]},
        "jax_loop": {"feature_s": plain["feature_s"], "loop_s": plain["loop_s"], "wall_s": b_wall,
                     "per_trial_s": [t["wall_s"] for t in plain["trials"]]},
        "jaxheads": jh | {"sweep_flops": sweep_useful_flops(result)},
        "ratios": {"keras_over_jaxheads": keras_run["wall_s"] / jh["wall_s"],
                   "jax_loop_over_jaxheads": b_wall / jh["wall_s"],
                   "jax_loop_over_sweep_heads_only": plain["loop_s"] / jh["sweep_cold_s"]},
        "heads": rows, "agreement": agreement,
    }
