"""The dead-letters table: poison records with their raw payload and reason (key ``id``
= stream/shard/sequence number, and /sub-sequence number for a KPL user record after the
first: :func:`dead_letter_id`).

An item holds ``stream``, ``shard_id``, ``sequence_number``, ``partition_key``, the raw
``payload`` (binary), ``kind`` and ``reason`` of the rejection, ``arrival_ts`` (the
record's arrival in the stream, epoch seconds, when the adapter knew it), ``received_at`` and
``status`` (``open``, or ``redriven`` with ``redriven_at`` and ``redriven_to``; a redrive
that still rejects it sets ``kind``, ``reason`` and ``checked_at``). Readers get each item
as a plain dict of those attributes (text as str, the payload as bytes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consumers.core import Rejected, StreamRecord, arrival
from consumers.stores.dynamo import Dynamo, Item, from_attr, now_iso


def dead_letter_id(rec: StreamRecord) -> str:
    """stream/shard/sequence number, then /sub-sequence number for a user record of a KPL
    aggregate after the first (a plain record's id is as it always was).

    >>> dead_letter_id(StreamRecord(b"", "49", "c1", "shard-0", "s", sub_sequence_number=2))
    's/shard-0/49/2'
    """
    base = f"{rec.stream}/{rec.shard_id}/{rec.sequence_number}"
    return f"{base}/{rec.sub_sequence_number}" if rec.sub_sequence_number else base


def dead_letter_item(r: Rejected) -> Item:
    rec = r.record
    return {
        "id": {"S": dead_letter_id(rec)},
        "stream": {"S": rec.stream},
        "shard_id": {"S": rec.shard_id},
        "sequence_number": {"S": rec.sequence_number},
        **({"sub_sequence_number": {"N": str(rec.sub_sequence_number)}}
           if rec.sub_sequence_number else {}),
        "partition_key": {"S": rec.partition_key},
        "payload": {"B": rec.data},
        "kind": {"S": r.kind},
        "reason": {"S": r.reason},
        "received_at": {"S": now_iso()},
        "status": {"S": "open"},
        **({"arrival_ts": {"N": repr(float(at))}} if (at := arrival(rec)) is not None else {}),
    }


@dataclass
class DeadLetterStore:
    """Poison records with their raw payload; keyed by position, so a re-read overwrites."""

    db: Dynamo
    table: str

    async def save(self, rejected: Sequence[Rejected]) -> None:
        await self.db.batch_write(self.table, [dead_letter_item(r) for r in rejected])

    async def all(self, segments: int = 4) -> list[dict[str, Any]]:
        return [from_attr({"M": i}) for i in await self.db.scan(self.table, segments=segments)]

    async def open(self) -> list[dict[str, Any]]:
        """The open dead letters, by id: what a redrive re-checks."""
        return sorted((d for d in await self.all() if d.get("status") == "open"),
                      key=lambda d: str(d["id"]))

    async def by_arrival(self, open_only: bool = True) -> list[dict[str, Any]]:
        """The open dead letters (every one with ``open_only=False``), oldest first: what
        ``caa dlq list`` shows."""
        letters = [d for d in await self.all(segments=1)
                   if not open_only or d.get("status") == "open"]
        return sorted(letters, key=lambda d: str(d["received_at"]))

    async def mark_rejected(self, letter_id: str, kind: str, reason: str, at: str) -> None:
        """Re-checked and still rejected: it stays open with this check's reason."""
        await self.db.client.update_item(
            TableName=self.table, Key={"id": {"S": letter_id}},
            UpdateExpression="SET #k = :k, reason = :r, checked_at = :t",
            ExpressionAttributeNames={"#k": "kind"},
            ExpressionAttributeValues={":k": {"S": kind}, ":r": {"S": reason},
                                       ":t": {"S": at}})

    async def mark_redriven(self, letter_id: str, position: str, at: str) -> None:
        """Put back on the stream at ``position`` (shard/sequence number)."""
        await self.db.client.update_item(
            TableName=self.table, Key={"id": {"S": letter_id}},
            UpdateExpression="SET #s = :s, redriven_at = :t, redriven_to = :p",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": "redriven"}, ":t": {"S": at},
                                       ":p": {"S": position}})

    async def erase(self, customer_id: str) -> int:
        """Delete the dead letters published under the customer's partition key: how many."""
        items = await self.db.scan(self.table, FilterExpression="partition_key = :c",
                                   ExpressionAttributeValues={":c": {"S": customer_id}},
                                   ProjectionExpression="id")
        keys = [{"id": i["id"]} for i in items]
        if keys:
            await self.db.batch_delete(self.table, keys)
        return len(keys)
