"""Customer lifetime value: discounted expected purchases times expected order value.

References: P. S. Fader, B. G. S. Hardie and K. L. Lee (2005), "RFM and CLV: Using
Iso-value Curves for Customer Base Analysis", Journal of Marketing Research 42(4),
415-430 (CLV = expected spend per transaction x discounted expected transactions,
section "Computing CLV"), here with the discrete monthly discounting of the
``lifetimes`` package (0.11.3, ``utils._customer_lifetime_value``):

    CLV = sum_{m=1..M} (E[X(m w)] - E[X((m-1) w)]) * order_value / (1 + d)^m,

where ``E[X(t)]`` is a BTYD model's conditional expected number of purchases in
the next ``t`` weeks (e.g. :func:`models.learn.forecaster.expected_purchases`),
``w`` the weeks per month, ``d`` the monthly discount rate and ``order_value``
the Gamma-Gamma conditional expected order value
(:func:`models.learn.gamma_gamma.conditional_expected_order_value`).

Units trap: ``lifetimes``' ``customer_lifetime_value(..., time=12, freq="D")``
steps by 30 *time units* per month; on the usual weekly summary (CDNOW in its
Quickstart) one "month" is therefore 30 weeks and 12 months span ~7 years, which
is how its Quickstart gets 140.10 for CDNOW customer 1.  With a 30-day month
(``weeks_per_month=30/7``) and 1% a month the same customer is worth ~35.9.

>>> constant_rate = lambda t: 0.5 * t  # 0.5 purchases a week, forever
>>> round(discounted_clv(constant_rate, 20.0, 12, 0.0), 2)  # 12 x 30/7 weeks x 0.5 x 20
514.29
>>> round(discounted_clv(constant_rate, 20.0, 12, 0.01), 2)
482.36
"""

from __future__ import annotations

import math
from collections.abc import Callable

from models.learn.gamma_gamma import (
    GammaGammaParams,
    conditional_expected_order_value,
    order_value_interval,
)

__all__ = ["DAYS_PER_MONTH", "WEEKS_PER_MONTH", "clv_interval", "discounted_clv"]

DAYS_PER_MONTH = 30.0  # lifetimes' month ("D": 30 units per month)
WEEKS_PER_MONTH = DAYS_PER_MONTH / 7.0  # the same month in weeks, the BTYD models' unit
_INTERVAL_LEVEL = 0.8  # the count quantiles callers pass are the 10% and 90% ones


def discounted_clv(
    expected_cumulative: Callable[[float], float],
    order_value: float,
    months: int,
    monthly_discount_rate: float,
    weeks_per_month: float = WEEKS_PER_MONTH,
) -> float:
    """Discounted expected revenue of one customer over the next ``months`` months.

    Parameters
    ----------
    expected_cumulative
        ``t_weeks -> E[purchases in the next t_weeks]`` for this customer, e.g.
        ``lambda t: forecaster.expected_purchases(params, t, x, t_x, T)``.  It is
        called once per month, at ``m * weeks_per_month`` for ``m = 1..months``,
        and taken to be 0 at ``t = 0``.
    order_value
        Expected value of one future order (finite, >= 0).
    months
        Horizon in whole months (>= 0; 0 gives 0.0).
    monthly_discount_rate
        ``d``: month ``m``'s purchases are divided by ``(1 + d)^m`` (finite, > -1).
    weeks_per_month
        Length of a month in the model's time unit (weeks); default 30 days.
        Pass 30 to reproduce ``lifetimes``' ``freq="D"`` on weekly data.

    Returns
    -------
    float
        ``sum_m (E[X(m w)] - E[X((m-1) w)]) * order_value / (1 + d)^m`` (module
        docstring; FHL 2005 / lifetimes 0.11.3).

    Examples
    --------
    >>> discounted_clv(lambda t: 0.25 * t, 10.0, 0, 0.01)
    0.0
    >>> round(discounted_clv(lambda t: 0.25 * t, 10.0, 1, 0.0, weeks_per_month=4.0), 6)
    10.0
    """
    if isinstance(months, bool) or not isinstance(months, int) or months < 0:
        raise ValueError(f"months must be an int >= 0, got {months!r}")
    if not (0.0 <= order_value < math.inf):
        raise ValueError(f"order_value must be finite and >= 0, got {order_value!r}")
    if not (-1.0 < monthly_discount_rate < math.inf):
        raise ValueError(f"monthly_discount_rate must be > -1: {monthly_discount_rate!r}")
    if not (0.0 < weeks_per_month < math.inf):
        raise ValueError(f"weeks_per_month must be finite and > 0, got {weeks_per_month!r}")
    total, previous, discount = 0.0, 0.0, 1.0
    factor = 1.0 / (1.0 + monthly_discount_rate)
    for m in range(1, months + 1):
        current = float(expected_cumulative(m * weeks_per_month))
        discount *= factor
        total += (current - previous) * discount
        previous = current
    return total * order_value


