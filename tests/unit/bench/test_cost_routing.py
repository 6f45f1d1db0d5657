"""bench/cost.py with value routing: batch pricing, the naive request size, the routed
simulation's calls and freshness on a small stream."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import cost  # bench scripts import each other by their directory
from analysis_policy import Params, RouteParams

from consumers.analysis.analyzer import PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from models.events import PurchaseEvent
from producers.datasets.synthetic import generate_stream

MODEL = "eu.anthropic.claude-haiku-4-5-20251001-v1:0"
PRICES = cost.Prices(tokens_in=1.10, tokens_out=5.50)
CALL = {"input_tokens": 1000.0, "output_tokens": 100.0, "analysis_wru": 4.0}


def _run(**kw: object) -> cost.CoreRun:
    base = {"events": 1000, "purchases": 1000, "invocations": 10, "cpu_s": cost.vcpu_share(),
            "round_trips": 0, "rru": 0, "wru": 0}
    return cost.CoreRun(**{**base, **kw})  # type: ignore[arg-type]


def test_batch_calls_cost_their_share_and_no_function_time() -> None:
    run = _run()
    on_demand = cost.dollars(run, 100, CALL, PRICES)
    batch = cost.dollars(run, 0, CALL, PRICES, batch_calls=100, batch_factor=0.5)
    assert batch["bedrock"] == pytest.approx(on_demand["bedrock"] / 2)
    assert batch["compute_analyzer"] == 0.0
    assert batch["dynamodb"] == pytest.approx(on_demand["dynamodb"])  # stored all the same
    # statistical analyses are stored (DynamoDB), never billed by Bedrock
    stored = cost.dollars(run, 0, CALL, PRICES, stored=100)
    assert stored["bedrock"] == 0.0 and stored["dynamodb"] == pytest.approx(
        on_demand["dynamodb"])


def test_routing_calls_less_than_the_cache_alone_and_keeps_the_freshness() -> None:
    events = generate_stream(customers=120, days=40, seed=5, burst_rate=0.6,
                             burst_gap_s=(5, 50), burst_orders=4)
    purchases = [e for e in events if isinstance(e, PurchaseEvent)]
    analyzer = BedrockAnalyzer(None, MODEL, max_tokens=1024,
                               prices=PriceTable({MODEL: (1.10, 5.50)}))
    run = cost.run_core(events, analyzer, batch=50, samples=20)
    # the naive baseline's request (prompt version 1) is larger than ours
    assert len(run.naive_samples) == len(run.samples)
    ours, naive = cost.per_call(run), cost.per_call(run, naive=True)
    assert naive["input_tokens"] > ours["input_tokens"] > cost.TOOL_USE_SYSTEM_TOKENS

    params = Params()
    sim = cost.routed(run, purchases, params, RouteParams(), cost.event_time)
    cache_only = cost.calls_by_policy(purchases, params)["ours"]["calls"]
    calls = sim["calls"]
    assert calls["on_demand"] + calls["batch"] < cache_only
    assert sum(sim["routes"].values()) > 0 and sim["refits"] > 0 and sim["cuts"]
    # every purchase is accounted for by exactly one route's freshness
    assert sum(f["purchases"] for f in sim["freshness"].values()) == len(purchases)
    top = sim["freshness"]["on_demand"]
    assert top["p95_s"] <= params.debounce_s + 5
    assert sim["freshness"]["daily"]["max_s"] <= 24 * 3600
    assert sim["freshness"]["statistical"]["max_s"] <= params.debounce_s + 1e-6


def test_spread_arrivals_keep_each_day_and_its_order() -> None:
    events = [e for e in generate_stream(customers=20, days=5, seed=1)
              if isinstance(e, PurchaseEvent)]
    at = cost.spread_arrivals(events)
    times = [at(e) for e in events]
    assert all(int(t // 86400) == int(e.occurred_at.timestamp()) // 86400
               for t, e in zip(times, events, strict=True))
