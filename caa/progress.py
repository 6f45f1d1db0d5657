"""Progress on the terminal: :class:`RichProgress`, the edge's :class:`consumers.progress.Progress`.

One line per phase on stderr (so ``--json`` output on stdout stays parseable). A phase with
a known total shows a bar, the count out of the total, the rate and the time left; one
without a total shows a spinner, the count so far (when it counts anything) and the time
spent. Starting a phase ends the one before: its line stops (a tick, its final count and
time), so nothing keeps ticking through the next phase (say, the consuming phase through
the refit that follows it).

When stderr is not a terminal (CI, a log file, a pipe) it writes plain lines instead: one
when a phase starts and one when it ends, with its count and time; ``mode="silent"``
writes nothing.

    with RichProgress() as progress:
        progress.phase("consuming", total=expected)
        worker = wiring.worker(..., on_batch=lambda _s, r: progress.advance(len(r.outcomes)))
        report = await worker.run(until_idle=True, progress=progress)
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as Bars
from rich.text import Text

__all__ = ["RichProgress"]

Mode = Literal["auto", "rich", "plain", "silent"]


def _ended(task: Task) -> bool:
    return task.finished or task.stop_time is not None


class _Status(SpinnerColumn):
    """A spinner while the phase runs, a tick once it ended."""

    def render(self, task: Task) -> Text:
        return Text("✓", style="green") if _ended(task) else Text.from_markup(
            str(self.spinner.render(task.get_time())))


class _Bar(BarColumn):
    """A bar for a phase with a total; nothing for one without."""

    def render(self, task: Task) -> Text:  # type: ignore[override]
        if task.total is None:
            return Text("")
        return super().render(task)  # type: ignore[return-value]


class _Count(ProgressColumn):
    """``1,234/23,570`` with a total, ``1,234`` without (nothing while none counted)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        if task.total is not None:
            return Text(f"{done:,}/{int(task.total):,}", style="progress.download")
        return Text(f"{done:,}" if done else "", style="progress.download")


class _Rate(ProgressColumn):
    """Steps per second, once some were counted."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not task.completed or not speed:
            return Text("")
        return Text(f"{speed:,.0f}/s", style="progress.data.speed")


class _Left(ProgressColumn):
    """The time left, for a running phase with a total."""

    def render(self, task: Task) -> Text:
        if _ended(task) or task.total is None:
            return Text("")
        left = task.time_remaining
        if left is None:
            return Text("ETA -:--:--", style="progress.remaining")
        m, s = divmod(int(left), 60)
        h, m = divmod(m, 60)
        return Text(f"ETA {h}:{m:02d}:{s:02d}", style="progress.remaining")


class RichProgress:
    """A :class:`consumers.progress.Progress` that draws on ``console`` (default: stderr).

    ``mode``: ``"auto"`` draws when the console is a terminal and writes plain lines
    otherwise; ``"rich"``, ``"plain"`` and ``"silent"`` force one. Use it as a context
    manager (or call :meth:`close`): leaving ends the last phase.
    """

    def __init__(self, console: Console | None = None, mode: Mode = "auto") -> None:
        self.console = console or Console(stderr=True)
        if mode == "auto":
            mode = "rich" if self.console.is_terminal else "plain"
        self.mode = mode
        self._lock = threading.Lock()
        self._bars: Bars | None = None
        self._task: TaskID | None = None
        self._name = ""
        self._total: int | None = None
        self._count = 0
        self._since = 0.0
        if mode == "rich":
            self._bars = Bars(_Status(), TextColumn("{task.description}"), _Bar(),
                              _Count(), _Rate(), TimeElapsedColumn(), _Left(),
                              console=self.console)

    def __enter__(self) -> RichProgress:
        if self._bars is not None:
            self._bars.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(failed=exc is not None)

    # -- the protocol ---------------------------------------------------------------------
    def phase(self, name: str, total: int | None = None) -> None:
        with self._lock:
            self._end()
            self._name, self._total, self._count = name, total, 0
            self._since = time.perf_counter()
            if self._bars is not None:
                self._task = self._bars.add_task(name, total=total)
            elif self.mode == "plain":
                of = f" ({total:,} to do)" if total is not None else ""
                self.console.print(f"{name}{of} ...", highlight=False, soft_wrap=True)

    def advance(self, n: int = 1) -> None:
        if not n:
            return
        with self._lock:
            self._count += n
            if self._bars is not None and self._task is not None:
                self._bars.advance(self._task, n)

    def close(self, failed: bool = False) -> None:
        """End the last phase (and stop drawing); ``failed``: it did not finish, so no line
        says it is done (the command's error line follows)."""
        with self._lock:
            if failed:
                self._name = ""  # not "done": the caller reports what went wrong
            self._end()
            if self._bars is not None:
                self._bars.stop()

    # -- inside -----------------------------------------------------------------------------
    def _end(self) -> None:
        """End the current phase: its line stops; a plain line says how it went."""
        if not self._name:
            return
        name, self._name = self._name, ""
        if self._bars is not None and self._task is not None:
            if not self._bars.tasks[-1].finished:
                # a total reached stops by itself; any other phase stops here: no spinner
                # spinning on, no clock running on
                self._bars.stop_task(self._task)
            self._task = None
        elif self.mode == "plain":
            seconds = time.perf_counter() - self._since
            count = (f"{self._count:,}/{self._total:,}" if self._total is not None
                     else f"{self._count:,}" if self._count else "")
            self.console.print(f"{name}: done{' (' + count + ')' if count else ''} in "
                               f"{seconds:,.1f} s", highlight=False, soft_wrap=True)
