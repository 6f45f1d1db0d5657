"""Tests for the churn windows / predictive purchase counts of the BG/NBD and Pareto/NBD models
(models.learn.bgnbd_windows, models.learn.pareto_nbd_windows).

Checks: the published BG/NBD figures (CDNOW sample parameters), the internal consistency of
each model's conditional PMF (sums to 1, its mean is the module's ``expected_purchases``,
``P(X = 0)`` is ``p_no_purchase``, ``t = 0`` and edge histories), the interval and the
next-order quantile against the PMF, and a Monte Carlo simulation from the posterior that
uses none of the closed forms.
"""

from __future__ import annotations

import math
from itertools import pairwise
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.learn import bgnbd, bgnbd_windows, pareto_nbd, pareto_nbd_windows

CDNOW_BG = bgnbd.BgNbdParams(r=0.2426, alpha=4.4136, a=0.7929, b=2.4259)
CDNOW_PNBD = pareto_nbd.ParetoNbdParams(r=0.5533, alpha=10.578, s=0.6062, beta=11.668)
EXTREME_PNBD = [  # young-table fits: alpha / beta far from 1 (mixture series long or replaced)
    pareto_nbd.ParetoNbdParams(r=0.55, alpha=1.0, s=0.6, beta=50.0),
    pareto_nbd.ParetoNbdParams(r=0.55, alpha=60.0, s=0.6, beta=0.5),
    pareto_nbd.ParetoNbdParams(r=2.0, alpha=3.0, s=1.5, beta=800.0),
]
# (model module, windows module, params)
MODELS = [
    pytest.param(bgnbd, bgnbd_windows, CDNOW_BG, id="bgnbd-cdnow"),
    pytest.param(bgnbd, bgnbd_windows, bgnbd.BgNbdParams(2.0, 3.0, 1.0, 4.0), id="bgnbd-a1"),
    pytest.param(pareto_nbd, pareto_nbd_windows, CDNOW_PNBD, id="pnbd-cdnow"),
    *(pytest.param(pareto_nbd, pareto_nbd_windows, p, id=f"pnbd-extreme{i}")
      for i, p in enumerate(EXTREME_PNBD)),
]
HISTORIES = [
    (2, 30.43, 38.86),
    (7, 29.43, 38.86),
    (0, 0.0, 38.86),  # no repeat purchase
    (0, 0.0, 0.0),  # brand new customer
    (4, 12.0, 12.0),  # t_x == T: bought today
    (25, 35.0, 38.86),  # heavy buyer
    (1, 0.5, 80.0),  # long silent
]


def _moments(pmf: list[float]) -> tuple[float, float]:
    return math.fsum(pmf), math.fsum(k * p for k, p in enumerate(pmf))


def _full_pmf(win: ModuleType, params, t, history) -> list[float]:
    """The PMF up to an ``n_max`` that leaves less than 1e-12 of mass beyond it."""
    n_max = 100
    while True:
        pmf: list[float] = win.purchase_count_pmf(params, t, *history, n_max)
        if 1.0 - math.fsum(pmf) < 1e-12 or n_max > 20_000:
            return pmf
        n_max *= 4


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize(
    ("history", "expected"),
    [((2, 30.43, 38.86), 0.677), ((7, 29.43, 38.86), 0.454), ((0, 0.0, 38.86), 0.938)],
)
def test_bgnbd_cdnow_p_no_purchase_13_weeks(history, expected):
    assert bgnbd_windows.p_no_purchase(CDNOW_BG, 13.0, *history) == pytest.approx(
        expected, abs=5e-4)


def test_bgnbd_closed_forms():
    # P(X=0) = 1 - P_A (1 - ((alpha+T)/(alpha+T+t))^(r+x)); limit 1 - P_A
    p_a = bgnbd.p_alive(CDNOW_BG, 7, 29.43, 38.86)
    z = (4.4136 + 38.86) / (4.4136 + 38.86 + 13.0)
    assert bgnbd_windows.p_no_purchase(CDNOW_BG, 13.0, 7, 29.43, 38.86) == pytest.approx(
        1.0 - p_a * (1.0 - z ** 7.2426), rel=1e-12)
    assert bgnbd_windows.p_no_purchase(CDNOW_BG, 1e9, 7, 29.43, 38.86) == pytest.approx(
        1.0 - p_a, abs=1e-6)


