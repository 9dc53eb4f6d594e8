"""JAX's persistent compilation cache for the command line: a second run of the same command compiles nothing.

:func:`persistent` points ``jax_compilation_cache_dir`` at ``checkpoint.cache_dir() / "xla"`` (next to the
converted backbones and the feature cache) and stores every program that took at least
:data:`MIN_COMPILE_SECONDS` to compile: 0, because JAX's default leaves most of a sweep's programs out and the
small ones cost next to nothing on disk (experiments/README.md, "Figures moved out of code comments"). It counts
the cache's hits and misses while it is active, and restores the previous settings on exit, so a library caller
that runs a command in-process keeps its own configuration afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Iterator

MIN_COMPILE_SECONDS = 0.0
_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


def cache_path() -> Path:
    """Where the compiled programs go: ``$JAXHEADS_CACHE/xla`` (``./checkpoints/xla`` when unset)."""
    from jaxheads import checkpoint

    return checkpoint.cache_dir() / "xla"


@dataclasses.dataclass
class Stats:
    """Programs found in the cache (``hits``) and compiled because they were not (``misses``)."""

    path: Path | None = None
    hits: int = 0
    misses: int = 0

    def line(self) -> str:
        if self.path is None:
            return "compile cache off"
        return f"compile cache: {self.hits} program(s) loaded, {self.misses} compiled ({self.path})"


@contextlib.contextmanager
def persistent(enabled: bool = True) -> Iterator[Stats]:
    """Turn the persistent compilation cache on for the ``with`` block (nothing changes when not ``enabled``)."""
    stats = Stats()
    if not enabled:
        yield stats
        return
    import jax

    def count(event: str, **_: object) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            stats.hits += 1
        elif event == "/jax/compilation_cache/cache_misses":
            stats.misses += 1

    saved = {name: getattr(jax.config, name) for name in _SETTINGS}
    stats.path = cache_path()
    stats.path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(stats.path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.monitoring.register_event_listener(count)
    try:
        yield stats
    finally:
        jax.monitoring.unregister_event_listener(count)
        for name, value in saved.items():
            jax.config.update(name, value)
