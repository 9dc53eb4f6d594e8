"""Progress bars for the command line (rich): the feature pass per split, then the sweep's groups and epochs."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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
