"""Classifier heads as pure functions of a declarative :class:`HeadSpec`.

A head maps cached backbone features to logits: optional conv stages on the (N, H, W, C) map, pooling, 0..N
dense layers (normalisation, activation, dropout), and an output layer. Everything is explicit:

* ``init_head(key, spec, feature_shape) -> variables`` with ``variables = {"params": ..., "batch_stats": ...}``
  (``batch_stats`` holds running means/variances of batch-norm layers and is ``{}`` otherwise);
* ``apply_head(variables, x, spec, *, train=False, rng=None) -> logits`` is pure; the training path that also
  returns updated batch statistics is :func:`forward`.

The sweep trains many heads of one *structure* in one program. Members of a group differ only in hidden widths
(padded to the group's widest and masked, see ``masks``) and in scalar hyper-parameters that enter as arrays
(dropout rate here; learning rate, weight decay and seed in the optimiser). With ``masks`` a padded member computes
what the standalone head of its true width computes: masked units are zeroed after every layer, layer-norm
statistics are taken over the true width only, and the zero-padded weights receive zero gradient.

Members may also differ in depth (the sweep's ``depth_grouping="gated"``): every hidden layer is padded to one
common width, and ``depth`` (may be traced) gates layers ``i >= depth`` to an exact identity
(``h = where(i < depth, layer(h), h)``), so the output layer sees the last active layer's activations. The
gated layers' parameters are initialised to zero and get exactly zero gradient (hence no Adam step and no weight
decay: they stay zero), and their batch-norm statistics are left unchanged.

This module is the heads' public face. The spec and its shapes live in :mod:`jaxheads.heads.spec`, the hash-based
random numbers in :mod:`jaxheads.heads.rng`; both are re-exported here, so ``jaxheads.heads.X`` keeps working.
"""

from .head import BN_MOMENTUM, NORM_EPS, Variables, apply_head, dropout, example_losses, forward, init_head, param_count, pool, unpad_variables
from .rng import fold, hash_uniform, seed_words
from .spec import ACTIVATIONS, ConvStage, HeadSpec, NORMS, POOLINGS, TASKS, check_input, flops_per_example, from_known_fields, pooled_dim

__all__ = [
    "ACTIVATIONS",
    "BN_MOMENTUM",
    "ConvStage",
    "HeadSpec",
    "NORMS",
    "NORM_EPS",
    "POOLINGS",
    "TASKS",
    "Variables",
    "apply_head",
    "check_input",
    "dropout",
    "example_losses",
    "flops_per_example",
    "fold",
    "forward",
    "from_known_fields",
    "hash_uniform",
    "init_head",
    "param_count",
    "pool",
    "pooled_dim",
    "seed_words",
    "unpad_variables",
]
