"""Money by currency: exact minor units per ISO 4217 code, and one reporting currency.

A customer's spend is kept per currency in **minor units** (cents, yen, fils: the
currency's exponent comes from the ISO 4217 table of the maintained ``iso4217``
package), never summed across currencies. Whatever reads money as one number
(monetary features, predictions, prompts, reports) converts with :class:`Rates`:
the operator's rates into one reporting currency (``CAA_REPORTING_CURRENCY``,
default USD), with the date they are valid for. An amount in a currency without a
rate is left out and named, never summed silently.

>>> to_minor(Decimal("40.00"), "EUR"), to_minor(Decimal("6000"), "JPY"), exponent("KWD")
(4000, 6000, 3)
>>> rates = Rates("USD", {"EUR": 1.08}, as_of="2026-11-30")
>>> rates.convert({"EUR": 4000, "USD": 1500, "JPY": 6000})
(58.2, ('JPY',))
>>> to_minor(Decimal("0.5"), "JPY")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: 0.5 JPY has more than 0 decimal places
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache

from iso4217 import Currency

DEFAULT_REPORTING_CURRENCY = "USD"


@cache
def exponent(code: str) -> int:
    """Decimal places of the currency's minor unit (USD 2, JPY 0, KWD 3).

    Raises ``ValueError`` for a code that is not an ISO 4217 currency with a minor unit
    (``XAU`` gold, ``XXX`` no currency)."""
    try:
        exp = Currency(code).exponent
    except ValueError:
        raise ValueError(f"{code!r} is not an ISO 4217 currency code") from None
    if exp is None:
        raise ValueError(f"{code} has no minor unit (not a currency orders are paid in)")
    return int(exp)


def to_minor(amount: Decimal, code: str) -> int:
    """``amount`` (major units) in exact minor units; ``ValueError`` when it has more
    decimals than the currency allows."""
    scaled = amount.scaleb(exponent(code))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {code} has more than {exponent(code)} decimal places")
    return int(scaled)


def to_major(minor: int, code: str) -> float:
    """Minor units back to major units (a float for display and features)."""
    return float(minor / 10 ** exponent(code))


@dataclass(frozen=True)
class Rates:
    """Exchange rates into one reporting currency.

    ``rates[c]`` is the value of one unit of ``c`` in the reporting currency (EUR 1.08
    with USD reporting: one euro is 1.08 dollars); the reporting currency itself is 1.
    ``as_of`` is the date the rates are valid for (ISO 8601 text, "" when unknown)."""

    reporting: str = DEFAULT_REPORTING_CURRENCY
    rates: Mapping[str, float] = field(default_factory=dict)
    as_of: str = ""

    def __post_init__(self) -> None:
        exponent(self.reporting)
        for code, rate in self.rates.items():
            exponent(code)
            if not rate > 0:
                raise ValueError(f"the rate of {code} must be positive, not {rate}")

    def rate(self, code: str) -> float | None:
        """One unit of ``code`` in the reporting currency; None without a rate."""
        if code == self.reporting:
            return 1.0
        return self.rates.get(code)

    def convert(self, minor: Mapping[str, int]) -> tuple[float, tuple[str, ...]]:
        """Sum of per-currency minor amounts in reporting major units, and the currencies
        left out for want of a rate (sorted)."""
        total = 0.0
        missing = []
        for code in sorted(minor):
            rate = self.rate(code)
            if rate is None:
                missing.append(code)
            else:
                total += to_major(minor[code], code) * rate
        return round(total, 10), tuple(missing)

    def convertible(self, codes: Iterable[str]) -> set[str]:
        return {c for c in codes if self.rate(c) is not None}


#: Reporting in USD with no other rates: what a USD-only shop needs.
NO_RATES = Rates()
