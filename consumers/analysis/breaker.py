"""A circuit breaker for the Bedrock analyzer (pure: the caller passes the time).

Closed: calls go through; ``failure_threshold`` consecutive failures open it.
Open: calls are refused (the work goes to the statistical analyzer) until
``reset_after_s`` has passed; then it is half-open and lets ``probes`` calls
through. A probe's success closes it, a failure opens it again.

>>> b = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
>>> b.allow(0.0), b.record_failure(0.0), b.record_failure(1.0), b.state
(True, None, None, 'open')
>>> b.allow(10.0), b.allow(31.0), b.state, b.allow(31.5)
(False, True, 'half_open', False)
>>> b.record_success(32.0); b.state
'closed'

A probe that is abandoned hands its turn back; late results while open are ignored:

>>> b.record_failure(40.0); b.record_failure(41.0); b.record_success(42.0); b.state
'open'
>>> b.allow(72.0), b.allow(72.0), b.cancel_probe(), b.allow(72.5)
(True, False, None, True)
"""

from __future__ import annotations

from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_after_s: float = 30.0,
                 probes: int = 1) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.probes = probes
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probes_out = 0
        self.opened = 0  # times it opened, for metrics

    @property
    def state(self) -> State:
        return self._state

    def would_allow(self, now: float) -> bool:
        """Could a call start now? (Takes no probe: a cheap early check.)"""
        if self._state == "open":
            return now - self._opened_at >= self.reset_after_s
        return self._state == "closed" or self._probes_out < self.probes

    def allow(self, now: float) -> bool:
        """May a call start now? (A half-open breaker hands out ``probes`` calls.)"""
        if self._state == "open" and now - self._opened_at >= self.reset_after_s:
            self._state, self._probes_out = "half_open", 0
        if self._state == "closed":
            return True
        if self._state == "half_open" and self._probes_out < self.probes:
            self._probes_out += 1
            return True
        return False

    def record_success(self, now: float) -> None:
        if self._state != "open":  # a call that started before it opened proves nothing
            self._state, self._failures = "closed", 0

    def record_failure(self, now: float) -> None:
        if self._state == "open":  # late news from before it opened: the window stands
            return
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.failure_threshold:
            self.opened += 1
            self._state, self._opened_at = "open", now

    def cancel_probe(self) -> None:
        """A call allowed by :meth:`allow` did not happen (or was abandoned)."""
        if self._state == "half_open" and self._probes_out:
            self._probes_out -= 1
