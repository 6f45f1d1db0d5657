"""A circuit breaker for the Bedrock analyzer (pure: the caller passes the time).

It counts failed **calls** (every attempt of an analysis, not failed analyses), so an outage
opens it after a handful of calls, within a second or two, not after whole analyses have
retried until their deadline:

Closed: calls go through; ``failure_threshold`` failed calls within ``window_s`` seconds,
with no answer in between, open it (an answer clears the count).
Open: calls are refused (the work goes to the statistical analyzer) until
``reset_after_s`` has passed; then it is half-open and lets ``probes`` calls
through. A probe's success closes it, a failure opens it again.

What a failed call is, is the caller's to say (:class:`~consumers.analysis.guard.CallGuard`:
throttling, 5xx, timeouts and transport errors; not a request the service rejected as
invalid). A call that began while closed is not retried once the breaker is open
(:meth:`retries_allowed`).

>>> b = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
>>> b.allow(0.0), b.record_failure(0.0), b.record_failure(1.0), b.state
(True, None, None, 'open')
>>> b.allow(10.0), b.allow(31.0), b.state, b.allow(31.5)
(False, True, 'half_open', False)
>>> b.record_success(32.0); b.state
'closed'

Failures further apart than the window do not add up; an answer clears the count:

>>> b = CircuitBreaker(failure_threshold=2, reset_after_s=30.0, window_s=10.0)
>>> b.record_failure(0.0); b.record_failure(10.5); b.state
'closed'
>>> b.record_success(11.0); b.record_failure(12.0); b.state
'closed'
>>> b.record_failure(13.0); b.state, b.retries_allowed()
('open', False)

A probe that is abandoned hands its turn back; late results while open are ignored:

>>> b = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
>>> b.record_failure(40.0); b.record_failure(41.0); b.record_success(42.0); b.state
'open'
>>> b.allow(72.0), b.allow(72.0), b.cancel_probe(), b.allow(72.5)
(True, False, None, True)
"""

from __future__ import annotations

from collections import deque
from typing import Literal

State = Literal["closed", "open", "half_open"]

#: failed calls count towards opening for this long (seconds); with the defaults (5 failed
#: calls, ``CAA_BREAKER_FAILURES``) an outage opens it as soon as 5 calls have failed
WINDOW_S = 10.0


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, reset_after_s: float = 30.0,
                 probes: int = 1, window_s: float = WINDOW_S) -> None:
        if failure_threshold < 1 or reset_after_s < 0 or probes < 1 or window_s <= 0:
            raise ValueError("breaker: threshold and probes >= 1, reset >= 0, window > 0")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.probes = probes
        self.window_s = window_s
        self._state: State = "closed"
        self._failures: deque[float] = deque()  # when each counted failure happened
        self._opened_at = 0.0
        self._probes_out = 0
        self.opened = 0  # times it opened, for metrics

    @property
    def state(self) -> State:
        return self._state

    @property
    def opened_at(self) -> float:
        """When it last opened (the caller's clock)."""
        return self._opened_at

    @property
    def failures(self) -> int:
        """Failed calls counted towards opening (closed: within the window, at the last one)."""
        return len(self._failures)

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

    def retries_allowed(self) -> bool:
        """May a call that began while closed try again? Only while it is still closed."""
        return self._state == "closed"

    def record_success(self, now: float) -> None:
        if self._state != "open":  # a call that started before it opened proves nothing
            self._state = "closed"
            self._failures.clear()

    def record_failure(self, now: float) -> None:
        if self._state == "open":  # late news from before it opened: the window stands
            return
        if self._state == "half_open":
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and self._failures[0] <= now - self.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.failure_threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.opened += 1
        self._state, self._opened_at = "open", now
        self._failures.clear()

    def cancel_probe(self) -> None:
        """A call allowed by :meth:`allow` did not happen (or was abandoned)."""
        if self._state == "half_open" and self._probes_out:
            self._probes_out -= 1
