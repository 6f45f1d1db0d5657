"""KPL de-aggregation (models.kpl, consumers.sources.records) and user-record positions
through the core, the dead letters and the KCL processor."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator

from consumers.core import (
    BatchResult,
    ModelView,
    StreamRecord,
    arrival,
    decode_batch,
    process_batch,
)
from consumers.sources.kcl_processor import Processor
from consumers.sources.records import (
    epoch_seconds,
    expand,
    from_kcl,
    from_kinesis,
    from_lambda,
)
from consumers.stores.dead_letters import dead_letter_id, dead_letter_item
from models.events import EventRejected, decode_event
from models.kpl import MAGIC, BadAggregate, aggregate_defect, deaggregate
from models.learn.forecaster import DEFAULT_PRIOR, Forecaster
from models.learn.segmentation import SegmentModel


def purchase(event_id: str, customer_id: str, cents: int, hours_ago: int = 1) -> bytes:
    at = (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()
    price = f"{cents // 100}.{cents % 100:02d}"
    return json.dumps({
        "event_id": event_id, "order_id": f"o-{event_id}", "customer_id": customer_id,
        "occurred_at": at, "currency": "EUR",
        "items": [{"product_id": "p", "category": "k", "quantity": 1, "unit_price": price}],
        "total": price}).encode()


#: the issue's example: 3 purchases of 2 customers in one KPL record
PURCHASES = [("c1", purchase("e1", "c1", 250)), ("c2", purchase("e2", "c2", 1000)),
             ("c1", purchase("e3", "c1", 125, hours_ago=2))]


def aggregate(users: Sequence[tuple[str, bytes]]) -> tuple[str, bytes]:
    """(partition key, data) of one Kinesis record holding ``users``, made by
    aws-kinesis-agg's aggregator as the KPL makes it."""
    agg = RecordAggregator()
    for pk, data in users:
        assert agg.add_user_record(pk, data) is None  # all fit in one record
    pk, _ehk, blob = agg.clear_and_get().get_contents()
    return str(pk), bytes(blob)


def corrupt(blob: bytes) -> bytes:
    """The same aggregate with one bit of its protobuf flipped: the MD5 no longer matches."""
    i = len(MAGIC) + 3
    return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]


def with_md5(message: bytes) -> bytes:
    return MAGIC + message + hashlib.md5(message).digest()


# -- models.kpl ------------------------------------------------------------------------------


def test_an_aggregate_gives_its_user_records_in_order() -> None:
    _, blob = aggregate(PURCHASES)
    users = deaggregate(blob)
    assert users is not None
    assert [(u.partition_key, u.data) for u in users] == PURCHASES
    assert aggregate_defect(blob) is None


def test_a_plain_record_is_not_an_aggregate() -> None:
    assert deaggregate(PURCHASES[0][1]) is None
    assert deaggregate(b"") is None and deaggregate(MAGIC[:3]) is None


@pytest.mark.parametrize(("data", "reason"), [
    (MAGIC + b"\x00" * 16, "too short"),
    (None, "MD5 digest does not match"),
    (with_md5(b"\xff\xff\xff"), "protobuf AggregatedRecord does not parse"),
    (with_md5(b"\x0a\x02c1\x1a\x04\x08\x05\x1a\x00"), "partition key index 5 outside a table"),
    (with_md5(b"\x0a\x02c1"), "holds no user records"),
    (with_md5(b"\x0a\x00\x1a\x04\x08\x00\x1a\x00"), "partition key of 0 characters"),
    (with_md5(b"\x0a\x81\x02" + b"k" * 257 + b"\x1a\x04\x08\x00\x1a\x00"),
     "partition key of 257 characters"),
    (aggregate([("", purchase("e9", "victim", 100))])[1], "partition key of 0 characters"),
])
def test_a_corrupt_aggregate_says_why(data: bytes | None, reason: str) -> None:
    blob = corrupt(aggregate(PURCHASES)[1]) if data is None else data
    with pytest.raises(BadAggregate, match=reason):
        deaggregate(blob)
    with pytest.raises(EventRejected) as exc:  # what reaches the decoder: one rejection
        decode_event(blob)
    assert exc.value.kind == "bad_aggregate" and reason in str(exc.value)


