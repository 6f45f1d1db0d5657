"""Per-customer state: an order-independent, idempotent, bounded summary of a customer.

The state is built from the customer's events (purchases, refunds, cancellations,
consent) so that applying a batch twice equals applying it once and any delivery order
gives the same state, the properties exactly-once effects rest on:

* the latest orders are kept one by one (:mod:`models.order_book`: order-id digest, time,
  currency, amount, refunds), with the latest event-id digests; everything a marketer
  reads (purchases, spend per currency, purchase days, first and last purchase) is
  derived from them plus the running sums of the orders compacted past the
  de-duplication horizon, so a cancellation or refund that arrives before its purchase
  applies all the same;
* a purchase whose event id or order id was applied is a duplicate (``duplicate``,
  ``duplicate_order``); an event dated before the horizon's floor is ``beyond_horizon``;
* what was bought is kept per product and category in bounded tables
  (:mod:`models.item_stats`) as sums that commute: a purchase adds its lines, a refund or
  cancellation takes off the lines it carries, whatever arrived first (so a cancellation
  sent without its lines leaves them in the product statistics; its order still leaves
  every customer-level figure);
* money stays per ISO 4217 currency in minor units (:mod:`models.money`): one number only
  through :meth:`CustomerState.spend` with the operator's rates.

Size bound: a state item is at most :data:`MAX_STATE_BYTES` (128,000 bytes, under a third
of DynamoDB's 400 KB), whatever the history; :meth:`CustomerState.bound` evicts products and
categories if the tables' own limits are not enough (long names).

>>> from models.events import decode_event
>>> buy = decode_event(b'{"event_id": "e-1", "order_id": "o-1", "customer_id": "c1", '
...     b'"occurred_at": "2024-05-01T10:00:00Z", "currency": "EUR", "items": [{"product_id": '
...     b'"milk", "category": "dairy", "quantity": 2, "unit_price": "1.20"}], "total": "2.40"}')
>>> s = CustomerState.new("c1")
>>> s.apply(buy), s.apply(buy), s.apply(buy.model_copy(update={"event_id": "e-2"}))
('applied', 'duplicate', 'duplicate_order')
>>> s.purchases, s.spend_minor, s.products["milk"].quantity, s.currencies
(1, {'EUR': 240}, 2, {'EUR': 1})
>>> s.apply(decode_event(b'{"type": "cancellation", "event_id": "x-1", "order_id": "o-1", '
...     b'"customer_id": "c1", "occurred_at": "2024-05-02T10:00:00Z"}'))
'applied'
>>> s.purchases, s.spend_minor, s.purchase_days
(0, {}, 0)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from models.events import (
    CancellationEvent,
    ConsentEvent,
    ErasureEvent,
    LineItem,
    PurchaseEvent,
    RefundEvent,
    StreamEvent,
)
from models.item_stats import MAX_CATEGORIES, MAX_PRODUCTS, ItemStats, ItemTable
from models.money import NO_RATES, Rates, to_minor
from models.order_book import DAY, Compacted, OrderBook, OrderRecord, event_digest
from models.state_view import StateView

__all__ = ["DAY", "MAX_STATE_BYTES", "ApplyStatus", "CustomerState", "ItemStats",
           "event_digest"]

#: refunds of one order add up to at most this (minor units; a signed 64-bit field)
MAX_MINOR = 2**62
#: the largest state item written (bytes; DynamoDB allows 400 KB)
MAX_STATE_BYTES = 128_000
ApplyStatus = Literal["applied", "duplicate", "duplicate_order", "beyond_horizon",
                      "currency_mismatch", "event_id_reused", "applied_refund_dropped"]


def _lines(items: list[LineItem], currency: str) -> list[tuple[LineItem, int]]:
    return [(i, to_minor(i.unit_price, currency) * i.quantity) for i in items]


def _again(base: Compacted, seen_ts: int, ts: int) -> ApplyStatus:
    """An event id applied before: a redelivery (``duplicate``) when it carries the time it
    did, else ``event_id_reused`` (another event under the same id: a producer's bug, never
    dropped silently). The state keeps each id's digest and time only, so another event
    with the same id and time is taken for a redelivery. A state migrated from version 1
    (:func:`models.state_view.migrate`: its orders compacted at floor 0, its digests dated
    at its last purchase) did not keep the times: there any time is a redelivery."""
    if seen_ts == ts or (base.orders and not base.floor_ts and seen_ts == base.last_ts):
        return "duplicate"
    return "event_id_reused"


@dataclass(slots=True)
class CustomerState:
    """What we know about one customer; ``version`` counts durable writes."""

    customer_id: str
    version: int = 0
    book: OrderBook = field(default_factory=OrderBook)
    products: ItemTable = field(default_factory=lambda: ItemTable(MAX_PRODUCTS))
    categories: ItemTable = field(default_factory=lambda: ItemTable(MAX_CATEGORIES))
    consent: bool | None = None
    consent_ts: int = 0
    #: the latest purchase event applied, by (occurred_at, event_id), cancelled or not
    last_event_id: str = ""
    last_event_ts: int = 0
    _view: StateView | None = field(default=None, repr=False, compare=False)

    @classmethod
    def new(cls, customer_id: str) -> CustomerState:
        return cls(customer_id=customer_id)

    @classmethod
    def sketch(cls, customer_id: str, days: list[int], order_minor: int = 1000,
               currency: str = "USD", products: dict[str, list[int]] | None = None,
               last_ts: int | None = None) -> CustomerState:
        """A state with one order of ``order_minor`` on each of ``days`` (UTC day numbers;
        the last at ``last_ts`` when given) and ``products`` bought on the days listed:
        for examples and tests, without writing events.

        >>> CustomerState.sketch("c", [0, 7], products={"milk": [0, 7]}).products["milk"].days
        [0, 7]
        """
        state = cls.new(customer_id)
        for i, day in enumerate(days):
            ts = last_ts if last_ts is not None and i == len(days) - 1 else day * DAY
            rec = state.book.order(event_digest(f"{customer_id}/sketch/{i}"), ts)
            rec.placed, rec.currency, rec.amount, rec.quantity = True, currency, order_minor, 1
        for key, bought in (products or {}).items():
            for day in bought:
                state.products.add(key, day, 1, order_minor, currency, new_order=True)
        state.last_event_ts = max((r.ts for r in state.book.orders.values()), default=0)
        return state

    def clone(self) -> CustomerState:
        return CustomerState(self.customer_id, self.version, self.book.clone(),
                             self.products.clone(), self.categories.clone(), self.consent,
                             self.consent_ts, self.last_event_id, self.last_event_ts,
                             self._view)

    # -- derived figures ---------------------------------------------------------------
    @property
    def view(self) -> StateView:
        """The derived figures (computed once per change)."""
        if self._view is None:
            self._view = StateView.of(self.book)
        return self._view

    @property
    def purchases(self) -> int:
        """Orders that count: placed and not cancelled."""
        return self.view.purchases

    @property
    def purchase_days(self) -> int:
        """Distinct UTC days with a counted order (BTYD frequency is this less one)."""
        return self.view.purchase_days

    @property
    def first_ts(self) -> int:
        return self.view.first_ts

    @property
    def last_ts(self) -> int:
        return self.view.last_ts

    @property
    def first_day(self) -> int:
        return self.view.first_ts // DAY

    @property
    def last_day(self) -> int:
        return self.view.last_ts // DAY

    @property
    def quantity(self) -> int:
        return self.view.quantity

    @property
    def spend_minor(self) -> dict[str, int]:
        """Spend net of refunds per currency, minor units (counted orders only)."""
        return self.view.spend

    @property
    def currencies(self) -> dict[str, int]:
        """Counted orders per currency."""
        return self.view.currencies

    @property
    def channels(self) -> dict[str, int]:
        return self.view.channels

    def spend(self, rates: Rates = NO_RATES) -> tuple[float, tuple[str, ...]]:
        """Spend in the reporting currency (major units) and the currencies left out."""
        return rates.convert(self.spend_minor)

    def order_value(self, rates: Rates = NO_RATES) -> tuple[float, tuple[str, ...]]:
        """Mean order value in the reporting currency over the orders in currencies with a
        rate (0 when none), and the currencies left out."""
        total, missing = rates.convert(self.spend_minor)
        orders = sum(n for c, n in self.currencies.items() if c not in missing)
        return (total / orders if orders else 0.0), missing

    def days_through(self, day: int) -> tuple[int, int]:
        """(distinct purchase days on or before ``day``, the latest of them); see
        :meth:`StateView.days_through`."""
        return self.view.days_through(self.book.base, day)

    # -- applying events ---------------------------------------------------------------
    def apply(self, event: StreamEvent) -> ApplyStatus:
        """Fold one event in; a status other than ``applied`` means nothing changed, but
        ``applied_refund_dropped``: a purchase applied whose order had refunds, received
        before it, in another currency than the purchase's; they no longer count (an order's
        money is in one currency), and the caller is to say so (the core: a
        ``currency_mismatch`` dead letter, as when the refund comes after its purchase).

        Erasure events are not the state's to apply (the core starts a new state)."""
        if isinstance(event, ErasureEvent):
            raise TypeError("an erasure replaces the state; it is not applied to it")
        ts = int(event.occurred_at.timestamp())
        if isinstance(event, ConsentEvent):
            return self._consent(event, ts)
        book = self.book
        if book.beyond(ts):
            return "beyond_horizon"
        digest = event_digest(event.event_id)
        if digest in book.events:
            again = _again(book.base, book.events[digest], ts)
            if again == "duplicate" and isinstance(event, PurchaseEvent):
                return self._purchase_again(event, ts)
            return again
        order_digest = event_digest(event.order_id)
        new_order = order_digest not in book.orders
        rec = book.order(order_digest, ts)
        if not rec.placed:  # known from follow-ups only: dated by the earliest
            rec.ts = min(rec.ts, ts)
        dropped = False
        if isinstance(event, PurchaseEvent):
            if rec.placed:
                return "duplicate_order"
            dropped = self._purchase(event, rec, ts)
        elif isinstance(event, RefundEvent):
            # the order's currency, or that of a follow-up that came before it: one order's
            # money is in one currency, whatever the order its events arrive in
            if rec.currency and rec.currency != event.currency:
                return "currency_mismatch"
            self._refund(event, rec)
        elif isinstance(event, CancellationEvent):
            if rec.cancelled:
                return "duplicate_order"
            if event.currency is not None and rec.currency and rec.currency != event.currency:
                return "currency_mismatch"
            self._cancel(event, rec)
        book.events[digest] = ts
        floor, folded = book.base.floor_ts, book.base.orders
        self._compact()
        old, self._view = self._view, None
        # the fast path holds while nothing was compacted: the floor can stay put while
        # orders are folded (a flood of other events moved it past them before)
        if (old is not None and new_order and isinstance(event, PurchaseEvent)
                and book.base.floor_ts == floor and book.base.orders == folded
                and rec.counted):
            self._view = old.with_order(book.base, rec)  # the common case, without a pass
        return "applied_refund_dropped" if dropped else "applied"

    def _purchase_again(self, event: PurchaseEvent, ts: int) -> ApplyStatus:
        """A purchase whose event id and time were applied before: a redelivery
        (``duplicate``) only if its order is the one applied under that id, at that time, in
        that currency and for that total; else ``event_id_reused`` (a producer that reuses
        ids would otherwise lose the other order without a word). A kept purchase's order is
        always kept (its time is its order's, and both horizons cut by the same floor); a
        state migrated from version 1 (orders compacted at floor 0) cannot tell."""
        rec = self.book.orders.get(event_digest(event.order_id))
        if rec is None:
            base = self.book.base
            return "duplicate" if base.orders and not base.floor_ts else "event_id_reused"
        same = (rec.placed and rec.ts == ts and rec.currency == event.currency
                and rec.amount == to_minor(event.total, event.currency))
        return "duplicate" if same else "event_id_reused"

    def _compact(self) -> None:
        floor = self.book.base.floor_ts
        self.book.compact()
        if self.book.base.floor_ts != floor:
            day = self.book.base.floor_ts // DAY
            self.products.compact(day)
            self.categories.compact(day)

    def _consent(self, event: ConsentEvent, ts: int) -> ApplyStatus:
        digest = event_digest(event.event_id)
        if digest in self.book.events:
            return _again(self.book.base, self.book.events[digest], ts)
        if not self.book.beyond(ts):  # before the floor a statement is still idempotent
            self.book.events[digest] = ts
            self._compact()
        self.state_consent(event.analysis, ts)
        return "applied"

    def state_consent(self, consent: bool, ts: int) -> None:
        """A consent statement made at ``ts``: the latest wins; at the same instant a refusal
        wins, in any order."""
        if self.consent is None or ts > self.consent_ts:
            self.consent, self.consent_ts = consent, ts
        elif ts == self.consent_ts:
            self.consent = self.consent and consent

    def _purchase(self, event: PurchaseEvent, rec: OrderRecord, ts: int) -> bool:
        """Apply a purchase to its order's record; True when refunds received before it
        (in another currency) were dropped."""
        dropped = bool(rec.currency and rec.currency != event.currency and rec.refunded)
        if rec.currency and rec.currency != event.currency:
            rec.refunded = 0  # a refund in another currency than its order cannot apply
        rec.ts, rec.placed, rec.currency = ts, True, event.currency
        rec.amount = to_minor(event.total, event.currency)
        rec.quantity = sum(i.quantity for i in event.items)
        rec.channel = event.channel
        if event.consent is not None:
            self.state_consent(event.consent, ts)
        self.last_event_ts, self.last_event_id = max((self.last_event_ts, self.last_event_id),
                                                     (ts, event.event_id))
        self._lines(event.items, event.currency, ts // DAY, take_back=False)
        return dropped

    def _refund(self, event: RefundEvent, rec: OrderRecord) -> None:
        rec.currency = rec.currency or event.currency
        rec.refunded = min(rec.refunded + to_minor(event.amount, event.currency), MAX_MINOR)
        self._lines(event.items, event.currency, 0, take_back=True)

    def _cancel(self, event: CancellationEvent, rec: OrderRecord) -> None:
        rec.cancelled = True
        if event.currency is not None:
            rec.currency = rec.currency or event.currency
            self._lines(event.items, event.currency, 0, take_back=True, whole=True)

    def _lines(self, items: list[LineItem], currency: str, day: int, *, take_back: bool,
               whole: bool = False) -> None:
        priced = _lines(items, currency)
        for table, by_product in ((self.products, True), (self.categories, False)):
            touched: set[str] = set()
            for item, minor in priced:
                key = item.product_id if by_product else item.category
                if take_back:
                    table.take_back(key, item.quantity, minor, currency,
                                    whole and key not in touched)
                else:
                    table.add(key, day, item.quantity, minor, currency, key not in touched)
                touched.add(key)

    # -- bounds and persistence ----------------------------------------------------------
    def size(self) -> int:
        """Bytes of the item's state attributes (body and the two binary ones)."""
        orders, events = self.book.pack()
        return len(self.to_json().encode()) + len(orders) + len(events)

    def bound(self, max_bytes: int = MAX_STATE_BYTES) -> None:
        """Evict products and categories (least recently bought first) until the state
        fits ``max_bytes``; measured exactly unless a generous estimate (names as escaped
        JSON, every day and currency entry at its widest) is under a quarter of it."""
        tables = (self.products, self.categories)
        rough = (len(self.book.orders) * 41 + len(self.book.events) * 16 + 400
                 + sum(6 * len(k) + 60 + 8 * len(v.days) + 30 * len(v.spend)
                       for t in tables for k, v in t.items()))
        if rough < max_bytes // 4:
            return
        while self.size() > max_bytes and (self.products or self.categories):
            for table in tables:
                table.evict(max(1, len(table) // 8))

    def to_json(self) -> str:
        """The body of the state: the compacted sums, products, categories, consent."""
        return json.dumps(
            {
                "v": 2,
                "b": self.book.base.to_list(),
                "pr": {k: v.to_list() for k, v in sorted(self.products.items())},
                "ca": {k: v.to_list() for k, v in sorted(self.categories.items())},
                "c": self.consent,
                "ct": self.consent_ts,
                "le": self.last_event_id,
                "lt": self.last_event_ts,
            },
            separators=(",", ":"), sort_keys=True,
        )

    @classmethod
    def from_parts(cls, customer_id: str, version: int, body: str, orders: bytes = b"",
                   events: bytes = b"") -> CustomerState:
        """The state from its item's parts (``body`` from :meth:`to_json`, the binary
        attributes from ``book.pack()``); a body written before version 2 is migrated by
        :func:`models.state_view.migrate`."""
        d = json.loads(body)
        if d.get("v") != 2:
            from models.state_view import migrate

            d, events = migrate(d, events)
            orders = b""
        return cls(
            customer_id=customer_id,
            version=version,
            book=OrderBook.unpack(orders, events, Compacted.from_list(d["b"])),
            products=ItemTable(MAX_PRODUCTS,
                               {k: ItemStats.from_list(v) for k, v in d["pr"].items()}),
            categories=ItemTable(MAX_CATEGORIES,
                                 {k: ItemStats.from_list(v) for k, v in d["ca"].items()}),
            consent=d["c"],
            consent_ts=d["ct"],
            last_event_id=d.get("le", ""),
            last_event_ts=d.get("lt", 0),
        )

    def comparable(self) -> tuple[Any, ...]:
        """Everything but the write version: equal iff the same events were applied."""
        return (self.customer_id, self.to_json(), *self.book.pack())