def clv_interval(
    clv: float,
    expected_count: float,
    count_low: float,
    count_high: float,
    *,
    spend: GammaGammaParams | None = None,
    frequency: float = 0.0,
    monetary: float = 0.0,
) -> tuple[float, float]:
    """Approximate 80% interval ``(low, high)`` of a customer's CLV.

    Parameters
    ----------
    clv
        The point CLV (:func:`discounted_clv`), finite and >= 0.
    expected_count
        Expected number of purchases over the CLV horizon (>= 0).
    count_low, count_high
        The 10% and 90% quantiles of that purchase count, ``0 <= low <= high``.
    spend, frequency, monetary
        Optional Gamma-Gamma parameters and the customer's ``x`` and ``mbar``.  The
        CLV must then have been computed with ``order_value =
        conditional_expected_order_value(spend, frequency, monetary)``.

    Returns
    -------
    tuple[float, float]
        Without ``spend``: ``clv * count_q / expected_count`` for the two count
        quantiles -- purchase-count uncertainty only, ignoring order-value
        uncertainty and the timing of purchases within the horizon (discounting
        scales with the count).  With ``spend``, each end is also multiplied by
        ``M_q / E(M)``, where ``M_q`` is the 10% / 90% quantile of the customer's
        mean order value ``p / nu`` under the Gamma-Gamma posterior
        ``nu ~ Gamma(p x + q, v + x mbar)`` (FH 2013; see
        :func:`models.learn.gamma_gamma.order_value_interval`).  Multiplying
        quantiles of the two (assumed independent) factors is conservative: if
        both are roughly log-normal, the exact 80% half-width of ``log(N M)`` is
        ``sqrt(a^2 + b^2) <= a + b``, so the interval is at least as wide as the
        80% interval.  ``expected_count == 0`` gives ``(0.0, 0.0)``.

    Examples
    --------
    >>> clv_interval(100.0, 2.0, 0.0, 4.0)
    (0.0, 200.0)
    >>> from models.learn.gamma_gamma import DEFAULT_PRIOR
    >>> lo, hi = clv_interval(100.0, 2.0, 1.0, 3.0, spend=DEFAULT_PRIOR, frequency=2,
    ...                       monetary=22.35)
    >>> round(lo, 1), round(hi, 1)
    (35.3, 201.6)
    """
    if not (0.0 <= clv < math.inf):
        raise ValueError(f"clv must be finite and >= 0, got {clv!r}")
    if not (0.0 <= expected_count < math.inf):
        raise ValueError(f"expected_count must be finite and >= 0, got {expected_count!r}")
    if not (0.0 <= count_low <= count_high < math.inf):
        raise ValueError(f"need 0 <= count_low <= count_high < inf: {count_low!r}, {count_high!r}")
    if expected_count == 0.0:
        return 0.0, 0.0
    low, high = clv * count_low / expected_count, clv * count_high / expected_count
    if spend is not None:
        mean = conditional_expected_order_value(spend, frequency, monetary)
        m_low, m_high = order_value_interval(spend, frequency, monetary, _INTERVAL_LEVEL)
        if mean > 0.0:
            low, high = low * m_low / mean, high * m_high / mean
    return low, high
