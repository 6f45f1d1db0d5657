"""Tests for models.learn.gamma_gamma against Fader & Hardie's published CDNOW figures.

Published (FH 2013 note "The Gamma-Gamma Model of Monetary Value"; lifetimes 0.11.3
Quickstart on the same data): p 6.25, q 3.74, gamma 15.44, LL -4055.92 on the 946
repeat customers of the CDNOW sample; E(M | customer 1) 24.6586; mean over all
2,357 customers 35.253; corr(monetary, frequency) 0.11.

The summary is built here from the raw transaction log shipped inside lifetimes
(lifetimes is only a data carrier, except in the explicit cross-check).  The
published figures use the per-customer mean spend *rounded to cents* (customer 1:
22.35, not 22.345); both variants are tested.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources

import numpy as np
import pytest
from scipy import stats

from models.learn.gamma_gamma import (
    DEFAULT_PRIOR,
    MIN_CUSTOMERS,
    GammaGammaParams,
    conditional_expected_order_value,
    fit,
    log_likelihood,
    monetary_frequency_correlation,
    order_value_interval,
)

CALIBRATION_END = date(1997, 9, 30)  # inclusive, as in the BG/NBD tests
PUBLISHED = GammaGammaParams(p=6.25, q=3.74, v=15.44)
LIFETIMES = GammaGammaParams(p=6.2488, q=3.7446, v=15.4477)  # lifetimes 0.11.3 Quickstart
PUBLISHED_LL = -4055.92

Summary = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]


@cache
def cdnow_spend() -> Summary:
    """(x, mbar in cents-rounded dollars, mbar unrounded, ids) per customer.

    Same-day purchases are merged (their dollars summed); x = purchase days - 1;
    mbar = mean value of the repeat purchase days (first day excluded), 0 if x == 0.
    """
    raw = resources.files("lifetimes.datasets") / "CDNOW_sample.txt"
    days: dict[str, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    with raw.open("r") as fh:
        for line in fh:
            fields = line.split()
            if not fields:
                continue
            _master_id, sample_id, d, _cds, dollars = fields
            day = date(int(d[:4]), int(d[4:6]), int(d[6:8]))
            if day <= CALIBRATION_END:
                days[sample_id][day] += Decimal(dollars)
    ids = sorted(days)
    x, m_cents, m_raw = [], [], []
    for cid in ids:
        values = [days[cid][d] for d in sorted(days[cid])]
        repeat = values[1:]
        x.append(len(repeat))
        if repeat:
            mean = sum(repeat, Decimal(0)) / len(repeat)
            m_cents.append(float(mean.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)))
            m_raw.append(float(mean))
        else:
            m_cents.append(0.0)
            m_raw.append(0.0)
    return np.array(x, float), np.array(m_cents), np.array(m_raw), ids


@cache
def fitted() -> GammaGammaParams:
    x, m, _, _ = cdnow_spend()
    return fit(x, m)


# --------------------------------------------------------------------------- data protocol
def test_cdnow_spend_protocol() -> None:
    x, m, m_raw, ids = cdnow_spend()
    assert len(ids) == 2357
    assert int((x >= 1).sum()) == 946
    i = ids.index("0001")
    assert x[i] == 2 and m[i] == 22.35 and m_raw[i] == pytest.approx(22.345)
    assert np.all(m[x == 0] == 0.0) and np.all(m[x > 0] > 0.0)
    assert np.max(np.abs(m - m_raw)) <= 0.005 + 1e-9


def test_summary_matches_lifetimes_shipped_summary() -> None:
    pytest.importorskip("pandas")
    from lifetimes.datasets import load_cdnow_summary_data_with_monetary_value

    shipped = load_cdnow_summary_data_with_monetary_value()
    x, m, _, ids = cdnow_spend()
    assert [int(c) for c in ids] == [int(c) for c in shipped.index]
    np.testing.assert_array_equal(x, shipped["frequency"].to_numpy(float))
    np.testing.assert_allclose(m, shipped["monetary_value"].to_numpy(float), atol=1e-9)


# --------------------------------------------------------------------------- published figures
def test_fit_matches_published_parameters() -> None:
    got = fitted()
    for name in ("p", "q", "v"):
        assert getattr(got, name) == pytest.approx(getattr(PUBLISHED, name), rel=1e-2), name
        assert getattr(got, name) == pytest.approx(getattr(LIFETIMES, name), rel=1e-3), name


def test_fit_on_unrounded_means_is_close() -> None:
    x, _, m_raw, _ = cdnow_spend()
    got = fit(x, m_raw)
    for name in ("p", "q", "v"):
        assert getattr(got, name) == pytest.approx(getattr(PUBLISHED, name), rel=1e-2), name
    assert log_likelihood(got, x, m_raw) == pytest.approx(PUBLISHED_LL, abs=0.1)


def test_log_likelihood_matches_published() -> None:
    x, m, _, _ = cdnow_spend()
    ll = log_likelihood(fitted(), x, m)
    assert ll == pytest.approx(PUBLISHED_LL, abs=0.1)
    assert ll >= log_likelihood(PUBLISHED, x, m)
    assert ll >= log_likelihood(LIFETIMES, x, m) - 1e-6


def test_fit_is_a_local_maximum() -> None:
    x, m, _, _ = cdnow_spend()
    best = fitted()
    ll = log_likelihood(best, x, m)
    for name in ("p", "q", "v"):
        for factor in (0.999, 1.001):
            d = best.to_dict()
            d[name] *= factor
            assert log_likelihood(GammaGammaParams.from_dict(d), x, m) <= ll, (name, factor)


def test_analytic_gradient_matches_finite_differences() -> None:
    from scipy.optimize import check_grad

    from models.learn.gamma_gamma import _neg_ll_and_grad

    x, m, _, _ = cdnow_spend()
    rep = x > 0
    args = (x[rep], m[rep], 1.0 / int(rep.sum()))
    for theta in (np.log([6.0, 3.5, 15.0]), np.log([0.5, 0.8, 2.0]), np.log([20.0, 9.0, 60.0])):
        err = check_grad(lambda t: _neg_ll_and_grad(t, *args)[0],
                         lambda t: _neg_ll_and_grad(t, *args)[1], theta)
        assert err < 1e-5


def test_customer_one_expected_order_value() -> None:
    assert conditional_expected_order_value(fitted(), 2, 22.35) == pytest.approx(24.6586, abs=1e-3)
    assert conditional_expected_order_value(LIFETIMES, 2, 22.35) == pytest.approx(
        24.6586, abs=1e-4
    )


def test_mean_expected_order_value_over_all_customers() -> None:
    x, m, _, _ = cdnow_spend()
    params = fitted()
    values = [conditional_expected_order_value(params, a, b) for a, b in zip(x, m, strict=True)]
    assert len(values) == 2357
    assert float(np.mean(values)) == pytest.approx(35.253, abs=1e-2)
    # non-repeaters get the population mean p v / (q - 1)
    assert values[int(np.argmin(x))] == pytest.approx(params.population_mean)


def test_monetary_frequency_correlation() -> None:
    x, m, _, _ = cdnow_spend()
    assert monetary_frequency_correlation(x, m) == pytest.approx(0.11, abs=0.01)


def test_default_prior_is_the_published_fit() -> None:
    assert DEFAULT_PRIOR == PUBLISHED
    assert DEFAULT_PRIOR.population_mean == pytest.approx(35.22, abs=0.01)


# --------------------------------------------------------------------------- cross-check
def test_agrees_with_lifetimes_gamma_gamma_fitter() -> None:
    pd = pytest.importorskip("pandas")
    lifetimes = pytest.importorskip("lifetimes")
    x, m, _, _ = cdnow_spend()
    rep = x > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ggf = lifetimes.GammaGammaFitter().fit(pd.Series(x[rep]), pd.Series(m[rep]))
        theirs = GammaGammaParams(*(float(ggf.params_[k]) for k in ("p", "q", "v")))
        for name in ("p", "q", "v"):
            assert getattr(fitted(), name) == pytest.approx(getattr(theirs, name), rel=1e-4)
        expected = ggf.conditional_expected_average_profit(pd.Series(x), pd.Series(m)).to_numpy()
    ours = [conditional_expected_order_value(theirs, a, b) for a, b in zip(x, m, strict=True)]
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


def test_order_value_interval_is_the_inverse_gamma_posterior() -> None:
    params = LIFETIMES
    for x, mbar in ((0, 0.0), (1, 11.77), (2, 22.35), (20, 80.0)):
        lo, hi = order_value_interval(params, x, mbar)
        post = stats.invgamma(params.p * x + params.q, scale=params.p * (params.v + x * mbar))
        assert lo == pytest.approx(post.ppf(0.1), rel=1e-9)
        assert hi == pytest.approx(post.ppf(0.9), rel=1e-9)
        assert post.mean() == pytest.approx(conditional_expected_order_value(params, x, mbar))
        assert lo < conditional_expected_order_value(params, x, mbar) < hi
    narrow = order_value_interval(params, 2, 22.35, level=0.5)
    wide = order_value_interval(params, 2, 22.35)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


# --------------------------------------------------------------------------- error branches
def test_fit_rejects_too_few_customers() -> None:
    with pytest.raises(ValueError, match=r"needs >= 3 customers .* got 2"):
        fit([2, 1, 0, 5], [10.0, 20.0, 30.0, 0.0])  # only 2 usable (x >= 1 and mbar > 0)
    with pytest.raises(ValueError, match="got 0"):
        fit([0, 0, 0], [0.0, 0.0, 0.0])
    assert MIN_CUSTOMERS == 3
    fit([2, 1, 3], [10.0, 20.0, 30.0])  # three is enough


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="monetary must be finite and >= 0"):
        fit([1, 2, 3, 4], [10.0, -5.0, 30.0, 12.0])
    with pytest.raises(ValueError, match="monetary must be finite"):
        log_likelihood(DEFAULT_PRIOR, [1, 2], [10.0, math.nan])
    with pytest.raises(ValueError, match="frequency must be finite"):
        monetary_frequency_correlation([1, -2, 3], [10.0, 20.0, 30.0])
    with pytest.raises(ValueError, match="same length"):
        fit([1, 2, 3], [10.0, 20.0])
    with pytest.raises(ValueError, match="monetary must be finite and >= 0 when"):
        conditional_expected_order_value(DEFAULT_PRIOR, 2, -1.0)
    with pytest.raises(ValueError, match="frequency must be finite"):
        conditional_expected_order_value(DEFAULT_PRIOR, math.inf, 10.0)
    with pytest.raises(ValueError, match="level"):
        order_value_interval(DEFAULT_PRIOR, 2, 10.0, level=1.0)
    with pytest.raises(ValueError, match="max_iter"):
        fit([1, 2, 3], [10.0, 20.0, 30.0], max_iter=0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="parameter q"):
            GammaGammaParams(1.0, bad, 1.0)
    with pytest.raises(ValueError, match="constant"):
        monetary_frequency_correlation([1, 1, 1], [10.0, 20.0, 30.0])


def test_zero_spend_repeaters_are_excluded_from_the_fit_but_scored() -> None:
    x, m = [1, 2, 3, 4, 2], [10.0, 20.0, 30.0, 12.0, 0.0]
    assert fit(x, m) == fit(x[:4], m[:4])
    assert log_likelihood(DEFAULT_PRIOR, x, m) == log_likelihood(DEFAULT_PRIOR, x[:4], m[:4])
    p = DEFAULT_PRIOR
    assert conditional_expected_order_value(p, 2, 0.0) == pytest.approx(
        p.p * p.v / (2 * p.p + p.q - 1)
    )


def test_q_at_most_one_fallbacks() -> None:
    heavy = GammaGammaParams(p=0.2, q=0.7, v=10.0)
    assert heavy.population_mean == math.inf
    # x == 0: the population median of p / nu (finite), not the infinite mean
    median = conditional_expected_order_value(heavy, 0, 0.0)
    assert median == pytest.approx(stats.invgamma(0.7, scale=0.2 * 10.0).median())
    # x > 0 with p x + q > 1: the posterior mean is finite and the formula applies
    assert conditional_expected_order_value(heavy, 3, 50.0) == pytest.approx(
        0.2 * (10.0 + 150.0) / (0.6 + 0.7 - 1.0)
    )
    # x > 0 with p x + q <= 1: the customer's own mean
    assert conditional_expected_order_value(heavy, 1, 50.0) == 50.0
    lo, hi = order_value_interval(heavy, 1, 50.0)
    assert 0.0 < lo < hi < math.inf


def test_params_round_trip() -> None:
    p = fitted()
    assert GammaGammaParams.from_dict(p.to_dict()) == p
    with pytest.raises(AttributeError):
        p.p = 1.0  # type: ignore[misc]
