"""The figures derived from a customer's order book, and the migration of old states.

:class:`StateView` is what :class:`models.state.CustomerState` reads as purchases,
purchase days, first and last purchase, quantity, spend per currency: the compacted sums
(:class:`models.order_book.Compacted`) plus the counted orders still kept one by one.
It is recomputed after every change (linear in the kept orders, at most
:data:`models.order_book.ORDER_HORIZON`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from models.money import exponent
from models.order_book import DAY, Compacted, OrderBook, OrderRecord


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


@dataclass(frozen=True, slots=True)
class StateView:
    purchases: int = 0
    purchase_days: int = 0
    first_ts: int = 0
    last_ts: int = 0
    quantity: int = 0
    spend: dict[str, int] = field(default_factory=dict)
    currencies: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    #: distinct days of the kept counted orders after the compacted part's last day, sorted
    recent_days: tuple[int, ...] = ()
    #: days of kept orders placed and then cancelled on which no order counts: the item
    #: stats keep the days of every order placed, and the forecaster leaves these out
    dead_days: frozenset[int] = frozenset()

    @classmethod
    def of(cls, book: OrderBook) -> StateView:
        base = book.base
        spend = dict(base.spend)
        currencies = dict(base.currencies)
        channels = dict(base.channels)
        quantity = base.quantity
        first_ts, last_ts = (base.first_ts, base.last_ts) if base.orders else (0, 0)
        days: set[int] = set()
        n = 0
        dead: set[int] = set()
        for rec in book.orders.values():
            if not rec.counted:
                if rec.placed and rec.cancelled:
                    dead.add(rec.ts // DAY)
                continue
            if not (base.orders or n) or rec.ts < first_ts:
                first_ts = rec.ts
            last_ts = max(last_ts, rec.ts)
            n += 1
            days.add(rec.ts // DAY)
            quantity += rec.quantity
            _add(spend, rec.currency, rec.net)
            _add(currencies, rec.currency, 1)
            _add(channels, rec.channel, 1)
        dead -= days
        if base.orders:
            days.discard(base.last_ts // DAY)
            dead.discard(base.last_ts // DAY)
        return cls(base.orders + n, base.days + len(days), first_ts, last_ts, quantity,
                   {c: v for c, v in sorted(spend.items()) if currencies.get(c)},
                   {c: v for c, v in sorted(currencies.items()) if v},
                   {c: v for c, v in sorted(channels.items()) if v}, tuple(sorted(days)),
                   frozenset(dead))

    def with_order(self, base: Compacted, rec: OrderRecord) -> StateView:
        """The view after one more counted order ``rec`` is kept (nothing else changed, the
        compacted part ``base`` included): what :meth:`of` gives for the book with it, without
        going over every kept order (integer sums: exactly the same)."""
        ts, c, ch = rec.ts, rec.currency, rec.channel
        day = ts // DAY
        days = self.recent_days
        if (base.orders and day == base.last_ts // DAY) or day in days:
            n_days = self.purchase_days
        else:
            days = tuple(sorted((*days, day)))
            n_days = self.purchase_days + 1
        spend = dict(self.spend)
        spend[c] = (spend[c] if c in self.currencies else base.spend.get(c, 0)) + rec.net
        currencies = dict(self.currencies)
        _add(currencies, c, 1)
        channels = dict(self.channels)
        _add(channels, ch, 1)
        return StateView(
            self.purchases + 1, n_days, min(self.first_ts, ts) if self.purchases else ts,
            max(self.last_ts, ts), self.quantity + rec.quantity, dict(sorted(spend.items())),
            dict(sorted(currencies.items())), dict(sorted(channels.items())), days,
            self.dead_days - {day} if day in self.dead_days else self.dead_days)

    def days_through(self, base: Compacted, day: int) -> tuple[int, int]:
        """(distinct purchase days on or before ``day``, the latest such day); (0, 0) when
        none. Exact for the kept orders; within the compacted part (before its last day)
        the count is interpolated linearly over its span and the latest day is ``day``."""
        if not self.purchases or day < self.first_ts // DAY:
            return 0, 0
        recent = [d for d in self.recent_days if d <= day]
        if not base.orders:
            return len(recent), (recent[-1] if recent else 0)
        base_first, base_last = base.first_ts // DAY, base.last_ts // DAY
        if day >= base_last:
            return base.days + len(recent), (recent[-1] if recent else base_last)
        share = (day - base_first + 1) / (base_last - base_first + 1)
        return max(1, round(base.days * share)), day


def migrate(d: dict[str, Any], seen: bytes) -> tuple[dict[str, Any], bytes]:
    """A version-1 body (full day lists, one spend in cents) and its event-id digests as a
    version-2 body and event digests: its orders become compacted sums at floor 0 (so
    nothing is refused), its digests are kept (dated at its last purchase) so a
    redelivered old event stays a duplicate. Order-id digests of version 1 are dropped."""
    days = d.get("d", [])
    cu = d.get("cu") or {"USD": d.get("p", 0)}
    code = max(cu, key=lambda c: cu[c]) if cu else "USD"
    # version 1 kept "cents" as int(total * 100) whatever the currency: rescale to the minor
    # unit (JPY 6000 was 600000, KWD 1.235 was 123); with several currencies the sum cannot be
    # split and is kept under the most frequent one (approximate, as it was)

    def minor(cents: int) -> int:
        return int(cents * 10 ** exponent(code) // 100)

    base = Compacted(0, d["p"], len(days), d["f"], d["l"], d["q"],
                     {code: minor(d["s"])} if d["p"] else {},
                     dict(cu) if d["p"] else {}, dict(d.get("ch", {})))

    def item(v: list[Any]) -> list[Any]:
        ds = [int(x) for x in v[3]]
        return [v[0], v[1], {code: minor(v[2])}, 0, ds[0] if ds else 0, ds]

    body = {"v": 2, "b": base.to_list(), "pr": {k: item(v) for k, v in d["pr"].items()},
            "ca": {k: item(v) for k, v in d["ca"].items()}, "c": d["c"], "ct": d["ct"],
            "le": d.get("le", ""), "lt": d["l"]}
    digests = struct.unpack(f">{len(seen) // 8}Q", seen[: len(seen) // 8 * 8])
    return body, b"".join(struct.pack(">Qq", g, d["l"]) for g in digests)
