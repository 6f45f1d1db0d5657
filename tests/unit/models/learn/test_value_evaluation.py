"""Holdout spend, churn calibration and name-change share (models.learn.value_evaluation)
on the CDNOW logs shipped in the lifetimes package, against lifetimes on the same rows."""

from __future__ import annotations

import math
import random
from datetime import date
from functools import cache
from importlib import resources

import numpy as np
import pytest

from models.learn import bgnbd, pareto_nbd
from models.learn.evaluation import Holdout
from models.learn.segmentation import SegmentModel
from models.learn.value_evaluation import (
    SpendSummary,
    ValueEvaluation,
    churn_calibration,
    evaluate_value,
    name_change_share,
    spend_summary,
)

pytest.importorskip("lifetimes")

HOLDOUT = Holdout(date(1997, 9, 30), weeks=39)
WEEKS = float(HOLDOUT.weeks)
Row = tuple[str, date, float]


def _day(s: str) -> date:
    return date(int(s[:4]), int(s[4:6]), int(s[6:8]))


@cache
def cdnow_rows(name: str) -> tuple[Row, ...]:
    """(customer, day, dollars) of ``CDNOW_master.txt`` (header) or ``CDNOW_sample.txt``
    (no header; the sample id is the customer)."""
    out = []
    with (resources.files("lifetimes.datasets") / name).open("r") as fh:
        for line in fh:
            f = line.split()
            if not f or not f[0].isdigit():
                continue
            cid, day, dollars = (f[0], f[1], f[3]) if len(f) == 4 else (f[1], f[2], f[4])
            out.append((cid, _day(day), float(dollars)))
    return tuple(out)


@cache
def summary(name: str) -> SpendSummary:
    return spend_summary(cdnow_rows(name), HOLDOUT)


@cache
def evaluation(name: str, model: str) -> ValueEvaluation:
    s = summary(name)
    fit = pareto_nbd.fit if model == "pareto_nbd" else bgnbd.fit
    return evaluate_value(fit(s.x, s.t_x, s.big_t), s, WEEKS)


def test_the_summary_is_lifetimes_calibration_and_holdout_data() -> None:
    """(x, t_x, T), the holdout count and the mean repeat-day value are lifetimes'; the
    holdout spend is the sum of the holdout orders."""
    import pandas as pd
    from lifetimes.utils import calibration_and_holdout_data

    rows = cdnow_rows("CDNOW_sample.txt")
    frame = pd.DataFrame(list(rows), columns=["id", "day", "value"])
    frame["day"] = pd.to_datetime(frame["day"])
    theirs = calibration_and_holdout_data(
        frame, "id", "day", calibration_period_end=pd.Timestamp(HOLDOUT.calibration_end),
        observation_period_end=pd.Timestamp(HOLDOUT.end), freq="D", freq_multiplier=7,
        monetary_value_col="value").sort_index()
    s = summary("CDNOW_sample.txt")
    assert s.customer_ids == [str(c) for c in theirs.index]
    assert len(s.customer_ids) == 2357
    for ours, col in ((s.x, "frequency_cal"), (s.t_x, "recency_cal"), (s.big_t, "T_cal"),
                      (s.monetary, "monetary_value_cal"),
                      (s.holdout_purchases, "frequency_holdout")):
        np.testing.assert_allclose(ours, theirs[col].to_numpy(dtype=float), atol=1e-9)
    # lifetimes' monetary_value_holdout is a mean per order (same-day orders not merged)
    spend = frame[frame["day"] > pd.Timestamp(HOLDOUT.calibration_end)].groupby("id")["value"].sum()
    np.testing.assert_allclose(s.holdout_spend, spend.reindex(theirs.index, fill_value=0.0)
                               .to_numpy(dtype=float), atol=1e-6)
    assert s.holdout_purchases.sum() == 1882  # docs/REFERENCE: the sample's holdout repeats
    assert int(((s.x >= 1) & (s.monetary > 0)).sum()) == 946  # FH 2013's repeaters


def test_the_master_summary() -> None:
    s = summary("CDNOW_master.txt")
    assert len(s.customer_ids) == 23570 and s.holdout_purchases.sum() == 19684
    assert s.holdout_spend.sum() == pytest.approx(sum(
        v for _, d, v in cdnow_rows("CDNOW_master.txt") if HOLDOUT.in_holdout(d)))
    assert (s.holdout_spend[s.holdout_purchases == 0] == 0).all()