def test_pnbd_limit_is_p_alive_times_p_ever_buy():
    # t -> inf: P(no purchase) -> 1 - P_A * E[lambda / (lambda + mu) | alive]
    p_a = pareto_nbd.p_alive(CDNOW_PNBD, 2, 30.43, 38.86)
    q_lim = 1.0 - pareto_nbd_windows.p_no_purchase(CDNOW_PNBD, 1e12, 2, 30.43, 38.86)
    assert 0.0 < q_lim < p_a
    assert pareto_nbd_windows.next_order_quantile(CDNOW_PNBD, q_lim + 1e-6, 2, 30.43,
                                                  38.86) is None
    assert pareto_nbd_windows.next_order_quantile(CDNOW_PNBD, q_lim - 1e-3, 2, 30.43,
                                                  38.86) is not None


# --------------------------------------------------------------------------- consistency


@pytest.mark.parametrize(("model", "win", "params"), MODELS)
@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize("t", [0.5, 13.0, 52.0])
def test_pmf_sums_to_one_and_mean_matches(model, win, params, history, t):
    pmf = _full_pmf(win, params, t, history)
    total, mean = _moments(pmf)
    assert min(pmf) >= 0.0
    assert total == pytest.approx(1.0, abs=1e-9)
    assert mean == pytest.approx(model.expected_purchases(params, t, *history), abs=1e-6,
                                 rel=1e-9)
    assert pmf[0] == pytest.approx(win.p_no_purchase(params, t, *history), abs=1e-12)


@pytest.mark.parametrize(("model", "win", "params"), MODELS)
@pytest.mark.parametrize("history", HISTORIES)
def test_zero_horizon(model, win, params, history):
    assert win.p_no_purchase(params, 0.0, *history) == 1.0
    assert win.purchase_count_pmf(params, 0.0, *history, 3) == [1.0, 0.0, 0.0, 0.0]
    assert win.purchase_count_interval(params, 0.0, *history) == (0.0, 0.0)
    assert win.next_order_quantile(params, 0.0, *history) == 0.0
    assert win.p_no_purchase(params, 1e-9, *history) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("model", "win", "params"), MODELS)
@pytest.mark.parametrize("history", HISTORIES)
def test_p_no_purchase_decreases_in_t_to_its_limit(model, win, params, history):
    ts = [0.0, 0.1, 1.0, 4.0, 13.0, 26.0, 52.0, 104.0, 520.0, 5200.0, 1e7]
    values = [win.p_no_purchase(params, t, *history) for t in ts]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b <= a + 1e-15 for a, b in pairwise(values))
    # never below the probability of being dead already
    assert values[-1] >= 1.0 - model.p_alive(params, *history) - 1e-12


def test_pmf_edges_bgnbd():
    # x = 0: alive for sure; t_x == T: P(alive) = 1 in both branches' limit
    pmf = bgnbd_windows.purchase_count_pmf(CDNOW_BG, 13.0, 0, 0.0, 38.86, 2)
    nb0 = ((4.4136 + 38.86) / (4.4136 + 38.86 + 13.0)) ** 0.2426
    assert pmf[0] == pytest.approx(nb0, rel=1e-12)
    with pytest.raises(ValueError, match="n_max"):
        bgnbd_windows.purchase_count_pmf(CDNOW_BG, 13.0, 0, 0.0, 38.86, -1)


def test_pnbd_t_x_equals_T_means_alive():
    # p_alive is 1 when t_x == T, so P(X=0) is P(X=0 | alive)
    assert pareto_nbd.p_alive(CDNOW_PNBD, 4, 12.0, 12.0) == 1.0
    p0 = pareto_nbd_windows.p_no_purchase(CDNOW_PNBD, 13.0, 4, 12.0, 12.0)
    assert 0.0 < p0 < pareto_nbd_windows.p_no_purchase(CDNOW_PNBD, 13.0, 4, 11.0, 12.0)


