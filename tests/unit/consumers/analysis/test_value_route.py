"""Value routing: the routes, the cuts a refit stores, and the enricher taking them."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from consumers.analysis.analyzer import AnalyzerResult, PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from consumers.analysis.breaker import CircuitBreaker
from consumers.analysis.enricher import LOW_VALUE, Enricher
from consumers.analysis.value_route import (
    MIN_CUSTOMERS,
    NO_ROUTING,
    ROUTE_CUTS,
    ValueCuts,
    ValueRouter,
    clv_percentiles,
    cuts_from,
    cuts_of,
    load_cuts,
    route,
)
from consumers.core import ModelView, StreamRecord, decode_batch, process_batch
from models.analysis import AnalysisRecord
from models.learn.forecaster import DEFAULT_PRIOR, Forecaster
from models.learn.segmentation import SegmentModel
from models.prompt import AnalysisInput, build_input
from models.state import DAY, CustomerState

CUTS = ValueCuts(top_clv=200.0, low_clv=80.0, p_alive_floor=0.05)


@pytest.mark.parametrize(("p_alive", "clv", "days", "daily", "expected"), [
    (0.9, 250.0, 5, True, "on_demand"),  # top value share
    (0.9, 120.0, 5, True, "daily"),  # the middle, with a daily batch
    (0.9, 120.0, 5, False, "on_demand"),  # the middle, without one
    (0.9, 50.0, 5, True, "statistical"),  # low value
    (0.01, 250.0, 5, True, "statistical"),  # most likely gone
    (0.9, 250.0, 1, True, "statistical"),  # a single purchase day: nothing to analyse
    (0.9, 250.0, None, True, "on_demand"),  # the history's depth unknown: not held against it
])
def test_each_route(p_alive: float, clv: float, days: int | None, daily: bool,
                    expected: str) -> None:
    assert route(p_alive, clv, CUTS, daily=daily, purchase_days=days) == expected


def test_without_cuts_or_a_prediction_everything_is_on_demand() -> None:
    for p_alive, clv in ((0.0, 0.0), (None, 500.0), (0.9, None)):
        assert route(p_alive, clv, None, daily=True, purchase_days=1) == "on_demand"
        if p_alive is None or clv is None:
            assert route(p_alive, clv, CUTS, daily=True) == "on_demand"


def test_ties_at_a_cut_take_the_cheaper_route() -> None:
    assert route(0.9, CUTS.top_clv, CUTS, daily=True) == "daily"
    assert route(0.9, math.nextafter(CUTS.top_clv, math.inf), CUTS, daily=True) == "on_demand"
    assert route(0.9, CUTS.low_clv, CUTS, daily=True) == "statistical"
    assert route(0.9, math.nextafter(CUTS.low_clv, math.inf), CUTS, daily=True) == "daily"
    assert route(CUTS.p_alive_floor, 120.0, CUTS, daily=True) == "daily"


def test_the_cuts_split_the_active_customers_by_share() -> None:
    clvs = [float(v) for v in range(1000)]
    cuts = cuts_of(clvs, as_of=7, top_share=0.2, low_share=0.4)
    assert cuts is not None and (cuts.as_of, cuts.customers) == (7, 1000)
    assert sum(c > cuts.top_clv for c in clvs) == 200
    assert sum(c <= cuts.low_clv for c in clvs) == 400
    routes = [route(0.9, c, cuts, daily=True, purchase_days=3) for c in clvs]
    assert (routes.count("on_demand"), routes.count("daily"), routes.count("statistical")) \
        == (200, 400, 400)
    # no low share: nobody is sent to the statistical analysis for its value
    none_low = cuts_of(clvs, as_of=7, low_share=0.0)
    assert none_low is not None and route(0.9, 0.0, none_low, daily=True) == "daily"


def test_too_few_or_inseparable_customers_give_no_cuts() -> None:
    assert cuts_of([float(v) for v in range(MIN_CUSTOMERS - 1)], as_of=0) is None
    assert cuts_of([float(v) for v in range(MIN_CUSTOMERS)], as_of=0) is not None
    assert cuts_of([0.0] * 500, as_of=0) is None  # every order in a currency without a rate
    assert cuts_of([math.nan] * 500, as_of=0) is None
    assert cuts_from(None) is None and cuts_from({"percentiles": [1.0]}) is None


def test_the_stored_percentiles_give_the_cuts_for_any_shares() -> None:
    clvs = [float(v) for v in range(1, 501)]
    doc = clv_percentiles(clvs, as_of=3)
    assert doc is not None and len(doc["percentiles"]) == 101
    for top, low in ((0.2, 0.4), (0.1, 0.5), (0.3, 0.0)):
        assert cuts_from(doc, top_share=top, low_share=low) == cuts_of(
            clvs, as_of=3, top_share=top, low_share=low)


class FakeModels:
    """The models table's load, counted."""

    def __init__(self, body: dict[str, Any] | None) -> None:
        self.body = body
        self.loads = 0

    async def load(self, name: str) -> tuple[int, dict[str, Any]] | None:
        assert name == ROUTE_CUTS
        self.loads += 1
        return None if self.body is None else (0, self.body)


