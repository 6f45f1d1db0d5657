"""The audit table (key ``id``): one item per privacy action, with no personal data.

An erasure (``caa erase``) writes ``id`` (a random request id, for the ticket),
``action`` (``erase``), ``at``, ``sequence_number`` (the erasure event's position on the
stream) and ``deleted``, a map of how many items each table lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consumers.stores.dynamo import Dynamo, Item


@dataclass(frozen=True)
class AuditEntry:
    request_id: str
    action: str
    at: str
    sequence_number: str
    deleted: dict[str, int] = field(default_factory=dict)


def audit_item(entry: AuditEntry) -> Item:
    return {"id": {"S": entry.request_id}, "action": {"S": entry.action},
            "at": {"S": entry.at}, "sequence_number": {"S": entry.sequence_number},
            "deleted": {"M": {k: {"N": str(v)} for k, v in sorted(entry.deleted.items())}}}


def audit_from_item(item: Item) -> AuditEntry:
    return AuditEntry(item["id"]["S"], item["action"]["S"], item["at"]["S"],
                      item["sequence_number"]["S"],
                      {k: int(v["N"]) for k, v in item["deleted"]["M"].items()})


@dataclass
class AuditLog:
    db: Dynamo
    table: str

    async def record(self, entry: AuditEntry) -> None:
        await self.db.client.put_item(TableName=self.table, Item=audit_item(entry))
