"""Consent and erasure, through the stream and the real consumer on the emulator.

Consent events change only consent and take effect for the next analysis; `caa erase`
removes a customer from every table, the history, the dead letters and the analysis
cache, writes an audit entry without personal data, and a consumer holding the
customer's state in its cache cannot bring them back. A second consumer group
re-reading the whole stream ends in the same place.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from consumers.analysis.on_demand import on_demand
from consumers.sources.worker import Worker
from consumers.stores.analyses import is_tombstone
from consumers.stores.customers import CustomerStore
from consumers.stores.predictions import PredictionStore
from models.analysis import AnalysisRecord
from models.events import ConsentEvent, PurchaseEvent
from models.state import CustomerState
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _consent(cid: str, analysis: bool, like: PurchaseEvent, n: int) -> ConsentEvent:
    return ConsentEvent(type="consent", event_id=f"consent-{cid}-{n}", customer_id=cid,
                        occurred_at=like.occurred_at + timedelta(hours=1), analysis=analysis)


async def _states(w: Worker) -> dict[str, CustomerState]:
    return {s.customer_id: s for s in await w.customers.all()}


async def _statistical(s: Settings, db: Any, cid: str) -> AnalysisRecord:
    """The statistical analysis of ``cid``'s stored state (``db``: :func:`wiring.dynamo`)."""
    t = wiring.tables(s)
    rec = await on_demand(CustomerStore(db, t.customers), PredictionStore(db, t.predictions),
                          wiring.registry(s, db), None, cid, lambda: wiring.pseudonym_key(s))
    assert rec is not None
    return rec


def _items(s: Settings, table: str) -> list[dict[str, Any]]:
    return list(Aws(s).client("dynamodb").scan(TableName=s.table(table))["Items"])


