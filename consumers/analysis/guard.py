"""Everything that stands between an analysis and a Bedrock call: breaker, budget, quota.

:meth:`CallGuard.call` either makes the call and returns the analyzer's result,
or says why not (``circuit_open``, ``budget_exhausted``, ``rate_limited``), in
that order of checks. Whatever happens (an answer, a failure, an exception, a
cancellation) the budget reservation is settled or released, the token bucket
is squared up, and the breaker hears about the call it allowed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from consumers.analysis.analyzer import Analyzer, AnalyzerResult, PriceTable
from consumers.analysis.breaker import CircuitBreaker
from consumers.analysis.tokenbucket import TokenBucket
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

    async def call(self, x: AnalysisInput) -> AnalyzerResult | Refused:
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
                await asyncio.sleep(max(0.01, wait))
            if not self.breaker.allow(self._clock()):  # another call took the probe
                self.bucket.give_back(want)
                return Refused("circuit_open")
            called = True
            result = await self._analyze(x)
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
                    "failed_analyses": int(result.failure is not None)}
        try:
            await self.ledger.settle(day, reserved, result.cost_usd, counters,
                                     endpoint=result.endpoint)
        except Exception as exc:  # noqa: BLE001 -- one line; the reservation stays committed
            print(f"usage ledger: could not settle a call of {result.cost_usd:.6f} USD on "
                  f"{day} (its reservation of {reserved:.6f} stays): {exc}", file=sys.stderr)

    async def _analyze(self, x: AnalysisInput) -> AnalyzerResult:
        """Run the analyzer; the breaker hears the outcome however the call ends."""
        try:
            result = await self.analyzer.analyze(x)
        except asyncio.CancelledError:
            self.breaker.cancel_probe()
            raise
        except Exception as exc:  # noqa: BLE001 -- an analyzer bug or an unexpected transport
            # error becomes a failed result: the customer gets the statistical fallback
            result = AnalyzerResult(None, "bedrock", self.analyzer.model, "unavailable",
                                    f"{type(exc).__name__}: {exc}"[:300], attempts=1)
        served = result.analysis is not None or result.failure == "invalid_answer"
        if served:  # the service answered, even if the model's answer was unusable
            self.breaker.record_success(self._clock())
        else:
            self.breaker.record_failure(self._clock())
        return result

    async def _release(self, day: str, usd: float) -> None:
        try:
            await self.ledger.release(day, usd)
        except Exception as exc:  # noqa: BLE001 -- one clear line; the day's ledger over-counts
            print(f"usage ledger: could not release a reservation of {usd:.6f} USD on {day}: "
                  f"{exc}", file=sys.stderr)
