"""Tests for models.learn.clv: CDNOW customer 1 and lifetimes' month-unit mix-up.

BG/NBD parameters: the CDNOW-sample fit of lifetimes 0.11.3 (FHL 2005: r .243,
alpha 4.414, a .793, b 2.426); Gamma-Gamma: lifetimes 0.11.3 / FH 2013 (p 6.25,
q 3.74, gamma 15.44).  Customer 1: x 2, t_x 30.43, T 38.86 weeks, mbar 22.35.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest

from models.learn import forecaster
from models.learn.bgnbd import BgNbdParams
from models.learn.clv import DAYS_PER_MONTH, WEEKS_PER_MONTH, clv_interval, discounted_clv
from models.learn.gamma_gamma import (
    GammaGammaParams,
    conditional_expected_order_value,
    order_value_interval,
)
from models.learn.pareto_nbd import DEFAULT_PRIOR as PARETO_PRIOR

BGNBD = BgNbdParams(r=0.2426, alpha=4.4136, a=0.7929, b=2.4259)
SPEND = GammaGammaParams(p=6.2488, q=3.7446, v=15.4477)
X, T_X, BIG_T, MBAR = 2, 30.43, 38.86, 22.35


def _customer_one(t: float) -> float:
    return forecaster.expected_purchases(BGNBD, t, X, T_X, BIG_T)


def _cumulative(params: BgNbdParams, x: float, t_x: float, big_t: float
                ) -> Callable[[float], float]:
    return lambda t: forecaster.expected_purchases(params, t, x, t_x, big_t)


def _order_value() -> float:
    return conditional_expected_order_value(SPEND, X, MBAR)


# --------------------------------------------------------------------------- published figures
def test_customer_one_twelve_months_at_one_percent() -> None:
    assert _order_value() == pytest.approx(24.6586, abs=1e-3)
    clv = discounted_clv(_customer_one, _order_value(), 12, 0.01)
    assert clv == pytest.approx(35.9, abs=0.05)
    assert WEEKS_PER_MONTH == 30 / 7


def test_lifetimes_quickstart_figure_is_thirty_weeks_a_month() -> None:
    # lifetimes' customer_lifetime_value(time=12, freq="D") on weekly data: 140.10
    clv = discounted_clv(_customer_one, _order_value(), 12, 0.01, weeks_per_month=DAYS_PER_MONTH)
    assert clv == pytest.approx(140.10, abs=0.01)
    # i.e. 12 "months" of 30 weeks: ~7 years of purchases, discounted as one year
    assert clv > 3.5 * discounted_clv(_customer_one, _order_value(), 12, 0.01)


def test_agrees_with_lifetimes_customer_lifetime_value() -> None:
    pd = pytest.importorskip("pandas")
    lifetimes = pytest.importorskip("lifetimes")
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    data = load_cdnow_summary_data_with_monetary_value().iloc[:40]
    bgf = lifetimes.BetaGeoFitter()
    bgf.params_ = pd.Series(BGNBD.to_dict())
    bgf.predict = bgf.conditional_expected_number_of_purchases_up_to_time  # set by fit()
    ggf = lifetimes.GammaGammaFitter()
    ggf.params_ = pd.Series(SPEND.to_dict())
    for freq, weeks in (("D", 30.0), ("W", 4.345)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = ggf.customer_lifetime_value(
                bgf, data["frequency"], data["recency"], data["T"], data["monetary_value"],
                time=6, discount_rate=0.02, freq=freq,
            ).to_numpy()
        ours = [
            discounted_clv(
                _cumulative(BGNBD, row.frequency, row.recency, row.T),
                conditional_expected_order_value(SPEND, row.frequency, row.monetary_value),
                6, 0.02, weeks_per_month=weeks,
            )
            for row in data.itertuples()
        ]
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, err_msg=freq)


# --------------------------------------------------------------------------- discounting
def test_calls_at_month_ends_and_telescopes_without_discount() -> None:
    calls: list[float] = []

    def cumulative(t: float) -> float:
        calls.append(t)
        return 1.0 - math.exp(-t / 10.0)

    clv = discounted_clv(cumulative, 3.0, 4, 0.0, weeks_per_month=2.5)
    assert calls == [2.5, 5.0, 7.5, 10.0]
    assert clv == pytest.approx(3.0 * (1.0 - math.exp(-1.0)))


def test_discounting_and_horizon() -> None:
    ov = _order_value()
    assert discounted_clv(_customer_one, ov, 0, 0.01) == 0.0
    values = [discounted_clv(_customer_one, ov, 12, d) for d in (0.0, 0.01, 0.05)]
    assert values[0] > values[1] > values[2] > 0.0
    assert values[0] == pytest.approx(_customer_one(12 * WEEKS_PER_MONTH) * ov)
    assert discounted_clv(_customer_one, ov, 24, 0.01) > values[1]
    # any BTYD model's conditional expectation plugs in (here the Pareto/NBD prior)
    pareto = discounted_clv(
        lambda t: forecaster.expected_purchases(PARETO_PRIOR, t, X, T_X, BIG_T), ov, 12, 0.01)
    assert pareto > 0.0


def test_discounted_clv_rejects_bad_input() -> None:
    for months in (-1, 1.5, True):
        with pytest.raises(ValueError, match="months"):
            discounted_clv(_customer_one, 10.0, months, 0.01)  # type: ignore[arg-type]
    for ov in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="order_value"):
            discounted_clv(_customer_one, ov, 12, 0.01)
    for rate in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="monthly_discount_rate"):
            discounted_clv(_customer_one, 10.0, 12, rate)
    for weeks in (0.0, -4.0, math.nan):
        with pytest.raises(ValueError, match="weeks_per_month"):
            discounted_clv(_customer_one, 10.0, 12, 0.01, weeks_per_month=weeks)


# --------------------------------------------------------------------------- interval
def test_interval_from_the_count_quantiles_only() -> None:
    clv = discounted_clv(_customer_one, _order_value(), 12, 0.01)
    expected = _customer_one(12 * WEEKS_PER_MONTH)
    lo, hi = clv_interval(clv, expected, 0.0, 4.0)
    assert lo == 0.0
    assert hi == pytest.approx(clv * 4.0 / expected)
    assert clv_interval(clv, expected, expected, expected) == pytest.approx((clv, clv))


def test_interval_with_order_value_uncertainty_is_wider() -> None:
    clv = discounted_clv(_customer_one, _order_value(), 12, 0.01)
    expected = _customer_one(12 * WEEKS_PER_MONTH)
    lo_n, hi_n = clv_interval(clv, expected, 1.0, 3.0)
    lo, hi = clv_interval(clv, expected, 1.0, 3.0, spend=SPEND, frequency=X, monetary=MBAR)
    m_lo, m_hi = order_value_interval(SPEND, X, MBAR)
    assert lo == pytest.approx(lo_n * m_lo / _order_value())
    assert hi == pytest.approx(hi_n * m_hi / _order_value())
    assert lo < lo_n < clv < hi_n < hi
    # a new customer (x == 0) carries the wider population spread
    lo0, hi0 = clv_interval(clv, expected, 1.0, 3.0, spend=SPEND)
    assert hi0 / lo0 > hi / lo


def test_interval_edge_cases_and_errors() -> None:
    assert clv_interval(0.0, 0.0, 0.0, 0.0) == (0.0, 0.0)
    assert clv_interval(0.0, 0.0, 0.0, 1.0, spend=SPEND) == (0.0, 0.0)
    with pytest.raises(ValueError, match="clv"):
        clv_interval(-1.0, 1.0, 0.0, 2.0)
    with pytest.raises(ValueError, match="expected_count"):
        clv_interval(10.0, math.nan, 0.0, 2.0)
    with pytest.raises(ValueError, match="count_low"):
        clv_interval(10.0, 1.0, 3.0, 2.0)
    with pytest.raises(ValueError, match="count_low"):
        clv_interval(10.0, 1.0, -1.0, 2.0)
    with pytest.raises(ValueError, match="monetary"):
        clv_interval(10.0, 1.0, 0.0, 2.0, spend=SPEND, frequency=2, monetary=-5.0)
