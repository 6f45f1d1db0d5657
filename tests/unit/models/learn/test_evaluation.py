"""The holdout metrics, the calibration summary and the segment measures
(models.learn.evaluation)."""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import numpy as np
import pytest

from models.features import bgnbd_inputs
from models.learn import bgnbd, pareto_nbd
from models.learn.evaluation import (
    Holdout,
    calibration_summary,
    changed_share,
    fit_anchors,
    holdout_expectation,
    inconsistent_predictions,
    inputs_differ,
    naive_expectation,
    pearson,
    roc_auc,
    score,
    segment_agreement,
)
from models.learn.segmentation import FEATURES, SegmentModel
from models.state import DAY, CustomerState

sk_metrics = pytest.importorskip("sklearn.metrics")
pytest.importorskip("lifetimes")

CDNOW = Holdout(date(1997, 9, 30), 39)


def test_holdout_dates() -> None:
    assert CDNOW.end == date(1998, 6, 30)  # the standard CDNOW holdout end
    assert CDNOW.cutoff_ts % DAY == 0
    assert CDNOW.cutoff_ts // DAY == (date(1997, 9, 30) - date(1970, 1, 1)).days
    assert CDNOW.in_calibration(date(1997, 9, 30)) and not CDNOW.in_holdout(date(1997, 9, 30))
    assert CDNOW.in_holdout(date(1997, 10, 1)) and CDNOW.in_holdout(date(1998, 6, 30))
    assert not CDNOW.in_holdout(date(1998, 7, 1))
    with pytest.raises(ValueError):
        Holdout(date(1997, 9, 30), 0)


