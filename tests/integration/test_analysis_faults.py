"""AI analysis under faults, end to end: throttling storms and outages, invalid and slow
answers, the daily budget, a stop signal and the breaker; Kinesis and DynamoDB on moto's
server, Bedrock on the Bedrock-protocol test server (real processes over HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from consumers.core import StreamRecord, decode_batch, process_batch
from deploy.local.bedrock_server import BedrockServer
from deploy.local.emulator import free_port
from producers.datasets.synthetic import generate
from producers.publisher import Publisher
from tests.integration.test_analysis import (
    Run,
    _event,
    customer_data,
    last_sequence_per_shard,
    run,
    running_enricher,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("failure", [
    {"kind": "throttle"},
    {"kind": "error", "status": 503, "type": "ServiceUnavailableException"},
    "connection refused",
])
def test_throttling_storm_or_outage_loses_no_prediction_and_stalls_no_shard(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
    monkeypatch: pytest.MonkeyPatch, failure: dict[str, Any] | str,
) -> None:
    if isinstance(failure, dict):
        bedrock_server.script([], default=failure)
    else:  # nothing listens there at all
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", f"http://127.0.0.1:{free_port()}")
    s = ai_settings(consent_mode="opt_out", breaker_failures="3", bedrock_deadline_s="1")
    events = generate(customers=30, days=30, seed=5)
    out = run(s, events)

    customers = {e.customer_id for e in events}
    assert out.worker.applier.totals.applied == len(events)
    assert set(out.predictions) == customers
    reasons = Counter(p["fallback_reason"] for p in out.predictions.values())
    assert all(p["source"] == "statistical" and p["analysis"] for p in out.predictions.values())
    assert reasons["circuit_open"] > 0  # the breaker stopped the hammering
    assert set(reasons) <= {"throttled", "unavailable", "timeout", "circuit_open", "no_consent"}
    assert out.worker.enricher is not None and out.worker.enricher.breaker.opened >= 1
    assert out.checkpoints == last_sequence_per_shard(s)  # every shard consumed to its end
    if isinstance(failure, dict):  # most customers' work never reached Bedrock
        reached = {customer_data(r)["subject"] for r in bedrock_server.requests()}
        assert len(reached) < len(customers) / 2


def test_invalid_answers_are_corrected_once_then_fall_back(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
) -> None:
    bedrock_server.script([{"kind": "invalid", "input": {"narrative": "x"}},
                           {"kind": "text"},
                           {"kind": "text"},
                           {"kind": "answer"}], default={"kind": "throttle"})
    s = ai_settings(consent_mode="opt_out", bedrock_concurrency="1", breaker_failures="100",
                    analysis_active_days="0")  # no scheduled re-analysis after the run
    out = run(s, [_event("a", 1), _event("b", 1)])
    by_source = {p["customer_id"]: (p["source"], p["fallback_reason"])
                 for p in out.predictions.values()}
    assert sorted(by_source.values()) == [("bedrock", None), ("statistical", "invalid_answer")]
    reqs = bedrock_server.requests()
    assert [r["outcome"] for r in reqs] == ["invalid", "text", "text", "answer"]
    correction = reqs[1]["body"]["messages"]
    assert correction[-1]["content"][0]["toolResult"]["status"] == "error"
    assert len(reqs[3]["body"]["messages"]) == 3  # the text answer was sent back once


@pytest.mark.parametrize("answers", ["valid", "corrected", "timing out"])
def test_the_daily_budget_is_never_exceeded(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer, answers: str,
) -> None:
    budget = 0.08
    if answers == "corrected":  # every analysis costs two calls: invalid, then valid
        bedrock_server.script([{"kind": "invalid", "input": {"narrative": "x"}},
                               {"kind": "answer"}] * 100)
    elif answers == "timing out":  # billed as the worst case, though never answered
        bedrock_server.script([], default={"kind": "slow", "delay_s": 1.0})
    s = ai_settings(consent_mode="opt_out", daily_budget_usd=str(budget),
                    bedrock_concurrency="8", bedrock_timeout_s="0.3", breaker_failures="1000",
                    analysis_active_days="0")
    events = generate(customers=25, days=20, seed=3)
    out = run(s, events)
    assert set(out.predictions) == {e.customer_id for e in events}
    rows = Aws(s).client("dynamodb").scan(TableName=s.table("usage"))["Items"]
    assert len(rows) == 1
    spend, committed = int(rows[0]["spend_micros"]["N"]), int(rows[0]["committed_micros"]["N"])
    assert 0 < spend <= budget * 1e6 and committed == spend  # reservations all settled
    e = out.worker.enricher
    assert e is not None
    assert e.counts["fallback_budget_exhausted"] >= 1
    assert len(bedrock_server.requests()) == e.counts["bedrock_calls"]
    history = Aws(s).client("dynamodb").scan(TableName=s.table("analysis-history"))["Items"]
    assert sum(float(h["cost_usd"]["N"]) for h in history) <= budget


def test_slow_answers_time_out_within_the_deadline_and_fall_back(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
) -> None:
    bedrock_server.script([], default={"kind": "slow", "delay_s": 2.0})
    s = ai_settings(consent_mode="opt_out", bedrock_timeout_s="0.4", bedrock_deadline_s="1.5",
                    analysis_active_days="0")
    out = run(s, [_event("slow", 1)])
    p = out.predictions["slow"]
    assert (p["source"], p["fallback_reason"]) == ("statistical", "timeout")
    assert 2 <= len(bedrock_server.requests()) <= 4  # retried, but only inside the deadline


def test_a_stop_signal_starts_nothing_new_and_waits_only_for_calls_in_flight(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
) -> None:
    bedrock_server.script([], default={"kind": "slow", "delay_s": 0.5})
    s = ai_settings(consent_mode="opt_out", bedrock_concurrency="2", analysis_debounce_s="0")
    events = generate(customers=20, days=10, seed=2)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)

    async def scenario() -> Run:
        async with Aws(s).clients("kinesis", "dynamodb", "bedrock-runtime") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"], bedrock=c["bedrock-runtime"])
            stop = asyncio.Event()
            task = asyncio.create_task(w.run(stop=stop, final_refit=False))
            while w.applier.totals.applied < len(events):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the analyses are queued and two are in flight
            stop.set()
            await task
            preds = {p["customer_id"]: p for p in await w.predictions.all()}
            return Run(w, preds, {})

    out = asyncio.run(scenario())
    e = out.worker.enricher
    assert e is not None
    assert len(e.policy) > 0  # left pending: their customers keep the statistical prediction
    assert len(bedrock_server.requests()) <= 4  # only what was in flight, not the queue
    assert set(out.predictions) == {ev.customer_id for ev in events}  # statistical for all


def test_scheduled_analyses_respect_the_cache_and_on_demand_bypasses_it(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from consumers.refit import refit

    s = ai_settings(consent_mode="opt_out")
    events = [_event(c, d) for c in ("a", "b", "c") for d in (1, 8, 15)]
    run(s, events)
    after_run = len(bedrock_server.requests())
    assert after_run == 3

    async def schedule() -> int:
        async with Aws(s).clients("dynamodb", "bedrock-runtime") as c:
            w = wiring.worker(s, c["dynamodb"], c["dynamodb"], bedrock=c["bedrock-runtime"])
            assert w.enricher is not None
            await w.registry.load()
            await refit(w.customers, w.predictions, w.registry, enricher=w.enricher,
                        active_days=30)
            queued = len(w.enricher.policy)
            await w.enricher.drain()
            assert w.enricher.counts["cache_hits"] == queued
            return queued

    assert asyncio.run(schedule()) == 3  # all three active, none changed: no call
    assert len(bedrock_server.requests()) == after_run

    assert cli.main(["analyze", "b", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["trigger"], answer["source"]) == ("on_demand", "bedrock")
    assert len(bedrock_server.requests()) == after_run + 1
    assert cli.main(["history", "b", "--json"]) == 0
    assert [h["trigger"] for h in json.loads(capsys.readouterr().out)] == ["on_demand", "purchase"]


def test_the_breaker_opens_in_an_outage_and_closes_when_bedrock_recovers(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
) -> None:
    bedrock_server.script([{"kind": "throttle", "times": 15}])  # then: valid answers
    s = ai_settings(consent_mode="opt_out", analysis_debounce_s="0", breaker_failures="2",
                    breaker_reset_s="0.5", bedrock_deadline_s="0.2", bedrock_concurrency="1")

    async def scenario() -> tuple[list[str], str, int]:
        async with running_enricher(s) as (enricher, registry, predictions):
            for n in range(24):  # a customer every 0.15 s for 3.6 s
                cid = f"r{n:02d}"
                rec = StreamRecord(_event(cid, 1).to_bytes(), str(n + 1), cid, "s-0")
                result = process_batch(decode_batch([rec]), {}, registry.view(),
                                       now=datetime.now(UTC))
                await predictions.save(result.predictions)
                enricher.observe(result)
                await asyncio.sleep(0.15)
            await enricher.drain()
            latest = await enricher.store.latest([f"r{n:02d}" for n in range(24)])
            order = [latest[f"r{n:02d}"].fallback_reason or "bedrock" for n in range(24)]
            return order, enricher.breaker.state, enricher.breaker.opened

    order, state, opened = asyncio.run(scenario())
    assert opened >= 1 and state == "closed"
    assert "circuit_open" in order  # refused without a call while open
    assert order[-1] == "bedrock"  # a probe succeeded and the breaker closed again
    first_ok = order.index("bedrock")
    assert set(order[first_ok:]) == {"bedrock"}