@pytest.mark.parametrize("win", [bgnbd_windows, pareto_nbd_windows])
def test_invalid_arguments(win):
    params = CDNOW_BG if win is bgnbd_windows else CDNOW_PNBD
    for bad in [(-1.0, 2, 3.0, 4.0), (math.inf, 2, 3.0, 4.0), (1.0, 2, 5.0, 4.0),
                (1.0, -1, 0.0, 4.0)]:
        with pytest.raises(ValueError):
            win.p_no_purchase(params, *bad)
        with pytest.raises(ValueError):
            win.purchase_count_pmf(params, *bad, 5)
    with pytest.raises(ValueError, match="level"):
        win.purchase_count_interval(params, 13.0, 2, 3.0, 4.0, level=1.0)
    with pytest.raises(ValueError, match="q must"):
        win.next_order_quantile(params, 1.5, 2, 3.0, 4.0)


# --------------------------------------------------------------------------- interval, quantile


@pytest.mark.parametrize(("model", "win", "params"), MODELS)
@pytest.mark.parametrize("history", HISTORIES)
@pytest.mark.parametrize(("t", "level"), [(13.0, 0.8), (52.0, 0.8), (52.0, 0.5)])
def test_interval_matches_pmf_quantiles(model, win, params, history, t, level):
    lo, hi = win.purchase_count_interval(params, t, *history, level=level)
    assert lo == int(lo) and hi == int(hi) and 0.0 <= lo <= hi
    pmf = win.purchase_count_pmf(params, t, *history, int(hi) + 1)
    cdf = np.cumsum(pmf)
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    assert cdf[int(lo)] >= lo_q - 1e-12 and (lo == 0.0 or cdf[int(lo) - 1] < lo_q)
    assert cdf[int(hi)] >= hi_q - 1e-12 and (hi == 0.0 or cdf[int(hi) - 1] < hi_q)


@pytest.mark.parametrize(("model", "win", "params"), MODELS)
@pytest.mark.parametrize("history", HISTORIES)
def test_next_order_quantile_inverts_p_no_purchase(model, win, params, history):
    previous = 0.0
    for q in (0.05, 0.2, 0.5, 0.8, 0.95):
        t_q = win.next_order_quantile(params, q, *history)
        limit = 1.0 - win.p_no_purchase(params, 1e12, *history)
        if t_q is None:
            assert q >= limit - 1e-9
            continue
        assert t_q >= previous
        previous = t_q
        assert 1.0 - win.p_no_purchase(params, t_q, *history) == pytest.approx(q, abs=1e-8)


def test_bgnbd_next_order_reference():
    # 7 purchases, last at 29.43 of 38.86 weeks: 50% chance of a purchase within ~10 weeks
    t50 = bgnbd_windows.next_order_quantile(CDNOW_BG, 0.5, 7, 29.43, 38.86)
    assert t50 == pytest.approx(10.03, abs=0.01)
    assert bgnbd_windows.next_order_quantile(CDNOW_BG, 0.8, 7, 29.43, 38.86) is None  # P_A=0.64


# --------------------------------------------------------------------------- simulation


def _simulate_bgnbd(params, x, t_x, T, t, n, rng):
    """Importance sampling from the prior, tilted so that the weights are bounded: propose
    lambda ~ Gamma(r+x, alpha+t_x), p ~ Beta(a, b+x-1) (x > 0); weight = P(history | .) / that
    proposal's kernel; then simulate alive-at-T and the window by the model's story."""
    lam = rng.gamma(params.r + x, 1.0 / (params.alpha + (t_x if x > 0 else T)), n)
    if x > 0:
        p = rng.beta(params.a, params.b + x - 1.0, n)
        stay = (1.0 - p) * np.exp(-lam * (T - t_x))
        weight = stay + p
        alive = rng.random(n) < stay / weight
    else:
        p = rng.beta(params.a, params.b, n)
        weight, alive = np.ones(n), np.ones(n, dtype=bool)
    bought = rng.poisson(lam * t)
    until_drop = rng.geometric(p)  # purchases up to and including the one after which he drops
    return np.where(alive, np.minimum(bought, until_drop), 0), weight


