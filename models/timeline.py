"""Segment sizes over time, rebuilt from today's customer states with today's model (pure).

A customer's state keeps its latest orders one by one and running sums of older ones
(:mod:`models.order_book`), the time of its latest purchase (``last_ts``), its purchase
count and spend, but no order amounts as of the past. So the
features :class:`models.learn.segmentation.SegmentModel` takes are rebuilt as of a past cut-off
like this (:func:`rfm_as_of`):

* **cut-off**: an instant ``cutoff_ts``; a purchase counts when its UTC day is on or before
  the cut-off's day (``day <= cutoff_ts // DAY``): model time runs in whole days, as in the
  holdout evaluation (:mod:`models.learn.evaluation`, where purchases dated ``calibration_end``
  belong to the calibration). A customer with no such day is left out (not a customer yet).
* **frequency**: the number of those purchase days (exact, except inside the compacted
  part of a customer with more orders than the de-duplication horizon keeps, where
  :meth:`models.state.CustomerState.days_through` interpolates).
* **recency_days**: ``(cutoff_ts - last) / DAY``, floored at 0, where ``last`` is ``last_ts``
  when the last kept day is the customer's latest purchase day, else 00:00 UTC of that day
  (the state keeps no time of day for earlier purchases; CDNOW orders are dated at 00:00, so
  there it is exact).
* **monetary**: today's mean order value (total spend / purchases). The state keeps no
  per-order amounts, so the mean as of the cut-off cannot be recovered: this is the one
  feature that is not as of the cut-off.

When every purchase day is kept this is :func:`models.features.rfm` at the cut-off, so the
last point (at the stream's watermark) gives the sizes the refit stored (the ``segment-sizes``
document) as long as the model has not moved since.

Every customer is assigned with *today's* model (``predict_one``): no history of segment
models is kept, so the series shows how the customers moved through today's segments, not
what was shown to anyone at the time.

Cut-offs (:func:`cutoffs`): 00:00 UTC on the first of every month after the first purchase
day, or every 7 days from the first purchase day when the data spans less than
``WEEKLY_BELOW_DAYS`` days, then the watermark itself.

>>> from models.state import CustomerState
>>> s = CustomerState.sketch("c", [0, 7, 14], order_minor=1000)
>>> rfm_as_of(s, 10 * DAY)
{'recency_days': 3.0, 'frequency': 2.0, 'monetary': 10.0}
>>> rfm_as_of(s, 21 * DAY) == rfm(s, 21 * DAY)
True
>>> rfm_as_of(s, -DAY) is None
True
>>> [t // DAY for t in cutoffs(0, 20 * DAY)]
[7, 14, 20]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from models.features import rfm
from models.learn.segmentation import SEGMENT_NAMES, SegmentModel
from models.money import NO_RATES, Rates
from models.state import DAY, CustomerState

__all__ = ["WEEKLY_BELOW_DAYS", "Timeline", "cutoffs", "rfm_as_of", "segment_timeline",
           "weekly"]

#: spans shorter than this many days get weekly cut-offs, longer ones monthly
WEEKLY_BELOW_DAYS = 180


def rfm_as_of(state: CustomerState, cutoff_ts: int,
              rates: Rates = NO_RATES) -> dict[str, float] | None:
    """The segment features of ``state`` as of ``cutoff_ts`` (see the module's definition);
    None when the customer had not bought by then."""
    day = cutoff_ts // DAY
    kept, last_day = state.days_through(day)
    if kept == 0:
        return None
    if kept == state.purchase_days:
        return rfm(state, cutoff_ts, rates)
    return {
        "recency_days": max(0.0, (cutoff_ts - last_day * DAY) / DAY),
        "frequency": float(kept),
        "monetary": state.order_value(rates)[0],
    }


def _month_starts(first_ts: int, end_ts: int) -> list[int]:
    """00:00 UTC on the first of each month after ``first_ts``'s day, before ``end_ts``."""
    d = datetime.fromtimestamp(first_ts // DAY * DAY, UTC)
    out: list[int] = []
    while True:
        d = d.replace(year=d.year + d.month // 12, month=d.month % 12 + 1, day=1)
        ts = int(d.timestamp())
        if ts >= end_ts:
            return out
        out.append(ts)


def weekly(first_ts: int, as_of_ts: int) -> bool:
    """Whether :func:`cutoffs` steps by weeks (a short span) rather than months."""
    return (as_of_ts - first_ts) / DAY < WEEKLY_BELOW_DAYS


def cutoffs(first_ts: int, as_of_ts: int) -> list[int]:
    """Increasing cut-offs from after the first purchase up to and including ``as_of_ts``."""
    if as_of_ts < first_ts:
        raise ValueError("the watermark is before the first purchase")
    first_day = first_ts // DAY
    if weekly(first_ts, as_of_ts):
        out = [(first_day + 7 * k) * DAY
               for k in range(1, (as_of_ts // DAY - first_day) // 7 + 1)]
        out = [t for t in out if t < as_of_ts]
    else:
        out = _month_starts(first_ts, as_of_ts)
    return [*out, as_of_ts]


@dataclass(frozen=True)
class Timeline:
    """Customers per segment at each cut-off (``counts[i][j]``: cut-off i, segment j)."""

    cutoffs: list[int]
    names: list[str]  # segment names, in ``SEGMENT_NAMES`` order
    counts: list[list[int]]
    step: str  # "weekly", "monthly" (see :func:`cutoffs`) or "given"
    customers: int  # customers with a purchase by the last cut-off

    def by_name(self) -> tuple[list[str], list[list[int]]]:
        """The names, each once, and the counts of centres that share a name added up (what
        a reader can tell apart: two columns both called "Hibernating" cannot be)."""
        names = list(dict.fromkeys(self.names))
        column = {name: k for k, name in enumerate(names)}
        merged = []
        for row in self.counts:
            out = [0] * len(names)
            for name, n in zip(self.names, row, strict=True):
                out[column[name]] += n
            merged.append(out)
        return names, merged

    def at(self, i: int) -> dict[str, int]:
        """Sizes by name at cut-off ``i`` (``-1``: the watermark); centres that share a name
        (models.learn.segment_names) are counted together."""
        names, counts = self.by_name()
        return dict(zip(names, counts[i], strict=True))


def segment_timeline(states: Sequence[CustomerState], model: SegmentModel,
                     when: Sequence[int] | None = None,
                     step_done: Callable[[int, int], None] | None = None,
                     rates: Rates = NO_RATES) -> Timeline | None:
    """Segment sizes at each cut-off (by default :func:`cutoffs` over the states' span, up to
    their watermark, the latest ``last_ts``); None when no state has a purchase or the model
    has no centres yet. ``step_done(done, of)`` hears the cut-offs done: (0, n) first,
    then after each one."""
    bought = [s for s in states if s.purchases]
    if not bought or not model.is_ready:
        return None
    step = "given"
    if when is None:
        first, as_of = min(s.first_day for s in bought) * DAY, max(s.last_ts for s in bought)
        when, step = cutoffs(first, as_of), "weekly" if weekly(first, as_of) else "monthly"
    ids = model.segment_names()
    order = sorted(ids, key=lambda j: (SEGMENT_NAMES.index(ids[j]), j))
    column = {j: k for k, j in enumerate(order)}
    counts = []
    if step_done is not None:
        step_done(0, len(when))
    for ts in when:
        row = [0] * len(order)
        for s in bought:
            x = rfm_as_of(s, ts, rates)
            if x is not None:
                row[column[model.predict_one(x)]] += 1
        counts.append(row)
        if step_done is not None:
            step_done(len(counts), len(when))
    return Timeline(list(when), [ids[j] for j in order], counts, step, sum(counts[-1]))
