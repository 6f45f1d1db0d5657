"""Value-aware routing: which customers get a model's analysis, and how soon (pure).

A Bedrock call per purchase is spend where the answer cannot change what is done for the
customer. When the debounce window of a purchase (or a scheduled re-analysis) closes, the
customer's fresh statistical prediction picks one of three routes:

* ``on_demand``: the customer is in the **top value share** of the active customers
  (``clv`` above :attr:`ValueCuts.top_clv`, the 80th percentile by default): a Bedrock
  call now, as before (fresh within the debounce window plus the call);
* ``statistical``: the analysis could not change an action: a single purchase day (nothing
  to analyse but that order: the action is the welcome the statistical analysis gives;
  every such customer has the same CLV, the spend model's population mean), P(alive) below
  :attr:`ValueCuts.p_alive_floor` (most likely gone), or ``clv`` at or below
  :attr:`ValueCuts.low_clv` (the bottom value share, 40% by default: no personalised action
  is worth a model's analysis there): the statistical analysis, no call;
* ``daily``: everyone else is left to the daily batch (Bedrock batch inference at about half
  the on-demand price, ``caa batch``), which analyses them within its schedule; without a
  daily batch configured they stay ``on_demand``.

The cuts are population quantiles of the CLV of the customers active at a refit (those
who bought within ``analysis_active_days`` of its as-of time, on more than one day: buyers
are compared with buyers, not with the dormant majority whose CLV has decayed, nor with the
one-order customers, who share one CLV and have a rule of their own), each one's CLV taken
as of their own last purchase (:func:`consumers.refit.route_cuts_doc`): the moment a buyer
is routed at, so the comparison is like for like (a CLV taken at the refit has decayed with
the weeks since that customer bought, and every fresh buyer would rank near the top).
Customers with the same history have the same CLV: a tie at a cut goes to the cheaper
route. Each refit stores them
in the models table (:data:`ROUTE_CUTS`); before the first refit, with fewer than
:data:`MIN_CUSTOMERS` active customers, or when the CLVs do not separate them, there are none
and everyone is routed ``on_demand`` (the behaviour without value routing). On-demand requests
(``caa analyze``, the API) are never routed.

>>> cuts = cuts_of([float(v) for v in range(1, 101)], as_of=0)
>>> cuts.top_clv, cuts.low_clv
(80.0, 40.0)
>>> [route(0.9, clv, cuts, daily=True) for clv in (90.0, 80.0, 60.0, 40.0)]
['on_demand', 'daily', 'daily', 'statistical']
>>> route(0.9, 60.0, cuts, daily=False), route(0.01, 90.0, cuts, daily=True)
('on_demand', 'statistical')
>>> route(0.9, 90.0, cuts, daily=True, purchase_days=1)  # one order: nothing to analyse yet
'statistical'
>>> route(0.9, 10.0, None, daily=True, purchase_days=1)  # no refit yet: no cuts
'on_demand'
>>> cuts_of([50.0] * 200, as_of=0) is None  # the CLVs do not separate anyone
True
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Route = Literal["on_demand", "daily", "statistical"]
ROUTES: tuple[Route, ...] = ("on_demand", "daily", "statistical")

#: the models table's companion document the refit writes the cuts to
ROUTE_CUTS = "analysis-route"
#: fewer active customers than this: no cuts (a quintile of a few dozen says little)
MIN_CUSTOMERS = 100
#: P(alive) below this: most likely gone; no analysis could change an action
P_ALIVE_FLOOR = 0.05


@dataclass(frozen=True, slots=True)
class ValueCuts:
    """The CLV cuts of one refit (reporting currency, major units)."""

    top_clv: float
    low_clv: float
    p_alive_floor: float = P_ALIVE_FLOOR
    #: the refit's as-of time (epoch seconds) and how many active customers they come from
    as_of: int = 0
    customers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValueCuts:
        return cls(float(d["top_clv"]), float(d["low_clv"]),
                   float(d.get("p_alive_floor", P_ALIVE_FLOOR)), int(d.get("as_of", 0)),
                   int(d.get("customers", 0)))


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The smallest of the sorted values with a share ``q`` of them at or below it."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered) - 1e-9) - 1))]


def clv_percentiles(clvs: Sequence[float], *, as_of: int) -> dict[str, Any] | None:
    """What a refit stores (:data:`ROUTE_CUTS`): the percentiles 0..100 of the active
    customers' CLVs (``percentiles[k]``: the smallest with ``k``% of them at or below it), its as-of
    time and how many; None with fewer than :data:`MIN_CUSTOMERS` values."""
    vals = sorted(v for v in clvs if math.isfinite(v))
    if len(vals) < MIN_CUSTOMERS:
        return None
    return {"as_of": int(as_of), "customers": len(vals),
            "percentiles": [round(_quantile(vals, k / 100), 4) for k in range(101)]}


def cuts_from(doc: dict[str, Any] | None, *, top_share: float = 0.2, low_share: float = 0.4,
              p_alive_floor: float = P_ALIVE_FLOOR) -> ValueCuts | None:
    """The cuts for these shares from a refit's :func:`clv_percentiles`: at most
    ``top_share`` of the active customers are above ``top_clv``, at least ``low_share`` at
    or below ``low_clv``. None when the CLVs do not separate the customers (the top cut is
    not above the low one, or not above 0: e.g. every order in a currency without a rate)."""
    if not doc or len(doc.get("percentiles") or []) != 101:
        return None
    pct = [float(v) for v in doc["percentiles"]]
    top = pct[round(100 * (1.0 - top_share))]
    low = pct[round(100 * low_share)] if low_share > 0 else -math.inf
    if top <= max(low, 0.0):
        return None
    return ValueCuts(top, low, p_alive_floor, int(doc.get("as_of", 0)),
                     int(doc.get("customers", 0)))


def cuts_of(clvs: Sequence[float], *, as_of: int, top_share: float = 0.2,
            low_share: float = 0.4, p_alive_floor: float = P_ALIVE_FLOOR) -> ValueCuts | None:
    """The cuts over the active customers' CLVs (as a refit stores them and a router reads
    them); None with fewer than :data:`MIN_CUSTOMERS` values (no routing yet)."""
    return cuts_from(clv_percentiles(clvs, as_of=as_of), top_share=top_share,
                     low_share=low_share, p_alive_floor=p_alive_floor)


async def load_cuts(store: Any, *, top_share: float = 0.2, low_share: float = 0.4,
                    p_alive_floor: float = P_ALIVE_FLOOR) -> ValueCuts | None:
    """The latest refit's cuts from the models table (``store``: a
    :class:`~consumers.stores.model_snapshots.ModelStore`); None before any refit."""
    found = await store.load(ROUTE_CUTS)
    return cuts_from(found[1] if found else None, top_share=top_share, low_share=low_share,
                     p_alive_floor=p_alive_floor)


def route(p_alive: float | None, clv: float | None, cuts: ValueCuts | None, *,
          daily: bool, purchase_days: int | None = None) -> Route:
    """The route of a customer with this fresh prediction (see the module's docstring);
    ``daily``: a daily batch is configured to take the middle."""
    if cuts is None or clv is None or p_alive is None:
        return "on_demand"
    if p_alive < cuts.p_alive_floor or (purchase_days is not None and purchase_days <= 1):
        return "statistical"
    if clv > cuts.top_clv:
        return "on_demand"
    if clv <= cuts.low_clv:
        return "statistical"
    return "daily" if daily else "on_demand"


class ValueRouter:
    """The cuts of the latest refit (read through ``load`` at most every ``refresh_s``
    seconds; a failed read keeps the last ones) and whether a daily batch takes the middle.
    ``load`` None: no routing (everyone ``on_demand``)."""

    def __init__(self, load: Callable[[], Awaitable[ValueCuts | None]] | None, *,
                 daily: bool, refresh_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._load = load
        self.daily = daily
        self.refresh_s = refresh_s
        self._clock = clock
        self._cuts: ValueCuts | None = None
        self._at: float | None = None
        self.load_errors = 0

    @property
    def enabled(self) -> bool:
        """Routing is configured (whether or not a refit has stored cuts yet)."""
        return self._load is not None

    async def cuts(self) -> ValueCuts | None:
        if self._load is None:
            return None
        now = self._clock()
        if self._at is None or now - self._at >= self.refresh_s:
            self._at = now
            try:
                self._cuts = await self._load()
            except Exception:  # noqa: BLE001 -- keep the last cuts; tried again later
                self.load_errors += 1
        return self._cuts

    async def route(self, p_alive: float | None, clv: float | None,
                    purchase_days: int | None = None) -> Route:
        return route(p_alive, clv, await self.cuts(), daily=self.daily,
                     purchase_days=purchase_days)


#: no routing: every analysis on demand
NO_ROUTING = ValueRouter(None, daily=False)
