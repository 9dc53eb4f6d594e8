"""Each member's final record: val/test metrics of its kept (best-epoch) weights, and its unpadded variables.

Val metrics are those recorded at the member's kept epoch (the same weights and program; with folds that epoch is
chosen on the other folds' val scores, :mod:`.book`); val is evaluated again
only for multilabel thresholds (tuned per member on val) or a member that never improved on its initial weights.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

import jax
import numpy as np

from jaxheads import heads, metrics, parallel

from .book import GroupRun, MemberBook
from .inputs import GroupInputs, eval_selection, fold_eval_rows
from .plan import GroupPlan
from .program import MemberConsts, swap_first_kernel

if TYPE_CHECKING:
    from .group import LiveMembers


def evaluate(evaluate_fn: Callable, plan: GroupPlan, inputs: GroupInputs, consts: MemberConsts, slots: np.ndarray,
             split: str, variables: Any) -> tuple[dict[str, np.ndarray], jax.Array]:
    """Per-slot metrics of ``split`` as host arrays (gathered across processes), each slot scored on its own rows
    (:func:`.inputs.eval_selection`), and the device logits of those rows."""
    rows, mask = eval_selection(plan, inputs, split, slots)
    values, logits = evaluate_fn(variables, consts, inputs.x[split], inputs.y[split], rows, mask)
    return jax.tree.map(parallel.to_host, values), logits


def _thresholded(scores_val: Any, y_val: Any, scores_test: Any | None, y_test: Any | None) -> tuple:
    """Multilabel decision thresholds tuned on val, and the macro-F1 they give on val and test."""
    mask_v = np.ones((scores_val.shape[0],), bool)
    thr = metrics.tune_thresholds(scores_val, y_val, mask_v)
    f1_val = metrics.multilabel_f1(scores_val, y_val, mask_v, thr)
    f1_test = None
    if scores_test is not None:
        f1_test = metrics.multilabel_f1(scores_test, y_test, np.ones((scores_test.shape[0],), bool), thr)
    return thr, f1_val, f1_test


def _split_scalars(m: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One member's metrics split into scalars and per-class lists."""
    scalars, per_class = {}, {}
    for k, v in m.items():
        v = np.asarray(v)
        if v.ndim == 0:
            scalars[k] = float(v)
        else:
            per_class[k] = [float(a) for a in v]
    return scalars, per_class


def _split_logits(plan: GroupPlan, inputs: GroupInputs, split: str, slots: np.ndarray, logits: Any) -> np.ndarray:
    """(slots, rows of ``split``, classes) host logits; with folds a member's val logits sit at its own rows
    (zeros elsewhere: it is never scored there)."""
    logits = parallel.to_host(logits)
    n = inputs.n_eval[split]
    if inputs.eval_rows is None or split != "val":
        return logits[:, :n]
    out = np.zeros((len(slots), n) + logits.shape[2:], logits.dtype)
    for s, j in enumerate(slots):
        fold = plan.specs[max(j, 0)].fold
        out[s, fold_eval_rows(inputs, fold)] = logits[s, inputs.mask["val"][fold]]
    return out


class _Final:
    """The evaluation of a set of slots at their kept weights (host arrays). Val metrics are evaluated again only
    when ``need_val``; the logits of both splits are always kept (the per-example predictions)."""

    def __init__(self, plan: GroupPlan, inputs: GroupInputs, evaluate_fn: Callable, live: LiveMembers,
                 need_val: bool):
        run = lambda split: evaluate(evaluate_fn, plan, inputs, live.consts, live.slots, split, live.best)  # noqa: E731
        val, val_logits = run("val")
        self.val = val if need_val else None
        self.test, test_logits = run("test") if "test" in inputs.n_eval else (None, None)
        self.val_logits = _split_logits(plan, inputs, "val", live.slots, val_logits)
        self.test_logits = None if test_logits is None else _split_logits(plan, inputs, "test", live.slots,
                                                                          test_logits)
        self.host_best = jax.tree.map(parallel.to_host, live.best)


