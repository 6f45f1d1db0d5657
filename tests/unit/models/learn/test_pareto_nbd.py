"""Tests for models.learn.pareto_nbd against lifetimes' ParetoNBDFitter on the CDNOW sample.

lifetimes (a dev dependency) is the reference for the formulas: its log-likelihood,
P(alive) and conditional expectation are compared with ours at the *same* parameters, and
its fit (Nelder-Mead from a fixed start, tightened tolerance) with ours.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from datetime import UTC, date, datetime
from functools import cache
from importlib import resources

import numpy as np
import pytest

from models.learn.forecaster import Forecaster, purchase_forecast
from models.learn.pareto_nbd import (
    DEFAULT_PRIOR,
    ParetoNbdParams,
    expected_purchases,
    expected_purchases_if_alive,
    expected_purchases_unconditional,
    fit,
    log_likelihood,
    p_alive,
)
from models.prediction import SegmentRef
from models.state import DAY, CustomerState
from tests.unit.models.learn.test_bgnbd import cdnow_summary

lifetimes = pytest.importorskip("lifetimes")

#: lifetimes' fit of the CDNOW sample as REFERENCE.md gives it
SAMPLE = ParetoNbdParams(r=0.5533, alpha=10.578, s=0.6062, beta=11.668)


def _lifetimes_at(params: ParetoNbdParams):
    import pandas as pd

    f = lifetimes.ParetoNBDFitter()
    f.params_ = pd.Series(params.to_dict())
    return f


@cache
def fitted() -> ParetoNbdParams:
    x, t_x, T, _ = cdnow_summary()
    return fit(x, t_x, T)


@cache
def lifetimes_fit(tol: float) -> tuple[ParetoNbdParams, float]:
    """lifetimes' fit from a fixed start (its default start is random): params, total LL."""
    x, t_x, T, _ = cdnow_summary()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = lifetimes.ParetoNBDFitter().fit(x, t_x, T, tol=tol, initial_params=np.ones(4),
                                            maxiter=100_000)
    params = ParetoNbdParams.from_dict(f.params_.to_dict())
    return params, log_likelihood(params, x, t_x, T)


@pytest.mark.parametrize("params", [SAMPLE, ParetoNbdParams(0.6, 4.0, 0.5, 15.0),
                                    ParetoNbdParams(0.6, 30.0, 1.0, 2.0)])
def test_log_likelihood_is_lifetimes_on_both_branches(params: ParetoNbdParams) -> None:
    x, t_x, T, _ = cdnow_summary()
    theirs = lifetimes.ParetoNBDFitter._conditional_log_likelihood(
        list(params.to_dict().values()), x, t_x, T)
    assert log_likelihood(params, x, t_x, T) == pytest.approx(float(theirs.sum()), rel=1e-12)


def test_fit_matches_lifetimes_on_the_cdnow_sample() -> None:
    ours = fitted()
    tight, tight_ll = lifetimes_fit(1e-10)
    for k, v in ours.to_dict().items():
        assert v == pytest.approx(tight.to_dict()[k], rel=1e-4), k
        assert v == pytest.approx(SAMPLE.to_dict()[k], rel=1e-3), k
    x, t_x, T, _ = cdnow_summary()
    ll = log_likelihood(ours, x, t_x, T)
    assert ll >= tight_ll - 1e-6  # a maximum at least as high as lifetimes'
    assert ll >= lifetimes_fit(1e-4)[1]  # lifetimes' default tolerance stops short of it


def test_aggregated_rows_and_any_start_give_the_same_fit() -> None:
    x, t_x, T, _ = cdnow_summary()
    rows = Counter(zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True))
    kx, kt, kT = np.array(list(rows)).T
    w = np.array(list(rows.values()), dtype=float)
    assert len(w) < len(x)
    assert log_likelihood(SAMPLE, kx, kt, kT, weights=w) == pytest.approx(
        log_likelihood(SAMPLE, x, t_x, T), rel=1e-12)
    for start in (None, DEFAULT_PRIOR, ParetoNbdParams(2.0, 1.0, 0.1, 50.0)):
        again = fit(kx, kt, kT, weights=w, initial=start)
        for k, v in again.to_dict().items():
            assert v == pytest.approx(fitted().to_dict()[k], rel=1e-4), (start, k)


