"""The customers table: one item per customer holding its state (key ``customer_id``).

Besides the state itself (``body``, JSON, ``seen``, the event-id digests, and ``orders``,
the order-id digests: 8 bytes per event and 8 per order; items written before ``orders``
was kept load with none), an item
carries ``version``, ``purchases``, ``spend_cents``, ``first_at``, ``last_at`` and
``updated_at`` as their own attributes, for filters and people.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from consumers.progress import NO_PROGRESS, Progress
from consumers.stores.dynamo import Dynamo, Item, now_iso
from models.state import CustomerState


def state_to_item(state: CustomerState) -> Item:
    return {
        "customer_id": {"S": state.customer_id},
        "version": {"N": str(state.version)},
        "purchases": {"N": str(state.purchases)},
        "spend_cents": {"N": str(state.spend_cents)},
        "first_at": {"S": datetime.fromtimestamp(state.first_ts, UTC).isoformat()},
        "last_at": {"S": datetime.fromtimestamp(state.last_ts, UTC).isoformat()},
        "body": {"S": state.to_json()},
        "seen": {"B": state.seen_bytes()},
        "updated_at": {"S": now_iso()},
        **({"orders": {"B": state.order_bytes()}} if state.orders else {}),
    }


def state_from_item(item: Item) -> CustomerState:
    return CustomerState.from_parts(
        item["customer_id"]["S"], int(item["version"]["N"]), item["body"]["S"],
        item["seen"]["B"], item.get("orders", {}).get("B", b""),
    )


def totals_from_item(item: Item) -> tuple[str, int, int]:
    """(customer id, purchases, spend in cents) from the item's own attributes, without
    decoding the state."""
    return (item["customer_id"]["S"], int(item["purchases"]["N"]),
            int(item["spend_cents"]["N"]))


def customer_key(customer_id: str) -> Item:
    return {"customer_id": {"S": customer_id}}


@dataclass
class CustomerStore:
    db: Dynamo
    table: str

    async def load(self, ids: Iterable[str]) -> dict[str, CustomerState]:
        items = await self.db.batch_get(self.table, "customer_id", ids)
        return {s.customer_id: s for s in map(state_from_item, items)}

    async def save(self, states: Iterable[CustomerState]) -> None:
        await self.db.batch_write(self.table, [state_to_item(s) for s in states])

    async def delete(self, ids: Iterable[str]) -> None:
        await self.db.batch_delete(self.table, [customer_key(c) for c in ids])

    async def known(self, customer_id: str, consistent: bool = False) -> bool:
        """Is there a state for this customer (one GetItem of the key alone)?"""
        resp = await self.db.client.get_item(TableName=self.table, Key=customer_key(customer_id),
                                             ProjectionExpression="customer_id",
                                             **({"ConsistentRead": True} if consistent else {}))
        return "Item" in resp

    async def erase(self, customer_id: str) -> int:
        """Delete the customer's state: how many items went (0 or 1)."""
        if not await self.known(customer_id, consistent=True):
            return 0
        await self.delete([customer_id])
        return 1

    async def all(self, digests: bool = True,
                  progress: Progress = NO_PROGRESS) -> list[CustomerState]:
        """Every state; ``digests=False`` reads ids and bodies alone (no event-id digests,
        version 0): enough for readers that only look, such as ``caa report``.
        ``progress`` advances by the items read."""
        if digests:
            return [state_from_item(i) for i in await self.db.scan(self.table,
                                                                   progress=progress)]
        items = await self.db.scan(self.table, progress=progress,
                                   ProjectionExpression="#c, #b",
                                   ExpressionAttributeNames={"#c": "customer_id", "#b": "body"})
        return [CustomerState.from_parts(i["customer_id"]["S"], 0, i["body"]["S"], b"")
                for i in items]

    async def updated_since(self, since: datetime,
                            progress: Progress = NO_PROGRESS) -> list[CustomerState]:
        """The states written at or after ``since`` (UTC); ``progress`` advances by the
        items read."""
        cut = since.isoformat(timespec="milliseconds")  # the format of updated_at (now_iso)
        items = await self.db.scan(self.table, progress=progress,
                                   FilterExpression="updated_at >= :t",
                                   ExpressionAttributeValues={":t": {"S": cut}})
        return [state_from_item(i) for i in items]
