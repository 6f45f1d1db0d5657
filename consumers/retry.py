"""Retry with backoff: one policy object for every retry loop, plus the tenacity glue.

Every loop that waits before trying again takes its delay from a :class:`Backoff`:
``base * 2**attempt`` capped at ``cap``, then jittered (full jitter, the default: uniform
in [0, that]; equal jitter: uniform in [half, all] of it; or none). What ``attempt``
counts is the call site's (the calls made so far, the failures in a row, ...); its
constants below keep every delay what it was before this module existed.

Two ways to run a policy:

- **tenacity** runs the bounded loops that call the same thing again until nothing is
  left to do (:func:`retry_until_done` and :func:`retry_until_done_async`): the
  publisher's PutRecords (synchronous, with an injected sleep), DynamoDB's BatchWriteItem,
  BatchGetItem and (conditional) PutItem (``UnprocessedItems``/``UnprocessedKeys`` and
  transient errors: throttling, 5xx, timeouts; :func:`consumers.stores.dynamo.classify`) and
  the dead-letter redrive's PutRecords. tenacity is one engine for the sync and the async
  case (stop after N attempts, retry on the result, pluggable sleep, other errors raised
  at once). Its wait is :meth:`Backoff.wait`, so the delays come from our policy and, where
  a caller passes one, a seeded ``random.Random`` (tenacity's ``wait_random_exponential``
  draws from the global ``random`` and counts attempts from 1).
- **Our own** :meth:`Backoff.delay`, :meth:`Backoff.sleep` and :func:`pause` run the
  loops that are more than "call again": the poller's GetRecords throttling (the count
  lives across calls, per shard), holding a shard (:mod:`consumers.sources.hold`:
  unbounded, logged with its delay, ended by the stop event), fan-out re-subscribing
  (stop event) and waiting for its consumer to be ACTIVE (a deadline), Bedrock (a
  deadline, billable attempts and a correction turn decide, not a count), the KCL hold
  (synchronous, in the daemon's thread) and the replay source's read throttling.

Call sites (base s, cap s, attempts, jitter; ``attempt`` given):

====================================  ========  =========  ========  ======  ====================
call site                             base      cap        attempts  jitter  attempt
====================================  ========  =========  ========  ======  ====================
publisher PutRecords                  0.05 [1]  5.0 [1]    8 [1]     full    calls made
DynamoDB batch write/get, PutItem     0.05 [2]  2.0        8 [2]     full    calls made
dead-letter redrive PutRecords        0.1       2.0        6         full    calls made
poller GetRecords throttled           0.1       5.0        --        full    throttled in a row
poller/fan-out shard hold             0.5       30.0       --        none    failures in a row - 1
KCL shard hold                        1.0       30.0 [3]   --        none    failures in a row - 1
fan-out re-subscribe                  0.5       5.0        --        equal   refused in a row
fan-out consumer ACTIVE wait          0.1       2.0        deadline  none    polls made
Bedrock Converse                      0.25 [4]  8.0        deadline  full    attempts made - 1
replay source GetRecords throttled    0.2       12.8       --        none    throttled in a row
====================================  ========  =========  ========  ======  ====================

[1] ``Publisher(base_delay=, max_delay=, max_attempts=)``; ``caa replay`` uses 20 attempts.
[2] ``Dynamo(base_delay=, max_attempts=)``, ``CAA_MAX_WRITE_ATTEMPTS``.
[3] ``min(max_pause_s, 32.0)``.  [4] ``CAA_BEDROCK_BACKOFF_BASE_S``.

>>> b = Backoff(base=0.5, cap=30.0, jitter=Jitter.NONE)
>>> [b.delay(n) for n in range(8)]
[0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import tenacity

T = TypeVar("T")

#: exponents above this give the cap anyway; the clamp keeps ``2.0**n`` a finite float
_MAX_EXPONENT = 1023


class Jitter(StrEnum):
    FULL = "full"  # uniform in [0, d]
    EQUAL = "equal"  # uniform in [d/2, d]
    NONE = "none"  # d


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``base * 2**attempt``, capped at ``cap``, jittered.

    ``attempts`` bounds the calls of :func:`retry_until_done` (None: unbounded, the caller
    decides when to stop)."""

    base: float
    cap: float
    attempts: int | None = None
    jitter: Jitter = Jitter.FULL

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError(f"backoff base and cap must be >= 0, not {self.base}, {self.cap}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"backoff attempts must be >= 1, not {self.attempts}")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter: ``min(cap, base * 2**attempt)``."""
        return min(self.cap, self.base * 2.0 ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait; drawn from ``rng`` (default: the global ``random``)."""
        ceiling = self.ceiling(attempt)
        uniform = rng.uniform if rng is not None else random.uniform
        if self.jitter is Jitter.FULL:
            return uniform(0, ceiling)
        if self.jitter is Jitter.EQUAL:
            return uniform(0.5, 1.0) * ceiling
        return ceiling

    async def sleep(self, attempt: int, stop: asyncio.Event | None = None,
                    rng: random.Random | None = None) -> float:
        """Wait :meth:`delay` seconds, or until ``stop`` is set; returns the delay drawn."""
        seconds = self.delay(attempt, rng)
        await pause(seconds, stop)
        return seconds

    def wait(self, rng: random.Random | None = None) -> Callable[[tenacity.RetryCallState], float]:
        """This policy as a tenacity ``wait``: after ``n`` calls, :meth:`delay` ``(n)``."""
        return lambda state: self.delay(state.attempt_number, rng)


async def pause(seconds: float, stop: asyncio.Event | None = None) -> bool:
    """Sleep ``seconds``, or less when ``stop`` is set first; True when ``stop`` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def _stop(policy: Backoff) -> tenacity.stop.stop_base:
    if policy.attempts is None:
        return tenacity.stop_never
    return tenacity.stop_after_attempt(policy.attempts)


def _last_result(state: tenacity.RetryCallState) -> object:
    assert state.outcome is not None  # tenacity calls this after an attempt
    return state.outcome.result()


def retry_until_done(policy: Backoff, step: Callable[[T], T], todo: T, *,
                     rng: random.Random | None = None,
                     sleep: Callable[[float], None] = time.sleep,
                     on_retry: Callable[[T], None] | None = None) -> T:
    """``todo = step(todo)`` until it is empty (falsy) or ``policy.attempts`` calls were
    made, sleeping ``policy.delay(n, rng)`` after the n-th; returns what is left (empty
    when done). ``on_retry(todo)`` runs before each sleep. An exception from ``step``
    propagates at once.

    >>> calls = []
    >>> def step(left: list[int]) -> list[int]:
    ...     calls.append(len(left))
    ...     return left[1:]
    >>> slept: list[float] = []
    >>> retry_until_done(Backoff(0.1, 5.0, attempts=3), step, [1, 2, 3, 4],
    ...                  rng=random.Random(1), sleep=slept.append)
    [4]
    >>> calls, len(slept)
    ([4, 3, 2], 2)
    """
    left = todo

    def once() -> T:
        nonlocal left
        left = step(left)
        return left

    def before_sleep(_state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            on_retry(left)

    retrying = tenacity.Retrying(
        stop=_stop(policy), wait=policy.wait(rng), retry=tenacity.retry_if_result(bool),
        retry_error_callback=_last_result, before_sleep=before_sleep, sleep=sleep)
    return retrying(once)


async def retry_until_done_async(policy: Backoff, step: Callable[[T], Awaitable[T]], todo: T,
                                 *, rng: random.Random | None = None,
                                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                                 ) -> T:
    """:func:`retry_until_done` for a coroutine ``step``."""
    left = todo

    async def once() -> T:
        nonlocal left
        left = await step(left)
        return left

    retrying = tenacity.AsyncRetrying(
        stop=_stop(policy), wait=policy.wait(rng), retry=tenacity.retry_if_result(bool),
        retry_error_callback=_last_result, sleep=sleep)
    result: T = await retrying(once)
    return result
