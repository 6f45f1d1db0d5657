"""Raw Kinesis records into the core's :class:`StreamRecord` s, KPL aggregates de-aggregated.

The one place every adapter's records go through: GetRecords and SubscribeToShard
(:func:`from_kinesis`, used by :meth:`Poller.apply_batch` for both read modes) and a Lambda
event source mapping event (:func:`from_lambda`); the KCL's daemon de-aggregates itself and
passes sub-sequence numbers (:func:`from_kcl`). None of those sources de-aggregates
otherwise.

A KPL aggregate becomes one :class:`StreamRecord` per user record: the aggregate's sequence
number, sub-sequence numbers 0, 1, ..., each its own partition key. A corrupt aggregate
(the magic bytes, then a wrong MD5 or protobuf) stays one record with the raw bytes, which
the decoder rejects as ``bad_aggregate`` with the reason: one dead letter, the rest of the
batch goes on. A plain record becomes one record with sub-sequence number 0, as before.

Under the KCL (3.1.3, checked against its ``AggregatorUtil``) an aggregate whose user records'
hash keys are not all in the shard's hash key range is dropped whole, before our processor
sees it: the KPL never builds one (it aggregates per shard), a hand-made aggregate
(``aws-kinesis-agg``'s ``RecordAggregator`` does not look at shards) may. GetRecords,
SubscribeToShard and Lambda apply every user record wherever it hashes.

>>> from datetime import UTC, datetime
>>> at = datetime(2024, 1, 1, tzinfo=UTC)
>>> [r.position for r in from_kinesis([{"Data": b"{}", "SequenceNumber": "7",
...     "PartitionKey": "c1", "ApproximateArrivalTimestamp": at}], "shard-0", "s")]
[('shard-0', '7', 0)]
>>> from_kinesis([{"Data": b"{}", "SequenceNumber": "7", "PartitionKey": "c1",
...     "ApproximateArrivalTimestamp": at}], "shard-0", "s")[0].arrived_at == at
True
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from consumers.core import StreamRecord
from models.kpl import valid_user_records


def _at(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def expand(data: bytes, sequence_number: str, partition_key: str, shard_id: str,
           stream: str, arrival_ts: float | None) -> list[StreamRecord]:
    """One Kinesis record: its user records if it is a valid KPL aggregate, else itself."""
    users = valid_user_records(data)  # None: kept whole (corrupt: the decoder says why)
    if users is None:
        return [StreamRecord(data, sequence_number, partition_key, shard_id, stream,
                             _at(arrival_ts))]
    return [
        StreamRecord(u.data, sequence_number, u.partition_key, shard_id, stream,
                     _at(arrival_ts), sub_sequence_number=i, aggregated=True)
        for i, u in enumerate(users)
    ]


def epoch_seconds(value: datetime | float | int | str | None) -> float | None:
    """An ``ApproximateArrivalTimestamp`` as seconds since the epoch (boto gives a datetime,
    Lambda a number of seconds).

    >>> epoch_seconds(1704067200.5), epoch_seconds(None)
    (1704067200.5, None)
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return float(value)


def from_kinesis(raw: Iterable[Mapping[str, Any]], shard_id: str,
                 stream: str) -> list[StreamRecord]:
    """The ``Records`` of a GetRecords response or a SubscribeToShard event."""
    out: list[StreamRecord] = []
    for r in raw:
        out.extend(expand(r["Data"], r["SequenceNumber"], r["PartitionKey"], shard_id, stream,
                          epoch_seconds(r.get("ApproximateArrivalTimestamp"))))
    return out


def from_lambda(raw: Mapping[str, Any]) -> list[StreamRecord]:
    """One record of a Kinesis event source mapping event (``eventID`` is
    ``shardId-...:sequence number``)."""
    k = raw["kinesis"]
    return expand(base64.b64decode(k["data"]), k["sequenceNumber"], k["partitionKey"],
                  raw["eventID"].split(":", 1)[0], raw["eventSourceARN"].rsplit("/", 1)[-1],
                  epoch_seconds(k.get("approximateArrivalTimestamp")))


def from_lambda_event(records: Sequence[Mapping[str, Any]]) -> list[StreamRecord]:
    return [rec for raw in records for rec in from_lambda(raw)]


class KclRecord(Protocol):
    """What we read of ``amazon_kclpy.messages.Record`` (already de-aggregated by the KCL)."""

    @property
    def binary_data(self) -> bytes: ...
    @property
    def sequence_number(self) -> str: ...
    @property
    def sub_sequence_number(self) -> int | None: ...
    @property
    def partition_key(self) -> str: ...
    @property
    def timestamp_millis(self) -> int | None: ...


def from_kcl(record: KclRecord, shard_id: str, stream: str) -> StreamRecord:
    """One user record from the MultiLangDaemon (``approximateArrivalTimestamp`` in ms)."""
    ms = record.timestamp_millis
    ts = ms / 1000 if ms is not None else None
    return StreamRecord(record.binary_data, record.sequence_number, record.partition_key,
                        shard_id, stream, _at(ts),
                        sub_sequence_number=record.sub_sequence_number or 0)
