"""The customers table: one item per customer holding its state (key ``customer_id``).

Layout (at most :data:`models.state.MAX_STATE_BYTES` for the state, whatever the history):

* ``body`` (S, JSON): compacted sums, products, categories, consent
  (:meth:`models.state.CustomerState.to_json`);
* ``order_book`` (B): the kept orders, 41 bytes each, and ``events`` (B): the kept event-id
  digests with their event time, 16 bytes each (:class:`models.order_book.OrderBook`);
* ``version`` (N): durable writes so far, the condition of the next write;
* for filters and people: ``purchases`` (N), ``spend`` (M: ISO currency -> minor units,
  net of refunds), ``first_at``, ``last_at`` and ``updated_at`` (S, ISO 8601 UTC).

Items written before this layout (``seen`` and ``orders`` digests, a version-1 body)
load through :func:`models.state_view.migrate`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from consumers.progress import NO_PROGRESS, Progress
from consumers.stores.dynamo import (
    ConditionalPut,
    Dynamo,
    Item,
    PutAnswer,
    Rejection,
    now_iso,
)
from models.state import CustomerState

#: the attributes a reader that only looks needs (no digests)
BODY_ONLY = "#c, #b, #o"
BODY_NAMES = {"#c": "customer_id", "#b": "body", "#o": "order_book"}


def state_to_item(state: CustomerState) -> Item:
    orders, events = state.book.pack()
    return {
        "customer_id": {"S": state.customer_id},
        "version": {"N": str(state.version)},
        "purchases": {"N": str(state.purchases)},
        "spend": {"M": {c: {"N": str(v)} for c, v in state.spend_minor.items()}},
        "first_at": {"S": datetime.fromtimestamp(state.first_ts, UTC).isoformat()},
        "last_at": {"S": datetime.fromtimestamp(state.last_ts, UTC).isoformat()},
        "body": {"S": state.to_json()},
        "events": {"B": events},
        "updated_at": {"S": now_iso()},
        **({"order_book": {"B": orders}} if orders else {}),
    }


def state_from_item(item: Item) -> CustomerState:
    if "events" not in item and "seen" in item:  # written before the bounded layout
        return CustomerState.from_parts(item["customer_id"]["S"], int(item["version"]["N"]),
                                        item["body"]["S"], b"", item["seen"]["B"])
    return CustomerState.from_parts(
        item["customer_id"]["S"], int(item.get("version", {"N": "0"})["N"]), item["body"]["S"],
        item.get("order_book", {}).get("B", b""), item.get("events", {}).get("B", b""),
    )


def totals_from_item(item: Item) -> tuple[str, int, tuple[tuple[str, int], ...]]:
    """(customer id, purchases, spend as sorted (currency, minor units) pairs) from the
    item's own attributes, without decoding the state."""
    spend = item.get("spend", {}).get("M", {})
    if not spend and "spend_cents" in item:  # written before the bounded layout
        return item["customer_id"]["S"], int(item["purchases"]["N"]), (
            ("", int(item["spend_cents"]["N"])),)
    return (item["customer_id"]["S"], int(item["purchases"]["N"]),
            tuple(sorted((c, int(v["N"])) for c, v in spend.items())))


def customer_key(customer_id: str) -> Item:
    return {"customer_id": {"S": customer_id}}


@dataclass
class CustomerStore:
    """The customers table. The consumers write states with :meth:`save_if` (optimistic
    concurrency: each put is conditional on the version read); :meth:`save` is the
    unconditional batch write for single-writer jobs."""

    db: Dynamo
    table: str
    #: conditional puts in flight at once (:meth:`save_if`)
    write_concurrency: int = 32

    async def load(self, ids: Iterable[str]) -> dict[str, CustomerState]:
        """The stored states of ``ids`` (consistent reads); absent customers are left out."""
        items = await self.db.batch_get(self.table, "customer_id", ids)
        return {s.customer_id: s for s in map(state_from_item, items)}

    async def save(self, states: Iterable[CustomerState]) -> None:
        await self.db.batch_write(self.table, [state_to_item(s) for s in states])

    async def save_if(self, states: Iterable[CustomerState], read: dict[str, int | None],
                      ) -> dict[str, PutAnswer | Rejection]:
        """Put each state only if its item is still as it was read: ``read[customer_id]``
        is the version loaded (None: there was no item). The condition is
        ``attribute_not_exists(customer_id)`` for a customer read absent and ``version =
        :read`` otherwise (not both OR-ed: an item deleted by an erasure since the read is a
        conflict, so a writer that read before the erasure cannot bring the old history
        back). A state whose version is not above the one read (a customer erased and
        re-created in the batch starts again at 1) is written as ``read + 1``, so a
        version is never reused while the item lives.

        Returns, per customer id: "ok", "conflict" (someone else wrote it since the read:
        reload and re-apply) or the :class:`Rejection` of a permanent error (too large,
        invalid). :class:`~consumers.stores.dynamo.WriteFailed` when transient errors
        outlast the retries."""
        order: list[str] = []
        puts: list[ConditionalPut] = []
        for state in states:
            was = read.get(state.customer_id)
            if was is not None and state.version <= was:
                state.version = was + 1
            order.append(state.customer_id)
            puts.append(
                ConditionalPut(state_to_item(state), "attribute_not_exists(customer_id)")
                if was is None else
                ConditionalPut(state_to_item(state), "version = :read",
                               values={":read": {"N": str(was)}}))
        answers = await self.db.put_each_if(self.table, puts, self.write_concurrency)
        return dict(zip(order, answers, strict=True))

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
        """Every state; ``digests=False`` reads ids, bodies and kept orders alone (no
        event-id digests, version 0): enough for readers that only look, such as
        ``caa report``.
        ``progress`` advances by the items read. The items are decoded in a thread (some
        0.9 s for CDNOW's 23,570 customers): a refit does not stall the event loop."""
        if digests:
            items = await self.db.scan(self.table, progress=progress)
        else:
            items = await self.db.scan(self.table, progress=progress,
                                       ProjectionExpression=BODY_ONLY,
                                       ExpressionAttributeNames=BODY_NAMES)
        return await asyncio.to_thread(lambda: [state_from_item(i) for i in items])

    async def updated_since(self, since: datetime,
                            progress: Progress = NO_PROGRESS) -> list[CustomerState]:
        """The states written at or after ``since`` (UTC); ``progress`` advances by the
        items read."""
        cut = since.isoformat(timespec="milliseconds")  # the format of updated_at (now_iso)
        items = await self.db.scan(self.table, progress=progress,
                                   FilterExpression="updated_at >= :t",
                                   ExpressionAttributeValues={":t": {"S": cut}})
        return [state_from_item(i) for i in items]