def _member_metrics(final: _Final, slot: int, recorded: Mapping[str, Any] | None, inputs: GroupInputs,
                    task: str, fold: int | None) -> tuple[dict, dict, dict | None, dict | None, list[float] | None]:
    """(val scalars, val per-class, test scalars, test per-class, thresholds) of the member in ``slot``; with
    folds, multilabel thresholds are tuned on the member's own fold."""
    v_scalars, v_per = _split_scalars(recorded if final.val is None else {k: v[slot] for k, v in final.val.items()})
    t_scalars, t_per = ((None, None) if final.test is None
                        else _split_scalars({k: v[slot] for k, v in final.test.items()}))
    if task != "multilabel":
        return v_scalars, {}, t_scalars, None if final.test is None else {}, None
    n_val, n_test = inputs.n_eval["val"], inputs.n_eval.get("test", 0)
    has_test = final.test is not None
    rows = np.arange(n_val) if fold is None else fold_eval_rows(inputs, fold)
    thr, f1v, f1t = _thresholded(jax.nn.sigmoid(final.val_logits[slot][rows]), np.asarray(inputs.y["val"])[rows],
                                 jax.nn.sigmoid(final.test_logits[slot]) if has_test else None,
                                 inputs.y["test"][:n_test] if has_test else None)
    v_scalars["macro_f1"], v_per["f1"] = float(f1v["macro_f1"]), [float(a) for a in np.asarray(f1v["f1"])]
    if f1t is not None:
        t_scalars["macro_f1"] = float(f1t["macro_f1"])
        t_per["f1"] = [float(a) for a in np.asarray(f1t["f1"])]
    return v_scalars, v_per, t_scalars, t_per, [float(a) for a in np.asarray(thr)]


def _unpadded(final: _Final, slot: int, plan: GroupPlan, head: heads.HeadSpec) -> Any:
    member_vars = jax.tree.map(lambda a: a[slot], final.host_best)
    params = jax.tree.map(np.asarray, swap_first_kernel(member_vars["params"], plan.structure))
    return heads.unpad_variables(dict(member_vars, params=params), head, plan.feature_shapes[head.pooling])


def _probabilities(final: _Final, slot: int, task: str) -> dict[str, np.ndarray]:
    def probs(logits: Any) -> np.ndarray:
        return np.asarray(metrics.probabilities(np.asarray(logits, np.float32), task), np.float32)

    out = {"val": probs(final.val_logits[slot])}
    if final.test_logits is not None:
        out["test"] = probs(final.test_logits[slot])
    return out


def finalize(run: GroupRun, live: LiveMembers, which: np.ndarray,
             book: MemberBook) -> dict[int, tuple[dict[str, Any], Any, dict[str, np.ndarray]]]:
    """{member index: (record, unpadded variables, predictions)} of the members in slots ``which``; predictions
    are {"val", "test" (with a test split)} probabilities (rows, classes) float32 of the kept weights on every row
    of the split."""
    if len(which) == 0:
        return {}
    plan, inputs, task, members, timings = run.plan, run.inputs, run.task, run.members, run.timings
    t = time.perf_counter()
    need_val = task == "multilabel" or any(book.best_val[live.slots[s]] is None for s in which)
    final = _Final(plan, inputs, run.programs.evaluate, live, need_val)
    timings["eval_s"] += time.perf_counter() - t
    out = {}
    for slot in which:
        j = int(live.slots[slot])
        i, spec = plan.ids[j], members[plan.ids[j]]
        v_scalars, v_per, t_scalars, t_per, thresholds = _member_metrics(final, slot, book.best_val[j], inputs, task,
                                                                        spec.fold)
        record = {
            "member": i, "config": spec.config_id(), "group": plan.gid, "spec": spec.to_dict(),
            "params": heads.param_count(spec.head, plan.feature_shapes[spec.head.pooling]),
            "epochs_run": int(book.epochs_run[j]), "best_epoch": int(book.best_epoch[j]),
            "diverged": book.stopped[j] == "diverged", "stopped": book.stopped[j], "curves": book.curves[j],
            "val": v_scalars, "test": t_scalars, "per_class": {"val": v_per, "test": t_per},
            "thresholds": thresholds}
        out[i] = (record, _unpadded(final, slot, plan, spec.head), _probabilities(final, slot, task))
    return out
