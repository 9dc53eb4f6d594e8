"""Where a backbone can be cut, and what the cut backbone costs.

The depth question ("do the last stages help, or can I cut them?") needs the answer's price beside it: a
backbone truncated at a tap (``until=NAME``, :mod:`jaxheads.backbones.base`) keeps fewer parameters and runs
fewer FLOPs per image. :func:`stage_ends` names the natural cuts (the last tap before each downsampling) and
:func:`cut_cost` measures a cut: parameters reached, XLA's FLOP count of the compiled forward, and images/s timed
on this machine.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxheads.backbones.base import Backbone, BackboneConfig


@dataclasses.dataclass(frozen=True)
class CutCost:
    """A backbone cut after ``tap`` (None: the whole feature extractor) at ``input_size`` px."""

    tap: str | None
    input_size: int
    params: int
    flops_per_image: float
    images_per_s: float

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def tap_shapes(config: BackboneConfig, input_size: int) -> dict[str, tuple[int, ...]]:
    """Every tap's (h, w, C) at ``input_size``, input to output, traced (shapes only, no weights)."""
    module = config.build(num_classes=0)
    image = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    out, _ = jax.eval_shape(lambda k, x: module.init_with_output(k, x, train=False, taps=True), jax.random.key(0),
                            image)
    return {name: tuple(int(d) for d in out["taps"][name].shape[1:]) for name in config.taps if name in out["taps"]}


def stage_ends(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, ...]:
    """The taps after which the next one has a smaller map: the ends of every resolution stage but the last
    (whose end is the whole backbone)."""
    names = list(shapes)
    return tuple(a for a, b in zip(names, names[1:]) if shapes[b][:2] != shapes[a][:2])


def _params_reached(backbone: Backbone, tap: str | None, image: jax.ShapeDtypeStruct) -> int:
    """Parameters of the layers a forward truncated at ``tap`` runs (a linen init creates only those)."""
    _, variables = jax.eval_shape(
        lambda k, x: backbone.module.init_with_output(k, x, train=False, until=tap), jax.random.key(0), image)
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables.get("params", {}))))


def _flops(compiled: jax.stages.Compiled) -> float:
    """XLA's FLOP count of a compiled program (NaN where the backend gives none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device program
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", math.nan))


def cut_cost(backbone: Backbone, tap: str | None, input_size: int, *, batch: int = 16,
             repeats: int = 3) -> CutCost:
    """Measure the backbone cut after ``tap`` at ``input_size``: the best of ``repeats`` timed calls on ``batch``
    images, after one untimed call."""
    image = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    forward = jax.jit(lambda v, x: backbone.module.apply(v, x, train=False, until=tap)["features"])
    x = jnp.zeros((batch, input_size, input_size, 3), jnp.float32)
    compiled = forward.lower(backbone.variables, x).compile()
    jax.block_until_ready(compiled(backbone.variables, x))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(backbone.variables, x))
        best = min(best, time.perf_counter() - start)
    return CutCost(tap, input_size, _params_reached(backbone, tap, image), _flops(compiled) / batch,
                   float(np.float64(batch) / best))


def stage_taps(name: str, input_size: int) -> tuple[str, ...]:
    """:func:`stage_ends` of the registered backbone ``name`` at ``input_size`` (no weights loaded)."""
    from jaxheads.backbones import get_config  # the package imports the families, which import base, not this

    return stage_ends(tap_shapes(get_config(name), input_size))