def test_the_router_reads_the_cuts_at_most_every_refresh_and_keeps_them_on_failure() -> None:
    store = FakeModels(clv_percentiles([float(v) for v in range(100)], as_of=1))
    now = [0.0]
    failing = [False]

    async def load() -> ValueCuts | None:
        if failing[0]:
            raise RuntimeError("models table unreachable")
        return await load_cuts(store)

    router = ValueRouter(load, daily=True, refresh_s=60.0, clock=lambda: now[0])

    async def scenario() -> list[str]:
        out: list[str] = [await router.route(0.9, 95.0, 4)]
        now[0] = 30.0
        out.append(await router.route(0.9, 10.0, 4))
        now[0], failing[0] = 61.0, True
        out.append(await router.route(0.9, 50.0, 4))
        return out

    assert asyncio.run(scenario()) == ["on_demand", "statistical", "daily"]
    assert store.loads == 1 and router.load_errors == 1
    assert not NO_ROUTING.enabled and asyncio.run(NO_ROUTING.route(0.9, 1.0, 1)) == "on_demand"
    # before the first refit: nothing stored, everyone on demand
    before = ValueRouter(lambda: load_cuts(FakeModels(None)), daily=True)
    assert asyncio.run(before.route(0.9, 1.0, 1)) == "on_demand"


# -- the enricher -----------------------------------------------------------------------


class FakeGuard:
    """The call guard: counts calls, never answers (a call here would be a test failure)."""

    def __init__(self) -> None:
        prices = PriceTable({"m": (1.0, 5.0)})
        self.analyzer = BedrockAnalyzer(None, "m", max_tokens=256, prices=prices)
        self.breaker = CircuitBreaker()
        self.calls: list[AnalysisInput] = []

    async def call(self, x: AnalysisInput, stop: asyncio.Event) -> AnalyzerResult:
        self.calls.append(x)
        raise AssertionError("no Bedrock call expected")


class FakeStore:
    def __init__(self, outcome: str = "latest") -> None:
        self.records: list[AnalysisRecord] = []
        self.input_at: list[datetime | None] = []
        self.outcome = outcome
        #: the latest per customer, as the store keeps it
        self.kept: dict[str, AnalysisRecord] = {}

    async def latest(self, ids: list[str]) -> dict[str, AnalysisRecord]:
        return {c: r for c, r in self.kept.items() if c in ids}

    async def record(self, rec: AnalysisRecord, input_at: datetime | None = None) -> str:
        self.records.append(rec)
        self.input_at.append(input_at)
        if self.outcome == "latest":
            self.kept[rec.customer_id] = rec
        return self.outcome


def _enricher(router: ValueRouter) -> tuple[Enricher, FakeGuard, FakeStore]:
    guard, store = FakeGuard(), FakeStore()
    e = Enricher(guard=cast(Any, guard), store=cast(Any, store), pseudonym_key=b"k",
                 reference_order_value=lambda: 30.0, consent_mode="opt_out",
                 wall=lambda: datetime(2024, 3, 1, tzinfo=UTC), router=router)
    return e, guard, store


def _input(clv: float, days: int = 4) -> AnalysisInput:
    state = CustomerState.sketch("c1", list(range(0, 7 * days, 7)), products={"milk": [0]})
    x = build_input(state, None, as_of_ts=7 * days * DAY, key=b"k", reference_order_value=30.0)
    return x.model_copy(update={"p_alive": 0.9, "clv": clv})


async def _cuts() -> ValueCuts | None:
    return CUTS


def test_a_low_value_buyer_gets_the_statistical_analysis_without_a_call() -> None:
    e, guard, store = _enricher(ValueRouter(_cuts, daily=True))
    assert asyncio.run(e.run_request("c1", _input(clv=10.0), "purchase", [0.0]))
    assert guard.calls == []
    [rec] = store.records
    assert (rec.source, rec.fallback_reason, rec.trigger) == ("statistical", LOW_VALUE, "purchase")
    assert e.counts["route_statistical"] == 1 and e.counts["fallbacks"] == 0
    assert e.summary()["routes"] == {"statistical": 1}


def test_a_scheduled_re_analysis_keeps_the_low_value_analysis_there() -> None:
    e, guard, store = _enricher(ValueRouter(_cuts, daily=True))
    x = _input(clv=10.0)
    assert asyncio.run(e.run_request("c1", x, "purchase", [0.0]))
    assert asyncio.run(e.run_request("c1", x, "schedule", []))
    assert len(store.records) == 1 and guard.calls == [] and e.counts["cache_hits"] == 1
    assert asyncio.run(e.run_request("c1", x, "purchase", [0.0]))  # a purchase: rewritten
    assert len(store.records) == 2


def test_a_middle_value_buyer_is_left_to_the_daily_batch() -> None:
    e, guard, store = _enricher(ValueRouter(_cuts, daily=True))
    assert asyncio.run(e.run_request("c1", _input(clv=120.0), "purchase", [0.0]))
    assert guard.calls == [] and store.records == []
    assert e.summary()["routes"] == {"daily": 1}
    assert e.freshness_s == []  # not fresh yet: the batch analyses it


