"""Per-customer state: an order-independent, idempotent summary of purchases.

Every field is a commutative merge (sums, min/max, set unions, "latest by
(occurred_at, event_id)"), and each event is applied at most once thanks to a
set of 64-bit event-id digests kept in the state itself. So applying a batch
twice equals applying it once, and any delivery order gives the same state:
the properties exactly-once effects rest on. A second set, of 64-bit order-id digests,
makes a purchase whose order the customer already has a duplicate too, whatever its
event id (a producer retry that regenerates event ids counts once).

>>> from models.events import PurchaseEvent
>>> e = PurchaseEvent.model_validate({
...     "event_id": "e-1", "order_id": "o-1", "customer_id": "c1",
...     "occurred_at": "2024-05-01T10:00:00Z", "currency": "EUR",
...     "items": [{"product_id": "milk", "category": "dairy", "quantity": 2,
...                "unit_price": "1.20"}], "total": "2.40"})
>>> s = CustomerState.new("c1")
>>> s.apply(e), s.apply(e), s.apply_purchase(e.model_copy(update={"event_id": "e-2"}))
(True, False, 'duplicate_order')
>>> s.purchases, s.spend_cents, s.products["milk"].quantity, s.currencies
(1, 240, 2, {'EUR': 1})
"""

from __future__ import annotations

import bisect
import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from models.events import ConsentEvent, PurchaseEvent

DAY = 86_400
PurchaseStatus = Literal["applied", "duplicate", "duplicate_order"]


