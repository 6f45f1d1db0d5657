"""A customer's recent orders and event ids, bounded by the de-duplication horizon.

Exactly-once rests on remembering what was applied. Remembering everything grows a
customer's item without bound (DynamoDB refuses items over 400 KB), so the state keeps
the **latest** :data:`ORDER_HORIZON` orders (one :class:`OrderRecord` each: its order-id
digest, time, currency, amount, refunds, quantity, channel) and the latest
:data:`EVENT_HORIZON` event-id digests, ordered by event time. Older orders are folded
into :class:`Compacted` running sums, and the **floor** (``Compacted.floor_ts``) moves
past them.

The de-duplication horizon, stated: a customer's events dated at or after the floor
are applied exactly once, however often they are redelivered or replayed, and a purchase
whose order id is among the kept orders is a duplicate whatever its event id. The floor
stays at 0 (everything is exact, for ever) until the customer has more than
:data:`ORDER_HORIZON` orders or :data:`EVENT_HORIZON` events (plus an eighth: compaction
runs in steps); after that at least the latest 512 orders and 1,024 events (by event
time) stay exact. An event dated before the
floor can no longer be told from one already applied, so it is refused
(``beyond_horizon``, a dead letter with its reason) rather than risk counting it twice;
consent statements are the exception, being idempotent by themselves (the latest
wins). A refund or cancellation whose order is not among the kept orders waits for it
(out-of-order delivery; at most :data:`PENDING_MAX` wait, the oldest go first); one for an
order already compacted changes nothing.

Sizes: an order record packs into :data:`ORDER_BYTES` (41) bytes and an event digest into
16, so the book is at most 576 x 41 + 1,152 x 16 = 42,048 bytes.

>>> book = OrderBook()
>>> for i in range(ORDER_HORIZON + 65):
...     rec = book.order(event_digest(f"o{i}"), ts=i * 86_400)
...     rec.placed, rec.currency, rec.amount, rec.quantity = True, "USD", 100, 1
...     book.events[event_digest(f"e{i}")] = i * 86_400
...     book.compact()
>>> len(book.orders), book.base.orders, book.base.floor_ts == 65 * 86_400
(512, 65, True)
>>> OrderBook.unpack(*book.pack()).orders == book.orders
True
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

DAY = 86_400
#: orders kept one by one (the order-id de-duplication horizon, and what refunds and
#: cancellations can reach)
ORDER_HORIZON = 512
#: event-id digests kept (the event-id de-duplication horizon)
EVENT_HORIZON = 1024
#: records of refunds and cancellations still waiting for their purchase
PENDING_MAX = 64
CHANNELS = ("web", "app", "store", "phone", "marketplace", "other")
_ORDER = struct.Struct(">QqBB3sqqI")
ORDER_BYTES = _ORDER.size
_EVENT = struct.Struct(">Qq")


def _cut(times: list[int], keep: int) -> int:
    """The floor that keeps the latest ``keep`` of the sorted ``times`` and whatever shares
    the oldest kept one's second; when that second holds them all (a bulk import), they stay
    up to ``2 * keep``, beyond which that second is dropped too (0: nothing to drop yet)."""
    cut = times[len(times) - keep]
    if cut > times[0]:
        return cut
    return times[len(times) - keep - 1] + 1 if len(times) > 2 * keep else 0


def event_digest(text: str) -> int:
    """Stable 64-bit digest of an event or order id (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class OrderRecord:
    """One order within the horizon; amounts in minor units of ``currency``.

    A record may exist before its purchase (``placed`` False): a refund or cancellation
    that arrived first. ``ts`` is then the follow-up's time, and becomes the purchase's."""

    ts: int
    placed: bool = False
    cancelled: bool = False
    currency: str = ""
    amount: int = 0
    refunded: int = 0
    quantity: int = 0
    channel: str = "web"

    @property
    def counted(self) -> bool:
        """Does the order count (placed and not cancelled)?"""
        return self.placed and not self.cancelled

    @property
    def net(self) -> int:
        """What the customer kept paying: the total less refunds, never below 0."""
        return max(0, self.amount - self.refunded)


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


@dataclass(slots=True)
class Compacted:
    """Running sums of the orders older than the floor (all counted ones: placed, not
    cancelled); amounts net of the refunds they had when compacted."""

    floor_ts: int = 0
    orders: int = 0
    days: int = 0  # distinct UTC purchase days
    first_ts: int = 0
    last_ts: int = 0
    quantity: int = 0
    spend: dict[str, int] = field(default_factory=dict)  # minor units per currency
    currencies: dict[str, int] = field(default_factory=dict)  # orders per currency
    channels: dict[str, int] = field(default_factory=dict)

    def fold(self, rec: OrderRecord) -> None:
        if not rec.counted:
            return
        if not self.orders or rec.ts // DAY != self.last_ts // DAY:
            self.days += 1
        if not self.orders:
            self.first_ts = rec.ts
        self.orders += 1
        self.last_ts = max(self.last_ts, rec.ts)
        self.quantity += rec.quantity
        _add(self.spend, rec.currency, rec.net)
        _add(self.currencies, rec.currency, 1)
        _add(self.channels, rec.channel, 1)

    def to_list(self) -> list[Any]:
        return [self.floor_ts, self.orders, self.days, self.first_ts, self.last_ts,
                self.quantity, self.spend, self.currencies, self.channels]

    @classmethod
    def from_list(cls, v: list[Any]) -> Compacted:
        return cls(int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5]),
                   dict(v[6]), dict(v[7]), dict(v[8]))

    def clone(self) -> Compacted:
        return Compacted(self.floor_ts, self.orders, self.days, self.first_ts, self.last_ts,
                         self.quantity, dict(self.spend), dict(self.currencies),
                         dict(self.channels))