@pytest.mark.parametrize("params", [SAMPLE, ParetoNbdParams(0.6, 4.0, 1.7, 15.0)])
def test_conditional_expectation_and_p_alive_are_lifetimes(params: ParetoNbdParams) -> None:
    x, t_x, T, _ = cdnow_summary()
    f = _lifetimes_at(params)
    for t in (1.0, 30 / 7, 39.0, 52.0):
        theirs = f.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T)
        ours = [expected_purchases(params, t, *h) for h in zip(x, t_x, T, strict=True)]
        assert ours == pytest.approx(theirs.tolist(), rel=1e-6, abs=1e-12)
    alive = f.conditional_probability_alive(x, t_x, T)
    assert [p_alive(params, *h) for h in zip(x, t_x, T, strict=True)] == pytest.approx(
        alive.tolist(), rel=1e-9, abs=1e-12)
    assert expected_purchases_unconditional(params, 39.0) == pytest.approx(
        float(f.expected_number_of_purchases_up_to_time(39.0)), rel=1e-12)


def test_p_alive_edge_cases() -> None:
    assert p_alive(SAMPLE, 0, 0.0, 0.0) == 1.0
    assert p_alive(SAMPLE, 4, 12.0, 12.0) == 1.0  # bought today
    # more purchases long ago: surely gone, without overflow
    assert 0.0 <= p_alive(SAMPLE, 400, 60.0, 500.0) < 1e-100
    assert p_alive(SAMPLE, 2, 10.0, 30.0) > p_alive(SAMPLE, 2, 5.0, 30.0)
    assert p_alive(SAMPLE, 2, 10.0, 30.0) > p_alive(SAMPLE, 2, 10.0, 40.0)
    for bad in ((-1, 0.0, 1.0), (1, 2.0, 1.0), (1, -1.0, 1.0), (1, 0.0, math.inf)):
        with pytest.raises(ValueError):
            p_alive(SAMPLE, *bad)
    with pytest.raises(ValueError):
        expected_purchases(SAMPLE, -1.0, 1, 0.0, 1.0)


def test_the_hypergeometric_function_near_z_one_is_mpmaths() -> None:
    """Above z = 0.9 (alpha / beta beyond a factor of ten) models.learn.hypergeometric takes over
    from scipy: the connection formula (also at its poles, integer c - b - 1) and the
    continued fraction agree with mpmath, where scipy overflows or is wrong."""
    mpmath = pytest.importorskip("mpmath")
    from scipy.special import hyp2f1

    from models.learn.hypergeometric import hyp2f1_1, hyp2f1_1_scalar

    rows = [(b, b + q + 1.0, y) for b in (0.3, 1.0, 1.5, 40.0, 400.0)
            for q in (-0.5, 1e-13, 0.3, 1.0, 2.0 + 1e-9, 7.5) for y in (0.1, 1e-3, 1e-7, 1e-12)]
    b, c, y = (np.array(v) for v in zip(*rows, strict=True))
    got = hyp2f1_1(b, c, y)
    mpmath.mp.dps = 40
    want = [float(mpmath.hyp2f1(1, bi, ci, 1 - mpmath.mpf(yi))) for bi, ci, yi in rows]
    assert got.tolist() == pytest.approx(want, rel=1e-7)
    scalar = [hyp2f1_1_scalar(*row) for row in rows]  # p_alive's per-event path
    assert scalar == pytest.approx(got.tolist(), rel=1e-8)  # poles: 1e-9 apart
    assert not np.isfinite(hyp2f1(1.0, 200.0, 202.0, 0.99))  # what it replaces
    # continuous across z = 0.9, where scipy hands over
    lo, hi = ParetoNbdParams(0.6, 100.0, 0.5, 10.0), ParetoNbdParams(0.6, 100.0001, 0.5, 10.0)
    assert p_alive(lo, 3, 0.0, 20.0) == pytest.approx(p_alive(hi, 3, 0.0, 20.0), rel=1e-5)
    for params in (ParetoNbdParams(0.6, 1e4, 0.5, 1.0), ParetoNbdParams(0.6, 1.0, 0.5, 1e4),
                   ParetoNbdParams(0.6, 1.0, 1e-13, 1e6)):
        for history in ((0, 0.0, 30.0), (3, 1.0, 30.0), (200, 29.0, 30.0)):
            assert 0.0 <= p_alive(params, *history) <= 1.0


