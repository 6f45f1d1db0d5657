"""Tests for models.learn.bgnbd against the figures published in Fader, Hardie & Lee (2005).

The CDNOW sample (2,357 customers) is read raw from the copy shipped inside the
``lifetimes`` package; lifetimes is used only as a data carrier here, except in
the optional cross-check at the end which compares against BetaGeoFitter's
formulas given the *same* parameters.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter, defaultdict
from datetime import date
from functools import cache
from importlib import resources

import numpy as np
import pytest

from models.learn.bgnbd import (
    DEFAULT_PRIOR,
    BgNbdParams,
    expected_purchases,
    expected_purchases_unconditional,
    fit,
    log_likelihood,
    p_alive,
)

# Calibration period: 1997-01-01 .. 1997-09-30 (inclusive), 39 weeks.
CALIBRATION_END = date(1997, 9, 30)
PUBLISHED = BgNbdParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
PUBLISHED_LL = -9582.4

Summary = tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]


def _parse_date(s: str) -> date:
    return date(int(s[:4]), int(s[4:6]), int(s[6:8]))


@cache
def cdnow_summary() -> Summary:
    """(x, t_x, T, ids) per customer, computed from the raw transaction log."""
    raw = resources.files("lifetimes.datasets") / "CDNOW_sample.txt"
    days: dict[str, set[date]] = defaultdict(set)
    with raw.open("r") as fh:
        for line in fh:
            fields = line.split()
            if not fields:
                continue
            _master_id, sample_id, yyyymmdd, _cds, _dollars = fields
            day = _parse_date(yyyymmdd)
            if day <= CALIBRATION_END:  # the whole cohort first bought in Q1 1997
                days[sample_id].add(day)  # set => same-day purchases are merged
    ids = sorted(days)
    x, t_x, T = [], [], []
    for cid in ids:
        d = sorted(days[cid])
        first, last = d[0], d[-1]
        x.append(len(d) - 1)
        t_x.append((last - first).days / 7.0)
        # T runs to the END of 1997-09-30, with dates treated as day indices, i.e.
        # (1997-09-30 - first).days / 7.  Customer 0001 (first purchase 1997-01-01)
        # gets 272/7 = 38.857 -> published 38.86, whereas using 1997-10-01 would
        # give 273/7 = 39.00, so the day-difference to 09-30 is Hardie's convention.
        T.append((CALIBRATION_END - first).days / 7.0)
    return np.array(x, float), np.array(t_x, float), np.array(T, float), ids


@cache
def fitted() -> BgNbdParams:
    x, t_x, T, _ = cdnow_summary()
    return fit(x, t_x, T)


# --------------------------------------------------------------------------- data protocol
def test_cdnow_summary_protocol() -> None:
    x, t_x, T, ids = cdnow_summary()
    assert len(ids) == 2357  # the published sample size
    i = ids.index("0001")
    assert x[i] == 2
    assert round(t_x[i], 2) == 30.43
    assert round(T[i], 2) == 38.86
    assert round(float((CALIBRATION_END - date(1997, 1, 1)).days) / 7.0, 2) == 38.86
    assert round(float((date(1997, 10, 1) - date(1997, 1, 1)).days) / 7.0, 2) == 39.0  # rejected
    assert np.all(t_x <= T) and np.all(x >= 0)
    assert np.all(t_x[x == 0] == 0.0)


# --------------------------------------------------------------------------- published figures
def test_fit_matches_published_parameters() -> None:
    got = fitted()
    for name, want in PUBLISHED.to_dict().items():
        assert getattr(got, name) == pytest.approx(want, rel=0.01), name


def test_log_likelihood_matches_published() -> None:
    x, t_x, T, _ = cdnow_summary()
    assert log_likelihood(fitted(), x, t_x, T) == pytest.approx(PUBLISHED_LL, abs=0.5)
    # the MLE beats the (rounded) published point and the prior
    assert log_likelihood(fitted(), x, t_x, T) >= log_likelihood(PUBLISHED, x, t_x, T)
    assert log_likelihood(fitted(), x, t_x, T) > log_likelihood(DEFAULT_PRIOR, x, t_x, T)


def test_conditional_expectation_matches_published() -> None:
    # FHL 2005 section 5: customer with x=2, t_x=30.43, T=38.86 -> 1.226 in the next 39 weeks
    assert expected_purchases(fitted(), 39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=0.005)


def test_fit_is_a_local_maximum() -> None:
    x, t_x, T, _ = cdnow_summary()
    best = fitted()
    ll = log_likelihood(best, x, t_x, T)
    for name in ("r", "alpha", "a", "b"):
        for factor in (0.995, 1.005):
            d = best.to_dict()
            d[name] *= factor
            assert log_likelihood(BgNbdParams.from_dict(d), x, t_x, T) < ll, (name, factor)


def test_fit_is_deterministic_and_start_independent() -> None:
    x, t_x, T, _ = cdnow_summary()
    other = fit(x, t_x, T, initial=BgNbdParams(r=1.0, alpha=1.0, a=1.0, b=1.0))
    for name, want in fitted().to_dict().items():
        assert getattr(other, name) == pytest.approx(want, rel=1e-3), name
    assert fit(x, t_x, T) == fitted()


def test_weighted_aggregated_rows_equal_expanded_rows() -> None:
    x, t_x, T, _ = cdnow_summary()
    counts = Counter(zip(x.tolist(), t_x.tolist(), T.tolist(), strict=True))
    rows = np.array(list(counts), dtype=float)
    w = np.array(list(counts.values()), dtype=float)
    assert len(rows) < len(x)  # aggregation actually happened
    agg = fit(rows[:, 0], rows[:, 1], rows[:, 2], weights=w)
    for name, want in fitted().to_dict().items():
        assert getattr(agg, name) == pytest.approx(want, rel=1e-6), name
    ll_agg = log_likelihood(agg, rows[:, 0], rows[:, 1], rows[:, 2], weights=w)
    assert ll_agg == pytest.approx(log_likelihood(agg, x, t_x, T), abs=1e-6)


# --------------------------------------------------------------------------- behaviour
def test_p_alive_edge_cases() -> None:
    p = PUBLISHED
    assert p_alive(p, 0, 0, 0) == 1.0
    assert p_alive(p, 0, 0, 1e9) == 1.0
    assert p_alive(DEFAULT_PRIOR, 0, 0, 10) == 1.0
    assert 0.0 < p_alive(p, 1, 0, 0) < 1.0  # t_x == T == 0 with a purchase is legal
    assert p_alive(p, 5, 10.0, 10.0) == pytest.approx(1 / (1 + p.a / (p.b + 4)))
    for args in [(10_000, 1.0, 1e6), (1e6, 1e5, 1e5), (3, 0.0, 1e12), (1e9, 0.0, 1e-9)]:
        v = p_alive(p, *args)
        assert math.isfinite(v) and 0.0 <= v <= 1.0


def test_p_alive_increases_with_recency() -> None:
    p = fitted()
    values = [p_alive(p, 4, t_x, 40.0) for t_x in np.linspace(0.0, 40.0, 21)]
    assert all(b > a for a, b in itertools.pairwise(values))
    # and, at fixed recency, decreases the longer the customer has been silent
    ages = [p_alive(p, 4, 10.0, T) for T in (10.0, 20.0, 40.0, 80.0)]
    assert all(b < a for a, b in itertools.pairwise(ages))


def test_expected_purchases_grows_with_t() -> None:
    p = fitted()
    horizons = [0.0, 1.0, 4.0, 13.0, 39.0, 52.0, 104.0, 1e3, 1e5, 1e8]
    for x, t_x, T in [(0, 0.0, 38.86), (2, 30.43, 38.86), (7, 35.0, 38.0), (20, 5.0, 38.0)]:
        values = [expected_purchases(p, t, x, t_x, T) for t in horizons]
        assert values[0] == 0.0
        assert all(math.isfinite(v) and v >= 0.0 for v in values)
        assert all(b > a for a, b in itertools.pairwise(values))
    uncond = [expected_purchases_unconditional(p, t) for t in horizons]
    assert uncond[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(uncond))


def test_unconditional_equals_conditional_for_brand_new_customer() -> None:
    p = fitted()
    for t in (1.0, 39.0, 520.0):
        assert expected_purchases_unconditional(p, t) == pytest.approx(
            expected_purchases(p, t, 0, 0.0, 0.0), rel=1e-12
        )


EXTREME_CASES = [  # (t, x, t_x, T)
    (52, 0, 0, 0),
    (1e9, 0, 0, 5),
    (52, 1e6, 1e5, 1e5),
    (1e12, 1e5, 5e3, 1e4),
    (52, 500, 10, 1e6),
    (1e-9, 3, 1, 2),
    (39, 2, 30.43, 38.86),
]


def test_numeric_edge_cases_are_finite() -> None:
    cases = [
        BgNbdParams(0.243, 4.414, 1.0, 2.426),  # a == 1: removable singularity
        BgNbdParams(0.243, 4.414, 0.3, 0.7),  # a + b - 1 == 0 (x = 0)
        BgNbdParams(3.0, 4.0, 5.0, 20.0),  # a - 1 - r - x > 0: direct 2F1 form
        PUBLISHED,
    ]
    for p in cases:
        for t, x, t_x, T in EXTREME_CASES:
            v = expected_purchases(p, t, x, t_x, T)
            assert math.isfinite(v) and v >= 0.0, (p, t, x, t_x, T, v)
        assert math.isfinite(expected_purchases_unconditional(p, 1e12))
    # continuity across the a == 1 singularity
    near = [BgNbdParams(0.243, 4.414, a, 2.426) for a in (1 - 1e-5, 1.0, 1 + 1e-5)]
    vals = [expected_purchases(q, 39, 2, 30.43, 38.86) for q in near]
    assert vals[0] == pytest.approx(vals[1], rel=1e-4)
    assert vals[2] == pytest.approx(vals[1], rel=1e-4)


def test_params_roundtrip_and_validation() -> None:
    assert BgNbdParams.from_dict(PUBLISHED.to_dict()) == PUBLISHED
    assert DEFAULT_PRIOR.to_dict() == {"r": 0.25, "alpha": 5.0, "a": 0.8, "b": 2.5}
    with pytest.raises(ValueError):
        BgNbdParams(r=-1.0, alpha=1.0, a=1.0, b=1.0)
    with pytest.raises(ValueError):
        BgNbdParams(r=1.0, alpha=math.nan, a=1.0, b=1.0)


@pytest.mark.parametrize(
    ("x", "t_x", "T", "weights"),
    [
        ([], [], [], None),  # empty
        ([1, 2], [1.0], [2.0, 3.0], None),  # ragged
        ([1, 2], [1.0, 1.0], [2.0, 3.0], [1.0]),  # ragged weights
        ([-1, 2], [1.0, 1.0], [2.0, 3.0], None),  # negative x
        ([1, 2], [-1.0, 1.0], [2.0, 3.0], None),  # negative t_x
        ([1, 2], [3.0, 1.0], [2.0, 3.0], None),  # t_x > T
        ([1, 2], [1.0, 1.0], [2.0, math.nan], None),  # non-finite
        ([1, 2], [1.0, 1.0], [2.0, 3.0], [1.0, -1.0]),  # negative weight
        ([1, 2], [1.0, 1.0], [2.0, 3.0], [0.0, 0.0]),  # no mass
    ],
)
def test_fit_rejects_bad_input(
    x: list[float], t_x: list[float], T: list[float], weights: list[float] | None
) -> None:
    with pytest.raises(ValueError):
        fit(x, t_x, T, weights=weights)


def test_fit_rejects_bad_max_iter() -> None:
    with pytest.raises(ValueError):
        fit([1.0], [1.0], [2.0], max_iter=0)


def test_scalar_functions_reject_bad_input() -> None:
    for args in [(-1, 0.0, 1.0), (1, 2.0, 1.0), (1, -1.0, 1.0), (1, 0.0, math.nan)]:
        with pytest.raises(ValueError):
            p_alive(PUBLISHED, *args)
    with pytest.raises(ValueError):
        expected_purchases(PUBLISHED, -1.0, 1, 0.0, 1.0)
    with pytest.raises(ValueError):
        expected_purchases_unconditional(PUBLISHED, math.inf)


# --------------------------------------------------------------------------- cross-check
def test_matches_lifetimes_formulas_given_same_params() -> None:
    lifetimes = pytest.importorskip("lifetimes")
    pd = pytest.importorskip("pandas")
    x, t_x, T, ids = cdnow_summary()
    p = fitted()
    bgf = lifetimes.BetaGeoFitter()
    bgf.params_ = pd.Series(p.to_dict())
    rng = np.random.default_rng(0)
    picks = [ids.index("0001"), *rng.choice(len(ids), size=25, replace=False).tolist()]
    picks += [int(np.argmax(x)), int(np.flatnonzero(x == 0)[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in picks:
            want_alive = float(np.ravel(bgf.conditional_probability_alive(x[i], t_x[i], T[i]))[0])
            assert p_alive(p, x[i], t_x[i], T[i]) == pytest.approx(want_alive, rel=1e-9, abs=1e-12)
            for t in (1.0, 39.0, 104.0):
                want = float(
                    bgf.conditional_expected_number_of_purchases_up_to_time(t, x[i], t_x[i], T[i])
                )
                got = expected_purchases(p, t, x[i], t_x[i], T[i])
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
        for t in (1.0, 39.0, 78.0):
            want = float(bgf.expected_number_of_purchases_up_to_time(t))
            assert expected_purchases_unconditional(p, t) == pytest.approx(want, rel=1e-9)
