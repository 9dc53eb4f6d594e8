"""What the command line shows while it works: progress bars (rich) and log lines on stderr.

:class:`Bars` draws the feature pass per split, then the sweep's groups and epochs. :func:`console_log` turns the
``jaxheads`` logger into plain lines on stderr for the length of a command, at a level set by ``--quiet`` /
``--verbose``, and shows the library's :class:`~jaxheads.data.dataset.BadImageWarning` as log lines (one per skipped
file with its reason, then the count) instead of Python warnings with source lines. Library callers keep the
warnings: only the command installs this, and anything recording warnings around it (``warnings.catch_warnings
(record=True)``, pytest) still receives them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import warnings
from typing import Any, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOGGER = "jaxheads"
log = logging.getLogger(LOGGER)

QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG


class Bars:
    """Context manager handing out the two callbacks ``sweep_job`` takes; silent when ``enabled`` is False."""

    def __init__(self, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
        )  # fmt: skip
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "Bars":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def _task(self, key: str, description: str, total: int) -> Any:
        if key not in self._tasks:
            self._tasks[key] = self._progress.add_task(description, total=total, info="")
        return self._tasks[key]

    def features(self, p: Any) -> None:
        """Callback for ``features.extract_all``: images done per split."""
        task = self._task(f"features/{p.split}", f"features {p.split:<5}", p.total)
        info = "cached" if p.cached else (f"{p.skipped} skipped" if p.skipped else "")
        self._progress.update(task, completed=p.done, total=p.total, info=info)

    def sweep(self, event: dict[str, Any]) -> None:
        """Callback for ``run_sweep``: epochs done per group, with members still training and the best so far."""
        group = event.get("group", 0)
        total = int(event.get("epochs", 1))
        task = self._task(f"sweep/{group}", f"group {group:<3}", total)
        best = event.get("best")
        info = f"{event.get('active', '?')}/{event.get('members', '?')} training"
        if best is not None:
            info += f", best val {best:.4f}"
        self._progress.update(task, completed=int(event.get("epoch", 0)), total=total, info=info)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (rich's live display swaps it to keep the bars below the
    lines; tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001  (logging must never take the command down)
            self.handleError(record)


class _Formatter(logging.Formatter):
    """``message`` for info, ``warning: message`` / ``debug: message`` otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.levelno == logging.INFO else f"{record.levelname.lower()}: {text}"


# The library's messages (jaxheads.data.images / jaxheads.features) -> log lines.
_SKIPPED_ONE = re.compile(r"skipping unreadable image (?P<name>.+?): (?P<why>.*)", re.DOTALL)
_LEFT_OUT = re.compile(r".*: \d+ unreadable image\(s\) were left out when this cache was built "
                       r"\(first: (?P<names>.*)\)", re.DOTALL)


class _BadImages:
    """Turns BadImageWarning texts into (level, line): one info line per skipped file with its reason, the counts
    as warnings; a cache's "left out" note about files this command already named drops to debug."""

    def __init__(self) -> None:
        self.named: set[str] = set()

    def line(self, message: str) -> tuple[int, str]:
        one = _SKIPPED_ONE.fullmatch(message)
        if one is not None:
            self.named.add(one["name"])
            return logging.INFO, f"skipped {one['name']}: {one['why']}"
        left_out = _LEFT_OUT.fullmatch(message)
        if left_out is not None and set(left_out["names"].split(", ")) <= self.named:
            return logging.DEBUG, message
        return logging.WARNING, message.replace("strict=True", "--strict")


@contextlib.contextmanager
def console_log(level: int = NORMAL) -> Iterator[logging.Logger]:
    """For the length of a command: ``jaxheads`` log records at ``level`` and above go to stderr as plain lines,
    and a :class:`~jaxheads.data.dataset.BadImageWarning` becomes log lines (see the module docstring). Other warnings
    are shown as Python shows them."""
    from jaxheads.data.dataset import BadImageWarning

    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    bad_images = _BadImages()
    saved = (log.level, log.propagate)
    log.setLevel(level)
    log.propagate = False
    log.addHandler(handler)
    with warnings.catch_warnings():
        warnings.simplefilter("always", BadImageWarning)  # every skipped file, even one seen before
        previous = warnings.showwarning

        def show(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
            if not issubclass(category, BadImageWarning):
                previous(message, category, filename, lineno, file, line)
                return
            level_, text = bad_images.line(str(message))
            log.log(level_, text)
            if level <= VERBOSE:
                log.debug("(warned at %s:%s)", filename, lineno)
            # Whoever records warnings around the command still gets this one; the default printer writes it
            # into a sink instead of stderr, where the log line above already said it.
            previous(message, category, filename, lineno, io.StringIO(), line)

        warnings.showwarning = show
        try:
            yield log
        finally:
            log.removeHandler(handler)
            log.setLevel(saved[0])
            log.propagate = saved[1]


def level_of(quiet: bool, verbose: bool) -> int:
    """The log level of ``--quiet`` / ``--verbose`` (quiet wins when both are given)."""
    return QUIET if quiet else (VERBOSE if verbose else NORMAL)


def wide_console() -> Any:
    """rich's console, 120 columns wide when stdout is not a terminal (its default 80 would fold tables)."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    return console
