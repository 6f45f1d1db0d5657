"""Progress of a long phase, reported from below the edge without printing anything.

A function that can take more than a couple of seconds (the refit, draining the AI
analyses, a replay's finishing refit, the daily job, the report) takes an optional
``progress: Progress = NO_PROGRESS`` and calls :meth:`Progress.phase` when it starts a new
phase (with the number of steps when it knows it) and :meth:`Progress.advance` as steps get
done. Starting a phase ends the one before. What is shown, and where, is the edge's business
(``caa.progress.RichProgress``: counts, rate and time left when the total is known, a spinner
and the time spent otherwise).

>>> seen = RecordedProgress()
>>> seen.phase("fitting", total=3); seen.advance(); seen.advance(2)
>>> seen.phases, seen.done
([('fitting', 3)], {'fitting': 3})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["NO_PROGRESS", "NoProgress", "Progress", "RecordedProgress"]


class Progress(Protocol):
    """Where a long-running function says how far it got."""

    def phase(self, name: str, total: int | None = None) -> None:
        """A new phase begins (the previous one, if any, is over); ``total`` steps, or None
        when unknown."""
        ...

    def advance(self, n: int = 1) -> None:
        """``n`` more steps of the current phase are done."""
        ...


class NoProgress:
    """Nobody is watching."""

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


NO_PROGRESS: Progress = NoProgress()


@dataclass
class RecordedProgress:
    """Remembers what it was told (for tests, and for a plain summary of phases)."""

    phases: list[tuple[str, int | None]] = field(default_factory=list)
    done: dict[str, int] = field(default_factory=dict)

    def phase(self, name: str, total: int | None = None) -> None:
        self.phases.append((name, total))
        self.done.setdefault(name, 0)

    def advance(self, n: int = 1) -> None:
        if self.phases:
            name = self.phases[-1][0]
            self.done[name] = self.done.get(name, 0) + n
