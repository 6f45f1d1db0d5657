"""caa.progress.RichProgress: bars with counts, rate and time left; spinners; plain lines."""

from __future__ import annotations

import io
import time

from rich.console import Console

from caa.progress import RichProgress
from consumers.progress import NO_PROGRESS, Progress


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, color_system=None), out


def test_it_is_a_progress_and_the_null_one_ignores_everything() -> None:
    shown: Progress = RichProgress(console(False)[0])
    shown.phase("x")
    NO_PROGRESS.phase("anything", total=3)
    NO_PROGRESS.advance(5)


def test_a_terminal_gets_counts_rate_and_time_left_and_a_phase_ends_the_one_before() -> None:
    term, out = console(True)
    with RichProgress(term) as progress:
        assert progress.mode == "rich"
        progress.phase("consuming")  # no total: a spinner and a count
        progress.advance(300)
        time.sleep(0.05)
        progress.phase("rewriting predictions", total=1000)
        progress.advance(200)
        time.sleep(0.05)
        progress.advance(200)
        bars = progress._bars
        assert bars is not None
        consuming, rewriting = bars.tasks
        assert consuming.stop_time is not None  # its clock stopped with the next phase
        frozen = consuming.elapsed
        time.sleep(0.05)
        assert consuming.elapsed == frozen
        assert rewriting.stop_time is None and rewriting.completed == 400
        now, shown = console(True)
        now.print(bars.make_tasks_table(bars.tasks))
    running = shown.getvalue()
    assert "400/1,000" in running and "ETA 0:00:0" in running and "/s" in running
    assert "✓ consuming" in running and " 300 " in running
    assert "✓ rewriting predictions" in out.getvalue()  # ended when the progress closed


def test_without_a_terminal_it_writes_plain_lines_or_nothing() -> None:
    plain, out = console(False)
    with RichProgress(plain) as progress:
        assert progress.mode == "plain"
        progress.phase("refit: reading customer states")
        progress.advance(1234)
        progress.phase("rewriting predictions", total=10)
        progress.advance(10)
    lines = out.getvalue().splitlines()
    assert lines[0] == "refit: reading customer states ..."
    assert lines[1].startswith("refit: reading customer states: done (1,234) in ")
    assert lines[2] == "rewriting predictions (10 to do) ..."
    assert lines[3].startswith("rewriting predictions: done (10/10) in ")
    quiet, out = console(False)
    with RichProgress(quiet, mode="silent") as progress:
        progress.phase("x", total=1)
        progress.advance()
    assert out.getvalue() == ""
