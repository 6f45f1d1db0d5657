"""`caa replay` of refunds and cancellations (issue 14 item 7) against moto's server: a
JSON Lines file of the synthetic stream with them (some refunds before their purchase)
is checked, tallied by type, published under the customer's partition key in each
customer's order, consumed with nothing dead-lettered; and the stream and a direct
backfill of it end in the same states."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from caa.aws import Aws
from caa.settings import Settings
from models.events import (
    CancellationEvent,
    PurchaseEvent,
    RefundEvent,
    StreamEvent,
    decode_event,
)
from producers.datasets.synthetic import generate_stream
from producers.replay.sources import KinesisSource
from tests.integration.replay_fixtures import consume, replay, tables, write_jsonl_gz

pytestmark = pytest.mark.integration

EVENTS = generate_stream(customers=30, days=60, seed=21, cancel_rate=0.1, refund_rate=0.15,
                         early_refund_rate=0.3)


def _kinds(events: list[StreamEvent]) -> dict[str, int]:
    names = {PurchaseEvent: "purchase", RefundEvent: "refund",
             CancellationEvent: "cancellation"}
    return dict(Counter(names[type(e)] for e in events))


def _early(events: list[StreamEvent]) -> list[RefundEvent]:
    placed = {e.order_id: i for i, e in enumerate(events) if isinstance(e, PurchaseEvent)}
    return [e for i, e in enumerate(events)
            if isinstance(e, RefundEvent) and i < placed[e.order_id]]


def _per_customer(events: list[StreamEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        out[e.customer_id].append(e.event_id)
    return dict(out)


def _file(tmp_path: Path, garbage: bool = True) -> Path:
    lines = [e.to_bytes() for e in EVENTS]
    if garbage:
        refund = next(e for e in EVENTS if isinstance(e, RefundEvent))
        bad = json.loads(refund.to_bytes())
        # a refund without its order, and one in a type the schema does not have
        lines.insert(40, json.dumps({**bad, "event_id": "bad-1", "order_id": None}).encode())
        lines.insert(80, json.dumps({**bad, "event_id": "bad-2", "type": "chargeback"}).encode())
    return write_jsonl_gz(tmp_path / "with-refunds.jsonl.gz", lines)


def test_the_file_holds_every_kind_and_refunds_before_their_purchase() -> None:
    kinds = _kinds(EVENTS)
    assert kinds["refund"] >= 20 and kinds["cancellation"] >= 10
    assert _early(EVENTS), "no refund before its purchase: pick another seed"


def test_refunds_and_cancellations_are_tallied_published_in_order_and_consumed(
    fresh_settings: Callable[..., Settings], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(segment_warmup="50", refit_interval_s="0")
    path = _file(tmp_path)

    dry = replay(capsys, str(path), "--dry-run", expect=1)["report"]
    assert dry["types"] == _kinds(EVENTS) and dry["invalid"] == {"schema": 2}

    out = replay(capsys, str(path))
    r = out["report"]
    assert out["status"] == "complete"
    assert (r["records"], r["valid"], r["published"]) == (len(EVENTS) + 2, len(EVENTS),
                                                          len(EVENTS))
    assert r["types"] == _kinds(EVENTS)  # refunds and cancellations counted apart
    assert r["invalid"] == {"schema": 2}
    assert r["customers"] == len({e.customer_id for e in EVENTS})
    assert r["first_at"] == min(e.occurred_at for e in EVENTS).astimezone(UTC).isoformat()
    assert r["last_at"] == max(e.occurred_at for e in EVENTS).astimezone(UTC).isoformat()
    logged = [json.loads(x) for x in Path(out["rejected_log"]).read_text().splitlines()]
    assert [json.loads(x["data"])["event_id"] for x in logged] == ["bad-1", "bad-2"]
    assert "order_id" in logged[0]["reason"] and "chargeback" in logged[1]["reason"]

    # on the stream: under the customer id, each customer's events in the file's order
    # (the refunds put before their purchase stay before it)
    source = KinesisSource(Aws(s).client("kinesis"), s.stream_name, None, datetime.now(UTC))
    on_stream: list[StreamEvent] = []
    for part in source.parts():
        for rec in source.read(part, None, lambda _n: None):
            event = decode_event(rec.data)
            assert rec.key == event.customer_id
            on_stream.append(event)
    assert sorted(on_stream, key=lambda e: e.event_id) == sorted(EVENTS,
                                                                 key=lambda e: e.event_id)
    assert _per_customer(on_stream) == _per_customer(EVENTS)

    totals = consume(s)
    assert (totals.records, totals.rejected) == (len(EVENTS), 0)  # none dead-lettered
    assert totals.duplicate == 0
    # a cancelled order does not count (the refunds change the money, not the count)
    orders: Counter[str] = Counter(e.customer_id for e in EVENTS if isinstance(e, PurchaseEvent))
    orders.subtract(e.customer_id for e in EVENTS if isinstance(e, CancellationEvent))
    states = tables(s).states
    assert {c: x.purchases for c, x in states.items()} == dict(orders)
    # and the money: what was kept of the orders not cancelled, in cents of their currency
    spend: Counter[str] = Counter()
    cancelled = {e.order_id for e in EVENTS if isinstance(e, CancellationEvent)}
    for e in EVENTS:
        if isinstance(e, PurchaseEvent) and e.order_id not in cancelled:
            spend[e.customer_id] += int(e.total * 100)
        elif isinstance(e, RefundEvent):
            spend[e.customer_id] -= int(e.amount * 100)
    assert {c: x.spend_minor.get("EUR", 0) for c, x in states.items()} == {
        c: spend[c] for c in states}
    assert {cur for x in states.values() for cur, n in x.spend_minor.items() if n} <= {"EUR"}


def test_the_stream_and_a_direct_backfill_of_refunds_give_the_same_states(
    fresh_settings: Callable[..., Settings], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _file(tmp_path, garbage=False)
    a = fresh_settings(segment_warmup="50", refit_interval_s="0")
    assert replay(capsys, str(path))["report"]["published"] == len(EVENTS)
    assert consume(a).records == len(EVENTS)
    via_stream = tables(a)

    b = fresh_settings(segment_warmup="50", refit_interval_s="0")  # other stream, tables
    direct = replay(capsys, str(path), "--to", "direct")["report"]
    assert direct["types"] == _kinds(EVENTS)
    assert (direct["valid"], direct["duplicates"], direct["dead_lettered"]) == (
        len(EVENTS), 0, 0)
    backfilled = tables(b)
    assert not backfilled.dead
    assert {c: x.to_json() for c, x in via_stream.states.items()} == \
        {c: x.to_json() for c, x in backfilled.states.items()}
    assert set(via_stream.predictions) == set(backfilled.predictions)
