"""bench/cost.py on a tiny stream: its arithmetic, its counts, naive against ours."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))

import cost  # bench scripts import each other by their directory
from analysis_policy import Params, simulate

from consumers.analysis.analyzer import PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from models.events import PurchaseEvent
from producers.datasets.synthetic import generate_stream

MODEL = "eu.anthropic.claude-haiku-4-5-20251001-v1:0"
PRICES = cost.Prices(tokens_in=1.10, tokens_out=5.50)
CALL = {"input_tokens": 1000.0, "output_tokens": 100.0, "analysis_wru": 4.0}


def _analyzer() -> BedrockAnalyzer:
    return BedrockAnalyzer(None, MODEL, max_tokens=1024,
                           prices=PriceTable({MODEL: (1.10, 5.50)}))


def _run(**kw: object) -> cost.CoreRun:
    base = {"events": 1000, "purchases": 1000, "invocations": 10, "cpu_s": cost.vcpu_share(),
            "round_trips": 0, "rru": 0, "wru": 0}
    return cost.CoreRun(**{**base, **kw})  # type: ignore[arg-type]


def test_the_dollars_are_the_units_times_the_prices() -> None:
    d = cost.dollars(_run(rru=2000, wru=3000), 500, CALL, PRICES)
    # CPU of one vCPU-share second: 1 s wall at 1 GB, and 10 requests; per 1,000 purchases
    assert d["compute_stream"] == pytest.approx(1000 * (cost.LAMBDA_GB_S_USD
                                                        + 10 * cost.LAMBDA_REQUEST_USD))
    # each call: the analyzer function waits for Bedrock, billed as 1 GB of duration
    assert d["compute_analyzer"] == pytest.approx(1000 * 500 * (
        cost.BEDROCK_LATENCY_S * cost.LAMBDA_GB_S_USD
        + cost.LAMBDA_REQUEST_USD / cost.ANALYZER_BATCH))
    assert d["compute"] == pytest.approx(d["compute_stream"] + d["compute_analyzer"])
    assert d["dynamodb"] == pytest.approx(1000 * (2000 * cost.DYNAMODB_RRU_USD
                                                  + (3000 + 500 * 4) * cost.DYNAMODB_WRU_USD))
    # 500 calls of 1,000 tokens in at $1.10 and 100 out at $5.50 per million
    assert d["bedrock"] == pytest.approx(1000 * 500 * (1000 * 1.10 + 100 * 5.50) / 1e6)
    assert d["bedrock_output"] == pytest.approx(1000 * 500 * 100 * 5.50 / 1e6)
    assert d["total"] == pytest.approx(d["compute"] + d["dynamodb"] + d["bedrock"])


def test_costs_scale_linearly() -> None:
    run = _run(rru=2000, wru=3000, round_trips=40)
    one = cost.dollars(run, 500, CALL, PRICES)
    twice = cost.dollars(run, 1000, CALL, PRICES)
    assert twice["bedrock"] == pytest.approx(2 * one["bedrock"])
    # the same stream twice over costs the same per purchase
    double = replace(run, events=2000, purchases=2000, invocations=20, cpu_s=2 * run.cpu_s,
                     round_trips=80, rru=4000, wru=6000)
    assert cost.dollars(double, 1000, CALL, PRICES) == pytest.approx(one)
    # the round trips are billed as Lambda time
    idle = cost.dollars(replace(run, round_trips=0), 500, CALL, PRICES)
    assert one["compute_stream"] - idle["compute_stream"] == pytest.approx(
        1000 * 40 * cost.DYNAMODB_RTT_S * cost.LAMBDA_GB_S_USD)


def test_units_round_up_per_item() -> None:
    assert [cost.units(b, cost.WRU_BYTES) for b in (0, 1, 1024, 1025)] == [1, 1, 1, 2]
    assert cost.units(4097, cost.RRU_BYTES) == 2
    assert cost.tokens(401) == 101
    assert cost.vcpu_share(1769) == 1.0 and cost.vcpu_share(1024) == pytest.approx(0.5789, 1e-3)


def test_a_tiny_stream_naive_calls_once_per_purchase_and_ours_no_more() -> None:
    events = generate_stream(customers=15, days=30, seed=3, burst_rate=0.6,
                             burst_gap_s=(5, 50), burst_orders=4)
    purchases = [e for e in events if isinstance(e, PurchaseEvent)]
    run = cost.run_core(events, _analyzer(), batch=20, samples=10)
    assert (run.events, run.purchases) == (len(events), len(purchases))
    assert run.invocations == -(-len(events) // 20) and run.cpu_s > 0
    # every customer's state written at least once, at least 1 WRU each; reads include the
    # registry's refresh of each invocation
    assert run.wru_by["states"] >= len({e.customer_id for e in events})
    assert run.wru_by["checkpoint"] == run.invocations
    assert run.rru >= run.invocations * cost.REFRESH_READS
    assert run.samples and all(i > cost.TOOL_USE_SYSTEM_TOKENS and o > 0 and w >= 3
                               for i, o, w in run.samples)

    by = cost.calls_by_policy(purchases, Params())
    assert by["naive"]["calls"] == len(purchases)
    # the naive policy's calls, counted by the simulation itself
    assert simulate(purchases, cost.event_time, Params(), naive=True)["calls"] == len(purchases)
    assert 0 < by["ours"]["calls"] <= by["naive"]["calls"]
    call = cost.per_call(run)
    naive = cost.dollars(run, int(by["naive"]["calls"]), call, PRICES)
    ours = cost.dollars(run, int(by["ours"]["calls"]), call, PRICES)
    assert ours["compute_stream"] == naive["compute_stream"]  # the policy changes the calls
    assert ours["bedrock"] <= naive["bedrock"] and ours["dynamodb"] <= naive["dynamodb"]
    assert cost.per_call(run, output_tokens=600)["output_tokens"] == 600.0