def event_digest(event_id: str) -> int:
    """Stable 64-bit digest of an event id (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


def _add_day(days: list[int], day: int) -> None:
    i = bisect.bisect_left(days, day)
    if i == len(days) or days[i] != day:
        days.insert(i, day)


@dataclass(slots=True)
class ItemStats:
    """Purchases of one product or one category by one customer."""

    orders: int = 0
    quantity: int = 0
    spend_cents: int = 0
    days: list[int] = field(default_factory=list)  # distinct UTC day numbers, sorted

    def clone(self) -> ItemStats:
        return ItemStats(self.orders, self.quantity, self.spend_cents, list(self.days))

    def to_list(self) -> list[Any]:
        return [self.orders, self.quantity, self.spend_cents, self.days]

    @classmethod
    def from_list(cls, v: list[Any]) -> ItemStats:
        return cls(int(v[0]), int(v[1]), int(v[2]), [int(d) for d in v[3]])


@dataclass(slots=True)
class CustomerState:
    """What we know about one customer; ``version`` counts durable writes."""

    customer_id: str
    version: int = 0
    purchases: int = 0
    spend_cents: int = 0
    quantity: int = 0
    first_ts: int = 0  # epoch seconds of the earliest purchase (0 when none)
    last_ts: int = 0
    last_event_id: str = ""
    days: list[int] = field(default_factory=list)
    products: dict[str, ItemStats] = field(default_factory=dict)
    categories: dict[str, ItemStats] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    #: orders per ISO currency code (states written before it was kept have none)
    currencies: dict[str, int] = field(default_factory=dict)
    consent: bool | None = None
    consent_ts: int = 0
    seen: set[int] = field(default_factory=set)
    #: digests of the order ids of the purchases applied (states written before they were
    #: kept have none, so only orders applied since are recognised)
    orders: set[int] = field(default_factory=set)

    @classmethod
    def new(cls, customer_id: str) -> CustomerState:
        return cls(customer_id=customer_id)

    def clone(self) -> CustomerState:
        return CustomerState(
            customer_id=self.customer_id,
            version=self.version,
            purchases=self.purchases,
            spend_cents=self.spend_cents,
            quantity=self.quantity,
            first_ts=self.first_ts,
            last_ts=self.last_ts,
            last_event_id=self.last_event_id,
            days=list(self.days),
            products={k: v.clone() for k, v in self.products.items()},
            categories={k: v.clone() for k, v in self.categories.items()},
            channels=dict(self.channels),
            currencies=dict(self.currencies),
            consent=self.consent,
            consent_ts=self.consent_ts,
            seen=set(self.seen),
            orders=set(self.orders),
        )

    def state_consent(self, consent: bool, ts: int) -> None:
        """A consent statement made at ``ts``: the latest wins; at the same instant a refusal
        wins, in any order."""
        if self.consent is None or ts > self.consent_ts:
            self.consent, self.consent_ts = consent, ts
        elif ts == self.consent_ts:
            self.consent = self.consent and consent

    def apply_consent(self, event: ConsentEvent) -> bool:
        """A consent event; False (nothing changed) for a duplicate.

        >>> from models.events import decode_event
        >>> s = CustomerState.new("c1")
        >>> no = decode_event(b'{"type": "consent", "event_id": "k1", "customer_id": "c1", '
        ...                   b'"occurred_at": "2024-05-02T00:00:00Z", "analysis": false}')
        >>> s.apply_consent(no), s.apply_consent(no), s.consent, s.purchases
        (True, False, False, 0)
        """
        digest = event_digest(event.event_id)
        if digest in self.seen:
            return False
        self.seen.add(digest)
        self.state_consent(event.analysis, int(event.occurred_at.timestamp()))
        return True

    def apply(self, event: PurchaseEvent) -> bool:
        """Fold one event in; returns False (and changes nothing) for a duplicate."""
        return self.apply_purchase(event) == "applied"

    def apply_purchase(self, event: PurchaseEvent) -> PurchaseStatus:
        """Fold one event in, unless its event id (``duplicate``) or its order id
        (``duplicate_order``) was applied already; a duplicate changes nothing."""
        digest = event_digest(event.event_id)
        if digest in self.seen:
            return "duplicate"
        order = event_digest(event.order_id)
        if order in self.orders:
            return "duplicate_order"
        self.seen.add(digest)
        self.orders.add(order)
        self._fold(event)
        return "applied"

    def _fold(self, event: PurchaseEvent) -> None:
        ts = int(event.occurred_at.timestamp())
        day = ts // DAY
        cents = int(event.total * 100)
        self.purchases += 1
        self.spend_cents += cents
        if self.purchases == 1 or ts < self.first_ts:
            self.first_ts = ts
        if self.purchases == 1 or (ts, event.event_id) > (self.last_ts, self.last_event_id):
            self.last_ts = ts
            self.last_event_id = event.event_id
        _add_day(self.days, day)
        self.channels[event.channel] = self.channels.get(event.channel, 0) + 1
        self.currencies[event.currency] = self.currencies.get(event.currency, 0) + 1
        if event.consent is not None:
            self.state_consent(event.consent, ts)
        touched_products: set[str] = set()
        touched_categories: set[str] = set()
        for item in event.items:
            item_cents = int(item.unit_price * 100) * item.quantity
            self.quantity += item.quantity
            for key, table, touched in (
                (item.product_id, self.products, touched_products),
                (item.category, self.categories, touched_categories),
            ):
                stats = table.get(key)
                if stats is None:
                    stats = table[key] = ItemStats()
                stats.quantity += item.quantity
                stats.spend_cents += item_cents
                if key not in touched:
                    touched.add(key)
                    stats.orders += 1
                    _add_day(stats.days, day)

    # -- persistence -------------------------------------------------------
    def to_json(self) -> str:
        """The body of the state (everything but the id, version and digests)."""
        return json.dumps(
            {
                "p": self.purchases,
                "s": self.spend_cents,
                "q": self.quantity,
                "f": self.first_ts,
                "l": self.last_ts,
                "le": self.last_event_id,
                "d": self.days,
                "pr": {k: v.to_list() for k, v in sorted(self.products.items())},
                "ca": {k: v.to_list() for k, v in sorted(self.categories.items())},
                "ch": dict(sorted(self.channels.items())),
                "c": self.consent,
                "ct": self.consent_ts,
                **({"cu": dict(sorted(self.currencies.items()))} if self.currencies else {}),
            },
            separators=(",", ":"),
        )

    def seen_bytes(self) -> bytes:
        return struct.pack(f">{len(self.seen)}Q", *sorted(self.seen))

    def order_bytes(self) -> bytes:
        return struct.pack(f">{len(self.orders)}Q", *sorted(self.orders))

    @classmethod
    def from_parts(cls, customer_id: str, version: int, body: str, seen: bytes,
                   orders: bytes = b"") -> CustomerState:
        d = json.loads(body)
        return cls(
            customer_id=customer_id,
            version=version,
            purchases=d["p"],
            spend_cents=d["s"],
            quantity=d["q"],
            first_ts=d["f"],
            last_ts=d["l"],
            last_event_id=d["le"],
            days=d["d"],
            products={k: ItemStats.from_list(v) for k, v in d["pr"].items()},
            categories={k: ItemStats.from_list(v) for k, v in d["ca"].items()},
            channels=d["ch"],
            currencies=d.get("cu", {}),
            consent=d["c"],
            consent_ts=d["ct"],
            seen=set(struct.unpack(f">{len(seen) // 8}Q", seen)),
            orders=set(struct.unpack(f">{len(orders) // 8}Q", orders)),
        )

    def comparable(self) -> tuple[Any, ...]:
        """Everything but the write version: equal iff the same events were applied."""
        return (self.customer_id, self.to_json(), self.seen_bytes(), self.order_bytes())
