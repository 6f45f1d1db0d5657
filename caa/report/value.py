"""The report's "Customer value and churn" section: what the customers are expected to be
worth, how likely they are to stop buying, and whom to contact first.

:func:`customer_values` turns the predictions table (one scan, :mod:`caa.report.build`) into
one :class:`CustomerValue` per customer; :func:`section` draws the section from them (no I/O):

* the spread of customer value (the expected, discounted spend of the coming months, in the
  reporting currency: :class:`models.prediction.Value`) as a histogram and a table of
  quantiles, and the total over the customer base;
* the churn bands (low / medium / high) with their counts, shares and value, each defined in
  plain words from the thresholds in use (``CAA_CHURN_MEDIUM``, ``CAA_CHURN_HIGH``);
* two action lists: **win back** (high churn risk, the most spent so far first) and **due to
  buy** (a next order 50% likely within :data:`DUE_DAYS` days of the latest data, or a
  regular product due now; the most valuable first), :data:`TOP` customers each.

>>> from datetime import date
>>> v = [CustomerValue("a", "USD", 120.0, 80.0, 150.0, 300.0, "high", 0.9, None,
...                    date(1997, 3, 1), (), "Lapsed", 12, 0.01, date(1997, 9, 30)),
...      CustomerValue("b", "USD", 40.0, 10.0, 90.0, 50.0, "low", 0.2, date(1997, 10, 12),
...                    date(1997, 9, 20), ("milk",), "Loyal", 12, 0.01, date(1997, 9, 30))]
>>> [c.customer_id for c in win_back(v)], [c.customer_id for c in due_to_buy(v)]
(['a'], ['b'])
>>> band_meaning("medium", 0.5, 0.8)
'50% to 80% likely to buy nothing in the next 90 days'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from caa.report import plots
from caa.report.words import money

if TYPE_CHECKING:
    from caa.report.page import ReportData

__all__ = ["BANDS", "DUE_DAYS", "TOP", "CustomerValue", "band_meaning", "customer_values",
           "due_to_buy", "section", "win_back"]

BANDS = ("low", "medium", "high")
#: "due to buy": a next order 50% likely within this many days of the latest data
DUE_DAYS = 30
#: customers in each action list
TOP = 15
QUANTILES = ((0.1, "the lowest 10%"), (0.25, "the lowest quarter"),
             (0.5, "the lowest half (the median customer)"),
             (0.75, "the lowest three quarters"), (0.9, "the lowest 90%"),
             (0.99, "the lowest 99%"), (1.0, "all (the most valuable customer)"))


@dataclass(frozen=True, slots=True)
class CustomerValue:
    """One customer's value, churn risk and timing, as the section uses them."""

    customer_id: str
    currency: str
    clv: float
    clv_low: float
    clv_high: float
    historic: float
    band: str
    p_no_purchase_90d: float
    next_order_50: date | None
    last_purchase: date | None
    due: tuple[str, ...]  # regular products (or categories) due now
    segment: str
    months: int
    monthly_discount_rate: float
    as_of: date


def _date(v: Any) -> date | None:
    return date.fromisoformat(str(v)[:10]) if v else None


def customer_values(predictions: Iterable[Mapping[str, Any]],
                    last_purchase_ts: Mapping[str, int] | None = None,
                    ) -> tuple[list[CustomerValue], int]:
    """The customers whose prediction carries value and churn (predictions as the table
    gives them back, :func:`consumers.stores.predictions.prediction_from_item`), and how many
    do not (written before these were computed). ``last_purchase_ts``: each customer's last
    purchase (epoch seconds, from the customer states); else the last event's time."""
    out, missing = [], 0
    for p in predictions:
        value, churn, timing = p.get("value"), p.get("churn"), p.get("timing") or {}
        if not value or not churn:
            missing += 1
            continue
        cid = str(p["customer_id"])
        ts = (last_purchase_ts or {}).get(cid)
        last = (datetime.fromtimestamp(ts, UTC).date() if ts
                else _date((p.get("last_event") or {}).get("occurred_at")))
        due = tuple(str(n["key"]) for n in p.get("next_purchases", [])
                    if n.get("status") == "due")
        out.append(CustomerValue(
            cid, str(p.get("currency") or "USD"), float(value["clv"]), float(value["clv_low"]),
            float(value["clv_high"]), float(value["historic"]), str(churn["band"]),
            float(churn["p_no_purchase_90d"]), _date(timing.get("next_order_50")), last, due,
            str((p.get("segment") or {}).get("name", "-")), int(value["months"]),
            float(value["monthly_discount_rate"]), _date(p.get("as_of")) or date.min))
    return out, missing


def band_meaning(band: str, medium: float, high: float) -> str:
    """A churn band in plain words, from the thresholds on P(no purchase in 90 days)."""
    pct = {"medium": f"{100 * medium:g}%", "high": f"{100 * high:g}%"}
    what = "likely to buy nothing in the next 90 days"
    if band == "high":
        return f"at least {pct['high']} {what}"
    if band == "medium":
        return f"{pct['medium']} to {pct['high']} {what}"
    return f"less than {pct['medium']} {what}"


