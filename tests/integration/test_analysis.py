"""AI analysis end to end: Kinesis and DynamoDB on moto's server, Bedrock on the
Bedrock-protocol test server; both real processes reached over HTTP by endpoint URL."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from consumers.analysis.enricher import Enricher
from consumers.core import StreamRecord, decode_batch, process_batch
from consumers.registry import ModelRegistry
from consumers.sources.worker import Worker
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from deploy.local.bedrock_server import BedrockServer
from deploy.local.emulator import free_port
from models.events import Contact, LineItem, PurchaseEvent
from models.prompt import pseudonym
from models.state import CustomerState
from producers.datasets.synthetic import generate
from producers.publisher import Publisher

pytestmark = pytest.mark.integration
KEY = b"test-key-0123456789abcdef0123456789"
_DATA = re.compile(r"<customer_data>\n(.*)\n</customer_data>", re.S)


@dataclass
class Run:
    worker: Worker
    predictions: dict[str, dict[str, Any]]
    checkpoints: dict[str, str | None]


async def _run(s: Settings) -> Run:
    async with Aws(s).clients("kinesis", "dynamodb", "bedrock-runtime", "cloudwatch") as c:
        w = wiring.worker(s, c["kinesis"], c["dynamodb"], bedrock=c["bedrock-runtime"],
                          cloudwatch=c["cloudwatch"])
        await w.run(until_idle=True)
        preds = {p["customer_id"]: p for p in await w.predictions.all()}
        cps = {k: v.sequence_number for k, v in (await w.checkpoints.all()).items()}
        return Run(w, preds, cps)


def run(s: Settings, events: list[PurchaseEvent]) -> Run:
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    return asyncio.run(_run(s))


@asynccontextmanager
async def running_enricher(
    s: Settings,
) -> AsyncIterator[tuple[Enricher, ModelRegistry, PredictionStore]]:
    """An enricher on the real clients, its loop running for the duration."""
    async with Aws(s).clients("dynamodb", "bedrock-runtime") as c:
        db = Dynamo(c["dynamodb"])
        registry = wiring.registry(s, db)
        enricher = wiring.enricher(s, db, c["bedrock-runtime"], registry)
        stop = asyncio.Event()
        loop = asyncio.create_task(enricher.run(stop))
        try:
            yield enricher, registry, PredictionStore(db, s.table("predictions"))
        finally:
            stop.set()
            await loop


def customer_data(request: dict[str, Any]) -> dict[str, Any]:
    text = request["body"]["messages"][0]["content"][0]["text"]
    found = _DATA.search(text)
    assert found, text
    return dict(json.loads(found.group(1)))


def last_sequence_per_shard(s: Settings) -> dict[str, str]:
    kinesis = Aws(s).client("kinesis")
    out = {}
    for shard in kinesis.list_shards(StreamName=s.stream_name)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=s.stream_name, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        records = kinesis.get_records(ShardIterator=it, Limit=10_000)["Records"]
        if records:
            out[shard["ShardId"]] = records[-1]["SequenceNumber"]
    return out


def test_every_customer_is_analysed_and_no_prompt_carries_personal_data(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = ai_settings(consent_mode="opt_in")
    assert s.bedrock_endpoint_url == bedrock_server.endpoint  # AWS_ENDPOINT_URL_BEDROCK_RUNTIME
    events = generate(customers=24, days=45, seed=11)
    out = run(s, events)

    consenting = {e.customer_id for e in events if e.consent}
    refused = {e.customer_id for e in events} - consenting
    assert consenting and refused
    assert set(out.predictions) == consenting | refused
    for cid, p in out.predictions.items():
        assert p["analysis"] is not None, cid
        if cid in consenting:
            assert (p["source"], p["fallback_reason"]) == ("bedrock", None)
            assert p["analysis_model"] == s.bedrock_model_id
        else:
            assert (p["source"], p["fallback_reason"]) == ("statistical", "no_consent")

    requests = bedrock_server.requests()
    assert requests and all(r["authorized"] for r in requests)
    assert {r["model_id"] for r in requests} == {s.bedrock_model_id}
    subjects = {customer_data(r)["subject"] for r in requests}
    assert subjects == {pseudonym(KEY, cid) for cid in consenting}  # refusals never sent
    bodies = "\n".join(json.dumps(r["body"]) for r in requests)
    for e in events:
        assert e.contact is not None
        needles = [e.customer_id, e.contact.name, e.contact.email, e.contact.phone,
                   e.contact.address]
        leaked = [n for n in needles if n and n in bodies]
        assert not leaked, leaked
    for r in requests:
        body = r["body"]
        assert body["inferenceConfig"]["maxTokens"] == s.bedrock_max_tokens
        assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "record_customer_analysis"}}
    raw = json.dumps(Aws(s).client("dynamodb").scan(TableName=s.table("customers"))["Items"],
                     default=repr)
    assert "@example.com" not in raw and "Market Street" not in raw  # PII is not stored

    # `caa costs` and `caa history` answer from the tables the run wrote.
    assert cli.main(["costs", "--json"]) == 0
    days = json.loads(capsys.readouterr().out)
    assert len(days) == 1
    assert days[0]["calls"] == len(requests)
    assert days[0]["spend_usd"] > 0
    assert days[0]["fallback_reasons"]["no_consent"] >= len(refused)
    cid = sorted(consenting)[0]
    assert cli.main(["history", cid, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history and history[0]["source"] == "bedrock" and history[0]["input_tokens"] > 0

    # ... and the same figures reached CloudWatch as metrics
    cw = Aws(s).client("cloudwatch")
    dims = [{"Name": "Model", "Value": s.bedrock_model_id},
            {"Name": "Stream", "Value": s.stream_name}]
    now = datetime.now(UTC)

    def total(name: str) -> float:
        stats = cw.get_metric_statistics(
            Namespace="CustomerAIAnalytics", MetricName=name, Dimensions=dims,
            StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5),
            Period=3600, Statistics=["Sum"])["Datapoints"]
        return float(sum(d["Sum"] for d in stats))

    assert total("bedrock_calls") == len(requests)
    assert total("fallback_no_consent") == days[0]["fallback_reasons"]["no_consent"]
    assert total("cost_usd") == pytest.approx(days[0]["spend_usd"], abs=1e-5)


def _event(cid: str, day: int, product: str = "milk", consent: bool | None = None,
           price: str = "2.00") -> PurchaseEvent:
    return PurchaseEvent(
        event_id=f"{cid}-{day}-{product}", order_id=f"o-{cid}-{day}-{product}", customer_id=cid,
        occurred_at=datetime(2024, 1, 1, 10, tzinfo=UTC) + timedelta(days=day), currency="EUR",
        items=[LineItem(product_id=product, category="food", quantity=1,
                        unit_price=Decimal(price))],
        total=Decimal(price), consent=consent,
        contact=Contact(name="Erika Mustermann", email="erika@example.org"),
    )


@pytest.mark.parametrize(("mode", "analysed"), [("opt_in", {"yes"}), ("opt_out", {"yes", "unk"})])
def test_consent_modes(ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
                       mode: str, analysed: set[str]) -> None:
    s = ai_settings(consent_mode=mode)
    events = [_event("yes", 1, consent=True), _event("no", 1, consent=False), _event("unk", 1),
              _event("no", 2, consent=True), _event("no", 3, consent=False)]  # latest: refused
    out = run(s, events)
    sent = {customer_data(r)["subject"] for r in bedrock_server.requests()}
    assert sent == {pseudonym(KEY, c) for c in analysed}
    for cid in {"yes", "no", "unk"} - analysed:
        assert out.predictions[cid]["fallback_reason"] == "no_consent"


def test_purchases_inside_the_window_make_one_call_and_small_changes_hit_the_cache(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
) -> None:
    s = ai_settings(consent_mode="opt_out", analysis_debounce_s="1.0")

    async def scenario() -> list[str]:
        async with running_enricher(s) as (enricher, registry, predictions):
            states: dict[str, CustomerState] = {}
            seq = 0

            async def buy(day: int, product: str = "milk") -> None:
                nonlocal seq
                seq += 1
                rec = StreamRecord(_event("c1", day, product).to_bytes(), str(seq), "c1", "s-0")
                result = process_batch(decode_batch([rec]), states, registry.view(),
                                       now=datetime.now(UTC))
                states.update(result.states)
                await predictions.save(result.predictions)
                enricher.observe(result)

            for day in range(5):  # five purchases inside one 1 s window
                await buy(day)
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.6)
            calls = [len(bedrock_server.requests())]
            await buy(5)  # one more purchase day of the same product: 5 -> 6 days, < 25 %
            await asyncio.sleep(1.6)
            calls.append(len(bedrock_server.requests()))
            await buy(6, "bread")  # a product the last analysis did not see
            await asyncio.sleep(1.6)
            calls.append(len(bedrock_server.requests()))
            assert enricher.counts["cache_hits"] == 1
            return [str(n) for n in calls]

    assert asyncio.run(scenario()) == ["1", "1", "2"]
    first, second = bedrock_server.requests()
    assert customer_data(first)["purchases"] == 5  # the one call reflects all five
    assert customer_data(second)["purchases"] == 7


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

    assert cli.main(["analyze", "b"]) == 0
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
