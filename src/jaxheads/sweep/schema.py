"""The layout of ``SweepResult.to_json()``, as typed records (version 1, stable: add fields, never rename).

Metric names: multiclass "accuracy", "top5", "macro_f1", "loss" (cross-entropy, no smoothing); multilabel
"macro_roc_auc", "macro_average_precision", "macro_f1" (final only: thresholds tuned on val), "loss" (binary
cross-entropy). NaN is written as null. Replicas (``seeds``) differ in initialisation and dropout noise; all members
of a group see the same batch order (one shuffle per epoch and group).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

SCHEMA = "jaxheads.sweep_result/1"


class Curves(TypedDict):
    train_loss: list[float]  # one per epoch trained
    val: dict[str, list[float]]  # metric name -> one value per epoch trained


class MemberRecord(TypedDict):
    """One trained member (padding slots excluded), in member order."""

    member: int  # index into "members"
    config: str  # id of the member's spec without its seed: members sharing it are replicas
    group: int  # index into "groups"
    spec: dict[str, Any]  # MemberSpec.to_dict(): head (HeadSpec fields), learning_rate, weight_decay, optimizer,
    #                       batch_size, seed, fold (None without cross-validation)
    params: int  # trainable parameters of the unpadded head
    epochs_run: int  # epochs trained before stopping, halving or divergence
    best_epoch: int  # 1-based kept epoch (0: none beat the initial weights); with folds chosen by the other folds
    diverged: bool  # NaN/Inf seen: frozen at its last finite weights
    stopped: Literal["completed", "early_stopping", "halving", "diverged"]
    curves: Curves
    val: dict[str, float]  # scalar metrics at best_epoch (with folds: on the member's own fold)
    test: dict[str, float] | None
    per_class: dict[str, Any]  # {"val": {name: [float]}, "test": {...} | None}; multilabel: roc_auc,
    #                            average_precision, f1 (thresholds tuned on val); multiclass: {}
    thresholds: list[float] | None  # multilabel decision thresholds tuned on val


class Stat(TypedDict):
    mean: float
    std: float
    sem: float


class LeaderboardRow(TypedDict):
    """One config (its seeds and folds aggregated); rows sorted by the val estimate of "metric", best first."""

    config: str
    group: int
    members: list[int]
    spec: dict[str, Any]  # MemberSpec without its seed
    params: int
    n_seeds: int
    diverged: int  # replicas of this config that diverged
    epochs_run: float  # mean over replicas
    val: dict[str, Stat]
    test: dict[str, Stat] | None  # per-member test figures; the report shows test once, for the recommended head
    val_interval: Interval  # the config's val metric (pooled over its seeds and folds) and its 95% interval
    vs_best: Comparison  # this row minus the best row, paired on the same bootstrap draws


class Interval(TypedDict):
    estimate: float
    low: float
    high: float
    level: float


class Comparison(TypedDict):
    a: float  # the first side's estimate (for a leaderboard row: the best row)
    b: float
    diff: float  # b - a
    low: float  # the 95% percentile bootstrap interval of b - a
    high: float
    p_b_better: float  # fraction of bootstrap draws with b > a (ties count one half)
    level: float
    verdict: str  # "b better" | "a better" (the interval excludes 0) | "within noise"


class Question(TypedDict):
    """One head question: configs at level a against their matches at level b (equal on every other factor)."""

    axis: str
    title: str  # e.g. "Pooling: avg vs flatten"
    a: Any  # the levels compared
    b: Any
    mean_a: float  # each side's pooled val estimate
    mean_b: float
    diff: float
    low: float
    high: float
    p_b_better: float
    level: float
    metric: str
    n_pairs: int  # matched (a, b) config pairs
    verdict: str  # "<level> better" only when the interval excludes 0, else "within noise"


class Selection(TypedDict, total=False):
    """How the intervals were computed, and the recommended head's figures."""

    metric: str
    level: float
    n_boot: int
    method: str  # one sentence: what was resampled
    best_rule: str  # one sentence: how the best row was chosen and compared with (jaxheads.winners.RULE)
    val: dict[str, Any]  # Interval + "optimistic": True (the head was chosen on these numbers)
    test: Interval | None  # scored once: the honest estimate
    test_from: str  # with folds: the mean of the fold models' probabilities
    test_views: int  # test-time augmentation only: K, test probabilities averaged over K views per image (.tta)
    per_class_val: dict[str, Any]  # multiclass: {"recall": {class: float}, "never_predicted": [class]}
    per_class_test: dict[str, Any]


class RidgeRow(TypedDict):
    """The closed-form ridge linear probe on pooled features, one row per L2 strength ([] without pooled
    features or with ridge_l2 == ())."""

    l2: float
    params: int
    val: dict[str, float]
    test: dict[str, float] | None
    best: bool  # the L2 chosen on val by select_metric
    select_metric: str


class GroupRecord(TypedDict):
    """One compiled group program."""

    group: int
    structure: dict[str, Any]  # HeadSpec of the program; conv-free heads: pooling "none" (pre-pooled input)
    poolings: list[str]  # the members' poolings; each reads its own pre-pooled input
    optimizer: str
    batch_size: int
    members: list[int]
    padded_members: int  # device slots at the start
    padded_hidden: list[int]
    gated_depths: list[int] | None  # depth_grouping="gated" with several depths: the members' true depths
    mesh: dict[str, int]  # {"members": int, "data": int}
    map_batch: int | Literal["vmap"]  # members batched inside a device: lax.map(batch_size=k) or vmap
    map_batch_probe: dict[str, float] | None  # seconds per step of each candidate, when probed
    steps_per_epoch: int
    epochs: int
    slots_per_epoch: list[int]  # device slots computed each epoch: shrinks as stopped members are compacted away
    timings: dict[str, float]  # init_s, compile_s, probe_s, train_s, eval_s: main-thread wall seconds
    # Features streamed from the cache (inputs over the device-memory budget, sweep/stream.py): {budget_bytes,
    # chunk_steps, eval_chunk_rows}; None: placed on the devices
    streamed: dict[str, int] | None


class SweepResultJSON(TypedDict):
    schema: str  # SCHEMA
    task: Literal["multiclass", "multilabel"]
    num_classes: int
    label_names: list[str] | None
    metric: str  # the val metric members are ranked by (higher is better)
    feature_shapes: dict[str, list[int] | None]  # {"pooled": [C] | None, "maps": [H, W, C] | None}
    sweep: dict[str, Any]  # SweepSpec.to_dict()
    members: list[MemberRecord]
    leaderboard: list[LeaderboardRow]
    recommended: str | None  # config of the smallest row whose interval against the best row covers 0
    questions: list[Question]
    selection: Selection
    ridge: list[RidgeRow]
    groups: list[GroupRecord]
    timings: dict[str, float]  # total_s, ridge_s