def win_back(values: Sequence[CustomerValue], top: int = TOP) -> list[CustomerValue]:
    """High churn risk customers, the most spent so far first (then the most value)."""
    gone = [v for v in values if v.band == "high"]
    return sorted(gone, key=lambda v: (-v.historic, -v.clv, v.customer_id))[:top]


def due_to_buy(values: Sequence[CustomerValue], days: int = DUE_DAYS,
               top: int = TOP) -> list[CustomerValue]:
    """Customers with a next order 50% likely within ``days`` of the latest data, or with a
    regular product due now; the most valuable first."""
    if not values:
        return []
    until = max(v.as_of for v in values) + timedelta(days=days)
    due = [v for v in values if v.due or (v.next_order_50 is not None
                                          and v.next_order_50 <= until)]
    return sorted(due, key=lambda v: (-v.clv, v.customer_id))[:top]


def _p(html: str, cls: str = "caption") -> str:
    return f'<p class="{cls}">{html}</p>'


def _when(d: date | None) -> str:
    return d.isoformat() if d else "-"


def section(d: ReportData) -> str:
    """The section's HTML (helpers of :mod:`caa.report.page`)."""
    from caa.report.page import _img, _placeholder, _table

    cur = d.rates.reporting
    values = [v for v in d.values if v.currency == cur]
    other = len(d.values) - len(values)
    if not values:
        why = (f" ({other:,} predictions are in another currency than {escape(cur)}: the next "
               "refit rewrites them)" if other else "")
        return _placeholder("No customer value yet: predictions carry it from the next "
                            f"<code>caa consume</code> (or <code>make run</code>){why}.")
    clv = np.array([v.clv for v in values])
    months = max(set(v.months for v in values), key=[v.months for v in values].count)
    rate = values[0].monthly_discount_rate
    counts = {b: sum(v.band == b for v in values) for b in BANDS}
    total = float(clv.sum())
    top_share = float(np.sort(clv)[::-1][:max(1, len(clv) // 10)].sum()) / total if total else 0.0
    intro = (f"Customer value is what a customer is expected to spend in the next {months} "
             f"months, counted at today's worth (future spend discounted {100 * rate:g}% a "
             f"month), in {escape(cur)}. The {len(values):,} customers are together expected "
             f"to spend <strong>{escape(money(total, cur))}</strong>; the most valuable "
             f"tenth of them account for {100 * top_share:.0f}% of it.")
    notes = []
    if d.values_missing:
        notes.append(f"{d.values_missing:,} predictions written before value was computed are "
                     "left out; the next update fills them.")
    if other:
        notes.append(f"{other:,} predictions in another currency than {escape(cur)} are left "
                     "out; the next refit rewrites them.")
    spread = _table(["customers", f"expected value at most ({cur})"],
                    ([label, money(float(np.quantile(clv, q)), cur)] for q, label in QUANTILES))
    bands = _table(["churn risk", "meaning", "customers", "share", f"expected value ({cur})"],
                   ([b, band_meaning(b, d.churn_medium, d.churn_high), f"{counts[b]:,}",
                     f"{100 * counts[b] / len(values):.1f}%",
                     money(sum(v.clv for v in values if v.band == b), cur)] for b in BANDS),
                   numeric_from=2)
    back, due = win_back(values), due_to_buy(values)
    n_due = len(due_to_buy(values, top=len(values)))
    as_of = max(v.as_of for v in values)
    lists = [
        "<h3>Win back</h3>",
        _p(f"Customers at high churn risk who spent the most so far: worth a win-back offer "
           f"before they are gone for good. The top {len(back)} of "
           f"{counts['high']:,}." if back else "No customer is at high churn risk."),
        _table(["customer", "segment", "last purchase", "spent so far",
                f"expected value ({months} months)", "chance of no order in 90 days"],
               ([v.customer_id, v.segment, _when(v.last_purchase), money(v.historic, cur),
                 money(v.clv, cur), f"{100 * v.p_no_purchase_90d:.0f}%"] for v in back),
               numeric_from=2) if back else "",
        "<h3>Due to buy</h3>",
        _p(f"Customers likely to order again by {as_of + timedelta(days=DUE_DAYS)} ("
           f"{DUE_DAYS} days after the latest data, {as_of}) or with a product they buy "
           f"regularly due now: a timely reminder. The {len(due)} most valuable of "
           f"{n_due:,}."
           if due else f"No customer is expected to order within {DUE_DAYS} days."),
        _table(["customer", "due now", "next order likely by", "last purchase",
                f"expected value ({months} months)", "spent so far"],
               ([v.customer_id, ", ".join(v.due) or "-", _when(v.next_order_50),
                 _when(v.last_purchase), money(v.clv, cur), money(v.historic, cur)]
                for v in due), numeric_from=2) if due else "",
    ]
    footnote = ("Technical: value is the purchase model's expected purchases per month times "
                "the Gamma-Gamma expected value of a purchase day, discounted monthly, with an "
                "80% interval per customer; churn risk is the model's probability of no "
                "purchase in the next 90 days; \"likely by\" is the date the chance of a next "
                "order reaches 50%.")
    return (_p(intro)
            + _img(plots.value_and_churn(clv, [counts[b] for b in BANDS], BANDS, cur),
                   "customers by expected value, and by churn risk")
            + "".join(_p(n, "meta") for n in notes)
            + spread + bands + "".join(lists) + _p(escape(footnote), "footnote"))
