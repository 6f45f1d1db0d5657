"""The customers table: one item per customer holding its state (key ``customer_id``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

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
    }


def state_from_item(item: Item) -> CustomerState:
    return CustomerState.from_parts(
        item["customer_id"]["S"], int(item["version"]["N"]), item["body"]["S"],
        item["seen"]["B"],
    )


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
        await self.db.batch_delete(self.table, [{"customer_id": {"S": c}} for c in ids])

    async def all(self) -> list[CustomerState]:
        return [state_from_item(i) for i in await self.db.scan(self.table)]