def test_on_demand_requests_and_top_customers_go_to_the_model() -> None:
    e, guard, _ = _enricher(ValueRouter(_cuts, daily=True))
    with pytest.raises(AssertionError, match="no Bedrock call"):
        asyncio.run(e.run_request("c1", _input(clv=10.0), "on_demand", []))
    with pytest.raises(AssertionError, match="no Bedrock call"):
        asyncio.run(e.run_request("c2", _input(clv=500.0), "purchase", [0.0]))
    assert len(guard.calls) == 2
    assert e.counts["route_on_demand"] == 1  # the on-demand request was not routed


def test_without_routing_nothing_is_counted_or_routed() -> None:
    e, guard, _ = _enricher(NO_ROUTING)
    with pytest.raises(AssertionError, match="no Bedrock call"):
        asyncio.run(e.run_request("c1", _input(clv=10.0), "purchase", [0.0]))
    assert len(guard.calls) == 1 and "routes" in e.summary() and e.summary()["routes"] == {}


@pytest.mark.parametrize("outcome", ["superseded", "erased"])
def test_an_analysis_the_store_does_not_make_the_latest_is_not_remembered(
        outcome: str) -> None:
    """The store decides which analysis is the latest, by ``input_at`` (the analysis's
    start for a request read just before); one it refuses is replaced in the enricher's
    memory by what the store keeps (which predictions then carry)."""
    e, _, store = _enricher(ValueRouter(_cuts, daily=True))
    assert asyncio.run(e.run_request("c1", _input(clv=10.0), "purchase", [0.0]))
    kept = store.records[-1]
    store.outcome = outcome
    assert asyncio.run(e.run_request("c1", _input(clv=10.0), "purchase", [0.0]))
    assert store.input_at == [datetime(2024, 3, 1, tzinfo=UTC)] * 2
    assert e._latest["c1"] is kept and store.records[-1] is not kept
    assert e.counts[f"analyses_{outcome}"] == 1


def test_an_erased_customer_leaves_the_analysis_queue() -> None:
    """A purchase queues the customer (debounced); the erasure event in the next batch
    takes them out: their queued input is of the erased state."""
    e, _, _ = _enricher(NO_ROUTING)
    models = ModelView(SegmentModel(), 0, Forecaster(DEFAULT_PRIOR))
    now = datetime(2024, 3, 1, tzinfo=UTC)
    purchase = (b'{"event_id":"e1","order_id":"o1","customer_id":"c1","occurred_at":'
                b'"2024-02-01T00:00:00Z","currency":"EUR","items":[{"product_id":"p",'
                b'"category":"k","quantity":1,"unit_price":"2.50"}],"total":"2.50"}')
    erasure = (b'{"type":"erasure","event_id":"x1","customer_id":"c1",'
               b'"occurred_at":"2024-02-02T00:00:00Z"}')
    first = process_batch(decode_batch([StreamRecord(purchase, "1", "c1", "s")]), {},
                          models, now=now)
    e.observe(first)
    assert len(e.policy) == 1
    second = process_batch(decode_batch([StreamRecord(erasure, "2", "c1", "s")]),
                           first.states, models, now=now)
    assert second.erased == {"c1"}
    e.observe(second)
    assert len(e.policy) == 0 and e.policy.next_due_at() is None


def test_a_queued_analysis_is_dated_by_when_its_input_was_read() -> None:
    """A purchase files the customer's input; the analysis starts after the debounce (60 s
    here, on the enricher's clock). Its ``input_at`` is when the input was read, not when
    the analysis started: an answer of an older input must not pass for a newer one."""
    guard, store = FakeGuard(), FakeStore()
    t = [1000.0]
    wall0 = datetime(2024, 3, 1, tzinfo=UTC)
    e = Enricher(guard=cast(Any, guard), store=cast(Any, store), pseudonym_key=b"k",
                 reference_order_value=lambda: 30.0, consent_mode="opt_out",
                 clock=lambda: t[0], wall=lambda: wall0 + timedelta(seconds=t[0] - 1000.0),
                 router=ValueRouter(_cuts, daily=True))
    purchase = (b'{"event_id":"e1","order_id":"o1","customer_id":"c1","occurred_at":'
                b'"2024-02-01T00:00:00Z","currency":"EUR","items":[{"product_id":"p",'
                b'"category":"k","quantity":1,"unit_price":"2.50"}],"total":"2.50"}')
    models = ModelView(SegmentModel(), 0, Forecaster(DEFAULT_PRIOR))
    e.observe(process_batch(decode_batch([StreamRecord(purchase, "1", "c1", "s")]), {},
                            models, now=wall0))
    t[0] += 75.0  # the debounce is over, and some more

    async def run() -> None:
        e._dispatch(t[0])
        await e.settle()

    asyncio.run(run())
    assert len(store.records) == 1
    assert store.input_at == [wall0]  # read at the purchase, 75 s before the analysis
    assert store.records[0].at == wall0 + timedelta(seconds=75)
