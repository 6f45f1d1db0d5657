"""Plain words for the report: amounts with their currency, what each segment means, and
the technical terms kept out of its headings and captions.

>>> money(20.468, "USD"), money(1234.5, "EUR"), money(3, "CHF"), money(0.00075, "USD", 4)
('$20.47', '€1,234.50', 'CHF 3.00', '$0.0008')
>>> currency_of([{"USD": 5}, {"USD": 2, "EUR": 1}], default="GBP")
('USD', 'amounts are in USD; 1 of 8 orders were in another currency (EUR), counted as USD')
>>> currency_of([{}], default="USD")
('USD', None)
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["JARGON", "SYMBOLS", "currency_of", "define_segments", "jargon_in", "money"]

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹"}

#: technical terms that stay out of headings and captions (a footnote may name them)
JARGON = ("P(alive)", "BG/NBD", "Pareto/NBD", "ARI", "silhouette", "log-likelihood",
          "ROC", "AUC", "MAE", "log1p", "expm1", "centroid", "standardised", "geometric")


def jargon_in(text: str) -> list[str]:
    """The :data:`JARGON` terms ``text`` uses (whole words; acronyms in capitals only).

    >>> jargon_in("Bedrock cost, by P(alive) and ROC AUC"), jargon_in("Centroids")
    (['P(alive)', 'ROC', 'AUC'], ['centroid'])
    """
    found = []
    for term in JARGON:
        flags = re.IGNORECASE if term.islower() else 0
        if re.search(rf"(?<![A-Za-z]){re.escape(term)}", text, flags) and (
                term.islower() or re.search(rf"{re.escape(term)}(?![A-Za-z])", text)):
            found.append(term)
    return found


def money(amount: float, currency: str, digits: int = 2) -> str:
    """``amount`` with its currency: a symbol where one is common, else the ISO code."""
    if not math.isfinite(amount):
        return "n/a"
    sign, value = ("-" if amount < 0 else ""), f"{abs(amount):,.{digits}f}"
    symbol = SYMBOLS.get(currency)
    return f"{sign}{symbol}{value}" if symbol else f"{sign}{currency} {value}"


def currency_of(per_customer: Iterable[Mapping[str, int]], default: str
                ) -> tuple[str, str | None]:
    """The currency most orders were in (``default`` when the states do not say: they were
    written before the currency was kept), and a note when some orders were in another."""
    orders: Counter[str] = Counter()
    for c in per_customer:
        orders.update(c)
    if not orders:
        return default, None
    (main, n), total = orders.most_common(1)[0], sum(orders.values())
    if n == total:
        return main, None
    others = ", ".join(sorted(k for k in orders if k != main))
    return main, (f"amounts are in {main}; {total - n:,} of {total:,} orders were in another "
                  f"currency ({others}), counted as {main}")


def _z(values: Sequence[float], weights: Sequence[float]) -> list[float]:
    """How far each centre is from the others, in log units, weighted by segment size."""
    logs = [math.log1p(max(v, 0.0)) for v in values]
    w = [max(x, 1.0) for x in weights]
    mean = sum(a * b for a, b in zip(logs, w, strict=True)) / sum(w)
    sd = math.sqrt(sum(b * (a - mean) ** 2 for a, b in zip(logs, w, strict=True)) / sum(w))
    return [(a - mean) / sd if sd > 1e-9 else 0.0 for a in logs]


def _days(v: float) -> str:
    n = round(v)
    return f"{n:,} day" if n == 1 else f"{n:,} days"


def define_segments(names: Sequence[str], centres: Sequence[Mapping[str, float]],
                    sizes: Sequence[int], currency: str) -> dict[str, str]:
    """What each segment means, from its centre compared with the other centres (so it
    holds whatever the names are): recency, frequency and order value in plain words, then
    the typical customer's figures.

    >>> define_segments(["A", "B"], [
    ...     {"recency_days": 10, "frequency": 6, "monetary": 80},
    ...     {"recency_days": 300, "frequency": 1, "monetary": 15}], [10, 90], "USD")["A"]
    'bought recently, buys often and spends the most per order. Typical customer: last \
purchase 10 days before the latest data, 6 purchase days, $80.00 an order.'
    """
    rz = _z([c["recency_days"] for c in centres], sizes)
    fz = _z([c["frequency"] for c in centres], sizes)
    mz = _z([c["monetary"] for c in centres], sizes)
    top, bottom = max(mz), min(mz)
    out = {}
    for i, (name, c) in enumerate(zip(names, centres, strict=True)):
        recency = ("bought recently" if rz[i] <= -0.5 else
                   "has not bought for a long time" if rz[i] >= 0.5 else
                   "last bought a while ago")
        frequency = ("has bought on one day only" if c["frequency"] < 1.5 else
                     "buys often" if fz[i] >= 0.5 else
                     "buys rarely" if fz[i] <= -0.5 else "buys now and then")
        spend = ("spends the most per order" if mz[i] >= 0.5 and mz[i] == top else
                 "spends more than most per order" if mz[i] >= 0.5 else
                 "spends the least per order" if mz[i] <= -0.5 and mz[i] == bottom else
                 "spends less than most per order" if mz[i] <= -0.5 else
                 "spends an average amount per order")
        freq = f"{c['frequency']:.1f}".removesuffix(".0")
        out[name] = (f"{recency}, {frequency} and {spend}. Typical customer: last purchase "
                     f"{_days(c['recency_days'])} before the latest data, {freq} purchase "
                     f"day{'' if freq == '1' else 's'}, {money(c['monetary'], currency)} an "
                     "order.")
    return out
