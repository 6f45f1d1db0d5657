"""Features derived from a customer's state at a point in (event) time.

Time in the stream is event time: ``as_of`` is a watermark taken from the
events themselves, so a replay of 1997 data is judged as of 1997, not today.
Money is in the reporting currency of ``rates`` (:class:`models.money.Rates`); orders in a
currency without a rate are left out of the monetary feature.

>>> from models.state import CustomerState, DAY
>>> s = CustomerState.sketch("c", [0, 7, 14], order_minor=1000)
>>> rfm(s, 21 * DAY)
{'recency_days': 7.0, 'frequency': 3.0, 'monetary': 10.0}
>>> bgnbd_inputs(s, 21 * DAY)
(2, 2.0, 3.0)
"""

from __future__ import annotations

from models.money import NO_RATES, Rates
from models.state import DAY, CustomerState

WEEK_DAYS = 7.0


def rfm(state: CustomerState, as_of_ts: int, rates: Rates = NO_RATES) -> dict[str, float]:
    """Recency in days, frequency in distinct purchase days, monetary = mean order value
    (reporting currency, over the orders whose currency has a rate)."""
    return {
        "recency_days": max(0.0, (as_of_ts - state.last_ts) / DAY),
        "frequency": float(state.purchase_days),
        "monetary": state.order_value(rates)[0],
    }


def bgnbd_inputs(state: CustomerState, as_of_ts: int) -> tuple[int, float, float]:
    """(x, t_x, T) in weeks with same-day purchases merged, as BG/NBD expects.

    Day numbers are whole UTC days; T counts from the first purchase day to the
    day of ``as_of`` (so a customer who bought today has T = 0).
    """
    if not state.purchase_days:
        return 0, 0.0, 0.0
    first, last = state.first_day, state.last_day
    as_of_day = max(last, as_of_ts // DAY)
    return state.purchase_days - 1, (last - first) / WEEK_DAYS, (as_of_day - first) / WEEK_DAYS


def gamma_gamma_inputs(state: CustomerState, rates: Rates = NO_RATES) -> tuple[int, float]:
    """``(x, mbar)`` as the Gamma-Gamma spend model takes them (Fader & Hardie 2013): repeat
    purchase days, and the mean value of a purchase day after the first (reporting
    currency, net of refunds, over the currencies with a rate). When the first day's orders
    have been folded into the state's compacted sums (a customer beyond the order horizon)
    ``mbar`` is the mean over every purchase day.

    >>> from models.state import CustomerState, DAY
    >>> gamma_gamma_inputs(CustomerState.sketch("c", [0, 7, 14], order_minor=1000), NO_RATES)
    (2, 10.0)
    """
    x = state.purchase_days - 1
    if x <= 0:
        return 0, 0.0
    total, missing = state.spend(rates)
    return _gamma_gamma_inputs(state, rates, total, missing)


def _gamma_gamma_inputs(state: CustomerState, rates: Rates, total: float,
                        missing: tuple[str, ...]) -> tuple[int, float]:
    """:func:`gamma_gamma_inputs` given ``state.spend(rates)`` (``total, missing``), for a
    caller that has it already."""
    x = state.purchase_days - 1
    if x <= 0:
        return 0, 0.0
    book = state.book
    if book.base.orders:
        return x, max(0.0, total / state.purchase_days)
    first_day = state.first_day
    first: dict[str, int] = {}
    for rec in book.orders.values():  # the day first: most orders are on other days
        if rec.ts // DAY == first_day and rec.counted and rec.currency not in missing:
            first[rec.currency] = first.get(rec.currency, 0) + rec.net
    first_total, _ = rates.convert(first)
    return x, max(0.0, (total - first_total) / x)


def _order_value(state: CustomerState, total: float, missing: tuple[str, ...]) -> float:
    """``state.order_value(rates)[0]`` given ``state.spend(rates)`` (``total, missing``):
    the mean order value over the orders in currencies with a rate (0 when none)."""
    orders = sum(n for c, n in state.currencies.items() if c not in missing)
    return total / orders if orders else 0.0
