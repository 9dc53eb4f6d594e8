"""Rematerialisation of named backbone blocks (``jax.checkpoint`` through Flax's lifted ``nn.checkpoint``) without
touching the backbone's code: a method interceptor wraps the call of each top-level block named, so the backward
pass keeps only the block's inputs and recomputes its inside."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax

__all__ = ["remat_blocks"]


@contextlib.contextmanager
def remat_blocks(names: Sequence[str]) -> Iterator[None]:
    """While active, every call of a top-level submodule named in ``names`` (``BackboneConfig.blocks``' names,
    direct children of the module being applied) runs under ``nn.checkpoint``; arguments that are not arrays
    (e.g. ``train``) are closed over as constants."""
    wanted, inside = frozenset(names), [False]

    def interceptor(next_fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    context: Any) -> Any:
        module = context.module
        if (inside[0] or context.method_name != "__call__" or module.name not in wanted
                or tuple(module.scope.path) != (module.name,)):
            return next_fun(*args, **kwargs)
        is_array = [isinstance(a, jax.Array) for a in args]

        def call(lifted: nn.Module, *arrays: jax.Array) -> Any:
            given = iter(arrays)
            full = [next(given) if flag else a for a, flag in zip(args, is_array)]
            inside[0] = True  # the block's own submodules run plainly inside the checkpoint
            try:
                return type(lifted).__call__(lifted, *full, **kwargs)
            finally:
                inside[0] = False

        return nn.checkpoint(call)(module, *(a for a, flag in zip(args, is_array) if flag))

    with nn.intercept_methods(interceptor):
        yield