def test_an_aggregate_that_reaches_the_decoder_whole_is_rejected() -> None:
    with pytest.raises(EventRejected, match="bad_aggregate: a KPL aggregate must be"):
        decode_event(aggregate(PURCHASES)[1])


# -- consumers.sources.records ---------------------------------------------------------------


AT = datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_getrecords_records_are_de_aggregated_and_plain_ones_kept() -> None:
    pk, blob = aggregate(PURCHASES)
    raw = [{"Data": blob, "SequenceNumber": "100", "PartitionKey": pk,
            "ApproximateArrivalTimestamp": AT},
           {"Data": b"plain", "SequenceNumber": "101", "PartitionKey": "c9",
            "ApproximateArrivalTimestamp": AT}]
    recs = from_kinesis(raw, "shard-0", "s")
    assert [r.position for r in recs] == [("shard-0", "100", 0), ("shard-0", "100", 1),
                                          ("shard-0", "100", 2), ("shard-0", "101", 0)]
    assert [r.partition_key for r in recs] == ["c1", "c2", "c1", "c9"]
    assert [r.data for r in recs[:3]] == [d for _, d in PURCHASES] and recs[3].data == b"plain"
    assert {r.arrived_at for r in recs} == {AT}
    assert {r.stream for r in recs} == {"s"}


def test_a_corrupt_aggregate_stays_one_record() -> None:
    bad = corrupt(aggregate(PURCHASES)[1])
    (rec,) = from_kinesis([{"Data": bad, "SequenceNumber": "7", "PartitionKey": "k"}], "sh", "s")
    assert rec.data == bad and rec.position == ("sh", "7", 0) and rec.arrived_at is None


def lambda_record(data: bytes, seq: str, pk: str, at: float) -> dict[str, Any]:
    return {"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": pk,
                        "sequenceNumber": seq, "data": base64.b64encode(data).decode(),
                        "approximateArrivalTimestamp": at},
            "eventSource": "aws:kinesis", "eventID": f"shardId-000000000003:{seq}",
            "eventSourceARN": "arn:aws:kinesis:eu-central-1:123456789012:stream/s"}


def test_lambda_records_are_de_aggregated() -> None:
    pk, blob = aggregate(PURCHASES)
    recs = from_lambda(lambda_record(blob, "49", pk, 1714564800.25))
    assert [r.position for r in recs] == [("shardId-000000000003", "49", i) for i in range(3)]
    assert {arrival(r) for r in recs} == {1714564800.25} and {r.stream for r in recs} == {"s"}
    (plain,) = from_lambda(lambda_record(b"x", "50", "c1", 1714564800.0))
    assert plain.position == ("shardId-000000000003", "50", 0) and plain.data == b"x"


@dataclass
class KclRecord:
    binary_data: bytes
    sequence_number: str
    partition_key: str
    sub_sequence_number: int | None
    timestamp_millis: int | None = 1714564800250


def test_kcl_records_keep_their_sub_sequence_numbers() -> None:
    rec = from_kcl(KclRecord(b"x", "49", "c1", 2), "shardId-1", "s")
    assert rec.position == ("shardId-1", "49", 2) and arrival(rec) == 1714564800.25
    assert from_kcl(KclRecord(b"x", "49", "c1", None, None), "sh", "s").sub_sequence_number == 0


def test_epoch_seconds() -> None:
    assert epoch_seconds(AT) == AT.timestamp() == epoch_seconds(AT.replace(tzinfo=None))
    assert epoch_seconds(12) == 12.0 and epoch_seconds(None) is None


# -- through the core, the dead letters and the KCL processor --------------------------------


MODELS = ModelView(SegmentModel(), 0, Forecaster(DEFAULT_PRIOR))


def run_core(records: Sequence[StreamRecord]) -> BatchResult:
    return process_batch(decode_batch(records), {}, MODELS, now=datetime.now(UTC))