def _simulate_pnbd(params, x, t_x, T, t, n, rng):
    """Same for the Pareto/NBD: propose lambda ~ Gamma(r+x, alpha+t_x), mu ~ Gamma(s, beta+t_x);
    weight = e^-(nu d) + mu/nu (1 - e^-(nu d)) <= 1 (alive, died in (t_x, T]), nu = lambda+mu,
    d = T - t_x (FH note 009: L = lambda^x e^-(nu t_x) times that)."""
    lam = rng.gamma(params.r + x, 1.0 / (params.alpha + t_x), n)
    mu = rng.gamma(params.s, 1.0 / (params.beta + t_x), n)
    stay = np.exp(-(lam + mu) * (T - t_x))
    weight = stay + mu / (lam + mu) * (1.0 - stay)
    alive = rng.random(n) < stay / weight
    life = rng.exponential(1.0 / mu)
    return np.where(alive, rng.poisson(lam * np.minimum(life, t)), 0), weight


@pytest.mark.parametrize(
    ("win", "simulate", "params"),
    [(bgnbd_windows, _simulate_bgnbd, CDNOW_BG), (pareto_nbd_windows, _simulate_pnbd, CDNOW_PNBD),
     (pareto_nbd_windows, _simulate_pnbd, EXTREME_PNBD[0])],
)
@pytest.mark.parametrize("history", [(2, 30.43, 38.86), (7, 29.43, 38.86), (0, 0.0, 38.86),
                                     (3, 5.0, 8.0)])
def test_pmf_against_posterior_simulation(win, simulate, params, history):
    rng = np.random.default_rng(20260101)
    counts, weight = simulate(params, *history, 13.0, 400_000, rng)
    weight = weight / weight.sum()
    ess = 1.0 / float(weight @ weight)
    pmf = win.purchase_count_pmf(params, 13.0, *history, 4)
    for k in range(5):
        sim = float(weight @ (counts == k))
        se = math.sqrt(max(sim * (1.0 - sim), 1e-6) / ess)
        assert abs(sim - pmf[k]) < 5.0 * se + 1e-4, (k, sim, pmf[k], se)


# --------------------------------------------------------------------------- properties

_shape = st.floats(min_value=0.05, max_value=5.0)
_rate = st.floats(min_value=0.5, max_value=60.0)  # weeks: from 2 purchases a week to 1 a year


@settings(max_examples=60, deadline=None)
@given(r=_shape, alpha=_rate, a=_shape, b=_shape, x=st.integers(0, 40),
       frac=st.floats(0.0, 1.0), T=st.floats(0.0, 100.0), t=st.floats(0.01, 60.0))
def test_bgnbd_pmf_properties(r, alpha, a, b, x, frac, T, t):
    params = bgnbd.BgNbdParams(r, alpha, a, b)
    t_x = 0.0 if x == 0 else frac * T
    _check_properties(bgnbd, bgnbd_windows, params, x, t_x, T, t)


@settings(max_examples=60, deadline=None)
@given(r=_shape, alpha=_rate, s=_shape, beta=_rate, x=st.integers(0, 40),
       frac=st.floats(0.0, 1.0), T=st.floats(0.0, 100.0), t=st.floats(0.01, 60.0))
def test_pnbd_pmf_properties(r, alpha, s, beta, x, frac, T, t):
    params = pareto_nbd.ParetoNbdParams(r, alpha, s, beta)
    t_x = 0.0 if x == 0 else frac * T
    _check_properties(pareto_nbd, pareto_nbd_windows, params, x, t_x, T, t)


def _check_properties(model: ModuleType, win: ModuleType, params, x, t_x, T, t) -> None:
    mean = model.expected_purchases(params, t, x, t_x, T)
    lo, hi = win.purchase_count_interval(params, t, x, t_x, T)
    pmf = _full_pmf(win, params, t, (x, t_x, T))
    total, pmf_mean = _moments(pmf)
    assert min(pmf) >= 0.0
    assert pmf[0] == pytest.approx(win.p_no_purchase(params, t, x, t_x, T), abs=1e-10)
    assert lo <= hi
    if 1.0 - total < 1e-12:  # tail fully inside n_max: the moments must match
        assert total == pytest.approx(1.0, abs=1e-9)
        assert pmf_mean == pytest.approx(mean, rel=1e-7, abs=1e-7)
