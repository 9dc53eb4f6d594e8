"""The report's figures (matplotlib, pyplot-free): validation metric against head size, learning curves, the
recommended head's confusion matrix and, comparing backbones, accuracy against speed and size. Each ``plot_*``
writes one PNG and returns its path."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jaxheads.factors import varied_axes
from jaxheads.report.backbones import backbone_points, dominated_by
from jaxheads.report.tables import leaderboard_rows, level_of, num, ridge_baseline, spec_summary


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    """A pyplot-free figure (Agg canvas): no global backend switch, no GUI, safe in threads and tests."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_val_vs_params(result_json: Mapping[str, Any], path: Path) -> Path:
    """Validation metric against parameter count, log x: the bootstrap estimate and its interval when the
    sweep has them, else mean ± SEM over seeds; recommended head starred, ridge baseline as a dashed line."""
    metric = result_json["metric"]
    rows = leaderboard_rows(result_json)
    intervals = all(r.get("val_ci") for r in rows)
    centre = (lambda r: r["val_ci"]["estimate"]) if intervals else (lambda r: r["val"]["mean"])  # noqa: E731
    fig = _figure()
    ax = fig.add_subplot()
    depths = sorted({len(r["spec"]["head"].get("hidden", [])) for r in result_json.get("leaderboard", [])})
    for depth in depths:
        sel = [r for r, raw in zip(rows, result_json["leaderboard"])
               if len(raw["spec"]["head"].get("hidden", [])) == depth]
        errors = ([[centre(r) - r["val_ci"]["low"] for r in sel], [r["val_ci"]["high"] - centre(r) for r in sel]]
                  if intervals else [np.nan_to_num(r["val"]["sem"]) for r in sel])
        ax.errorbar([r["params"] for r in sel], [centre(r) for r in sel], yerr=errors, fmt="o", ms=4, capsize=2,
                    alpha=0.8, label=f"{depth} dense layer{'s' if depth != 1 else ''}" if depth else "linear")
    rec = next((r for r in rows if r["recommended"]), None)
    if rec is not None:
        ax.plot([rec["params"]], [centre(rec)], marker="*", ms=16, color="gold", mec="black",
                ls="none", label="recommended", zorder=5)
    ridge = ridge_baseline(result_json)
    if ridge is not None and math.isfinite(ridge["val"]):
        ax.axhline(ridge["val"], ls="--", color="gray", label=f"ridge probe (λ={ridge['l2']:g})")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"val {metric} " + (f"({level_of(result_json):.0%} interval)" if intervals else "(mean ± SEM)"))
    ax.set_title("Validation metric vs head size")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def plot_learning_curves(result_json: Mapping[str, Any], path: Path, top: int = 6) -> Path:
    """Train loss and val metric per epoch of the recommended config's replicas (bold) and the ``top`` best
    configs (thin), so under- and over-fitting and early stopping are visible."""
    metric = result_json["metric"]
    board = result_json.get("leaderboard", [])
    rec = result_json.get("recommended")
    configs = [r["config"] for r in board[:top]]
    if rec is not None and rec not in configs:
        configs.append(rec)
    by_config = {r["config"]: r for r in board}
    members = {m["member"]: m for m in result_json.get("members", [])}
    axes = varied_axes(result_json)
    fig = _figure(10.0, 4.2)
    ax_loss, ax_val = fig.subplots(1, 2)
    colors = _colors(len(configs))
    for color, config in zip(colors, configs):
        row = by_config[config]
        bold = config == rec
        for j, mid in enumerate(row["members"]):
            curves = members[mid].get("curves") or {}
            label = (("★ " if bold else "") + spec_summary(row["spec"], axes)) if j == 0 else None
            kw = {"color": color, "lw": 2.4 if bold else 1.0, "alpha": 1.0 if bold else 0.7, "label": label}
            loss = [num(v) for v in curves.get("train_loss", [])]
            val = [num(v) for v in (curves.get("val") or {}).get(metric, [])]
            ax_loss.plot(range(1, len(loss) + 1), loss, **kw)
            ax_val.plot(range(1, len(val) + 1), val, **kw)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="Training loss")
    ax_val.set(xlabel="epoch", ylabel=f"val {metric}", title="Validation metric")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize="x-small", loc="lower right")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=110)
    return path


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def recommended_confusion(result_json: Mapping[str, Any]) -> tuple[np.ndarray, str] | None:
    """(confusion matrix, split name) of the recommended config, test if the result holds it, else val."""
    matrices = (result_json.get("selection") or {}).get("confusion_matrix") or {}
    for split in ("test", "val"):
        if matrices.get(split) is not None:
            return np.asarray(matrices[split], np.int64), split
    return None


def plot_confusion(cm: np.ndarray, labels: Sequence[str] | None, path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (colour) with the raw counts written in each cell."""
    k = cm.shape[0]
    labels = list(labels) if labels else [str(i) for i in range(k)]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(12.0, 2.5 + 0.45 * k)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    if k <= 30:
        for i, j in itertools.product(range(k), range(k)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.savefig(path, dpi=110)
    return path


def plot_backbones(result_json: Mapping[str, Any], path: Path) -> Path:
    """Best val score (with its interval) against measured images/s, log x; marker area grows with the
    backbone's parameters; the Pareto front joined by a line."""
    points = backbone_points(result_json)
    front = dominated_by(points)
    fig = _figure()
    ax = fig.add_subplot()
    largest = max(p.params for p in points)
    for p in points:
        yerr = [[p.score - p.low], [p.high - p.score]] if p.low == p.low else None
        ax.errorbar([p.images_per_s], [p.score], yerr=yerr, fmt="o", capsize=3, ms=5 + 15 * (p.params / largest),
                    alpha=0.8, mec="black" if front[p.name] is None else "none")
        ax.annotate(f"{p.name} ({p.params / 1e6:.1f} M)", (p.images_per_s, p.score), textcoords="offset points",
                    xytext=(6, 6), fontsize="small")
    on_front = sorted((p for p in points if front[p.name] is None), key=lambda p: p.images_per_s)
    ax.plot([p.images_per_s for p in on_front], [p.score for p in on_front], ls="--", color="gray",
            label="Pareto front (accuracy, images/s, params)")
    ax.set_xscale("log")
    ax.set(xlabel="images/s on this machine (log)", ylabel=f"best val {result_json['metric']} (interval)",
           title="Which backbone: accuracy against speed and size")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    return path
