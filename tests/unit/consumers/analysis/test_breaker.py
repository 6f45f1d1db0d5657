"""The circuit breaker's policy on a virtual clock, and how the call guard and the Bedrock
analyzer feed it: every failed call counts, an open breaker ends retries, a stop ends them
at once (issue 15, "Breaker and stop")."""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError
from hypothesis import given
from hypothesis import strategies as st

from consumers.analysis.analyzer import AnalyzerResult, Calls, PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from consumers.analysis.breaker import WINDOW_S, CircuitBreaker
from consumers.analysis.guard import CallGuard, Refused
from consumers.retry import Backoff, Jitter
from consumers.stores.usage import UsageLedger
from models.prompt import AnalysisInput

MODEL = "m"
PRICES = PriceTable.parse({MODEL: [1.0, 5.0]})
X = AnalysisInput(subject="cust_1", as_of=date(2024, 3, 1), consent=True, purchases=2,
                  purchase_days=2, tenure_days=30, recency_days=3, total_spend=40.0,
                  avg_order_value=20.0, avg_items_per_order=2.0, reference_order_value=25.0,
                  channels={"web": 2}, products=[], categories=[])


# -- the policy -------------------------------------------------------------------------


def test_failed_calls_within_the_window_open_it() -> None:
    b = CircuitBreaker(failure_threshold=5, reset_after_s=30.0)
    for t in (0.0, 0.1, 0.3, 0.7):
        b.record_failure(t)
        assert b.state == "closed" and b.retries_allowed()
    b.record_failure(1.5)  # the 5th failed call, 1.5 s into the outage
    assert b.state == "open" and b.opened == 1 and b.opened_at == 1.5
    assert not b.retries_allowed() and not b.would_allow(2.0) and not b.allow(31.4)


def test_failures_further_apart_than_the_window_never_open_it() -> None:
    b = CircuitBreaker(failure_threshold=3, reset_after_s=30.0, window_s=10.0)
    for n in range(20):  # one failed call every 5 s: at most 2 in any 10 s
        b.record_failure(n * 5.0)
    assert b.state == "closed" and b.failures == 2


def test_an_answer_clears_the_count() -> None:
    b = CircuitBreaker(failure_threshold=3, reset_after_s=30.0)
    for t in (0.0, 0.1, 0.2, 0.3):  # throttled now and then, answered in between
        b.record_failure(t)
        b.record_failure(t + 0.01)
        b.record_success(t + 0.02)
    assert b.state == "closed" and b.failures == 0


def test_half_open_probe_closes_or_reopens() -> None:
    b = CircuitBreaker(failure_threshold=1, reset_after_s=10.0, probes=1)
    b.record_failure(0.0)
    assert not b.allow(9.99)
    assert b.would_allow(10.0) and _state(b) == "open"  # a cheap check takes no probe
    assert b.allow(10.0) and _state(b) == "half_open" and not b.allow(10.1)
    assert not b.retries_allowed()  # only the probe's own analysis goes on
    b.record_failure(11.0)
    assert _state(b) == "open" and b.opened == 2 and not b.allow(20.9)
    assert b.allow(21.0)
    b.record_success(22.0)
    assert _state(b) == "closed" and b.retries_allowed()


def _state(b: CircuitBreaker) -> str:
    return b.state


def test_late_results_while_open_change_nothing() -> None:
    b = CircuitBreaker(failure_threshold=2, reset_after_s=10.0)
    b.record_failure(0.0)
    b.record_failure(0.5)
    b.record_success(0.6)  # a call that began before it opened
    b.record_failure(0.7)
    assert b.state == "open" and b.opened == 1 and b.opened_at == 0.5


def test_an_abandoned_probe_hands_its_turn_back() -> None:
    b = CircuitBreaker(failure_threshold=1, reset_after_s=10.0)
    b.record_failure(0.0)
    assert b.allow(10.0) and not b.allow(10.0)
    b.cancel_probe()
    assert b.allow(10.5)


@pytest.mark.parametrize("bad", [{"failure_threshold": 0}, {"probes": 0}, {"window_s": 0.0},
                                 {"reset_after_s": -1.0}])
def test_nonsense_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="breaker"):
        CircuitBreaker(**bad)


@given(st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=8))
def test_it_opens_exactly_when_threshold_failures_fall_within_a_window(
        gaps: list[float], threshold: int) -> None:
    b = CircuitBreaker(failure_threshold=threshold, reset_after_s=1e9)
    times, t = [], 0.0
    for gap in gaps:
        t += gap
        times.append(t)
        b.record_failure(t)
    first = next((i for i in range(threshold - 1, len(times))
                  if times[i] - times[i - threshold + 1] < WINDOW_S), None)
    assert (b.state == "open") is (first is not None)
    if first is not None:
        assert b.opened == 1 and b.opened_at == times[first]


# -- the guard and the analyzer, on a virtual clock -------------------------------------