def test_consent_and_erasure_hold_through_the_consumer(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(shard_count="2", refit_interval_s="0")
    events = time_ordered([e for e in load_events(limit=600) if int(e.customer_id) <= 60])
    by_cid: dict[str, list[PurchaseEvent]] = {}
    for e in events:
        by_cid.setdefault(e.customer_id, []).append(e)
    keep, gone = sorted(c for c in by_cid if len(by_cid[c]) >= 2)[:2]
    kinesis = Aws(s).client("kinesis")
    publisher = Publisher(kinesis, s.stream_name)
    publisher.publish(events)
    kinesis.put_record(StreamName=s.stream_name, Data=b"{broken " + gone.encode(),
                       PartitionKey=gone)  # a dead letter holding the customer's key
    # consent: withdrawn for `keep`; stated by a customer who has not bought yet
    for event in (_consent(keep, False, by_cid[keep][-1], 1),
                  _consent("newcomer", True, events[0], 1)):
        kinesis.put_record(StreamName=s.stream_name, Data=event.to_bytes(),
                           PartitionKey=event.customer_id)
    db = Aws(s).client("dynamodb")
    for table, item in (("analyses", {"customer_id": {"S": gone}, "x": {"S": "cached"}}),
                        ("analysis-history", {"customer_id": {"S": gone},
                                              "at": {"S": "2024-01-01T00:00:00Z"}}),
                        ("analysis-history", {"customer_id": {"S": gone},
                                              "at": {"S": "2024-01-02T00:00:00Z"}})):
        db.put_item(TableName=s.table(table), Item=item)
    later = by_cid[gone][-1].model_copy(update={
        "event_id": f"after-erasure-{gone}",
        "occurred_at": by_cid[gone][-1].occurred_at + timedelta(days=1)})

    async def scenario() -> tuple[dict[str, CustomerState], dict[str, CustomerState],
                                  int, int]:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"])
            await w.run(until_idle=True, final_refit=False)
            before = await _states(w)
            cached, _ = w.applier.cache.get_many([gone])
            assert gone in cached  # the consumer holds the state it is about to lose
            loop = asyncio.get_running_loop()  # the CLI runs its own event loop
            assert await loop.run_in_executor(None, cli.main, ["erase", gone, "--json"]) == 0
            # a purchase after the erasure, then an old one re-published (a replay)
            publisher.publish([later, by_cid[gone][0]])
            await w.run(until_idle=True, final_refit=False)
            return before, await _states(w), w.applier.totals.applied, \
                w.applier.totals.duplicate

    before, after, applied, duplicate = asyncio.run(scenario())
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert (before[keep].consent, before[keep].purchases) == (False, len(by_cid[keep]))
    assert before["newcomer"].purchases == 0 and before["newcomer"].consent is True
    assert before[gone].purchases == len(by_cid[gone])
    assert report["deleted"] == {"customers": 1, "predictions": 1, "analyses": 1,
                                 "analysis-history": 2, "dead-letters": 1}
    # erased: only what was published after the erasure makes the new customer
    assert (after[gone].purchases, after[gone].last_event_id) == (2, later.event_id)
    assert applied == len(events) + 2 + 1 + 2  # purchases, consents, erasure, two after
    assert duplicate == 0
    for cid, bought in by_cid.items():
        if cid != gone:
            assert after[cid].purchases == len(bought)

    # the latest analysis is a tombstone: no record, only the erasure's time, expiring
    (tombstone,) = _items(s, "analyses")
    assert set(tombstone) == {"customer_id", "erased", "input_at", "expires_at"}
    assert tombstone["customer_id"]["S"] == gone
    assert _items(s, "analysis-history") == []
    assert not [d for d in _items(s, "dead-letters") if d["partition_key"]["S"] == gone]
    (audit,) = _items(s, "audit")
    assert gone not in json.dumps(audit)  # no personal data in the audit entry
    assert audit["id"]["S"] == report["request_id"] and audit["action"]["S"] == "erase"
    assert "newcomer" not in {p["customer_id"]["S"] for p in _items(s, "predictions")}


def test_erased_customer_is_not_found_and_a_reread_agrees(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(shard_count="1", refit_interval_s="0")
    events = time_ordered([e for e in load_events(limit=200) if int(e.customer_id) <= 20])
    gone = events[0].customer_id
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)

    async def consume(group: str) -> dict[str, CustomerState]:
        t = s.model_copy(update={"consumer_group": group})
        async with Aws(t).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(t, c["kinesis"], c["dynamodb"])
            await w.run(until_idle=True, final_refit=False)
            return await _states(w)

    assert gone in asyncio.run(consume("first"))
    assert cli.main(["show", gone]) == 0
    assert cli.main(["erase", gone]) == 0
    assert cli.main(["show", gone]) == 6  # NotFound: gone at once, before the consumer ran
    capsys.readouterr()
    first = asyncio.run(consume("first"))
    reread = asyncio.run(consume("second"))  # the whole stream again, erasure included
    assert gone not in first and gone not in reread
    assert {c: x.purchases for c, x in first.items()} == \
        {c: x.purchases for c, x in reread.items()}
    assert cli.main(["show", gone]) == 6  # caa.errors.NotFound


def test_an_erasure_event_from_the_producers_erases_the_analyses_too(
    fresh_settings: Callable[..., Settings],
) -> None:
    """The orders service publishes the erasure itself (no ``caa erase``): the consumer
    applying it deletes the state and the prediction, and the latest analysis and the
    analysis history, leaving a tombstone; an analysis of the erased history that lands
    later (a Bedrock call that was in flight) is stored nowhere."""
    s = fresh_settings(shard_count="1", refit_interval_s="0")
    events = time_ordered([e for e in load_events(limit=200) if int(e.customer_id) <= 20])
    gone, kept = events[0].customer_id, events[-1].customer_id
    assert gone != kept
    kinesis = Aws(s).client("kinesis")
    Publisher(kinesis, s.stream_name).publish(events)

    async def consume() -> None:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"])
            await w.run(until_idle=True, final_refit=False)

    asyncio.run(consume())
    stale: list[AnalysisRecord] = []

    async def analyse_both() -> None:  # the statistical analyses, stored as the enricher does
        async with Aws(s).clients("dynamodb") as c:
            db = wiring.dynamo(s, c["dynamodb"])
            store = wiring.analysis_store(s, db)
            for cid in (gone, kept):
                rec = await _statistical(s, db, cid)
                stale.append(rec)
                assert await store.record(rec) == "latest"

    asyncio.run(analyse_both())
    erasure = {"type": "erasure", "event_id": f"erase-{gone}", "customer_id": gone,
               "occurred_at": events[-1].occurred_at.isoformat()}
    kinesis.put_record(StreamName=s.stream_name, Data=json.dumps(erasure).encode(),
                       PartitionKey=gone)
    asyncio.run(consume())

    latest = {i["customer_id"]["S"]: i for i in _items(s, "analyses")}
    assert is_tombstone(latest[gone]) and not is_tombstone(latest[kept])
    history = {i["customer_id"]["S"] for i in _items(s, "analysis-history")}
    assert history == {kept}
    assert gone not in {p["customer_id"]["S"] for p in _items(s, "predictions")}

    async def late() -> str:  # the in-flight analysis of the erased customer lands now
        async with Aws(s).clients("dynamodb") as c:
            store = wiring.analysis_store(s, wiring.dynamo(s, c["dynamodb"]))
            return await store.record(stale[0].model_copy(
                update={"at": stale[0].at + timedelta(seconds=1)}), input_at=stale[0].at)

    assert asyncio.run(late()) == "erased"
    assert {i["customer_id"]["S"] for i in _items(s, "analysis-history")} == {kept}


def test_an_erasure_between_an_analysis_writes_takes_the_analysis_back(
    fresh_settings: Callable[..., Settings],
) -> None:
    """``caa erase`` runs after an analysis's latest was written but before its history
    item and merge: the erasure's history query missed them. Reading the latest back, the
    analysis finds the tombstone and takes its own writes back: nothing of it stays."""
    from consumers.stores.analyses import AnalysisStore

    s = fresh_settings(shard_count="1", refit_interval_s="0")
    events = time_ordered([e for e in load_events(limit=100) if int(e.customer_id) <= 5])
    cid = events[0].customer_id
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)

    class ErasedMidway(AnalysisStore):
        async def merge(self, rec: AnalysisRecord) -> None:
            await super().merge(rec)
            await self.erase(rec.customer_id, rec.at - timedelta(minutes=10))

    async def scenario() -> str:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            await wiring.worker(s, c["kinesis"], c["dynamodb"]).run(
                until_idle=True, final_refit=False)
            db = wiring.dynamo(s, c["dynamodb"])
            t = wiring.tables(s)
            rec = await _statistical(s, db, cid)
            store = ErasedMidway(db, t.analyses, t.analysis_history, t.predictions)
            return await store.record(rec, input_at=rec.at - timedelta(minutes=20))

    assert asyncio.run(scenario()) == "erased"
    assert _items(s, "analysis-history") == []
    (latest,) = _items(s, "analyses")
    assert is_tombstone(latest)
    prediction = Aws(s).client("dynamodb").get_item(
        TableName=s.table("predictions"), Key={"customer_id": {"S": cid}})["Item"]
    assert "analysis" not in prediction and "analysis_at" not in prediction


