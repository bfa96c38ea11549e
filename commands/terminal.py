"""Terminal output: the live progress bar of a collection and the summary table at its end."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TypedDict

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rollouts.collector.progress import ProgressBoard, Snapshot


class _Stats(ProgressColumn):
    def __init__(self, board: ProgressBoard) -> None:
        super().__init__()
        self.board = board

    def render(self, task: Task) -> Text:
        snap = self.board.snapshot()
        reward = f"{snap.mean_reward:.3f}" if snap.mean_reward is not None else "-"
        return Text(f"{snap.rate:6.0f}/s reward {reward} failed {snap.failed}{batch_text(snap)}")


def batch_text(snap: Snapshot) -> str:
    """Batch mode's part of the progress line: requests answered of those in batches, and batches in flight."""
    if not snap.batch_requests:
        return ""
    return f" batch {snap.batch_answered}/{snap.batch_requests} ({snap.batch_running} in flight)"


class _Shown(TypedDict, total=False):
    """What the progress display has said already: the UI line, and when the last plain line was printed."""

    ui: bool
    at: float


class ProgressDisplay:
    """Renders a progress board in a thread while the flow runs in the foreground; plain lines when stderr is not a
    terminal."""

    def __init__(self, board: ProgressBoard, enabled: bool = True, refresh_s: float = 0.25) -> None:
        self.board = board
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="rollouts-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _announce(self, shown: _Shown) -> None:
        """One line with the flow run's UI page, as soon as it is known."""
        if self.board.ui_url and not shown.get("ui"):
            shown["ui"] = True
            self.console.print(f"Prefect UI: {self.board.ui_url}", highlight=False, soft_wrap=True)

    def _loop(self) -> None:
        if not self.console.is_terminal:  # CI logs, files: a plain line every so often instead of a live bar
            self._plain_lines()
            return
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            _Stats(self.board),
            TimeElapsedColumn(),
        ]
        shown: _Shown = {}
        with Progress(*columns, console=self.console, transient=False, refresh_per_second=4) as progress:
            task = progress.add_task("rollouts", total=None)
            while True:
                stopping = self._stop.wait(self.refresh_s)
                snap = self.board.snapshot()
                self._announce(shown)
                label = "rollouts" if snap.total and snap.phase in ("", "collecting") else (snap.phase or "rollouts")
                progress.update(task, total=snap.total or None, completed=snap.resumed + snap.done, description=label)
                if stopping:
                    break

    def _plain_lines(self, every_s: float = 10.0) -> None:
        last_phase, shown = "", _Shown()
        while not self._stop.wait(min(every_s, 0.5)):
            snap = self.board.snapshot()
            self._announce(shown)
            if snap.phase and snap.phase != last_phase:
                last_phase = snap.phase
                print(f"rollouts: {snap.phase}", file=sys.stderr, flush=True)
            if snap.total and time.monotonic() - shown.get("at", 0.0) >= every_s:
                shown["at"] = time.monotonic()
                reward = f"{snap.mean_reward:.3f}" if snap.mean_reward is not None else "-"
                print(
                    f"rollouts {snap.resumed + snap.done}/{snap.total}  {snap.rate:.0f}/s  reward {reward}  "
                    f"failed {snap.failed}{batch_text(snap)}",
                    file=sys.stderr,
                    flush=True,
                )


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
    if summary.get("token_contiguity"):
        rows.append(("token contiguity", summary["token_contiguity"]))
    for failure in (summary.get("top_failures") or [])[:3]:
        status = f" {failure['status_code']}" if failure.get("status_code") else ""
        rows.append((f"  {failure['type']}{status}", f"{failure['count']}: {failure['example']}"))
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
