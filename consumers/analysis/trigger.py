"""When to analyse a customer: debounce, a change-aware cache, schedules (pure).

* **Debounce.** A customer's purchases coalesce: the first purchase after an
  analysis opens a window of ``debounce_s``; purchases inside it only refresh
  the features, and one analysis runs when the window closes, reflecting all
  of them.
* **Cache.** When the window closes the features are compared with those the
  last analysis saw (:func:`stale_reason`). The call is skipped when they
  changed too little; the explicit invalidation rules are listed there.
* **Schedule / on demand.** :meth:`TriggerPolicy.schedule` queues an active
  customer with no debounce (still subject to the cache); on-demand requests
  bypass the policy altogether (see :mod:`consumers.analysis.enricher`).

Time is passed in (seconds on any monotonic clock), so the policy runs the same
in the worker and in the benchmark's virtual time.

>>> p = TriggerPolicy(debounce_s=60)
>>> p.purchase("c1", "features@t0", 0.0); p.purchase("c1", "features@t30", 30.0)
>>> p.due(59.0), [(cid, d.features, d.arrivals) for cid, d in p.due(60.0)]
([], [('c1', 'features@t30', [0.0, 30.0])])
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Generic, Literal, TypeVar

from models.prompt import AnalysisInput

F = TypeVar("F")
Trigger = Literal["purchase", "schedule"]


@dataclass(slots=True)
class Pending(Generic[F]):
    features: F
    opened_at: float
    due_at: float
    trigger: Trigger
    arrivals: list[float] = field(default_factory=list)  # when each covered purchase arrived


class TriggerPolicy(Generic[F]):
    """Pending analyses keyed by customer, released when their window closes."""

    def __init__(self, debounce_s: float = 60.0) -> None:
        self.debounce_s = debounce_s
        self._pending: dict[str, Pending[F]] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._pending)

    def purchase(self, customer: str, features: F, now: float) -> None:
        p = self._pending.get(customer)
        if p is None:
            self._put(customer, Pending(features, now, now + self.debounce_s, "purchase", [now]))
        else:
            p.features = features
            p.arrivals.append(now)

    def schedule(self, customer: str, features: F, now: float) -> None:
        p = self._pending.get(customer)
        if p is None:
            self._put(customer, Pending(features, now, now, "schedule"))
        elif now < p.due_at:  # already waiting: a schedule makes it due now
            p.features = features
            self._put(customer, Pending(p.features, p.opened_at, now, p.trigger, p.arrivals))

    def defer(self, customer: str, pending: Pending[F], until: float) -> None:
        """Put a released entry back (rate limited); newer purchases merge into it."""
        newer = self._pending.get(customer)
        if newer is not None:
            pending.features = newer.features
            pending.arrivals.extend(newer.arrivals)
        pending.due_at = until
        self._put(customer, pending)

    def cancel(self, customer: str) -> bool:
        """Forget the customer's pending analysis (erased); True when there was one. Its
        heap entry is skipped when it comes up."""
        return self._pending.pop(customer, None) is not None

    def _put(self, customer: str, p: Pending[F]) -> None:
        self._pending[customer] = p
        heapq.heappush(self._heap, (p.due_at, customer))

    def next_due_at(self) -> float | None:
        while self._heap:
            at, cid = self._heap[0]
            p = self._pending.get(cid)
            if p is not None and p.due_at == at:
                return at
            heapq.heappop(self._heap)  # superseded entry
        return None

    def due(self, now: float, limit: int | None = None) -> list[tuple[str, Pending[F]]]:
        out: list[tuple[str, Pending[F]]] = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(out) < limit):
            at, cid = heapq.heappop(self._heap)
            p = self._pending.get(cid)
            if p is not None and p.due_at == at:
                del self._pending[cid]
                out.append((cid, p))
        return out

    def expedite(self, now: float) -> None:
        """Make everything pending due now (end of a bounded run)."""
        for cid, p in list(self._pending.items()):
            if p.due_at > now:
                p.due_at = now
                heapq.heappush(self._heap, (now, cid))

    def flush(self) -> list[tuple[str, Pending[F]]]:
        """Everything pending, due or not (shutdown, end of a bounded run)."""
        out = sorted(self._pending.items(), key=lambda kv: kv[1].due_at)
        self._pending.clear()
        self._heap.clear()
        return out


# -- the cache --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheRules:
    min_relative_change: float = 0.25  # purchase days or order value moved this much
    max_age_days: int = 30  # an analysis older than this (event time) is redone


#: purchase-day counts where the depth of history (and so an analysis's confidence) changes
HISTORY_STEPS = (1, 2, 3, 5, 10, 20)


def _history_step(purchase_days: int) -> int:
    return sum(purchase_days >= n for n in HISTORY_STEPS)


@dataclass(frozen=True, slots=True)
class Signature:
    """What the last analysis saw, compact enough to keep beside it.

    Behaviour, not counts: a steady weekly shopper's rate and spend per shopping day stay
    put from one purchase to the next, so their analysis stays valid.
    """

    version: str  # analyzer model id and prompt version
    purchase_days: int
    rate_30d: float  # purchase days per 30 days of tenure (0 with a single day)
    spend_per_day: float  # spend per purchase day (split orders do not move it)
    items: frozenset[str]
    segment: str | None
    as_of: date

    @classmethod
    def of(cls, x: AnalysisInput, version: str) -> Signature:
        rate = (x.purchase_days - 1) / max(x.tenure_days, 1) * 30.0 if x.purchase_days > 1 else 0.0
        return cls(
            version=version,
            purchase_days=x.purchase_days,
            rate_30d=round(rate, 4),
            spend_per_day=round(x.total_spend / max(x.purchase_days, 1), 2),
            items=frozenset(f"{i.kind}:{i.name}" for i in (*x.products, *x.categories)),
            segment=x.segment,
            as_of=x.as_of,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.version, "d": self.purchase_days, "rate": self.rate_30d,
                "spd": self.spend_per_day, "items": sorted(self.items), "seg": self.segment,
                "as_of": self.as_of.isoformat()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(str(d["v"]), int(d["d"]), float(d["rate"]), float(d["spd"]),
                   frozenset(d["items"]), d.get("seg"), date.fromisoformat(d["as_of"]))


def _moved(old: float, new: float, share: float) -> bool:
    return abs(new - old) >= share * max(abs(old), 1.0)


def stale_reason(old: Signature | None, new: Signature, rules: CacheRules) -> str | None:
    """Why the cached analysis no longer holds, or ``None`` to reuse it.

    The invalidation rules, in order:

    1. ``first``: there is no earlier analysis;
    2. ``version``: another model or prompt version produced it;
    3. ``new_item``: a product or category it did not see;
    4. ``segment``: the customer moved to another segment;
    5. ``history``: the history deepened past a step of :data:`HISTORY_STEPS` purchase days
       (1, 2, 3, 5, 10, 20), where what can be said about a customer changes;
    6. ``frequency`` / ``spend``: the purchase rate (days per 30 days) or the spend per
       purchase day moved by ``min_relative_change`` or more;
    7. ``age``: it is ``max_age_days`` or more older than the features (event time).

    Consent changes are handled before the cache: a refusal never reaches a model.

    >>> from datetime import date
    >>> a = Signature("m|p1", 6, 4.0, 20.0, frozenset({"product:milk"}), "Loyal", date(2024, 1, 1))
    >>> b = Signature("m|p1", 7, 4.2, 21.0, frozenset({"product:milk"}), "Loyal", date(2024, 1, 8))
    >>> stale_reason(a, b, CacheRules()), stale_reason(a, b, CacheRules(max_age_days=7))
    (None, 'age')
    """
    if old is None:
        return "first"
    if old.version != new.version:
        return "version"
    if new.items - old.items:
        return "new_item"
    if old.segment != new.segment:
        return "segment"
    if _history_step(old.purchase_days) != _history_step(new.purchase_days):
        return "history"
    if _moved(old.rate_30d, new.rate_30d, rules.min_relative_change):
        return "frequency"
    if _moved(old.spend_per_day, new.spend_per_day, rules.min_relative_change):
        return "spend"
    if (new.as_of - old.as_of).days >= rules.max_age_days:
        return "age"
    return None
