"""The fine-tune's own report: ``report.md`` and ``report.html`` beside ``finetune.json``.

It says what a reader of the sweep's report asks next: did fine-tuning gain over the frozen head it started from,
by how much, and is that more than noise? The gain is paired on the same examples (``FinetuneResult.gain``): val
first as the selection saw it (optimistic: the kept epoch was chosen there), then test, scored once. The same
blocks as the sweep's report (:mod:`jaxheads.report.render`), so both documents look alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from jaxheads import checkpoint
from jaxheads.finetuning.config import FinetuneResult
from jaxheads.report.render import Table, render_html, render_markdown

GAIN_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
"""Imbalanced classes (ELPV's likely_defective is 4% of it) make accuracy alone hide a lost class."""

VERDICTS = {"b better": "fine-tuned better", "a better": "frozen better"}


def _gain_table(result: FinetuneResult) -> Table | None:
    rows = []
    for split, note in (("val", " (optimistic)"), ("test", " (scored once)")):
        by_metric: Mapping[str, Any] = result.gain.get(split) or {}
        for metric in (m for m in GAIN_METRICS if m in by_metric):
            c = by_metric[metric]
            rows.append([split + note, metric, f"{c['a']:.4f}", f"{c['b']:.4f}", f"{c['diff']:+.4f}",
                         f"[{c['low']:+.4f}, {c['high']:+.4f}]", VERDICTS.get(c["verdict"], c["verdict"])])
    if not rows:
        return None
    level = result.gain.get("level", 0.95)
    header = ["split", "metric", "frozen", "fine-tuned", "gain", f"{level:.0%} interval", "verdict"]
    return Table(header, rows, left=frozenset({0, 1, 6}), wrap=None)


def _epoch_table(result: FinetuneResult) -> Table:
    rows = []
    for h in result.history:
        val = h.get("val") or {}
        loss = h.get("train_loss")
        rows.append([str(h["epoch"]) + (" ★" if h["epoch"] == result.best_epoch else ""),
                     "—" if loss is None else f"{loss:.4f}", f"{val.get(result.metric, float('nan')):.4f}",
                     f"{val.get('loss', float('nan')):.4f}"])
    return Table(["epoch", "train loss", f"val {result.metric}", "val loss"], rows, wrap=None)


def _recipe_text(result: FinetuneResult) -> str:
    c = result.config
    trained = "the head alone" if not result.trainable_blocks else (
        f"{len(result.trainable_blocks)} backbone blocks ({result.trainable_blocks[0]} … "
        f"{result.trainable_blocks[-1]}) and the head")
    augment = ", ".join(c.augment) or "none"
    return (f"Trained {trained} at {c.image_size or 'the swept'} px: {c.optimizer}, head lr {c.learning_rate:g}, "
            f"top block lr {c.backbone_learning_rate:g} (×{c.layer_decay:g} per block below), batch "
            f"{c.batch_size}×{c.accumulate}, augmentation {augment}, class weights {c.class_weights}, sampling "
            f"{c.sampling}, batch norm {'frozen' if c.freeze_bn else 'trained'}, EMA {c.ema_decay}; "
            f"{result.epochs_run} of {c.epochs} epochs run, epoch {result.best_epoch} kept (by val {result.metric}; "
            "epoch 0 is the frozen head).")


def sections(result: FinetuneResult) -> list[tuple[str, Any]]:
    """The fine-tune report's blocks."""
    gain = _gain_table(result)
    lines = result.gain_lines()
    blocks: list[tuple[str, Any]] = [("h1", "jaxheads fine-tune report"), ("p", _recipe_text(result))]
    if lines:
        blocks.append(("recommend", lines[0]))
    if gain is not None:
        blocks += [("h2", "Gain over the frozen head"), ("table", gain),
                   ("note", f"Paired bootstrap of the examples ({result.gain.get('n_boot', '?')} draws): frozen and "
                            "fine-tuned predictions of the same images. Val is optimistic, since the kept epoch was "
                            "chosen on it; test is scored once, after training.")]
    if not result.improved:
        blocks.append(("warning", "Warning: no epoch beat the frozen head on val, so the saved model is the frozen "
                                  "head (epoch 0)."))
    blocks += [("h2", "Epochs"), ("table", _epoch_table(result))]
    return blocks


def write_report(result: FinetuneResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` (atomically) into ``out_dir``; return their paths."""
    out = Path(out_dir)
    blocks = sections(result)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    checkpoint.write_bytes_atomic(paths["markdown"], render_markdown(blocks).encode())
    checkpoint.write_bytes_atomic(paths["html"], render_html(blocks).encode())
    return paths
