"""Holding a shard whose batch's effects could not be written.

The one policy of the poller, fan-out and KCL paths: do not checkpoint, hold the shard,
log one line (the first failure, then every tenth in a row), wait a growing delay, then
apply the same records again; when they are written, log that the writes recovered and
start counting from zero. :class:`ShardHold` counts the failures in a row per shard, gives
the delay (a :class:`~consumers.retry.Backoff` of the caller's) and formats the lines;
the caller raises the ``shard_write_failures`` metric, prints, and sleeps (the poller until
its stop event, the KCL processor in the daemon's thread).

>>> from consumers.retry import Jitter
>>> hold = ShardHold(Backoff(base=0.5, cap=30.0, jitter=Jitter.NONE), POLLER_LINES)
>>> held = hold.failed("s-1", 3, None, RuntimeError("throttled"))
>>> held.failures, held.delay
(1, 0.5)
>>> print(held.line)
shard s-1: effects of 3 record(s) after TRIM_HORIZON not written (1 time(s)): throttled; \
checkpoint held, retrying in 0.5 s
>>> hold.failed("s-1", 3, None, RuntimeError("throttled")).line is None
True
>>> hold.succeeded("s-1")
'shard s-1: writes recovered after 2 failure(s)'
>>> hold.succeeded("s-1") is None
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from consumers.retry import Backoff


def log_due(count: int, every: int = 10) -> bool:
    """Log the first of a run of failures, then every ``every``-th."""
    return count == 1 or count % every == 0


@dataclass(frozen=True)
class HoldLines:
    """The two log lines, as ``str.format`` templates over ``shard``, ``n`` (records),
    ``after`` (the held checkpoint, or TRIM_HORIZON), ``failures``, ``exc`` and ``delay``."""

    held: str
    recovered: str


POLLER_LINES = HoldLines(
    held="shard {shard}: effects of {n} record(s) after {after} not written ({failures} "
         "time(s)): {exc}; checkpoint held, retrying in {delay:.1f} s",
    recovered="shard {shard}: writes recovered after {failures} failure(s)",
)
KCL_LINES = HoldLines(  # logged behind the processor's "kcl-processor: " prefix
    held="{shard}: {n} records not written ({exc}); holding the shard, attempt {failures}, "
         "next in {delay:.1f}s",
    recovered="{shard}: writes recovered after {failures} failure(s)",
)


@dataclass(frozen=True)
class Held:
    """One failure: how many in a row, the seconds to wait, the line to log (or None)."""

    failures: int
    delay: float
    line: str | None


@dataclass
class ShardHold:
    """Failures in a row per shard; the n-th waits ``backoff.delay(n - 1)``."""

    backoff: Backoff
    lines: HoldLines = POLLER_LINES
    rng: random.Random | None = None
    _failures: dict[str, int] = field(default_factory=dict)

    def failures(self, shard: str) -> int:
        return self._failures.get(shard, 0)

    def failed(self, shard: str, records: int, after: str | None, exc: BaseException) -> Held:
        n = self._failures[shard] = self.failures(shard) + 1
        delay = self.backoff.delay(n - 1, self.rng)
        line = self.lines.held.format(shard=shard, n=records, after=after or "TRIM_HORIZON",
                                      failures=n, exc=exc, delay=delay) if log_due(n) else None
        return Held(n, delay, line)

    def succeeded(self, shard: str) -> str | None:
        """Reset the shard; the "recovered" line when it had failed, else None."""
        n = self._failures.pop(shard, 0)
        return self.lines.recovered.format(shard=shard, failures=n) if n else None

    def reset(self, shard: str) -> None:
        self._failures.pop(shard, None)
