"""Plain words for the report: amounts with their currency, what each segment means, and
the technical terms kept out of its headings and captions.

>>> money(20.468, "USD"), money(1234.5, "EUR"), money(3, "CHF"), money(0.00075, "USD", 4)
('$20.47', '€1,234.50', 'CHF 3.00', '$0.0008')
>>> money(6000, "JPY"), money(1.5, "KWD"), money(40, "EUR", symbol=False)
('¥6,000', 'KWD 1.500', 'EUR 40.00')

Amounts in several currencies are never summed as they are: :func:`converted` turns them
into the reporting currency with the operator's rates and names what it left out.

>>> converted({"EUR": 4000, "JPY": 6000, "USD": 1500},
...           Rates("USD", {"EUR": 1.08, "JPY": 0.0067}, as_of="2026-11-30"))
('$98.40', 'in USD at the rates of 2026-11-30, from EUR 40.00, JPY 6,000, USD 15.00')
>>> converted({"EUR": 4000, "JPY": 6000, "USD": 1500}, Rates("USD", {"EUR": 1.08}, "2026-11-30"))
('$58.20', 'in USD at the rates of 2026-11-30, from EUR 40.00, USD 15.00; left out for want of \
a rate: JPY 6,000')
>>> converted({"USD": 1500, "JPY": 6000}, Rates("USD"))
('$15.00', 'in USD, no exchange rates given; left out for want of a rate: JPY 6,000')
>>> converted({"USD": 1500}, Rates("USD"))
('$15.00', None)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from models.money import Rates, exponent, to_major

__all__ = ["JARGON", "SYMBOLS", "converted", "define_segments", "jargon_in", "money",
           "money_minor", "rates_date"]

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


def money(amount: float, currency: str, digits: int | None = None, *,
          symbol: bool = True) -> str:
    """``amount`` with its currency: a symbol where one is common (``symbol``), else the ISO
    code; ``digits`` defaults to the currency's minor unit (USD 2, JPY 0, KWD 3)."""
    if not math.isfinite(amount):
        return "n/a"
    if digits is None:
        try:
            digits = exponent(currency)
        except ValueError:
            digits = 2
    sign, value = ("-" if amount < 0 else ""), f"{abs(amount):,.{digits}f}"
    mark = SYMBOLS.get(currency) if symbol else None
    return f"{sign}{mark}{value}" if mark else f"{sign}{currency} {value}"


def money_minor(minor: int, currency: str, *, symbol: bool = True) -> str:
    """An amount in the currency's minor units (cents, yen) with its currency."""
    return money(to_major(minor, currency), currency, symbol=symbol)


def rates_date(rates: Rates) -> str:
    """Which rates: "the rates of <date>", "rates of unknown date" or "no exchange rates"."""
    if not rates.rates:
        return "no exchange rates"
    return f"the rates of {rates.as_of}" if rates.as_of else "rates of unknown date"


def converted(minor: Mapping[str, int], rates: Rates) -> tuple[str, str | None]:
    """Amounts per currency (minor units) as one amount in the reporting currency, and a
    note (None when every amount was in it already): the rates' date, what was converted
    and what was left out for want of a rate. Never a sum across currencies."""
    total, missing = rates.convert(minor)
    codes = sorted(c for c, m in minor.items() if m)
    shown = money(total, rates.reporting)
    if all(c == rates.reporting for c in codes):
        return shown, None
    used = [c for c in codes if c not in missing]
    note = (f"in {rates.reporting} at {rates_date(rates)}" if rates.rates
            else f"in {rates.reporting}, no exchange rates given")
    if any(c != rates.reporting for c in used):
        note += ", from " + ", ".join(money_minor(minor[c], c, symbol=False) for c in used)
    if missing:
        note += ("; left out for want of a rate: "
                 + ", ".join(money_minor(minor[c], c, symbol=False) for c in missing))
    return shown, note


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
