"""Terminal output: the live progress bar of a collection and the summary table at its end."""

from __future__ import annotations

import sys
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rollouts.progress import BOARD


class _Stats(ProgressColumn):
    def render(self, task: Task) -> Text:
        snap = BOARD.snapshot()
        reward = f"{snap.mean_reward:.3f}" if snap.mean_reward is not None else "-"
        return Text(f"{snap.rate:6.0f}/s reward {reward} failed {snap.failed}")


class ProgressDisplay:
    """Renders BOARD in a thread while the flow runs in the foreground; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool = True, refresh_s: float = 0.25) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressDisplay:
        BOARD.reset()
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="rollouts-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        if not self.console.is_terminal:  # CI logs, files: a plain line every so often instead of a live bar
            self._plain_lines()
            return
        columns = [TextColumn("[bold]rollouts"), BarColumn(bar_width=24), MofNCompleteColumn(), _Stats(), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=False, refresh_per_second=4) as progress:
            task = progress.add_task("collect", total=None)
            while not self._stop.wait(self.refresh_s):
                snap = BOARD.snapshot()
                progress.update(task, total=snap.total or None, completed=snap.resumed + snap.done)
            snap = BOARD.snapshot()
            progress.update(task, total=snap.total or None, completed=snap.resumed + snap.done)


    def _plain_lines(self, every_s: float = 10.0) -> None:
        while not self._stop.wait(every_s):
            snap = BOARD.snapshot()
            if snap.total:
                reward = f"{snap.mean_reward:.3f}" if snap.mean_reward is not None else "-"
                print(f"rollouts {snap.resumed + snap.done}/{snap.total}  {snap.rate:.0f}/s  reward {reward}  "
                      f"failed {snap.failed}", file=sys.stderr, flush=True)


def print_summary(summary: dict[str, Any]) -> None:
    console = Console(file=sys.stdout)
    table = Table(title=f"run {summary['status']}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("prompts", summary.get("prompts")),
        ("rejected input rows", summary.get("rejects")),
        ("rollouts ok / expected", f"{summary.get('rollouts_ok')} / {summary.get('rollouts_expected')}"),
        ("rollouts failed", f"{summary.get('rollouts_failed')} ({100 * (summary.get('failure_fraction') or 0):.2f}%)"),
        *([("rollouts not run", summary["rollouts_not_run"])] if summary.get("rollouts_not_run") else []),
        ("mean reward", summary.get("mean_reward")),
        ("rollouts/s", summary.get("rollouts_per_s")),
        ("output tokens/s", summary.get("output_tokens_per_s")),
    ]
    for key, value in rows:
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
    # Paths as plain lines, never wrapped, so they can be copied.
    run_url = summary.get("run_url")
    lines = [("rollouts", f"{run_url}/rollouts/")]
    if summary.get("rollouts_failed"):
        lines.append(("failures", f"{run_url}/failures/"))
    if summary.get("rejects"):
        lines.append(("rejects", f"{run_url}/rejects.jsonl"))
    lines.append(("profile", f"{run_url}/profile/"))
    lines += [(objective, path) for objective, paths in (summary.get("outputs") or {}).items() for path in paths]
    for label, path in lines:
        print(f"{label + ':':<10} {path}", flush=True)
    if summary.get("reason"):
        console.print(f"[red]{summary['reason']}[/red]", soft_wrap=True)
