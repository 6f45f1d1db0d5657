"""The dead-letters table: poison records with their raw payload and reason (key ``id``
= stream/shard/sequence number)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consumers.core import Rejected
from consumers.stores.dynamo import Dynamo, Item, from_attr, now_iso


def dead_letter_item(r: Rejected) -> Item:
    rec = r.record
    return {
        "id": {"S": f"{rec.stream}/{rec.shard_id}/{rec.sequence_number}"},
        "stream": {"S": rec.stream},
        "shard_id": {"S": rec.shard_id},
        "sequence_number": {"S": rec.sequence_number},
        "partition_key": {"S": rec.partition_key},
        "payload": {"B": rec.data},
        "kind": {"S": r.kind},
        "reason": {"S": r.reason},
        "received_at": {"S": now_iso()},
        "status": {"S": "open"},
    }


@dataclass
class DeadLetterStore:
    """Poison records with their raw payload; keyed by position, so a re-read overwrites."""

    db: Dynamo
    table: str

    async def save(self, rejected: Sequence[Rejected]) -> None:
        await self.db.batch_write(self.table, [dead_letter_item(r) for r in rejected])

    async def all(self) -> list[dict[str, Any]]:
        return [from_attr({"M": i}) for i in await self.db.scan(self.table)]