@dataclass(slots=True)
class OrderBook:
    """Order records by order-id digest, event-id digests with their event time, and the
    compacted rest."""

    orders: dict[int, OrderRecord] = field(default_factory=dict)
    events: dict[int, int] = field(default_factory=dict)  # digest -> epoch seconds
    base: Compacted = field(default_factory=Compacted)
    #: orders whose record this book shares with a clone or its original (copied by
    #: :meth:`order` before it can change)
    _shared: set[int] = field(default_factory=set, repr=False, compare=False)

    def clone(self) -> OrderBook:
        """An independent copy, copy-on-write: the two books share their order records
        until :meth:`order` hands one out to be changed (the only way a record changes), so
        a clone costs two dict copies, not a record per order."""
        self._shared = set(self.orders)
        return OrderBook(dict(self.orders), dict(self.events), self.base.clone(),
                         set(self._shared))

    def order(self, digest: int, ts: int) -> OrderRecord:
        """The record of an order (the caller may change it), created (not placed) at
        ``ts`` when unknown."""
        rec = self.orders.get(digest)
        if rec is None:
            rec = self.orders[digest] = OrderRecord(ts)
        elif digest in self._shared:
            self._shared.discard(digest)
            rec = self.orders[digest] = OrderRecord(rec.ts, rec.placed, rec.cancelled,
                                                    rec.currency, rec.amount, rec.refunded,
                                                    rec.quantity, rec.channel)
        return rec

    def beyond(self, ts: int) -> bool:
        """Is an event dated ``ts`` before the floor (past the de-duplication horizon)?"""
        return ts < self.base.floor_ts

    def compact(self) -> None:
        """Keep each part within its horizon, paying the sorting once per eighth.

        * Orders (placed ones): beyond an eighth more than :data:`ORDER_HORIZON`, the
          orders older than the latest :data:`ORDER_HORIZON` are folded into the sums and
          the floor moves to the oldest kept one (orders sharing its second stay; only when
          one second alone holds more than twice the horizon does that second go too).
        * Event digests: likewise down to :data:`EVENT_HORIZON`; the floor moves, no order
          is folded (a flood of consent statements costs no order its record).
        * Records of follow-ups still waiting for their purchase: at most
          :data:`PENDING_MAX`; the oldest are dropped (their purchase, should it come,
          then counts in full)."""
        placed = [r.ts for r in self.orders.values() if r.placed]
        if len(placed) > ORDER_HORIZON + ORDER_HORIZON // 8:
            cut = _cut(sorted(placed), ORDER_HORIZON)
            self.base.floor_ts = max(self.base.floor_ts, cut)
            old = sorted((r.ts, k) for k, r in self.orders.items() if r.ts < cut)
            for _, k in old:
                self.base.fold(self.orders.pop(k))
        if len(self.events) > EVENT_HORIZON + EVENT_HORIZON // 8:
            self.base.floor_ts = max(self.base.floor_ts,
                                     _cut(sorted(self.events.values()), EVENT_HORIZON))
        floor = self.base.floor_ts
        if floor and any(ts < floor for ts in self.events.values()):
            self.events = {k: ts for k, ts in self.events.items() if ts >= floor}
        waiting = [(r.ts, k) for k, r in self.orders.items() if not r.placed]
        if len(waiting) > PENDING_MAX:
            for _, k in sorted(waiting)[: len(waiting) - PENDING_MAX]:
                del self.orders[k]

    # -- persistence: two binary attributes ----------------------------------------------
    def pack(self) -> tuple[bytes, bytes]:
        """(order records, event digests), sorted, :data:`ORDER_BYTES` and 16 bytes each."""
        orders = b"".join(
            _ORDER.pack(k, r.ts, r.placed | (r.cancelled << 1), CHANNELS.index(r.channel),
                        r.currency.encode().ljust(3, b"\0"), r.amount, r.refunded, r.quantity)
            for k, r in sorted(self.orders.items()))
        events = b"".join(_EVENT.pack(k, ts) for k, ts in sorted(self.events.items()))
        return orders, events

    @classmethod
    def unpack(cls, orders: bytes, events: bytes, base: Compacted | None = None) -> OrderBook:
        recs = {}
        for k, ts, flags, ch, cur, amount, refunded, qty in _ORDER.iter_unpack(orders):
            recs[k] = OrderRecord(ts, bool(flags & 1), bool(flags & 2),
                                  cur.rstrip(b"\0").decode(), amount, refunded, qty,
                                  CHANNELS[ch])
        return cls(recs, dict(_EVENT.iter_unpack(events)), base or Compacted())