class Clock:
    """Virtual time: ``sleep`` moves it on at once."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "scripted"},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "Converse")


class Down:
    """A Bedrock runtime client whose every call fails with ``error``, taking ``latency_s``."""

    def __init__(self, clock: Clock, error: ClientError, latency_s: float = 0.05) -> None:
        self.clock, self.error, self.latency_s, self.calls = clock, error, latency_s, 0

    async def converse(self, **_req: Any) -> dict[str, Any]:
        self.calls += 1
        self.clock.now += self.latency_s
        raise self.error


class Ledger:
    """The usage ledger's calls, always within budget."""

    async def reserve(self, day: str, usd: float, budget_usd: float) -> bool:
        return True

    async def release(self, day: str, usd: float) -> None:
        return None

    async def settle(self, day: str, reserved_usd: float, cost_usd: float,
                     counters: dict[str, int], endpoint: str | None = None) -> None:
        return None


def _guard(client: Any, clock: Clock, breaker: CircuitBreaker,
           sleep: Any = None) -> CallGuard:
    analyzer = BedrockAnalyzer(client, MODEL, max_tokens=256, prices=PRICES, deadline_s=45.0,
                               backoff_base_s=0.25, clock=clock, sleep=sleep or clock.sleep)
    return CallGuard(analyzer, cast(UsageLedger, Ledger()), PRICES, daily_budget_usd=10.0,
                     tokens_per_minute=10**9, rate_wait_max_s=30.0, breaker=breaker,
                     clock=clock)


def test_an_outage_opens_the_breaker_after_five_calls_not_five_analyses(
        capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    client = Down(clock, _error("ServiceUnavailableException", 503))
    breaker = CircuitBreaker(failure_threshold=5, reset_after_s=30.0)
    guard = _guard(client, clock, breaker)
    start = clock.now

    async def scenario() -> list[AnalyzerResult | Refused]:
        return [await guard.call(X) for _ in range(4)]

    first, *rest = asyncio.run(scenario())
    assert isinstance(first, AnalyzerResult) and first.failure == "unavailable"
    assert first.attempts == 5 and "breaker is open" in first.detail  # no 45 s of retries
    assert client.calls == 5 and breaker.state == "open"
    assert breaker.opened_at - start < 4.0  # backoffs of at most 0.25+0.5+1+2 s, and latency
    assert rest == [Refused("circuit_open")] * 3  # no call while open
    assert "circuit breaker open (5 failed calls within 10 s)" in capsys.readouterr().err


def test_a_probe_is_one_analysis_with_its_retries_then_reopens() -> None:
    clock = Clock()
    client = Down(clock, _error("ThrottlingException", 429))
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
    guard = _guard(client, clock, breaker)

    async def scenario() -> AnalyzerResult | Refused:
        await guard.call(X)  # opens it
        clock.now += 30.5  # the cool-down is over
        return await guard.call(X)

    probe = asyncio.run(scenario())
    assert isinstance(probe, AnalyzerResult) and probe.failure == "throttled"
    assert probe.attempts > 2 and "deadline" in probe.detail  # retried inside its deadline
    assert breaker.state == "open" and breaker.opened == 2


def test_a_rejected_request_says_nothing_about_the_service() -> None:
    clock = Clock()
    client = Down(clock, _error("ValidationException", 400))
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=30.0)
    guard = _guard(client, clock, breaker)

    async def scenario() -> list[AnalyzerResult | Refused]:
        return [await guard.call(X) for _ in range(3)]

    results = asyncio.run(scenario())
    assert all(isinstance(r, AnalyzerResult) and r.failure == "rejected" and r.attempts == 1
               for r in results)
    assert breaker.state == "closed" and breaker.failures == 0


def test_an_unnamed_5xx_is_a_failed_call() -> None:
    clock = Clock()
    client = Down(clock, _error("BadGateway", 502))
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
    result = asyncio.run(_guard(client, clock, breaker).call(X))
    assert isinstance(result, AnalyzerResult) and result.failure == "unavailable"
    assert client.calls == 2 and breaker.state == "open"


def test_a_stop_ends_the_backoff_at_once_and_makes_no_further_call() -> None:
    """Real time here: a 60 s backoff, cut by the stop after 0.1 s."""
    clock = Clock()
    client = Down(clock, _error("ServiceUnavailableException", 503), latency_s=0.0)
    analyzer = BedrockAnalyzer(client, MODEL, max_tokens=256, prices=PRICES, deadline_s=600.0,
                               clock=time.monotonic)
    analyzer.backoff = Backoff(base=60.0, cap=60.0, jitter=Jitter.NONE)

    async def scenario() -> tuple[AnalyzerResult, float]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.1, stop.set)
        started = time.monotonic()
        result = await analyzer.analyze(X, Calls(stop=stop))
        return result, time.monotonic() - started

    result, took = asyncio.run(scenario())
    assert result.failure == "stopped" and result.attempts == 1 and client.calls == 1
    assert took < 2.0


def test_after_a_stop_no_call_starts() -> None:
    clock = Clock()
    breaker = CircuitBreaker()
    guard = _guard(Down(clock, _error("ThrottlingException", 429)), clock, breaker)
    stop = asyncio.Event()
    stop.set()
    assert asyncio.run(guard.call(X, stop)) == Refused("stopped")
    assert breaker.state == "closed" and breaker.failures == 0