def test_a_young_table_fits_quickly_towards_no_dropout() -> None:
    """Three weeks of CDNOW: nobody has had time to drop out, so the maximum lies towards
    s -> 0, beta -> inf, where the hypergeometric arguments approach 1 (this used to take
    minutes with a continued fraction alone)."""
    raw = resources.files("lifetimes.datasets") / "CDNOW_sample.txt"
    days: dict[str, set[int]] = {}
    with raw.open("r") as fh:
        for line in fh:
            _, cid, ymd, *_ = line.split()
            day = (date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:])) - date(1997, 1, 1)).days
            if day <= 21:
                days.setdefault(cid, set()).add(day)
    rows = Counter((len(d) - 1, (max(d) - min(d)) / 7, (21 - min(d)) / 7) for d in days.values())
    x, t_x, T = np.array(list(rows)).T
    w = np.array(list(rows.values()), dtype=float)
    started = time.perf_counter()
    p = fit(x, t_x, T, weights=w, initial=DEFAULT_PRIOR)
    assert time.perf_counter() - started < 30.0  # ~0.1 s
    assert p.s / p.beta < 1e-3  # dropout rate: none to speak of
    assert log_likelihood(p, x, t_x, T, weights=w) >= log_likelihood(
        fit(x, t_x, T, weights=w), x, t_x, T, weights=w) - 1e-6 * w.sum()
    assert 0.99 < p_alive(p, 1, 0.5, 3.0) <= 1.0


def test_expectation_is_continuous_at_s_one() -> None:
    at = expected_purchases_if_alive(ParetoNbdParams(0.5, 10.0, 1.0, 12.0), 39.0, 2, 30.0)
    for s in (1.0 - 1e-7, 1.0 + 1e-7):
        near = expected_purchases_if_alive(ParetoNbdParams(0.5, 10.0, s, 12.0), 39.0, 2, 30.0)
        assert near == pytest.approx(at, rel=1e-6)
    assert at == pytest.approx(2.5 * 42 / 40 * math.log(81 / 42), rel=1e-12)


def test_fit_input_checks_and_degenerate_data() -> None:
    for args in (([], [], []), ([1], [2.0], [1.0]), ([1, 2], [0.0], [1.0]),
                 ([-1], [0.0], [1.0]), ([np.nan], [0.0], [1.0])):
        with pytest.raises(ValueError):
            fit(*args)
    with pytest.raises(ValueError):
        fit([1], [0.5], [1.0], weights=[0.0])
    # a stream's first refit: everyone bought today only, or a handful of customers
    for x, t_x, T in (([0, 0], [0.0, 0.0], [0.0, 0.0]), ([0, 1, 3], [0.0, 0.3, 1.0],
                                                         [1.0, 1.0, 1.0])):
        p = fit(x, t_x, T)
        assert all(math.isfinite(v) and v > 0 for v in p.to_dict().values())
    with pytest.raises(ValueError):
        ParetoNbdParams(0.0, 1.0, 1.0, 1.0)


def test_the_forecaster_scores_with_pareto_nbd_and_says_so() -> None:
    s = CustomerState.sketch("c1", [0, 14, 35])
    p = Forecaster(SAMPLE, 7).predict(s, SegmentRef(id=0, name="Loyal"), 70 * DAY,
                                      datetime(2024, 1, 1, tzinfo=UTC), 2)
    assert p.model_versions == {"pareto_nbd": 7, "segments": 2}
    x, t_x, T = 2, 5.0, 10.0
    assert p.p_alive == round(p_alive(SAMPLE, x, t_x, T), 4)
    assert p.expected_purchases_30d == round(expected_purchases(SAMPLE, 30 / 7, x, t_x, T), 4)
    assert p.expected_purchases_90d == round(expected_purchases(SAMPLE, 90 / 7, x, t_x, T), 4)
    alive, (e,) = purchase_forecast(SAMPLE, x, t_x, T, [90 / 7])
    assert e == pytest.approx(expected_purchases(SAMPLE, 90 / 7, x, t_x, T), rel=1e-15)
    assert alive == p_alive(SAMPLE, x, t_x, T)