def test_an_erasure_followed_in_its_batch_by_a_new_purchase_leaves_nothing_of_the_old(
    ai_settings: Callable[..., Settings],
) -> None:
    """The erasure reaches the consumer in one batch with a later purchase of the same id
    (a new customer) and with poison records of that key before and after it. The
    analyses of the erased history go (a tombstone stays), the new customer's prediction
    carries none of them, and of the dead letters only the one after the erasure stays (the
    one before holds the erased customer's raw record; a consumer lagging behind ``caa
    erase`` writes such letters after its own delete)."""
    s = ai_settings(shard_count="1", refit_interval_s="0")
    events = time_ordered([e for e in load_events(limit=200) if int(e.customer_id) <= 20])
    gone = events[0].customer_id
    kinesis = Aws(s).client("kinesis")
    Publisher(kinesis, s.stream_name).publish(events)
    old_at: set[str] = set()

    async def consume() -> tuple[int, int]:  # erasures, dead letters they deleted
        async with Aws(s).clients("kinesis", "dynamodb", "bedrock-runtime") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"], bedrock=c["bedrock-runtime"])
            await w.run(until_idle=True, final_refit=False)
            return w.applier.totals.erasures, w.applier.totals.dead_letters_erased

    async def analyse() -> None:  # a statistical analysis of the old history, stored
        async with Aws(s).clients("dynamodb") as c:
            db = wiring.dynamo(s, c["dynamodb"])
            rec = await _statistical(s, db, gone)
            assert await wiring.analysis_store(s, db).record(rec) == "latest"

    asyncio.run(consume())
    asyncio.run(analyse())
    old_at |= {i["at"]["S"] for i in _items(s, "analysis-history")
               if i["customer_id"]["S"] == gone}
    assert old_at
    last = events[-1]
    erasure = {"type": "erasure", "event_id": f"erase-{gone}", "customer_id": gone,
               "occurred_at": last.occurred_at.isoformat()}
    anew = last.model_copy(update={"event_id": f"anew-{gone}", "order_id": f"anew-{gone}",
                                   "customer_id": gone,
                                   "occurred_at": last.occurred_at + timedelta(days=1)})
    sent = kinesis.put_records(StreamName=s.stream_name, Records=[
        {"Data": b'{"before": "the erasure"}', "PartitionKey": gone},
        {"Data": json.dumps(erasure).encode(), "PartitionKey": gone},
        {"Data": anew.to_bytes(), "PartitionKey": gone},
        {"Data": b'{"after": "the erasure"}', "PartitionKey": gone}])
    before_seq, after_seq = (sent["Records"][i]["SequenceNumber"] for i in (0, 3))
    assert asyncio.run(consume()) == (1, 1)  # the summary's figures

    states = {i["customer_id"]["S"]: i for i in _items(s, "customers")}
    assert states[gone]["version"]["N"] != "0"  # the new customer is saved
    latest = {i["customer_id"]["S"]: i for i in _items(s, "analyses")}
    assert is_tombstone(latest[gone])
    assert not old_at & {i["at"]["S"] for i in _items(s, "analysis-history")
                         if i["customer_id"]["S"] == gone}
    prediction = {i["customer_id"]["S"]: i for i in _items(s, "predictions")}[gone]
    assert prediction["purchases"]["N"] == "1"
    # no analysis: the old one is not carried over, and the new customer's, filed within
    # the tombstone's clock margin of the erasure, is refused
    assert "analysis" not in prediction and "analysis_at" not in prediction
    letters = {d["sequence_number"]["S"] for d in _items(s, "dead-letters")
               if d["partition_key"]["S"] == gone}
    assert letters == {after_seq} and before_seq not in letters
