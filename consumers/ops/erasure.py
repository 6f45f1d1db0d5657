"""Erasure of one customer (``caa erase``), everywhere we keep them.

Two halves, so no order of events can bring the customer back:

1. an :class:`~models.events.ErasureEvent` goes on the stream under the customer's
   partition key. The consumer (the single writer of states) applies it in order with
   the customer's purchases: it drops any state it holds in memory and deletes the
   state and the prediction, so a write from a stale cache cannot resurrect them;
2. this module deletes directly what the consumer does not own or may not reach soon:
   the state and prediction (for an answer now, even with no consumer running), the
   latest analysis (the analysis cache), the analysis history and the dead letters
   published under the customer's key.

Then it writes an audit entry with no personal data: a random request id (for the
ticket), the time, how many items each table lost, and the erasure event's position.
Events published after the erasure make a new customer; a backfill that replays
history from before it must leave the customer out (``caa replay`` reads files).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from caa.settings import Settings
from consumers.stores.dynamo import Dynamo, Item
from models.events import ErasureEvent


@dataclass
class ErasureReport:
    request_id: str
    at: str
    sequence_number: str
    deleted: dict[str, int] = field(default_factory=dict)

    def audit_item(self) -> Item:
        return {"id": {"S": self.request_id}, "action": {"S": "erase"},
                "at": {"S": self.at}, "sequence_number": {"S": self.sequence_number},
                "deleted": {"M": {k: {"N": str(v)} for k, v in sorted(self.deleted.items())}}}


async def _keys(db: Dynamo, table: str, customer_id: str) -> list[Item]:
    """The keys of one customer's items: a Query for the keyed tables."""
    keys: list[Item] = []
    kw: dict[str, Any] = {
        "TableName": table, "KeyConditionExpression": "customer_id = :c",
        "ExpressionAttributeValues": {":c": {"S": customer_id}}, "ConsistentRead": True}
    if table.endswith("analysis-history"):
        kw["ProjectionExpression"] = "customer_id, #at"
        kw["ExpressionAttributeNames"] = {"#at": "at"}
    else:
        kw["ProjectionExpression"] = "customer_id"
    while True:
        resp = await db.client.query(**kw)
        keys.extend(resp.get("Items", []))
        if "LastEvaluatedKey" not in resp:
            return keys
        kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


async def _dead_letter_keys(db: Dynamo, table: str, customer_id: str) -> list[Item]:
    items = await db.scan(table, FilterExpression="partition_key = :c",
                          ExpressionAttributeValues={":c": {"S": customer_id}},
                          ProjectionExpression="id")
    return [{"id": i["id"]} for i in items]


async def erase(settings: Settings, kinesis: Any, db: Dynamo, customer_id: str,
                now: datetime | None = None) -> ErasureReport:
    """Erase ``customer_id``; returns what was deleted (the audit entry)."""
    s = settings
    at = now or datetime.now(UTC)
    request_id = uuid.uuid4().hex
    event = ErasureEvent(type="erasure", event_id=f"erase-{request_id}",
                         customer_id=customer_id, occurred_at=at)
    put = await kinesis.put_record(StreamName=s.stream_name, Data=event.to_bytes(),
                                   PartitionKey=customer_id)
    tables = {name: s.table(name) for name in
              ("customers", "predictions", "analyses", "analysis-history")}
    found = await asyncio.gather(*(_keys(db, t, customer_id) for t in tables.values()),
                                 _dead_letter_keys(db, s.table("dead-letters"), customer_id))
    by_table = dict(zip([*tables, "dead-letters"], found, strict=True))
    await asyncio.gather(*(db.batch_delete(s.table(name), keys)
                           for name, keys in by_table.items() if keys))
    report = ErasureReport(request_id, at.isoformat(timespec="seconds"), put["SequenceNumber"],
                           {name: len(keys) for name, keys in by_table.items()})
    await db.client.put_item(TableName=s.table("audit"), Item=report.audit_item())
    return report
