"""Heads: spec validation and serialisation, shapes and learning for every option, masking, save/load/export."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxheads.heads import io as heads_io
from jaxheads.heads import (ConvStage, HeadSpec, apply_head, dropout, example_losses, forward, init_head,
                            param_count, unpad_variables)

MAP_SHAPE = (4, 4, 3)


def _problem(task: str, pooled: bool, n: int = 64, k: int = 3):
    """Separable toy data: the class shifts one channel of a 4x4x3 map (or of a 6-d pooled vector)."""
    rng = np.random.default_rng(1)
    if task == "multiclass":
        y = rng.integers(0, k, n)
        onehot = np.eye(k)[y]
    else:
        onehot = (rng.random((n, k)) < 0.4).astype(np.float32)
        y = onehot.astype(np.int32)
    if pooled:
        x = rng.normal(size=(n, 6)) * 0.5
        x[:, :k] += 2.0 * onehot
    else:
        x = rng.normal(size=(n, *MAP_SHAPE)) * 0.5
        x += 2.0 * onehot[:, None, None, :]
    return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def _train(spec: HeadSpec, x, y, steps: int = 40):
    """Adam on the full batch; returns (initial loss, final loss, logits of the initial variables)."""
    variables = init_head(jax.random.key(0), spec, x.shape[1:])
    tx = optax.adam(3e-2)

    def loss_fn(params, stats, key):
        logits, new_stats = forward({"params": params, "batch_stats": stats}, x, spec, train=True, rng=key)
        return jnp.mean(example_losses(logits, y, spec)), new_stats

    @jax.jit
    def run(variables):
        def step(carry, key):
            params, stats, opt = carry
            (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, key)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), stats, opt), loss

        carry = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))
        _, losses = jax.lax.scan(step, carry, jax.random.split(jax.random.key(1), steps))
        return losses

    losses = run(variables)
    return float(losses[0]), float(losses[-1]), apply_head(variables, x, spec)


OPTION_SPECS = [
    HeadSpec(num_classes=3, pooling="avg", hidden=(16,)),
    HeadSpec(num_classes=3, pooling="max", hidden=(16,), activation="gelu"),
    HeadSpec(num_classes=3, pooling="avgmax", hidden=(16,), activation="silu", dropout=0.2),
    HeadSpec(num_classes=3, pooling="catavgmax", hidden=(16, 8), activation="tanh", norm="layer"),
    HeadSpec(num_classes=3, pooling="flatten", hidden=(16,), norm="batch", input_dropout=0.1),
    HeadSpec(num_classes=3, pooling="none", hidden=(), label_smoothing=0.1),
    HeadSpec(num_classes=3, pooling="avg", conv=(ConvStage(8, kernel=3, stride=1, pool=2),), hidden=(8,)),
    HeadSpec(num_classes=3, pooling="flatten", conv=(ConvStage(4, kernel=1, stride=2),), hidden=()),
    HeadSpec(num_classes=3, task="multilabel", pooling="avg", hidden=(16,), pos_weight=2.0),
    HeadSpec(num_classes=3, task="multilabel", pooling="none", hidden=(8,), class_weights=(1.0, 2.0, 0.5)),
]


@pytest.mark.slow
@pytest.mark.parametrize("spec", OPTION_SPECS, ids=lambda s: f"{s.task}-{s.pooling}-{len(s.conv)}conv-{s.norm}")
def test_every_option_has_the_right_shape_and_learns(spec):
    x, y = _problem(spec.task, pooled=spec.pooling == "none")
    first, last, logits = _train(spec, x, y)
    assert logits.shape == (x.shape[0], spec.num_classes)
    assert np.isfinite(first) and last < 0.5 * first, (first, last)


def test_spec_round_trips_through_json_and_yaml():
    spec = HeadSpec(num_classes=4, task="multilabel", pooling="catavgmax", conv=(ConvStage(8, 3, 2, 2),),
                    hidden=(32, 16), activation="gelu", dropout=0.3, norm="layer", pos_weight=(1.0, 2.0, 3.0, 4.0))
    assert HeadSpec.from_json(spec.to_json()) == spec
    assert HeadSpec.from_yaml(spec.to_yaml()) == spec
    assert hash(HeadSpec.from_dict(json.loads(spec.to_json()))) == hash(spec)


@pytest.mark.parametrize("kwargs, field", [
    ({"hidden": (16, 0)}, "hidden"),
    ({"dropout": 1.0}, "dropout"),
    ({"num_classes": 1}, "num_classes"),
    ({"pooling": "none", "conv": (ConvStage(8),)}, "conv"),
    ({"pooling": "median"}, "pooling"),
    ({"norm": "group"}, "norm"),
    ({"label_smoothing": 0.1, "task": "multilabel"}, "label_smoothing"),
    ({"class_weights": (1.0,)}, "class_weights"),
])
def test_impossible_specs_fail_at_construction_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"HeadSpec\.{field}"):
        HeadSpec(**kwargs)


def test_flatten_on_pooled_features_is_refused_naming_pooling():
    with pytest.raises(ValueError, match=r"HeadSpec\.pooling"):
        init_head(jax.random.key(0), HeadSpec(pooling="flatten"), (1280,))
    with pytest.raises(ValueError, match=r"HeadSpec\.pooling"):
        init_head(jax.random.key(0), HeadSpec(pooling="none"), MAP_SHAPE)


def test_param_count_is_a_function_of_the_spec():
    spec = HeadSpec(num_classes=10, pooling="none", hidden=(64,), norm="batch")
    assert param_count(spec, (1280,)) == 1280 * 64 + 2 * 64 + 64 * 10 + 10  # no bias before batch norm
    seed = HeadSpec(num_classes=5, pooling="avg", conv=(ConvStage(448, 1, 1, 2),), hidden=(112,))
    assert param_count(seed, (8, 8, 1792)) == 1792 * 448 + 448 + 448 * 112 + 112 + 112 * 5 + 5


@pytest.mark.slow
def test_padded_masked_head_equals_the_narrow_head_and_padding_gets_no_gradient():
    spec = HeadSpec(num_classes=3, pooling="none", hidden=(5, 7), norm="layer")
    wide = spec.replace(hidden=(12, 9))
    x, y = _problem("multiclass", pooled=True)
    narrow = init_head(jax.random.key(3), spec, (6,))
    # the sweep's in-group init (padded shapes, true widths) draws the standalone head exactly, zero-padded
    padded = init_head(jax.random.key(3), wide, (6,), true_hidden=jnp.asarray(spec.hidden))
    assert jax.tree.map(jnp.shape, padded) == jax.tree.map(jnp.shape, init_head(jax.random.key(0), wide, (6,)))
    jax.tree.map(np.testing.assert_array_equal, unpad_variables(padded, spec, (6,)), narrow)
    _assert_zero_outside(padded["params"], narrow["params"])
    masks = tuple((jnp.arange(p) < w).astype(jnp.float32) for w, p in zip(spec.hidden, wide.hidden))

    def loss(params, variables, s, m):
        logits = forward({**variables, "params": params}, x, s, train=True, masks=m)[0]
        return jnp.mean(example_losses(logits, y, s)), logits

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    (l0, z0), g0 = grad(narrow["params"], narrow, spec, None)
    (l1, z1), g1 = grad(padded["params"], padded, wide, masks)
    g0, g1 = jax.tree.map(np.asarray, (g0, g1))
    np.testing.assert_allclose(z1, z0, atol=1e-6)
    np.testing.assert_allclose(l1, l0, atol=1e-6)
    # Gradients of the real units match; every padded entry gets exactly zero.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), unpad_variables(
        {"params": g1, "batch_stats": {}}, spec, (6,))["params"], g0)
    _assert_zero_outside(g1, g0)


def _assert_zero_outside(padded, narrow) -> None:
    """Every entry of ``padded``'s leaves beyond the shapes of ``narrow``'s (the padding) is exactly zero."""
    for p, n in zip(jax.tree.leaves(padded), jax.tree.leaves(narrow), strict=True):
        outside = np.array(p)
        outside[tuple(slice(0, k) for k in np.shape(n))] = 0.0
        assert np.max(np.abs(outside)) == 0.0


@pytest.mark.slow
def test_dropout_takes_the_rate_as_an_array_and_rate_zero_is_identity():
    x = jnp.ones((1000, 8))
    key = jax.random.key(0)
    assert jnp.array_equal(dropout(x, jnp.float32(0.0), key), x)
    rates = jnp.asarray([0.0, 0.5, 0.9])
    out = jax.jit(jax.vmap(lambda r: dropout(x, r, key)))(rates)
    # masks follow global rows: the second half of a batch drawn alone (row_offset) equals the full draw's half
    np.testing.assert_array_equal(dropout(x[500:], 0.5, key, row_offset=500), out[1, 500:])
    kept = jnp.mean(out > 0, axis=(1, 2))
    np.testing.assert_allclose(kept, 1.0 - rates, atol=0.03)
    np.testing.assert_allclose(jnp.mean(out, axis=(1, 2)), 1.0, atol=0.1)


@pytest.mark.slow
def test_batch_norm_statistics_are_an_explicit_pytree():
    spec = HeadSpec(num_classes=3, pooling="none", hidden=(4,), norm="batch")
    x, _ = _problem("multiclass", pooled=True)
    variables = init_head(jax.random.key(0), spec, (6,))
    _, stats = jax.jit(lambda v: forward(v, x, spec, train=True))(variables)
    assert not np.allclose(stats["norm"][0]["mean"], 0.0)
    # eval mode reads the stats it is given, nothing hidden
    a = apply_head(variables, x, spec)
    b = apply_head({**variables, "batch_stats": stats}, x, spec)
    assert not np.allclose(a, b)


@pytest.mark.slow
def test_save_load_and_export_reproduce_the_logits(tmp_path):
    spec = HeadSpec(num_classes=3, pooling="avg", hidden=(8,), norm="batch")
    x, _ = _problem("multiclass", pooled=False, n=16)
    variables = init_head(jax.random.key(2), spec, MAP_SHAPE)
    variables = {**variables, "batch_stats": forward(variables, x, spec, train=True)[1]}
    expected = np.asarray(apply_head(variables, x, spec))

    heads_io.save_head(tmp_path / "head", spec, variables, MAP_SHAPE, label_names=["a", "b", "c"])
    spec2, variables2, apply_fn = heads_io.load_head(tmp_path / "head")
    assert spec2 == spec and heads_io.load_meta(tmp_path / "head")["label_names"] == ["a", "b", "c"]
    np.testing.assert_allclose(apply_fn(variables2, x), expected, atol=1e-6)
    # composes with jit / vmap / grad
    batched = jax.jit(jax.vmap(lambda xi: apply_fn(variables2, xi[None])[0]))(x)
    np.testing.assert_allclose(batched, expected, atol=1e-5)
    g = jax.grad(lambda v: jnp.sum(apply_fn(v, x)))(variables2)
    assert jax.tree.structure(g) == jax.tree.structure(variables2)

    path = heads_io.export_head(tmp_path / "head.jaxexport", spec, variables, MAP_SHAPE)
    np.testing.assert_allclose(heads_io.load_exported(path)(x[:5]), expected[:5], atol=1e-5)
    np.save(tmp_path / "x.npy", np.asarray(x))
    # A fresh interpreter that never imports jaxheads runs the file.
    code = ("import sys, numpy as np, jax; assert 'jaxheads' not in sys.modules;"
            f"e = jax.export.deserialize(bytearray(open({str(path)!r}, 'rb').read()));"
            f"np.save({str(tmp_path / 'out.npy')!r}, np.asarray(e.call(np.load({str(tmp_path / 'x.npy')!r}))))")
    subprocess.run([sys.executable, "-c", code], check=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin"})
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-5)


@pytest.mark.slow
def test_depth_gated_layers_are_an_exact_identity_with_zero_gradient(norm: str = "batch"):
    """A depth-2 head inside a depth-3 stack padded to one width (the sweep's depth_grouping="gated"): the init
    draws the standalone head (extra layer all zero), logits, loss and real gradients equal the standalone head's,
    the gated layer gets exactly zero gradient (so no optimiser step or weight decay moves its zeros) and its
    batch statistics do not move. Batch norm only (its statistics are gated too); jitted (eager init is slow)."""
    spec = HeadSpec(num_classes=3, pooling="none", hidden=(5, 6), norm=norm)
    deep = spec.replace(hidden=(7, 7, 7))
    x, y = _problem("multiclass", pooled=True)
    alone = jax.jit(init_head, static_argnums=(1, 2))(jax.random.key(3), spec, (6,))
    gated = jax.jit(lambda k, true, depth: init_head(k, deep, (6,), true_hidden=true, true_depth=depth))(
        jax.random.key(3), jnp.asarray([5, 6, 0]), jnp.asarray(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), unpad_variables(gated, spec, (6,)), alone)
    assert all(np.max(np.abs(np.asarray(a))) == 0.0 for a in jax.tree.leaves(gated["params"]["hidden"][2]))
    masks = tuple((jnp.arange(7) < w).astype(jnp.float32) for w in (5, 6, 0))

    def loss(params, variables, s, m, d):
        logits, stats = forward({**variables, "params": params}, x, s, train=True, masks=m, depth=d)
        return jnp.mean(example_losses(logits, y, s)), (logits, stats)

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)
    (l0, (z0, s0)), g0 = grad(alone["params"], alone, spec, None, None)
    (l1, (z1, s1)), g1 = grad(gated["params"], gated, deep, masks, jnp.asarray(2))
    np.testing.assert_allclose(z1, z0, atol=1e-6)
    np.testing.assert_allclose(l1, l0, atol=1e-6)
    unpadded = unpad_variables({"params": g1, "batch_stats": s1}, spec, (6,))
    assert len(unpadded["params"]["hidden"]) == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), unpadded,
                 {"params": g0, "batch_stats": s0})
    for leaf in jax.tree.leaves((g1["hidden"][2], g1["norm"][2])):
        assert np.max(np.abs(np.asarray(leaf))) == 0.0
    if norm == "batch":
        jax.tree.map(np.testing.assert_array_equal, s1["norm"][2], gated["batch_stats"]["norm"][2])