def test_the_example_applies_all_three_once_and_a_corrupt_aggregate_is_one_dead_letter() -> None:
    pk, blob = aggregate(PURCHASES)
    raw = [{"Data": blob, "SequenceNumber": "100", "PartitionKey": pk},
           {"Data": corrupt(blob), "SequenceNumber": "101", "PartitionKey": pk},
           {"Data": purchase("e4", "c2", 300), "SequenceNumber": "102", "PartitionKey": "c2"}]
    result = run_core(from_kinesis(raw, "shard-0", "s"))
    assert [o.status for o in result.outcomes] == ["applied"] * 3 + ["rejected", "applied"]
    assert {c: (s.purchases, sum(s.spend_minor.values()))
            for c, s in result.states.items()} == {"c1": (2, 375), "c2": (2, 1300)}
    (dead,) = result.dead_letters
    assert dead.kind == "bad_aggregate" and "MD5" in dead.reason
    assert result.checkpoints == {"shard-0": "102"}
    # a re-delivery of the aggregate is three duplicates, not three new purchases
    again = process_batch(decode_batch(from_kinesis(raw[:1], "shard-0", "s")),
                          result.states, MODELS, now=datetime.now(UTC))
    assert [o.status for o in again.outcomes] == ["duplicate"] * 3


def test_dead_letter_ids_name_the_sub_sequence_number_only_when_it_is_not_zero() -> None:
    plain = StreamRecord(b"\xff", "49", "c1", "shard-0", "s")
    user = StreamRecord(b"\xff", "49", "c1", "shard-0", "s", sub_sequence_number=2)
    assert dead_letter_id(plain) == "s/shard-0/49"
    assert dead_letter_id(user) == "s/shard-0/49/2"
    results = run_core([plain, user]).dead_letters
    items = [dead_letter_item(r) for r in results]
    assert [i["id"]["S"] for i in items] == ["s/shard-0/49", "s/shard-0/49/2"]
    assert "sub_sequence_number" not in items[0] and items[1]["sub_sequence_number"] == {"N": "2"}


def test_the_letter_of_an_aggregates_first_user_record_says_so() -> None:
    """User record 0 of an aggregate kept the whole record's id (as before) but also looked
    like it in `caa dlq list` (no sub-sequence number): its letter now records 0."""
    pk, blob = aggregate([("c1", b"\xff"), ("c1", purchase("e9", "c1", 100))])
    first, _ = expand(blob, "49", pk, "shard-0", "s", None)
    (letter,) = [dead_letter_item(r) for r in run_core([first]).dead_letters]
    assert letter["id"]["S"] == "s/shard-0/49" and letter["sub_sequence_number"] == {"N": "0"}


class CoreApplier:
    """The core without DynamoDB: states kept in memory across batches."""

    def __init__(self) -> None:
        self.states: dict[str, Any] = {}
        self.results: list[BatchResult] = []

    async def apply(self, records: Sequence[StreamRecord]) -> BatchResult:
        result = process_batch(decode_batch(records), self.states, MODELS, now=datetime.now(UTC))
        self.states.update(result.states)
        self.results.append(result)
        return result


class Checkpointer:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, int | None]] = []

    def checkpoint(self, sequence_number: str | None = None,
                   sub_sequence_number: int | None = None) -> None:
        self.calls.append((sequence_number, sub_sequence_number))


def test_the_kcl_processor_applies_each_user_record_and_checkpoints_the_last() -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)  # arrived after the purchases
    users = [KclRecord(data, "49", pk, i, now_ms) for i, (pk, data) in enumerate(PURCHASES)]
    applier, cp = CoreApplier(), Checkpointer()
    loop = asyncio.new_event_loop()
    try:
        p = Processor(applier, "s", loop)  # type: ignore[arg-type]
        p.initialize("shardId-1", None)
        p.process_records(users, cp)
        p.process_records(users, cp)  # the daemon re-delivers after a restart
        p.shutdown_requested(cp)
    finally:
        loop.close()
    first, second = applier.results
    assert [o.status for o in first.outcomes] == ["applied"] * 3
    assert [o.status for o in second.outcomes] == ["duplicate"] * 3
    assert {c: s.purchases for c, s in applier.states.items()} == {"c1": 2, "c2": 1}
    assert cp.calls == [("49", 2)] * 3
