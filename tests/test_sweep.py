"""The sweep engine through its public API: padding exactness, 1 vs 8 devices, NaN guard, early stopping,
successive halving, lax.map choice, multilabel metrics against scikit-learn, the leaderboard rule, JSON."""

import json
import logging

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxheads.heads import io as heads_io
from jaxheads.heads import HeadSpec, apply_head, param_count
from jaxheads.features.split import FeatureSplit
from jaxheads.sweep import MemberSpec, SweepSpec, abstract_splits, compile_sweep, leaderboard, run_sweep

TOL = 1e-5


def _splits(task: str = "multiclass", n: int = 128, k: int = 3, d: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)

    def one(n):
        if task == "multiclass":
            y = rng.integers(0, k, n)
            shift = np.eye(k)[y]
        else:
            y = (rng.random((n, k)) < 0.4).astype(np.int32)
            shift = y
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, :k] += 1.5 * shift
        return FeatureSplit(labels=y, pooled=x)

    return {"train": one(n), "val": one(n // 2), "test": one(n // 2)}


def _one_device_mesh():
    return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("members", "data"))


def _sweep(**kw):
    base = dict(pooling=("none",), epochs=3, batch_size=(32,), learning_rate=(1e-2,), patience=None,
                map_batch="vmap", ridge_l2=())
    base.update(kw)
    return SweepSpec(**base)


def _curve(result, member):
    m = result.members[member]
    return np.asarray(m["curves"]["train_loss"] + m["curves"]["val"]["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_padded_member_equals_the_standalone_head(norm):
    splits = _splits()
    grouped = run_sweep(_sweep(widths=(4, 16), depth=(2,), norm=(norm,)), splits, num_classes=3)
    alone = run_sweep(_sweep(widths=(4,), depth=(2,), norm=(norm,)), splits, num_classes=3)
    assert len(grouped.groups) == 1 and grouped.groups[0]["padded_hidden"] == [16, 16]
    narrow = next(m["member"] for m in grouped.members if m["spec"]["head"]["hidden"] == [4, 4])
    np.testing.assert_allclose(_curve(grouped, narrow), _curve(alone, 0), atol=TOL)
    spec, variables = grouped.head(narrow)
    _, variables_alone = alone.head(0)
    x = splits["val"].pooled
    np.testing.assert_allclose(apply_head(variables, x, spec), apply_head(variables_alone, x, spec), atol=TOL)


@pytest.mark.slow
def test_depth_gated_members_equal_their_standalone_heads():
    """depth_grouping="gated": a depth-1 and a depth-3 member share one group (padded to depth 3) and each equals
    its own standalone head (separate groups); the saved variables and param count are the true depth's. Full
    batches make the two runs' batch orders (shuffled per group) irrelevant. AdamW with weight decay: the gated
    layers must stay exactly zero. (Norms under gating: test_heads, cheaper than more sweeps.)"""
    splits = _splits()
    kw = dict(widths=(4,), depth=(1, 3), weight_decay=(1e-2,), batch_size=(128,), epochs=4)
    gated = run_sweep(_sweep(depth_grouping="gated", **kw), splits, num_classes=3, mesh=_one_device_mesh())
    alone = run_sweep(_sweep(depth_grouping="separate", **kw), splits, num_classes=3, mesh=_one_device_mesh())
    assert len(gated.groups) == 1 and gated.groups[0]["padded_hidden"] == [4, 4, 4]
    assert gated.groups[0]["gated_depths"] == [1, 3] and len(alone.groups) == 2
    x = splits["val"].pooled
    for i, depth in enumerate((1, 3)):
        spec, variables = gated.head(i)
        _, variables_alone = alone.head(i)
        assert spec.hidden == (4,) * depth and len(variables["params"]["hidden"]) == depth
        assert gated.members[i]["params"] == alone.members[i]["params"] == param_count(spec, (12,))
        np.testing.assert_allclose(_curve(gated, i), _curve(alone, i), atol=TOL)
        np.testing.assert_allclose(apply_head(variables, x, spec), apply_head(variables_alone, x, spec), atol=TOL)


@pytest.mark.slow
def test_eight_devices_equal_one_device():
    assert len(jax.devices()) == 8
    splits = _splits()
    sweep = _sweep(widths=(4, 8, 16), norm=("batch",), weight_decay=(1e-3,), optimizer=("sgd",))
    many = run_sweep(sweep, splits, num_classes=3)
    one = run_sweep(sweep, splits, num_classes=3, mesh=_one_device_mesh())
    g = many.groups[0]
    assert g["mesh"] == {"members": 2, "data": 4} and g["padded_members"] == 4  # one dummy, batch split 4 ways
    assert one.groups[0]["mesh"] == {"members": 1, "data": 1}
    assert len(many.members) == 3
    for i in range(3):
        np.testing.assert_allclose(_curve(many, i), _curve(one, i), atol=TOL)
        assert many.members[i]["val"]["accuracy"] == pytest.approx(one.members[i]["val"]["accuracy"])


@pytest.mark.slow
def test_a_diverged_member_is_flagged_and_the_others_finish_unchanged():
    splits = _splits()
    head = HeadSpec(num_classes=3, pooling="none", hidden=(8,))
    members = [MemberSpec(head, 1e-2, batch_size=32, seed=s) for s in range(4)]
    poisoned = list(members)
    poisoned[1] = MemberSpec(head, 1e30, batch_size=32, seed=1)  # overflows to inf within the first epoch
    ref = run_sweep(_sweep(members=tuple(members)), splits, num_classes=3)
    bad = run_sweep(_sweep(members=tuple(poisoned)), splits, num_classes=3)
    assert bad.members[1]["diverged"] and bad.members[1]["stopped"] == "diverged"
    assert bad.members[1]["epochs_run"] == 1
    for i in (0, 2, 3):
        assert not bad.members[i]["diverged"]
        np.testing.assert_array_equal(_curve(bad, i), _curve(ref, i))
    assert json.loads(bad.to_json())["leaderboard"]  # NaNs never break the JSON


@pytest.mark.slow
def test_early_stopping_and_successive_halving():
    splits = _splits()
    stuck = run_sweep(_sweep(learning_rate=(0.0,), patience=1, epochs=4), splits, num_classes=3)
    assert stuck.members[0]["stopped"] == "early_stopping" and stuck.members[0]["epochs_run"] == 2
    assert stuck.members[0]["best_epoch"] == 1
    halved = run_sweep(_sweep(widths=(2, 4, 8, 16), epochs=3, halving_every=1), splits, num_classes=3)
    stops = [m["stopped"] for m in halved.members]
    assert stops.count("halving") == 3 and stops.count("completed") == 1
    assert sorted(m["epochs_run"] for m in halved.members) == [1, 1, 2, 3]
    # on one device the stopped members' slots are compacted away; the survivors' curves do not change
    small = run_sweep(_sweep(widths=(2, 4, 8, 16), epochs=3, halving_every=1), splits, num_classes=3,
                      mesh=_one_device_mesh())
    assert small.groups[0]["slots_per_epoch"] == [4, 2, 1]
    assert [m["stopped"] for m in small.members] == stops
    for i in range(4):
        np.testing.assert_allclose(_curve(small, i), _curve(halved, i), atol=TOL)
        assert small.members[i]["val"] == pytest.approx(halved.members[i]["val"], abs=TOL)


@pytest.mark.slow
def test_lax_map_equals_vmap_and_the_probe_records_its_timings():
    splits = _splits()
    base = run_sweep(_sweep(widths=(4, 8, 16, 32), epochs=2), splits, num_classes=3, mesh=_one_device_mesh())
    mapped = run_sweep(_sweep(widths=(4, 8, 16, 32), epochs=2, map_batch=2), splits, num_classes=3,
                       mesh=_one_device_mesh())
    probed = run_sweep(_sweep(widths=(4, 8, 16, 32), epochs=1, map_batch="probe"), splits, num_classes=3,
                       mesh=_one_device_mesh())
    auto = run_sweep(_sweep(widths=(4, 8, 16, 32), epochs=1, map_batch="auto"), splits, num_classes=3,
                     mesh=_one_device_mesh())
    capped = run_sweep(_sweep(widths=(4, 8, 16, 32), epochs=1, map_batch="auto", member_memory_mb=1e-3), splits,
                       num_classes=3, mesh=_one_device_mesh())
    ragged = run_sweep(_sweep(widths=(4, 8, 16, 32), epochs=2, map_batch=3), splits, num_classes=3,
                       mesh=_one_device_mesh())  # a chunk of 3 members, then the last one alone
    assert mapped.groups[0]["map_batch"] == 2 and ragged.groups[0]["map_batch"] == 3
    for i in range(4):
        np.testing.assert_allclose(_curve(mapped, i), _curve(base, i), atol=TOL)
        np.testing.assert_allclose(_curve(ragged, i), _curve(base, i), atol=TOL)
    g = probed.groups[0]
    assert set(g["map_batch_probe"]) == {"1", "vmap"} and str(g["map_batch"]) in g["map_batch_probe"]
    assert auto.groups[0]["map_batch"] == "vmap" and auto.groups[0]["map_batch_probe"] is None  # no timing
    assert capped.groups[0]["map_batch"] == 1  # a tiny memory cap bounds the members batched together
    large = run_sweep(_sweep(widths=(2048,), seeds=2, epochs=1, map_batch="auto"), _splits(d=128), num_classes=3,
                      mesh=_one_device_mesh())
    assert large.groups[0]["map_batch"] == 1  # 270k parameters per member: one after another on a CPU


@pytest.mark.slow
def test_multilabel_sweep_metrics_match_scikit_learn_and_ridge_row(tmp_path):
    splits = _splits("multilabel", k=4)
    result = run_sweep(_sweep(widths=(8,), ridge_l2=(0.1, 10.0)), splits, num_classes=4, task="multilabel",
                       label_names=["a", "b", "c", "d"])
    member = result.members[0]
    spec, variables = result.head(0)
    scores = np.asarray(jax.nn.sigmoid(apply_head(variables, splits["test"].pooled, spec)))
    y = splits["test"].labels
    assert member["test"]["macro_roc_auc"] == pytest.approx(roc_auc_score(y, scores, average="macro"), abs=1e-5)
    ap = [average_precision_score(y[:, c], scores[:, c]) for c in range(4)]
    np.testing.assert_allclose(member["per_class"]["test"]["average_precision"], ap, atol=1e-5)
    assert len(member["thresholds"]) == 4 and "macro_f1" in member["test"]
    assert [r["l2"] for r in result.ridge] == [0.1, 10.0] and sum(r["best"] for r in result.ridge) == 1
    # the recommended head saves and reloads with its label names
    heads_io.save_head(tmp_path / "h", spec, variables, (12,), label_names=result.label_names)
    _, v2, apply_fn = heads_io.load_head(tmp_path / "h")
    np.testing.assert_allclose(jax.nn.sigmoid(apply_fn(v2, splits["test"].pooled)), scores, atol=1e-6)


@pytest.mark.slow
def test_result_json_schema_and_recommendation():
    splits = _splits()
    result = run_sweep(_sweep(widths=(4, 32), depth=(0, 1), seeds=2, ridge_l2=None), splits, num_classes=3)
    doc = json.loads(result.to_json())
    assert doc["schema"] == "jaxheads.sweep_result/1" and doc["metric"] == "accuracy"
    assert len(doc["members"]) == 6 and len(doc["leaderboard"]) == 3  # depth 0 ignores width
    row = doc["leaderboard"][0]
    assert row["n_seeds"] == 2 and set(row["val"]["accuracy"]) == {"mean", "std", "sem"}
    assert {"curves", "val", "test", "params", "epochs_run", "diverged", "group", "spec"} <= set(doc["members"][0])
    assert doc["recommended"] in {r["config"] for r in doc["leaderboard"]}
    assert doc["ridge"] and doc["groups"][0]["map_batch"] == "vmap" and "train_s" in doc["groups"][0]["timings"]
    assert SweepSpec.from_dict(doc["sweep"]) == result.sweep


def test_recommendation_is_the_smallest_head_within_one_sem_of_the_best():
    def member(i, config, params, acc):
        return {"member": i, "config": config, "group": 0, "spec": {"seed": i}, "params": params,
                "epochs_run": 1, "diverged": False, "val": {"accuracy": acc}, "test": None}

    ms = [member(0, "big", 1000, 0.90), member(1, "big", 1000, 0.80),  # mean .85, sem .05
          member(2, "mid", 100, 0.81), member(3, "mid", 100, 0.81),  # within one SEM of .85
          member(4, "tiny", 10, 0.70), member(5, "tiny", 10, 0.72)]
    board, rec = leaderboard(ms, "accuracy")
    assert [r["config"] for r in board] == ["big", "mid", "tiny"] and rec == "mid"


def test_bad_sweep_input_names_the_field():
    with pytest.raises(ValueError, match=r"HeadSpec\.pooling"):
        run_sweep(_sweep(pooling=("flatten",)), _splits(), num_classes=3)
    with pytest.raises(ValueError, match=r"HeadSpec\.dropout"):
        _sweep(dropout=(1.0,)).expand(3, "multiclass")


def _map_splits(seed: int, sizes: dict, hw: int, channels: int, shift: float = 1.0, pooled=np.mean):
    """Splits of 3-class (N, hw, hw, channels) maps, class c shifted up by ``shift`` in channel c, and their
    ``pooled`` vectors (the backbone's cached pooling)."""
    rng = np.random.default_rng(seed)

    def one(n):
        y = rng.integers(0, 3, n)
        maps = rng.normal(size=(n, hw, hw, channels)).astype(np.float32)
        maps += shift * np.eye(3, channels, dtype=np.float32)[y][:, None, None]
        return FeatureSplit(labels=y, pooled=pooled(maps, axis=(1, 2)), maps=maps)

    return {name: one(n) for name, n in sizes.items()}


@pytest.mark.slow
def test_map_heads_group_by_structure_and_learn():
    splits = _map_splits(0, {"train": 128, "val": 64}, hw=4, channels=3, shift=1.5)
    # (conv-free map poolings are covered in test_heads; here the sweep's maps path, with a conv stage)
    sweep = _sweep(pooling=("avg", "flatten"), conv=(({"features": 4, "kernel": 3, "pool": 2},),),
                   widths=(8,), epochs=2, learning_rate=(3e-2,))
    result = run_sweep(sweep, splits, num_classes=3)
    assert len(result.groups) == 2 and result.feature_shapes["maps"] == [4, 4, 3]
    for m in result.members:
        losses = m["curves"]["train_loss"]
        assert losses[-1] < losses[0] and m["val"]["accuracy"] > 0.6, m["spec"]["head"]


@pytest.mark.slow
def test_poolings_of_conv_free_heads_share_one_group_and_train_as_alone():
    splits = _map_splits(1, {"train": 96, "val": 48}, hw=3, channels=5)
    both = run_sweep(_sweep(pooling=("avg", "max"), widths=(4, 8)), splits, num_classes=3)
    assert len(both.groups) == 1 and both.groups[0]["poolings"] == ["avg", "max"]
    for pooling in ("avg", "max"):
        alone = run_sweep(_sweep(pooling=(pooling,), widths=(4, 8)), splits, num_classes=3)
        assert alone.groups[0]["poolings"] == [pooling]
        for a, m in enumerate(i for i, r in enumerate(both.members) if r["spec"]["head"]["pooling"] == pooling):
            np.testing.assert_allclose(_curve(both, m), _curve(alone, a), atol=TOL)
            assert both.members[m]["val"] == pytest.approx(alone.members[a]["val"], abs=TOL)


@pytest.mark.slow
def test_heads_on_cached_pooled_vectors_and_on_pooled_maps_share_a_group():
    splits = _map_splits(2, {"train": 64, "val": 32, "test": 32}, hw=2, channels=4, pooled=np.max)
    result = run_sweep(_sweep(pooling=("none", "avg"), widths=(4,)), splits, num_classes=3)
    assert len(result.groups) == 1 and result.groups[0]["poolings"] == ["none", "avg"]
    for i, m in enumerate(result.members):
        spec, variables = result.head(i)
        x = splits["test"].pooled if spec.pooling == "none" else splits["test"].maps
        accuracy = np.mean(np.argmax(np.asarray(apply_head(variables, x, spec)), -1) == splits["test"].labels)
        assert m["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-6), spec.pooling


def _compiled_programs(caplog, fn):
    """Names of the programs XLA compiled while ``fn`` ran (``jax.log_compiles``)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING), jax.log_compiles():
        out = fn()
    return out, [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("Compiling ")]


@pytest.mark.slow
def test_compile_sweep_from_shapes_leaves_run_sweep_nothing_to_compile(caplog):
    sweep = _sweep(widths=(4, 8), depth=(1, 2), dropout=(0.0, 0.5), ridge_l2=(0.1, 10.0), map_batch="auto")
    splits = _splits(n=96, d=13)  # shapes no other test compiles
    shapes = abstract_splits({k: len(s) for k, s in splits.items()}, pooled=(13,),
                             label_dtype=splits["train"].labels.dtype)
    info = compile_sweep(sweep, shapes, num_classes=3)
    result, compiled = _compiled_programs(caplog, lambda: run_sweep(sweep, splits, num_classes=3))
    assert not [name for name in compiled if "_local" in name or "init" in name or "ridge" in name], compiled
    assert [g["map_batch"] for g in info["groups"]] == [g["map_batch"] for g in result.groups]
    assert len(info["groups"]) == 2 and len(result.ridge) == 2
    # The check can fail: features of another length compile the epoch program again.
    _, compiled = _compiled_programs(caplog, lambda: run_sweep(sweep, _splits(n=80, d=13), num_classes=3))
    assert any("_local_epoch" in name for name in compiled), compiled