def test_mae_rmse_total_by_hand_and_against_sklearn() -> None:
    predicted, actual = [0.0, 1.0, 3.0, 0.5], [1, 1, 0, 0]
    s = score(predicted, actual)
    assert s.mae == pytest.approx((1 + 0 + 3 + 0.5) / 4)
    assert s.rmse == pytest.approx(math.sqrt((1 + 0 + 9 + 0.25) / 4))
    assert s.total_predicted == pytest.approx(4.5)
    assert s.mae == pytest.approx(sk_metrics.mean_absolute_error(actual, predicted))
    assert s.rmse == pytest.approx(math.sqrt(sk_metrics.mean_squared_error(actual, predicted)))
    with pytest.raises(ValueError):
        score([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        score([], [])
    with pytest.raises(ValueError):
        score([1.0], [math.nan])
    broken = score([1.0, math.nan, math.inf], [1, 0, 2])  # reported, not hidden or dropped
    assert broken.non_finite == 2 and broken.mae is None and broken.auc is None


def test_auc_by_hand_with_ties() -> None:
    # positives 0.4, 0.8; negatives 0.1, 0.4: pairs (0.4 > 0.1) 1, (0.4 = 0.4) 1/2,
    # (0.8 > 0.1) 1, (0.8 > 0.4) 1 -> 3.5 / 4
    assert roc_auc([False, True, False, True], [0.1, 0.4, 0.4, 0.8]) == 0.875
    assert roc_auc([True, False], [0.0, 1.0]) == 0.0
    assert roc_auc([True, True], [0.0, 1.0]) is None
    assert score([1.0, 2.0], [0, 0]).auc is None


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_pearson_match_sklearn_and_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    actual = rng.poisson(0.7, size=300).astype(float)
    predicted = np.round(actual * rng.uniform(0, 2, size=300) + rng.exponential(0.5, 300), 1)
    s = score(predicted, actual)
    assert s.auc == pytest.approx(sk_metrics.roc_auc_score(actual >= 1, predicted), abs=1e-12)
    assert s.pearson == pytest.approx(np.corrcoef(predicted, actual)[0, 1], abs=1e-12)


def test_pearson_of_a_constant_is_undefined() -> None:
    assert pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) is None
    assert pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_calibration_summary_merges_same_day_purchases_and_counts_the_holdout() -> None:
    d = date
    tx = [
        ("A", d(1997, 1, 1)), ("A", d(1997, 1, 1)), ("A", d(1997, 1, 15)),  # x 1, t_x 2 weeks
        ("A", d(1997, 10, 1)), ("A", d(1997, 10, 1)),  # one holdout day
        ("A", d(1998, 6, 30)),  # the last holdout day counts
        ("A", d(1998, 7, 1)),  # after the holdout: ignored
        ("B", d(1997, 9, 30)),  # first bought on the cut-off day: T = 0
        ("C", d(1997, 12, 24)),  # first bought in the holdout: not a calibration customer
    ]
    s = calibration_summary(tx, CDNOW)
    assert list(s.index) == ["A", "B"]
    a, b = s.loc["A"], s.loc["B"]
    assert (a.frequency_cal, a.recency_cal, a.frequency_holdout) == (1, 2.0, 2)
    assert a.T_cal == pytest.approx((d(1997, 9, 30) - d(1997, 1, 1)).days / 7)
    assert (b.frequency_cal, b.recency_cal, b.T_cal, b.frequency_holdout) == (0, 0, 0, 0)
    assert set(s.duration_holdout) == {39.0}
    naive = naive_expectation(s.frequency_cal.to_numpy(), s.T_cal.to_numpy(), 39.0)
    assert naive.tolist() == pytest.approx([1 / a.T_cal * 39, 0.0])  # x/T, 0 at T=0


def _state(cid: str, days: list[date]) -> CustomerState:
    return CustomerState.sketch(cid, sorted((x - date(1970, 1, 1)).days for x in days))


@pytest.fixture(scope="module")
def cdnow_slice() -> tuple[list[tuple[str, date]], dict[str, CustomerState]]:
    """The first 1,500 customers of the CDNOW log: transactions and calibration states."""
    from producers.datasets.cdnow import iter_rows

    tx = [(r.customer_id, date(int(r.day[:4]), int(r.day[4:6]), int(r.day[6:])))
          for r in iter_rows() if int(r.customer_id) <= 1500]
    by_customer: dict[str, list[date]] = {}
    for cid, day in tx:
        if CDNOW.in_calibration(day):
            by_customer.setdefault(cid, []).append(day)
    return tx, {cid: _state(cid, days) for cid, days in by_customer.items()}


def test_our_bgnbd_on_the_same_summary_matches_the_lifetimes_anchor(cdnow_slice) -> None:
    """Two independent MLE implementations of BG/NBD on the same customers agree, so a gap
    between ours and the anchor in the pipeline evaluation would come from the data."""
    tx, states = cdnow_slice
    summary = calibration_summary(tx, CDNOW)
    assert sorted(states) == list(summary.index)
    assert inputs_differ(summary, states, CDNOW) == []
    params = bgnbd.fit(summary.frequency_cal, summary.recency_cal, summary.T_cal)
    anchors = fit_anchors(summary, 39.0)
    for k, v in params.to_dict().items():
        assert v == pytest.approx(anchors.bgnbd_params[k], rel=1e-3)
    assert anchors.naive.tolist() == pytest.approx(
        (summary.frequency_cal / summary.T_cal * 39).tolist())
    ours = [holdout_expectation(params, states[c], CDNOW) for c in summary.index]
    assert ours == pytest.approx(anchors.bgnbd.tolist(), rel=1e-3, abs=1e-6)
    moved = dict(states)
    moved["00002"] = _state("00002", [date(1997, 1, 2), date(1997, 9, 1)])
    assert inputs_differ(summary, moved, CDNOW) == ["00002"]


def test_inconsistent_predictions_are_found() -> None:
    params = bgnbd.BgNbdParams(0.25, 4.8, 0.72, 2.16)
    state = _state("c1", [date(1997, 1, 1), date(1997, 3, 1)])
    x, t_x, big_t = bgnbd_inputs(state, CDNOW.cutoff_ts)
    good: dict[str, Any] = {"as_of": "1997-09-30T00:00:00Z", "model_versions": {"bgnbd": 3},
            "expected_purchases_90d": round(
                bgnbd.expected_purchases(params, 90 / 7, x, t_x, big_t), 4)}
    states = {"c1": state}
    assert inconsistent_predictions({"c1": good}, states, params, 3, CDNOW) == []
    for bad in ({"as_of": "1997-09-29T00:00:00Z"}, {"model_versions": {"bgnbd": 2}},
                {"expected_purchases_90d": good["expected_purchases_90d"] + 0.01}):
        assert inconsistent_predictions({"c1": {**good, **bad}}, states, params, 3,
                                        CDNOW) == ["c1"]
    assert inconsistent_predictions({}, states, params, 3, CDNOW) == ["c1"]


def test_our_pareto_nbd_on_the_same_summary_matches_lifetimes(cdnow_slice) -> None:
    """Our Pareto/NBD fit is lifetimes' maximum (lifetimes from a fixed start with a tight
    tolerance: the anchor's Nelder-Mead starts at random and stops at tol 1e-4, sometimes
    percents short of it), and our holdout expectations are lifetimes' at our parameters."""
    import pandas as pd
    from lifetimes import ParetoNBDFitter

    tx, states = cdnow_slice
    summary = calibration_summary(tx, CDNOW)
    x, t_x, big_t = summary.frequency_cal, summary.recency_cal, summary.T_cal
    params = pareto_nbd.fit(x, t_x, big_t)
    reference = ParetoNBDFitter().fit(x, t_x, big_t, tol=1e-10, initial_params=np.ones(4),
                                      maxiter=100_000)
    for k, v in params.to_dict().items():
        assert v == pytest.approx(reference.params_[k], rel=1e-4)
    anchors = fit_anchors(summary, 39.0)
    assert pareto_nbd.log_likelihood(params, x, t_x, big_t) >= pareto_nbd.log_likelihood(
        pareto_nbd.ParetoNbdParams.from_dict(anchors.pareto_nbd_params), x, t_x, big_t)
    reference.params_ = pd.Series(params.to_dict())
    theirs = reference.conditional_expected_number_of_purchases_up_to_time(39, x, t_x, big_t)
    ours = [holdout_expectation(params, states[c], CDNOW) for c in summary.index]
    assert ours == pytest.approx(theirs.tolist(), rel=1e-9, abs=1e-12)


def test_inconsistent_pareto_nbd_predictions_are_found() -> None:
    params = pareto_nbd.ParetoNbdParams(0.6, 11.6, 0.52, 8.8)
    state = _state("c1", [date(1997, 1, 1), date(1997, 3, 1)])
    x, t_x, big_t = bgnbd_inputs(state, CDNOW.cutoff_ts)
    good: dict[str, Any] = {"as_of": "1997-09-30T00:00:00Z",
                            "model_versions": {"pareto_nbd": 2}, "expected_purchases_90d": round(
                                pareto_nbd.expected_purchases(params, 90 / 7, x, t_x, big_t), 4)}
    states = {"c1": state}
    assert inconsistent_predictions({"c1": good}, states, params, 2, CDNOW) == []
    assert holdout_expectation(params, state, CDNOW) == pareto_nbd.expected_purchases(
        params, 39.0, x, t_x, big_t)
    for bad in ({"model_versions": {"bgnbd": 2}}, {"model_versions": {"pareto_nbd": 1}},
                {"expected_purchases_90d": good["expected_purchases_90d"] + 0.01}):
        assert inconsistent_predictions({"c1": {**good, **bad}}, states, params, 2,
                                        CDNOW) == ["c1"]


def _blobs(n: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    centres = [(3.0, 10.0, 20.0), (200.0, 1.0, 15.0), (30.0, 3.0, 300.0),
               (100.0, 20.0, 60.0), (5.0, 1.0, 5.0), (300.0, 6.0, 100.0)]
    rows = []
    for i in range(n):
        c = centres[i % len(centres)]
        rows.append({f: float(v * math.exp(rng.normal(0, 0.08)))
                     for f, v in zip(FEATURES, c, strict=True)})
    return rows


def test_segment_agreement_is_one_on_clear_clusters_and_about_zero_at_random() -> None:
    rows = _blobs(600, 3)
    model = SegmentModel(n_clusters=6)
    model.refit(rows)
    labels = [model.predict_one(r) for r in rows]
    ari, silhouette = segment_agreement(model, rows, labels)
    assert ari == pytest.approx(1.0)
    assert silhouette is not None and silhouette > 0.7
    renamed = [(v + 1) % 6 for v in labels]  # ids are arbitrary: the same partition
    assert segment_agreement(model, rows, renamed)[0] == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).permutation(labels).tolist()
    ari_random, silhouette_random = segment_agreement(model, rows, shuffled)
    assert abs(ari_random) < 0.05
    assert silhouette_random is not None and silhouette_random < 0.1
    assert segment_agreement(model, rows, [0] * len(rows))[1] is None  # one segment
    with pytest.raises(ValueError):
        segment_agreement(model, rows[:5], labels[:5])


def test_changed_share() -> None:
    assert changed_share(["Loyal", "At risk"], ["Loyal", "At risk"]) == 0.0
    assert changed_share(["Loyal", "At risk"], ["At risk", "Loyal"]) == 1.0
    with pytest.raises(ValueError):
        changed_share(["Loyal"], [])
