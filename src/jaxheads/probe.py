"""The closed-form baseline: a ridge-regression linear probe on pooled features over a grid of L2 strengths.

Every sweep reports this row beside its trained heads: if no head beats a linear probe solved in closed form,
the head question is already answered. The method is the one big_vision's few-shot evaluator uses:

1. standardise the training features (mean 0, variance 1 per feature; constant features are only centred) and
   centre the targets, so the intercept is fitted exactly and never penalised;
2. eigendecompose the smaller Gram matrix ONCE: ``Xᵀ X = Q Λ Qᵀ`` (D×D) when N ≥ D, else ``X Xᵀ = U Λ Uᵀ`` (N×N);
3. the ridge solution for any strength λ is then ``W(λ) = B diag(1 / (Λ + λ)) R`` with a fixed basis ``B``
   (``Q``, or ``Xᵀ U``) and fixed projected targets ``R`` (``Qᵀ Xᵀ Y``, or ``Uᵀ Y``), so each extra λ costs a
   rescale and one (N_eval × r) @ (r × C) product, never another solve.

Targets are 0/1 one-hot rows for multiclass and the 0/1 multi-hot rows for multilabel. (big_vision uses ±1; with
a fitted intercept that only doubles W and shifts b, so the argmax and every ranking metric are identical, and 0/1
keeps the scores on a probability-like scale.) For a given λ the predictions equal scikit-learn's
``Ridge(alpha=λ)`` fitted on the standardised features (``StandardScaler``, population std).

The L2 strength is chosen by validation accuracy (multiclass) or validation macro average precision (multilabel);
equal scores go to the larger λ, the more regularised model.

A training split longer than :data:`RIDGE_CHUNK_ROWS` rows (and with N ≥ D) is never held whole: :func:`fit_ridge_chunked`
reads it in row chunks, once for the feature means and once to accumulate the centred ``Xᵀ X`` and ``Xᵀ Y`` (the
standard deviations are the Gram diagonal's), then standardises the D×D Gram and eigendecomposes it as above, so
its memory does not grow with N and a lazily read (memory-mapped) split stays on disk.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads import metrics
from jaxheads.features.split import FeatureSplit

HIGHEST = jax.lax.Precision.HIGHEST
DEFAULT_L2_GRID: tuple[float, ...] = tuple(2.0**k for k in range(-10, 21))
"""Absolute λ values (big_vision's default range). With standardised features the eigenvalues of Xᵀ X sum to
N·D, so the useful part of the grid moves up with the training-set size; 2⁻¹⁰…2²⁰ covers N up to ~10⁵."""
RIDGE_CHUNK_ROWS = 4096
"""Training rows read at once by the chunked fit; longer training splits (with N ≥ D) are fitted chunk by chunk."""


class RidgeCache(NamedTuple):
    """Everything a ridge prediction needs for any λ, from one eigendecomposition of the training Gram matrix."""

    x_mean: jax.Array  # (D,)
    x_scale: jax.Array  # (D,) divide centred features by this (1 where a feature is constant or unscaled)
    y_mean: jax.Array  # (C,) the intercept of the centred problem
    eigvals: jax.Array  # (r,) eigenvalues of the Gram matrix, r = min(N, D), clipped at 0
    basis: jax.Array  # (D, r) B
    projected_targets: jax.Array  # (r, C) R


@functools.partial(jax.jit, static_argnames="standardize")
def fit_ridge_eig(x: jax.Array, y: jax.Array, *, standardize: bool = True) -> RidgeCache:
    """Precompute the ridge solution path of (N, D) features onto (N, C) targets (see the module docstring)."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    x_mean = jnp.mean(x, axis=0)
    x_scale = jnp.std(x, axis=0) if standardize else jnp.ones(x.shape[1], jnp.float32)
    x_scale = jnp.where(x_scale > 1e-6 * jnp.max(x_scale), x_scale, 1.0)  # like StandardScaler: constant → 1
    xc = (x - x_mean[None, :]) / x_scale[None, :]
    y_mean = jnp.mean(y, axis=0)
    yc = y - y_mean[None, :]
    num_points, dim = xc.shape
    if num_points >= dim:  # primal: (D, D) Gram
        eigvals, q = jnp.linalg.eigh(jnp.matmul(xc.T, xc, precision=HIGHEST))
        basis = q
        projected = jnp.matmul(q.T, jnp.matmul(xc.T, yc, precision=HIGHEST), precision=HIGHEST)
    else:  # dual: (N, N) Gram; W = Xᵀ (X Xᵀ + λ I)⁻¹ Y
        eigvals, u = jnp.linalg.eigh(jnp.matmul(xc, xc.T, precision=HIGHEST))
        basis = jnp.matmul(xc.T, u, precision=HIGHEST)
        projected = jnp.matmul(u.T, yc, precision=HIGHEST)
    return RidgeCache(x_mean, x_scale, y_mean, jnp.maximum(eigvals, 0.0), basis, projected)


class OneHotRows:
    """(N, C) 0/1 multiclass targets built a slice at a time from the (N,) class ids: a long split's N x C float32
    one-hot matrix (its size on ImageNet-1k: experiments/README.md, "Figures moved out of code comments") is never
    held whole. ``np.asarray`` gives the whole matrix (what the in-memory fit takes)."""

    def __init__(self, labels: np.ndarray, num_classes: int):
        self.labels, self.num_classes = np.asarray(labels, np.int64), int(num_classes)
        self.shape = (len(self.labels), self.num_classes)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.eye(self.num_classes, dtype=np.float32)[self.labels[rows]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def column_means(self) -> np.ndarray:
        """Each class's share of the rows, float64 (the one-hot matrix's column means, exactly)."""
        return np.bincount(self.labels, minlength=self.num_classes) / max(len(self), 1)


def uses_chunks(num_points: int, dim: int, chunk_rows: int = RIDGE_CHUNK_ROWS) -> bool:
    """Whether :func:`ridge_probe` fits ``num_points`` training rows of ``dim`` features chunk by chunk."""
    return num_points > chunk_rows and num_points >= dim


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _accumulate_gram(gram: jax.Array, cross: jax.Array, x: jax.Array, y: jax.Array, x_mean: jax.Array,
                     y_mean: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``gram + Xcᵀ Xc`` and ``cross + Xcᵀ Yc`` of one chunk, centred by the whole split's means."""
    xc, yc = x - x_mean[None, :], y - y_mean[None, :]
    return (gram + jnp.matmul(xc.T, xc, precision=HIGHEST), cross + jnp.matmul(xc.T, yc, precision=HIGHEST))


@functools.partial(jax.jit, static_argnames="standardize")
def _solve_gram(gram: jax.Array, cross: jax.Array, x_mean: jax.Array, y_mean: jax.Array, num_points: jax.Array, *,
                standardize: bool) -> RidgeCache:
    """:func:`fit_ridge_eig`'s primal path from the centred Gram matrix and cross products."""
    dim = gram.shape[0]
    x_scale = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0) / num_points) if standardize else jnp.ones(dim)
    x_scale = jnp.where(x_scale > 1e-6 * jnp.max(x_scale), x_scale, 1.0)  # like StandardScaler: constant → 1
    eigvals, q = jnp.linalg.eigh(gram / (x_scale[:, None] * x_scale[None, :]))
    projected = jnp.matmul(q.T, cross / x_scale[:, None], precision=HIGHEST)
    return RidgeCache(x_mean, x_scale, y_mean, jnp.maximum(eigvals, 0.0), q, projected)


def fit_ridge_chunked(features: Any, y: np.ndarray | OneHotRows, *, standardize: bool = True,
                      chunk_rows: int = RIDGE_CHUNK_ROWS) -> RidgeCache:
    """:func:`fit_ridge_eig` of (N, D) ``features`` (N ≥ D) read ``chunk_rows`` at a time: any array-like whose
    row slices are arrays (a memory-mapped :class:`~jaxheads.features.lazy.LazyRows` too), or a
    :class:`FeatureSplit` (its pooled features, else its maps averaged). Equal to the whole fit within float32
    rounding; memory: a few chunks and the D×D Gram matrix."""
    read = (lambda a, b: _pooled_rows(features, a, b)) if isinstance(features, FeatureSplit) else (  # noqa: E731
        lambda a, b: np.asarray(features[a:b], np.float32))
    y = y if isinstance(y, OneHotRows) else np.asarray(y, np.float32)
    num_points, starts = len(y), range(0, len(y), chunk_rows)
    total = sum(read(a, min(a + chunk_rows, num_points)).sum(axis=0, dtype=np.float64) for a in starts)
    y_mean = y.column_means() if isinstance(y, OneHotRows) else y.mean(axis=0, dtype=np.float64)
    x_mean, y_mean = (total / num_points).astype(np.float32), y_mean.astype(np.float32)
    dim = len(x_mean)
    if num_points < dim:
        raise ValueError(f"fit_ridge_chunked: needs at least as many rows as features, got N={num_points} < D={dim}")
    gram, cross = jnp.zeros((dim, dim), jnp.float32), jnp.zeros((dim, y.shape[1]), jnp.float32)
    for a in starts:
        x, part = read(a, min(a + chunk_rows, num_points)), y[a:a + chunk_rows]
        if len(x) < chunk_rows and num_points > chunk_rows:  # pad the last chunk with mean rows (they add 0): one
            pad = chunk_rows - len(x)  # compiled shape for every chunk
            x, part = np.concatenate([x, np.broadcast_to(x_mean, (pad, dim))]), np.concatenate(
                [part, np.broadcast_to(y_mean, (pad, y.shape[1]))])
        gram, cross = _accumulate_gram(gram, cross, x, part, x_mean, y_mean)
        gram.block_until_ready()  # else the reads outrun the products and every chunk's copy queues up (N-sized)
    return _solve_gram(gram, cross, x_mean, y_mean, jnp.float32(num_points), standardize=standardize)


@jax.jit
def ridge_weights(cache: RidgeCache, l2: float) -> tuple[jax.Array, jax.Array]:
    """(W (D, C), b (C,)) on the ORIGINAL feature scale for strength ``l2``: ``scores = x @ W + b``."""
    w_std = cache.basis @ (cache.projected_targets / (cache.eigvals + l2)[:, None])
    w = w_std / cache.x_scale[:, None]
    return w, cache.y_mean - cache.x_mean @ w


def _eigen_coordinates(cache: RidgeCache, x: jax.Array) -> jax.Array:
    """Features of evaluation rows in the eigenbasis, (N, r): computed once, shared by every λ."""
    xc = (jnp.asarray(x, jnp.float32) - cache.x_mean[None, :]) / cache.x_scale[None, :]
    return jnp.matmul(xc, cache.basis, precision=HIGHEST)


def _scores_at(cache: RidgeCache, z: jax.Array, l2: jax.Array) -> jax.Array:
    rescaled = cache.projected_targets / (cache.eigvals + l2)[:, None]
    return jnp.matmul(z, rescaled, precision=HIGHEST) + cache.y_mean[None, :]


def ridge_predict(cache: RidgeCache, x: jax.Array, l2s: Sequence[float] | jax.Array) -> jax.Array:
    """Ridge scores (L, N, C) of (N, D) features for every strength in ``l2s``."""
    return _predict_path(cache, jnp.asarray(x, jnp.float32), jnp.asarray(l2s, jnp.float32))


@jax.jit
def _predict_path(cache: RidgeCache, x: jax.Array, l2s: jax.Array) -> jax.Array:
    z = _eigen_coordinates(cache, x)
    return jax.vmap(lambda l2: _scores_at(cache, z, l2))(l2s)


# -------------------------------------------------------------------------------------------- the probe row


def _pooled(split: FeatureSplit) -> np.ndarray:
    """(N, C) pooled features of a split, averaging the spatial maps when only those were cached."""
    return _pooled_rows(split, 0, len(split))


def _pooled_rows(split: FeatureSplit, start: int, stop: int) -> np.ndarray:
    """(stop - start, C) float32 pooled features of rows ``start:stop`` (the maps averaged when only those were
    cached), reading only those rows of a lazy split."""
    if split.pooled is not None:
        return np.asarray(split.pooled[start:stop], np.float32)
    if split.maps is not None:
        return np.asarray(split.maps[start:stop], np.float32).mean(axis=(1, 2))
    raise ValueError("FeatureSplit has neither pooled features nor maps")


@jax.jit
def _multiclass_path(cache: RidgeCache, x: jax.Array, labels: jax.Array, l2s: jax.Array) -> dict[str, jax.Array]:
    """Metrics for every λ, one λ at a time (lax.map) so memory stays at one (N, C) score matrix."""
    z = _eigen_coordinates(cache, x)
    mask = jnp.ones(labels.shape[0], bool)
    return jax.lax.map(lambda l2: metrics.multiclass_metrics(_scores_at(cache, z, l2), labels, mask), l2s)


@jax.jit
def _multilabel_path(cache: RidgeCache, x_val: jax.Array, y_val: jax.Array, x_test: jax.Array,
                     y_test: jax.Array, l2s: jax.Array) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Per λ: ranking metrics on val and test, and macro F1 at per-class thresholds tuned on val."""
    z_val, z_test = _eigen_coordinates(cache, x_val), _eigen_coordinates(cache, x_test)
    mask_val, mask_test = jnp.ones(y_val.shape[0], bool), jnp.ones(y_test.shape[0], bool)

    def one(l2: jax.Array) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        s_val, s_test = _scores_at(cache, z_val, l2), _scores_at(cache, z_test, l2)
        thresholds = metrics.tune_thresholds(s_val, y_val, mask_val)
        val = metrics.multilabel_metrics(s_val, y_val, mask_val)
        test = metrics.multilabel_metrics(s_test, y_test, mask_test)
        val["macro_f1"] = metrics.multilabel_f1(s_val, y_val, mask_val, thresholds)["macro_f1"]
        test["macro_f1"] = metrics.multilabel_f1(s_test, y_test, mask_test, thresholds)["macro_f1"]
        return val, test

    return jax.lax.map(one, l2s)


def _to_json(tree: dict[str, jax.Array]) -> dict[str, list]:
    """Arrays → nested lists of Python floats (NaN stays NaN; json writes it as NaN, which Python reads back)."""
    return {k: np.asarray(v, np.float64).tolist() for k, v in tree.items()}


def _pick(path: dict[str, list], index: int) -> dict[str, float | list]:
    return {k: v[index] for k, v in path.items()}


def ridge_probe(
    train: FeatureSplit,
    val: FeatureSplit,
    test: FeatureSplit | None = None,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    standardize: bool = True,
    num_classes: int | None = None,
    select_metric: str | None = None,
) -> dict:
    """Fit the ridge probe on ``train`` for every λ in ``l2_grid``, choose λ on ``val``, report ``val``/``test``.

    The task follows the labels: (N,) integer class ids → multiclass (accuracy, top5, macro_f1); (N, K) {0, 1} →
    multilabel (macro_roc_auc, macro_average_precision, macro_f1 at thresholds tuned on val; per-class AUC/AP at
    the chosen λ). ``select_metric`` overrides the validation metric λ is chosen by (default: accuracy /
    macro_average_precision). Returns a JSON-able dict::

        {"name": "ridge_probe", "task": "multiclass" | "multilabel", "select_metric": str,
         "l2_grid": [λ...], "val": {metric: [value per λ]}, "test": {metric: [value per λ]} (absent without test),
         "best": {"l2": λ*, "index": i, "val": {metric: value}, "test": {metric: value}},
         "params": D*C + C, "num_features": D, "num_classes": C, "num_train": N, "standardize": bool,
         "targets": "0/1", "time_s": seconds}
    """
    start = time.perf_counter()
    x_val = _pooled(val)
    multilabel = np.ndim(train.labels) == 2
    l2_list = sorted(float(v) for v in l2_grid)
    l2s = jnp.asarray(l2_list, jnp.float32)
    if not l2_list or l2_list[0] <= 0:
        raise ValueError(f"l2_grid must hold positive strengths, got {list(l2_grid)}")
    y_train, num_classes, select = _targets(train, val, test, multilabel, num_classes, select_metric)
    cache = _fit(train, y_train, standardize)
    val_path, test_path = _metric_paths(cache, x_val, val, test, multilabel, l2s)
    index = _best_index(val_path, select)
    result = {
        "name": "ridge_probe",
        "task": "multilabel" if multilabel else "multiclass",
        "select_metric": select,
        "l2_grid": l2_list,
        "val": {k: v for k, v in val_path.items() if np.ndim(v) == 1},
        "best": {"l2": l2_list[index], "index": index, "val": _pick(val_path, index)},
        "params": int(x_val.shape[1] * num_classes + num_classes),
        "num_features": int(x_val.shape[1]),
        "num_classes": num_classes,
        "num_train": len(train),
        "standardize": standardize,
        "targets": "0/1",
    }
    if test_path is not None:
        result["test"] = {k: v for k, v in test_path.items() if np.ndim(v) == 1}
        result["best"]["test"] = _pick(test_path, index)
    result["time_s"] = time.perf_counter() - start
    return result


def _fit(train: FeatureSplit, y_train: np.ndarray | OneHotRows, standardize: bool) -> RidgeCache:
    """The ridge path of the training split: whole, or chunk by chunk when it is long (:func:`uses_chunks`)."""
    x = train.pooled if train.pooled is not None else train.maps
    if x is not None and uses_chunks(len(train), x.shape[-1]):
        return fit_ridge_chunked(train, y_train, standardize=standardize)
    return fit_ridge_eig(_pooled(train), np.asarray(y_train, np.float32), standardize=standardize)


def _targets(train: FeatureSplit, val: FeatureSplit, test: FeatureSplit | None, multilabel: bool,
             num_classes: int | None, select_metric: str | None) -> tuple[np.ndarray | OneHotRows, int, str]:
    """(0/1 training targets (N, C), C, the validation metric λ is chosen by); multiclass targets are built a
    chunk at a time (:class:`OneHotRows`)."""
    if multilabel:
        num_classes = int(np.shape(train.labels)[1])
        y_train = np.asarray(train.labels, np.float32)
        return y_train, num_classes, select_metric or metrics.metric_for_task("multilabel")
    seen = [np.asarray(s.labels) for s in (train, val, test) if s is not None]
    num_classes = num_classes or int(max(int(s.max()) for s in seen)) + 1
    return OneHotRows(train.labels, num_classes), num_classes, select_metric or metrics.metric_for_task("multiclass")


def _metric_paths(cache: RidgeCache, x_val: np.ndarray, val: FeatureSplit, test: FeatureSplit | None,
                  multilabel: bool, l2s: jax.Array) -> tuple[dict[str, list], dict[str, list] | None]:
    """Every metric at every λ on val and on test (None without a test split), as JSON-able lists."""
    if multilabel:
        # Without a test split the val split stands in (its results are dropped), so one program serves both.
        x_test, y_test = (_pooled(test), test.labels) if test is not None else (x_val, val.labels)
        val_path, test_path = _multilabel_path(cache, x_val, jnp.asarray(val.labels), x_test,
                                               jnp.asarray(y_test), l2s)
        return _to_json(val_path), _to_json(test_path) if test is not None else None
    val_path = _to_json(_multiclass_path(cache, x_val, jnp.asarray(val.labels), l2s))
    test_path = _to_json(_multiclass_path(cache, _pooled(test), jnp.asarray(test.labels), l2s)) \
        if test is not None else None
    return val_path, test_path


def _best_index(val_path: dict[str, list], select: str) -> int:
    """The λ index with the highest validation ``select``; among equals the largest λ (the grid is ascending)."""
    if select not in val_path:
        raise ValueError(f"select_metric {select!r} is not one of {sorted(val_path)}")
    sel = np.nan_to_num(np.asarray(val_path[select]), nan=-np.inf)
    return int(np.flatnonzero(sel == sel.max())[-1])


def compile_ridge_probe(train: FeatureSplit, val: FeatureSplit, test: FeatureSplit | None = None, *,
                        grid_size: int = len(DEFAULT_L2_GRID), standardize: bool = True,
                        num_classes: int | None = None) -> None:
    """Compile what :func:`ridge_probe` runs, from splits whose arrays are ``jax.ShapeDtypeStruct`` (pooled (N, C)
    or maps (N, H, W, C); labels (N,) multiclass or (N, K) multilabel), so that it can compile while the features
    are computed. ``num_classes`` is needed for multiclass labels."""
    def pooled(split: FeatureSplit) -> jax.ShapeDtypeStruct:
        x = split.pooled if split.pooled is not None else split.maps
        return jax.ShapeDtypeStruct((x.shape[0], x.shape[-1]), np.float32)

    multilabel = len(train.labels.shape) == 2
    k = train.labels.shape[1] if multilabel else num_classes
    if k is None:
        raise ValueError("compile_ridge_probe: num_classes is needed for multiclass labels")
    labels = lambda split: jax.ShapeDtypeStruct(  # noqa: E731  (what jnp.asarray makes of the host labels)
        split.labels.shape, jax.dtypes.canonicalize_dtype(split.labels.dtype))
    cache, l2s = _compile_fit(pooled(train), k, standardize), jax.ShapeDtypeStruct((grid_size,), np.float32)
    if multilabel:
        evaluation = test if test is not None else val
        _multilabel_path.lower(cache, pooled(val), labels(val), pooled(evaluation), labels(evaluation),
                               l2s).compile()
        return
    for split in (val, test) if test is not None else (val,):
        _multiclass_path.lower(cache, pooled(split), labels(split), l2s).compile()


def _compile_fit(x: jax.ShapeDtypeStruct, targets: int, standardize: bool) -> Any:
    """Compile the fit :func:`ridge_probe` runs on (N, D) training features; returns the abstract RidgeCache."""
    (num_points, dim), f32 = x.shape, np.float32
    if not uses_chunks(num_points, dim):
        fit = fit_ridge_eig.trace(x, jax.ShapeDtypeStruct((num_points, targets), f32), standardize=standardize)
        fit.lower().compile()
        return fit.out_info
    shape = lambda *dims: jax.ShapeDtypeStruct(dims, f32)  # noqa: E731
    _accumulate_gram.lower(shape(dim, dim), shape(dim, targets), shape(RIDGE_CHUNK_ROWS, dim),
                           shape(RIDGE_CHUNK_ROWS, targets), shape(dim), shape(targets)).compile()
    solve = _solve_gram.trace(shape(dim, dim), shape(dim, targets), shape(dim), shape(targets), shape(),
                              standardize=standardize)
    solve.lower().compile()
    return solve.out_info


def sweep_rows(splits: Mapping[str, FeatureSplit], *, l2: Sequence[float] | None = None, num_classes: int,
               metric: str | None = None, task: str | None = None) -> list[dict]:
    """The ridge baseline in the sweep's schema: one row per λ (ascending), ``{"l2", "params", "val": {metric:
    value}, "test": {metric: value} | None, "best": bool, "select_metric"}``, λ chosen by val ``metric`` (default:
    the task's) over ``l2`` (default :data:`DEFAULT_L2_GRID`). Scalar metrics only; per-class values stay in
    :func:`ridge_probe`'s ``best`` entry. ``task``, when given, must match the labels."""
    grid = {} if l2 is None else {"l2_grid": l2}
    result = ridge_probe(splits["train"], splits["val"], splits.get("test"), num_classes=num_classes,
                         select_metric=metric, **grid)
    if task is not None and result["task"] != task:
        raise ValueError(f"sweep_rows: task {task!r}, but the labels are {result['task']}")
    rows = []
    for i, value in enumerate(result["l2_grid"]):
        rows.append({"l2": float(value), "params": result["params"],
                     "val": {k: float(v[i]) for k, v in result["val"].items()},
                     "test": {k: float(v[i]) for k, v in result["test"].items()} if "test" in result else None,
                     "best": i == result["best"]["index"], "select_metric": result["select_metric"]})
    return rows
