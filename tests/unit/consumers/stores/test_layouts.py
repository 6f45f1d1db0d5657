"""Item layouts, one module per table (``consumers/stores``): every row kind survives a
round trip, and items as existing deployments wrote them still read. Pure functions and
stores over an in-process stand-in for the client; no emulator."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from consumers.analysis.analyzer import statistical_analysis
from consumers.core import Rejected, StreamRecord
from consumers.stores.analyses import document_from_item, record_from_document, record_item
from consumers.stores.audit import AuditEntry, audit_from_item, audit_item
from consumers.stores.checkpoints import (
    JOB_ROW,
    OWNER_KEY,
    Checkpoint,
    JobRow,
    Lease,
    checkpoint_from_item,
    checkpoint_item,
    job_from_item,
    job_item,
    lease_from_item,
    lease_item,
    row_kind,
)
from consumers.stores.customers import state_from_item, state_to_item, totals_from_item
from consumers.stores.dead_letters import DeadLetterStore, dead_letter_item
from consumers.stores.dynamo import Dynamo, Item
from consumers.stores.predictions import customer_of_key, prediction_key
from consumers.stores.usage import day_from_item, non_aws_endpoints, simulated_note
from models.analysis import AnalysisRecord
from models.events import LineItem, PurchaseEvent
from models.prompt import build_input
from models.state import CustomerState, event_digest
from producers.replay.job import JobState
from producers.replay.sources import Cursor


def _without_time(item: Item) -> Item:
    return {k: v for k, v in item.items() if k != "updated_at"}


# -- checkpoints: three kinds of row --------------------------------------------------------


@pytest.mark.parametrize("cp", [Checkpoint("shardId-000000000001", "4960", False),
                                Checkpoint("shardId-000000000002", None, True)])
def test_a_shard_checkpoint_round_trips(cp: Checkpoint) -> None:
    item = checkpoint_item("g", cp)
    assert row_kind(item) == "checkpoint"
    assert checkpoint_from_item(item) == cp
    assert item["group"] == {"S": "g"} and "updated_at" in item


def test_the_lease_row_round_trips_and_keeps_its_layout() -> None:
    lease = Lease("host:123:abc", 1030.5)
    item = lease_item("g", lease)
    assert row_kind(item) == "lease"
    assert lease_from_item(item) == lease
    assert _without_time(item) == {
        "group": {"S": "g"}, "shard_id": {"S": OWNER_KEY}, "owner": {"S": "host:123:abc"},
        "ended": {"BOOL": False}, "expires": {"N": "1030.5"}}


def test_a_lease_row_without_the_optional_attributes_reads() -> None:
    item = {"group": {"S": "g"}, "shard_id": {"S": OWNER_KEY}, "owner": {"S": "h:1:x"},
            "expires": {"N": "9e12"}}
    assert lease_from_item(item) == Lease("h:1:x", 9e12)


@pytest.mark.parametrize("cursor", [None, ("part-0001.jsonl", "1234")])
def test_a_job_row_round_trips(cursor: tuple[str, str] | None) -> None:
    job = JobRow("nightly", 1_700_000_000.25, "abc123", "2 files -> stream", "running",
                 cursor, {"sent": 10, "rejected": {"not_json": 1}}, 77)
    item = job_item("replay:nightly", job)
    assert row_kind(item) == "job"
    assert job_from_item(item) == job
    assert item["shard_id"] == {"S": JOB_ROW} and item["ended"] == {"BOOL": False}
    assert ("cursor_part" in item) == (cursor is not None)


def test_a_job_row_as_existing_deployments_wrote_it_reads() -> None:
    item = {"group": {"S": "replay:j"}, "shard_id": {"S": JOB_ROW}, "ended": {"BOOL": False},
            "job": {"S": "j"}, "identity": {"S": "d"}, "summary": {"S": "s"},
            "created_at": {"N": "1700000000.5"}, "status": {"S": "complete"},
            "rejected_bytes": {"N": "0"}, "tallies": {"S": '{"sent":3}'},
            "updated_at": {"S": "2024-01-01T00:00:00.000+00:00"},
            "cursor_part": {"S": "a"}, "cursor_position": {"S": "7"}}
    state = JobState.from_row(job_from_item(item))
    assert state == JobState("j", 1700000000.5, "d", "s", "complete", Cursor("a", "7"),
                             {"sent": 3}, 0)
    assert _without_time(job_item("replay:j", state.to_row())) == _without_time(item)


def test_a_job_row_with_an_unknown_status_is_refused() -> None:
    row = JobRow("j", 1.0, "d", "s", "paused", None, {}, 0)
    with pytest.raises(ValueError, match="unknown job status 'paused'"):
        JobState.from_row(row)


# -- the other tables ------------------------------------------------------------------------


def _state() -> CustomerState:
    s = CustomerState.new("c1")
    s.apply(PurchaseEvent(
        event_id="e1", order_id="o1", customer_id="c1",
        occurred_at=datetime(2024, 3, 1, tzinfo=UTC), currency="EUR", total=Decimal("12.50"),
        items=[LineItem(product_id="p", category="milk", quantity=1,
                        unit_price=Decimal("12.50"))]))
    return s


def test_a_customer_state_round_trips_and_its_totals_read_alone() -> None:
    s = _state()
    item = state_to_item(s)
    back = state_from_item(item)
    assert back.comparable() == s.comparable()
    assert totals_from_item(item) == ("c1", 1, (("EUR", 1250),))


def test_a_state_written_before_the_bounded_layout_still_loads() -> None:
    # the version-1 item: full day lists, one spend in cents, 8-byte event and order digests
    old_body = ('{"p":2,"s":3000,"q":3,"f":86400,"l":864000,"le":"e2","d":[1,10],'
                '"pr":{"milk":[2,3,3000,[1,10]]},"ca":{"dairy":[2,3,3000,[1,10]]},'
                '"ch":{"web":2},"c":true,"ct":86400,"cu":{"EUR":2}}')
    seen = event_digest("e1").to_bytes(8, "big") + event_digest("e2").to_bytes(8, "big")
    item = {"customer_id": {"S": "c1"}, "version": {"N": "4"}, "body": {"S": old_body},
            "seen": {"B": seen}, "purchases": {"N": "2"}, "spend_cents": {"N": "3000"}}
    s = state_from_item(item)
    assert (s.version, s.purchases, s.purchase_days, s.spend_minor) == (4, 2, 2, {"EUR": 3000})
    assert (s.first_day, s.last_day, s.products["milk"].mean_gap) == (1, 10, 9.0)
    redelivered = PurchaseEvent(
        event_id="e2", order_id="o2", customer_id="c1",
        occurred_at=datetime(1970, 1, 11, tzinfo=UTC), currency="EUR", total=Decimal("1.00"),
        items=[LineItem(product_id="milk", category="dairy", quantity=1,
                        unit_price=Decimal("1.00"))])
    assert s.apply(redelivered) == "duplicate"
    # version 1 kept no times: e1, of day 1, redelivered is a duplicate too (not a reused id)
    first = redelivered.model_copy(update={"event_id": "e1", "order_id": "o1",
                                           "occurred_at": datetime(1970, 1, 2, tzinfo=UTC)})
    assert s.apply(first) == "duplicate"
    assert s.apply(redelivered.model_copy(update={"event_id": "e3"})) == "applied"
    assert (s.purchases, s.purchase_days, s.spend_minor) == (3, 2, {"EUR": 3100})


def test_the_customer_id_of_a_predictions_key() -> None:
    assert customer_of_key(prediction_key("c1")) == "c1"
    assert customer_of_key({}) is None


def test_an_analysis_record_round_trips_through_its_document() -> None:
    s = _state()
    x = build_input(s, None, as_of_ts=s.last_ts, key=b"k", reference_order_value=10.0)
    rec = AnalysisRecord(customer_id="c1", at=datetime(2024, 3, 2, tzinfo=UTC),
                         as_of=date(2024, 3, 1), source="statistical", model="statistical",
                         trigger="on_demand", analysis=statistical_analysis(x))
    doc = document_from_item(record_item(rec))
    assert doc["customer_id"] == "c1" and doc["trigger"] == "on_demand"
    assert record_from_document(doc) == rec


def test_an_audit_entry_round_trips() -> None:
    entry = AuditEntry("r1", "erase", "2024-01-01T00:00:00+00:00", "495",
                       {"customers": 1, "dead-letters": 0})
    item = audit_item(entry)
    assert item["deleted"] == {"M": {"customers": {"N": "1"}, "dead-letters": {"N": "0"}}}
    assert audit_from_item(item) == entry


def test_a_usage_day_reads_as_caa_costs_shows_it() -> None:
    item = {"day": {"S": "2024-01-02"}, "spend_micros": {"N": "1500"}, "calls": {"N": "3"},
            "committed_micros": {"N": "0"}, "fallback_timeout": {"N": "2"},
            "fallbacks": {"N": "2"}, "failed_analyses": {"N": "1"}}
    # failed_analyses as the writers name it (caa costs read failed_calls, always 0)
    assert day_from_item(item, 5.0) == {
        "day": "2024-01-02", "spend_usd": 0.0015, "budget_usd": 5.0, "calls": 3,
        "failed_analyses": 1, "input_tokens": 0, "output_tokens": 0, "analyses": 0,
        "fallbacks": 2, "fallback_reasons": {"timeout": 2}, "cache_hits": 0, "endpoints": []}
    assert non_aws_endpoints([day_from_item(item, 5.0)]) == []


def test_a_usage_day_says_when_its_calls_did_not_go_to_aws() -> None:
    test_server = "test server at http://127.0.0.1:4599 (canned answers)"
    item = {"day": {"S": "2024-01-02"}, "calls": {"N": "3"},
            "endpoints": {"SS": [test_server, "http://localhost:9000"]}}
    row = day_from_item(item, 5.0)
    assert row["endpoints"] == ["http://localhost:9000", test_server]
    assert non_aws_endpoints([row, {"day": "2024-01-03", "endpoints": []}]) == row["endpoints"]
    note = simulated_note([test_server])
    assert note is not None and "local test server (canned answers)" in note
    assert "what AWS would charge" in note
    assert "http://localhost:9000" in (simulated_note(row["endpoints"]) or "")
    assert simulated_note([]) is None


class _Scanned:
    """A DynamoDB client that answers every scan with these items (segment 0 only)."""

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    async def scan(self, **kw: Any) -> dict[str, Any]:
        return {"Items": self.items if kw.get("Segment", 0) == 0 else []}


def _letter(seq: str, status: str, received_at: str) -> Item:
    rec = StreamRecord(b"{oops", seq, "c1", "shardId-0", "s")
    item = dead_letter_item(Rejected(rec, "not_json", "not JSON"))
    return {**item, "status": {"S": status}, "received_at": {"S": received_at}}


def test_dead_letters_read_back_as_plain_values_in_each_readers_order() -> None:
    items = [_letter("2", "open", "2024-01-01T00:00:02"),
             _letter("1", "redriven", "2024-01-01T00:00:03"),
             _letter("3", "open", "2024-01-01T00:00:01")]
    store = DeadLetterStore(Dynamo(_Scanned(items)), "dl")
    opened = asyncio.run(store.open())
    assert [d["id"] for d in opened] == ["s/shardId-0/2", "s/shardId-0/3"]
    assert opened[0]["payload"] == b"{oops" and opened[0]["partition_key"] == "c1"
    arrived = asyncio.run(store.by_arrival())
    assert [d["sequence_number"] for d in arrived] == ["3", "2"]
    everything = asyncio.run(store.by_arrival(open_only=False))
    assert [d["sequence_number"] for d in everything] == ["3", "2", "1"]
