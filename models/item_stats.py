"""What one customer bought of each product and category, in bounded space.

Each :class:`ItemStats` keeps running sums (orders, quantity, spend per currency in minor
units), the first purchase day, and the distinct purchase days on or after the
de-duplication floor's day (:mod:`models.order_book`) one by one; days before it are only
counted (``early``), as the orders they came from are compacted. So within the horizon
everything is exact and independent of delivery order. An :class:`ItemTable` keeps at
most ``limit`` entries (products
:data:`MAX_PRODUCTS`, categories :data:`MAX_CATEGORIES`); a new key in a full table
evicts the entry bought least recently (ties: fewest orders, then key), so a customer with
2,000 distinct products keeps the 256 bought most recently. Totals over all products
(quantity, spend) live in the customer state, so an eviction loses detail, never a total.

Beyond the table's limit, which entry is evicted depends on the order purchases arrive in.

>>> t = ItemTable(MAX_PRODUCTS)
>>> for day in (0, 7, 7, 14):
...     t.add("milk", day, 2, 240, "EUR", new_order=True)
>>> m = t["milk"]
>>> m.orders, m.quantity, m.spend, m.day_count, m.days, m.mean_gap
(4, 8, {'EUR': 960}, 3, [0, 7, 14], 7.0)
>>> t.compact(10); m.early, m.days, m.day_count, m.mean_gap
(2, [14], 3, 7.0)
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

#: products kept per customer
MAX_PRODUCTS = 256
#: categories kept per customer
MAX_CATEGORIES = 64


@dataclass(slots=True)
class ItemStats:
    """Purchases of one product or one category by one customer."""

    orders: int = 0
    quantity: int = 0
    spend: dict[str, int] = field(default_factory=dict)  # minor units per currency
    early: int = 0  # distinct purchase days before the floor's day
    first_day: int = 0
    days: list[int] = field(default_factory=list)  # distinct days from the floor's, sorted

    def clone(self) -> ItemStats:
        return ItemStats(self.orders, self.quantity, dict(self.spend), self.early,
                         self.first_day, list(self.days))

    @property
    def day_count(self) -> int:
        """Distinct purchase days, all time."""
        return self.early + len(self.days)

    @property
    def last_day(self) -> int:
        return self.days[-1] if self.days else self.first_day

    @property
    def mean_gap(self) -> float | None:
        """Mean days between distinct purchase days, over all of them; None below two, or
        when every kept day is compacted (:meth:`counted`)."""
        return self.counted(frozenset())[3]

    def counted(self, dead: frozenset[int]) -> tuple[list[int], int, int, float | None]:
        """The item's purchase history without the ``dead`` days (those of cancelled orders
        only: :attr:`models.state_view.StateView.dead_days`): the days kept one by one,
        the distinct days in all, the last day and the mean gap in days (None below two
        days, or when no kept day is left: the last day is then unknown, ``first_day``
        stands in for it).

        >>> s = ItemStats(orders=2, days=[0, 5, 9], first_day=0)
        >>> s.counted(frozenset()), s.counted(frozenset({9}))
        (([0, 5, 9], 3, 9, 4.5), ([0, 5], 2, 5, 5.0))
        """
        days = self.days
        if dead and not dead.isdisjoint(days):
            days = [d for d in days if d not in dead]
        if not days:  # every kept day dead, or all compacted: no last day to go by
            return days, self.early, self.first_day, None
        count = self.early + len(days)
        first = self.first_day if self.early else days[0]
        return days, count, days[-1], (days[-1] - first) / (count - 1) if count > 1 else None

    def add_day(self, day: int) -> None:
        days = self.days
        i = bisect.bisect_left(days, day)
        if i < len(days) and days[i] == day:
            return
        self.first_day = day if not self.day_count else min(self.first_day, day)
        days.insert(i, day)

    def compact(self, floor_day: int) -> None:
        """Count the days before ``floor_day`` instead of keeping them."""
        n = bisect.bisect_left(self.days, floor_day)
        if n:
            self.early += n
            del self.days[:n]

    def spend_total(self) -> int:
        """Minor units summed across currencies: an ordering key only, never shown."""
        return sum(self.spend.values())

    def to_list(self) -> list[Any]:
        return [self.orders, self.quantity, self.spend, self.early, self.first_day, self.days]

    @classmethod
    def from_list(cls, v: list[Any]) -> ItemStats:
        return cls(int(v[0]), int(v[1]), dict(v[2]), int(v[3]), int(v[4]),
                   [int(d) for d in v[5]])


class ItemTable(dict[str, ItemStats]):
    """``key -> ItemStats`` holding at most ``limit`` entries."""

    def __init__(self, limit: int, items: dict[str, ItemStats] | None = None) -> None:
        super().__init__(items or {})
        self.limit = limit
        #: keys whose entry this table shares with a clone or its original (copied before
        #: :meth:`add`, :meth:`take_back` or :meth:`compact` changes it)
        self._shared: set[str] = set()

    def clone(self) -> ItemTable:
        """An independent copy, copy-on-write: the two tables share their entries until
        one of them changes one through its methods (the only way an entry changes)."""
        twin = ItemTable(self.limit, self)
        self._shared = set(self)
        twin._shared = set(self._shared)
        return twin

    def _own(self, key: str, stats: ItemStats) -> ItemStats:
        """``stats`` (the entry of ``key``), copied first if it is shared."""
        if key in self._shared:
            self._shared.discard(key)
            stats = stats.clone()
            dict.__setitem__(self, key, stats)
        return stats

    def add(self, key: str, day: int, quantity: int, minor: int, currency: str,
            new_order: bool) -> None:
        """A line of an order: ``quantity`` units for ``minor`` units of ``currency``;
        ``new_order`` is False for a further line of an order that already counted."""
        stats = self.get(key)
        if stats is None:
            if len(self) >= self.limit:
                self.evict(1)
            stats = self[key] = ItemStats()
            self._shared.discard(key)
        else:
            stats = self._own(key, stats)
        stats.quantity += quantity
        stats.spend[currency] = stats.spend.get(currency, 0) + minor
        if new_order:
            stats.orders += 1
            stats.add_day(day)

    def take_back(self, key: str, quantity: int, minor: int, currency: str,
                  whole_order: bool) -> None:
        """Returned or cancelled units; ``whole_order`` also takes the order off the count.

        Sums may go below 0 (a return applied before its purchase), so that any order of
        delivery gives the same sums; readers floor them at 0."""
        stats = self.get(key)
        if stats is None:
            if len(self) >= self.limit:
                self.evict(1)
            stats = self[key] = ItemStats()
            self._shared.discard(key)
        else:
            stats = self._own(key, stats)
        stats.quantity -= quantity
        stats.spend[currency] = stats.spend.get(currency, 0) - minor
        if whole_order:
            stats.orders -= 1

    def compact(self, floor_day: int) -> None:
        for key, stats in list(self.items()):
            if stats.days and stats.days[0] < floor_day:
                self._own(key, stats).compact(floor_day)

    def evict(self, n: int) -> None:
        """Drop the ``n`` entries bought least recently."""
        ranked = sorted(self.items(), key=lambda kv: (kv[1].last_day, kv[1].orders, kv[0]))
        for key, _ in ranked[:n]:
            del self[key]
            self._shared.discard(key)