@pytest.mark.parametrize(("name", "model"), [("CDNOW_master.txt", "bgnbd"),
                                             ("CDNOW_sample.txt", "pareto_nbd")])
def test_our_holdout_spend_is_at_least_as_good_as_lifetimes(name: str, model: str) -> None:
    """Same rows, same models: our Gamma-Gamma fit is lifetimes', and our spend MAE is at
    most lifetimes' (up to a hair: the two fits stop at slightly different points)."""
    out = evaluation(name, model)
    ours, theirs = out.spend_ours, out.spend_lifetimes
    assert ours["non_finite"] == theirs["non_finite"] == 0
    assert ours["mae"] <= theirs["mae"] * (1 + 1e-5)
    assert ours["rmse"] == pytest.approx(theirs["rmse"], rel=1e-4)
    assert ours["total_predicted"] == pytest.approx(theirs["total_predicted"], rel=1e-3)
    for k, v in out.value_params["ours"].items():
        assert v == pytest.approx(out.value_params["lifetimes"][k], rel=1e-4)
    # the models under-predict CDNOW's holdout (as for the purchase counts) yet rank well
    assert 0.6 * out.total_actual_spend < ours["total_predicted"] < out.total_actual_spend
    assert ours["pearson"] > 0.5
    assert out.monetary_frequency_correlation is not None
    assert abs(out.monetary_frequency_correlation) < 0.2  # FH 2013: 0.11 on the sample


@pytest.mark.parametrize(("name", "model"), [("CDNOW_master.txt", "bgnbd"),
                                             ("CDNOW_sample.txt", "pareto_nbd")])
def test_churn_probabilities_beat_the_base_rate(name: str, model: str) -> None:
    out = evaluation(name, model)
    c = out.churn
    s = summary(name)
    assert 0.0 <= c.brier <= 0.25
    assert c.brier < c.brier_constant
    assert c.base_rate == pytest.approx(float((s.holdout_purchases == 0).mean()))
    assert sum(b["n"] for b in c.reliability) == len(s.customer_ids)
    p = out.rows["p_no_purchase"]
    assert ((p >= 0) & (p <= 1)).all()
    assert c.brier == pytest.approx(float(((p - (s.holdout_purchases == 0)) ** 2).mean()))
    for b in c.reliability:
        if b["n"]:
            assert b["lower"] <= b["mean_predicted"] <= b["upper"]
            assert 0.0 <= b["observed"] <= 1.0


def test_churn_calibration_by_hand() -> None:
    c = churn_calibration([0.0, 0.1, 0.25, 1.0], [False, False, True, True], bins=4)
    assert c.brier == pytest.approx((0.0 + 0.01 + 0.5625 + 0.0) / 4)
    assert c.base_rate == 0.5 and c.brier_constant == 0.25
    assert [b["n"] for b in c.reliability] == [2, 1, 0, 1]  # 1.0 falls in the last bin
    assert c.reliability[2]["mean_predicted"] is None and c.reliability[2]["observed"] is None
    assert c.reliability[0]["mean_predicted"] == pytest.approx(0.05)
    with pytest.raises(ValueError):
        churn_calibration([1.2], [True])
    with pytest.raises(ValueError):
        churn_calibration([0.5, 0.5], [True])


def test_spend_summary_needs_calibration_purchases() -> None:
    with pytest.raises(ValueError):
        spend_summary([("a", date(1998, 1, 1), 1.0)], HOLDOUT)


def _rows(n: int, seed: int) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{"recency_days": rng.expovariate(1 / 60), "frequency": float(rng.randint(1, 12)),
             "monetary": rng.lognormvariate(3.0, 0.7)} for _ in range(n)]


def test_name_change_share() -> None:
    rows = _rows(600, 3)
    model = SegmentModel(n_clusters=5)
    model.refit(rows)
    before = model.to_dict()
    assert name_change_share(model, rows, days=0.0) == 0.0
    share = name_change_share(model, rows, days=30.0)
    assert 0.0 <= share <= 1.0 and math.isfinite(share)
    assert model.to_dict() == before  # the model is not changed
    with pytest.raises(ValueError):
        name_change_share(model, rows, days=-1.0)
