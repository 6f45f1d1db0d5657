"""Everything that stands between an analysis and a Bedrock call: breaker, budget, quota.

:meth:`CallGuard.call` either makes the call and returns the analyzer's result,
or says why not (``circuit_open``, ``budget_exhausted``, ``rate_limited``, in that order
of checks, or ``stopped`` when the stop event is set before the call starts). Whatever
happens (an answer, a failure, an exception, a cancellation) the budget reservation is
settled or released, the token bucket is squared up, and the breaker hears about the call
it allowed.

The breaker hears of every **call**, not of the analysis: each failed attempt (throttled,
unavailable, timed out, unreachable) counts, each answer clears the count, and an analysis
that began while the breaker was closed is not retried once it has opened. A half-open
probe is the exception: it is one whole analysis (with its retries, inside its deadline)
whose outcome closes or re-opens the breaker, as before.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from consumers.analysis.analyzer import Analyzer, AnalyzerResult, Calls, PriceTable
from consumers.analysis.breaker import CircuitBreaker
from consumers.analysis.tokenbucket import TokenBucket
from consumers.retry import pause
from consumers.stores.usage import UsageLedger
from models.prompt import AnalysisInput


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


class CallGuard:
    def __init__(
        self,
        analyzer: Analyzer,
        ledger: UsageLedger,
        prices: PriceTable,
        *,
        daily_budget_usd: float,
        tokens_per_minute: int,
        rate_wait_max_s: float,
        breaker: CircuitBreaker,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.analyzer = analyzer
        self.ledger = ledger
        self.prices = prices
        self.budget = daily_budget_usd
        self.rate_wait_max_s = rate_wait_max_s
        self.breaker = breaker
        self._clock = clock
        self._wall = wall
        self.bucket = TokenBucket(tokens_per_minute, clock())

    async def call(self, x: AnalysisInput, stop: asyncio.Event | None = None,
                   ) -> AnalyzerResult | Refused:
        """Call the analyzer for ``x``, or say why not; ``stop`` set: no retry, no new call
        (the analysis ends as ``stopped``, or is refused as ``stopped``)."""
        if not self.breaker.would_allow(self._clock()):
            return Refused("circuit_open")
        day = self._wall().date().isoformat()
        worst_in, worst_out = self.analyzer.worst_case_tokens(x)
        reserved = self.prices.cost(self.analyzer.model, worst_in, worst_out)
        if not await self.ledger.reserve(day, reserved, self.budget):
            return Refused("budget_exhausted")
        want = (worst_in + worst_out) / 2  # one call's share; a correction may go into debt
        called = settled = False
        try:
            deadline = self._clock() + self.rate_wait_max_s
            while not self.bucket.try_take(want, self._clock()):
                wait = self.bucket.wait_s(want, self._clock())
                if self._clock() + wait > deadline:
                    return Refused("rate_limited")
                if await pause(max(0.01, wait), stop):
                    return Refused("stopped")
            if (stop is not None and stop.is_set()) or not self.breaker.allow(self._clock()):
                self.bucket.give_back(want)  # stopped, or another call took the probe
                return Refused("stopped" if stop is not None and stop.is_set()
                               else "circuit_open")
            called = True
            result = await self._analyze(x, stop)
            self.bucket.give_back(want - result.input_tokens - result.output_tokens)
            await self._settle(day, reserved, result)
            settled = True
            return result
        finally:
            # Refused before calling: free the reservation. Cancelled while calling (the
            # call may be billed) or unable to settle: keep it, the budget stays safe.
            if not called and not settled:
                await asyncio.shield(self._release(day, reserved))

    async def _settle(self, day: str, reserved: float, result: AnalyzerResult) -> None:
        counters = {"calls": result.attempts, "input_tokens": result.input_tokens,
                    "output_tokens": result.output_tokens,
                    "failed_analyses": int(result.failure not in (None, "stopped"))}
        try:
            await self.ledger.settle(day, reserved, result.cost_usd, counters,
                                     endpoint=result.endpoint)
        except Exception as exc:  # noqa: BLE001 -- one line; the reservation stays committed
            print(f"usage ledger: could not settle a call of {result.cost_usd:.6f} USD on "
                  f"{day} (its reservation of {reserved:.6f} stays): {exc}", file=sys.stderr)

    async def _analyze(self, x: AnalysisInput, stop: asyncio.Event | None) -> AnalyzerResult:
        """Run the analyzer (allowed by the breaker just now); the breaker hears of each call
        it makes, or, for a half-open probe, of how the analysis ended."""
        probe = self.breaker.state == "half_open"
        calls = Calls(stop=stop, failed=self._failed, answered=self._answered,
                      may_retry=self.breaker.retries_allowed)
        if probe:  # one whole analysis decides; its retries are bounded by its deadline
            calls = Calls(stop=stop)
        try:
            result = await self.analyzer.analyze(x, calls)
        except asyncio.CancelledError:
            self.breaker.cancel_probe()
            raise
        except Exception as exc:  # noqa: BLE001 -- an analyzer bug or an unexpected transport
            # error becomes a failed result: the customer gets the statistical fallback
            result = AnalyzerResult(None, "bedrock", self.analyzer.model, "unavailable",
                                    f"{type(exc).__name__}: {exc}"[:300], attempts=1)
            if not probe:
                self._failed()
        if probe:
            served = result.analysis is not None or result.failure == "invalid_answer"
            if served:  # the service answered, even if the model's answer was unusable
                self.breaker.record_success(self._clock())
            elif result.failure in ("throttled", "unavailable", "timeout"):
                self._failed()
            else:  # rejected as invalid, or stopped: says nothing; the next call probes
                self.breaker.cancel_probe()
        return result

    def _answered(self) -> None:
        self.breaker.record_success(self._clock())

    def _failed(self) -> None:
        """A call failed on the service's side; say so once when that opens the breaker."""
        b = self.breaker
        before, probing = b.opened, b.state == "half_open"
        b.record_failure(self._clock())
        if b.opened > before:
            why = "the probe failed" if probing else (
                f"{b.failure_threshold} failed calls within {b.window_s:g} s")
            print(f"bedrock: circuit breaker open ({why}): analyses take the statistical "
                  f"fallback for {b.reset_after_s:g} s, then one call probes", file=sys.stderr)

    async def _release(self, day: str, usd: float) -> None:
        try:
            await self.ledger.release(day, usd)
        except Exception as exc:  # noqa: BLE001 -- one clear line; the day's ledger over-counts
            print(f"usage ledger: could not release a reservation of {usd:.6f} USD on {day}: "
                  f"{exc}", file=sys.stderr)
