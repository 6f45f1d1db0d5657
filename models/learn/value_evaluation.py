"""Holdout evaluation of customer value (spend) and of churn probabilities (pure: no I/O).

The CDNOW protocol of :mod:`models.learn.evaluation` (calibration to ``calibration_end``,
a holdout of ``weeks`` weeks, same-day purchases merged, time in weeks), extended to money
and to the churn window:

* **monetary** (``mbar``): the mean value of a customer's *repeat* purchase days in the
  calibration (a day's value is the sum of its orders; the first day is left out), 0 with
  no repeat purchase: the Gamma-Gamma input of Fader & Hardie (2013), "The Gamma-Gamma
  Model of Monetary Value" (brucehardie.com/notes/025).
* **holdout spend**: the sum of the customer's order values in the holdout.
* **predicted holdout spend**: expected holdout purchases x conditional expected order
  value, as Fader, Hardie & Lee (2005), "RFM and CLV" value a customer (without
  discounting). *Ours*: our BTYD model's parameters (BG/NBD or Pareto/NBD) and
  :func:`models.learn.gamma_gamma.fit` on the calibration repeaters (``x >= 1``,
  ``mbar > 0``). *lifetimes*: ``BetaGeoFitter`` or ``ParetoNBDFitter`` (the model matching
  ours) and ``GammaGammaFitter``, penalizer 0, on the same rows.
* **churn**: P(no purchase in the holdout | x, t_x, T) from our model
  (``p_no_purchase(params, weeks, x, t_x, T)`` of :mod:`models.learn.bgnbd_windows` or
  :mod:`models.learn.pareto_nbd_windows`) against the indicator "no holdout purchase":
  the Brier score (mean squared difference; Brier 1950) beside the constant predictor's
  (the base rate ``y``: ``y (1 - y)``), and a reliability table over :data:`BINS` equal
  bins of the predicted probability.

lifetimes and pandas are imported only inside :func:`lifetimes_holdout_spend`.

>>> s = spend_summary([("a", date(2000, 1, 1), 10.0), ("a", date(2000, 1, 8), 20.0),
...                    ("a", date(2000, 1, 8), 4.0), ("a", date(2000, 1, 20), 7.0),
...                    ("b", date(2000, 1, 10), 5.0)], Holdout(date(2000, 1, 15), weeks=1))
>>> s.customer_ids, s.x.tolist(), s.t_x.tolist(), s.big_t.tolist(), s.monetary.tolist()
(['a', 'b'], [1.0, 0.0], [1.0, 0.0], [2.0, 0.7142857142857143], [24.0, 0.0])
>>> s.holdout_purchases.tolist(), s.holdout_spend.tolist()
([1.0, 0.0], [7.0, 0.0])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np

from models.features import WEEK_DAYS
from models.learn import bgnbd_windows, gamma_gamma, pareto_nbd_windows
from models.learn.evaluation import FloatArray, Holdout, score
from models.learn.forecaster import ForecastParams, expected_purchases, model_name
from models.learn.pareto_nbd import ParetoNbdParams
from models.learn.segmentation import SegmentModel, name_churn

__all__ = ["BINS", "ChurnCalibration", "SpendSummary", "ValueEvaluation", "churn_calibration",
           "evaluate_value", "lifetimes_holdout_spend", "name_change_share",
           "our_holdout_spend", "p_no_purchase", "spend_summary"]

BINS = 10  #: reliability table: equal-width bins of the predicted probability


@dataclass(frozen=True)
class SpendSummary:
    """Per calibration customer (sorted by id), arrays of shape ``(n,)``: ``x`` repeat
    purchase days, ``t_x`` and ``big_t`` in weeks (as :func:`models.learn.evaluation.
    calibration_summary`), ``monetary`` (currency units), ``holdout_purchases`` (distinct
    holdout days) and ``holdout_spend`` (currency units)."""

    customer_ids: list[str]
    x: FloatArray
    t_x: FloatArray
    big_t: FloatArray
    monetary: FloatArray
    holdout_purchases: FloatArray
    holdout_spend: FloatArray


def spend_summary(transactions: Iterable[tuple[str, date, float]], holdout: Holdout
                  ) -> SpendSummary:
    """The :class:`SpendSummary` of ``(customer id, purchase day, order value)`` rows (any
    order; rows after the holdout are ignored; customers who first bought in the holdout
    are not calibration customers). Raises ``ValueError`` when nobody bought in the
    calibration."""
    cal: dict[str, dict[date, float]] = {}
    hold: dict[str, dict[date, float]] = {}
    for cid, day, value in transactions:
        if holdout.in_calibration(day):
            book = cal.setdefault(cid, {})
        elif holdout.in_holdout(day):
            book = hold.setdefault(cid, {})
        else:
            continue
        book[day] = book.get(day, 0.0) + float(value)
    if not cal:
        raise ValueError(f"no purchase on or before {holdout.calibration_end}")
    ids = sorted(cal)
    cols: list[list[float]] = [[] for _ in range(6)]
    for cid in ids:
        days = sorted(cal[cid])
        first, last, x = days[0], days[-1], len(days) - 1
        repeat = sum(cal[cid][d] for d in days[1:])
        later = hold.get(cid, {})
        for col, v in zip(cols, (x, (last - first).days / WEEK_DAYS,
                                 (holdout.calibration_end - first).days / WEEK_DAYS,
                                 repeat / x if x else 0.0, len(later), sum(later.values())),
                          strict=True):
            col.append(float(v))
    x_, t_x, big_t, monetary, n_hold, spend = (np.asarray(c, dtype=np.float64) for c in cols)
    return SpendSummary(ids, x_, t_x, big_t, monetary, n_hold, spend)


def _expected(params: ForecastParams, s: SpendSummary, weeks: float) -> FloatArray:
    """Our model's expected purchases in the next ``weeks`` weeks, shape ``(n,)``."""
    memo: dict[tuple[float, float, float], float] = {}
    out = np.empty(s.x.size)
    for i, h in enumerate(zip(s.x.tolist(), s.t_x.tolist(), s.big_t.tolist(), strict=True)):
        if h not in memo:
            memo[h] = expected_purchases(params, weeks, *h)
        out[i] = memo[h]
    return out


def our_holdout_spend(params: ForecastParams, s: SpendSummary, weeks: float,
                      value_params: gamma_gamma.GammaGammaParams | None = None,
                      ) -> tuple[FloatArray, FloatArray, gamma_gamma.GammaGammaParams]:
    """Our predicted holdout spend, shape ``(n,)`` (currency units): expected purchases in
    ``weeks`` weeks (``params``' model) x :func:`~models.learn.gamma_gamma.
    conditional_expected_order_value`; also the expected purchases and the Gamma-Gamma
    parameters (``value_params``, or fitted on ``s``'s repeaters)."""
    gg = value_params if value_params is not None else gamma_gamma.fit(s.x, s.monetary)
    n = _expected(params, s, weeks)
    aov = np.array([gamma_gamma.conditional_expected_order_value(gg, x, m)
                    for x, m in zip(s.x.tolist(), s.monetary.tolist(), strict=True)])
    return n * aov, n, gg


def lifetimes_holdout_spend(model: str, s: SpendSummary, weeks: float,
                            expected: FloatArray | None = None,
                            ) -> tuple[FloatArray, dict[str, float]]:
    """lifetimes' predicted holdout spend, shape ``(n,)``: ``model``'s (``"bgnbd"`` or
    ``"pareto_nbd"``) ``conditional_expected_number_of_purchases_up_to_time(weeks)`` (or
    ``expected`` when already computed on the same rows) x ``GammaGammaFitter``'s
    ``conditional_expected_average_profit``; and the Gamma-Gamma parameters (p, q, v)."""
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ParetoNBDFitter

    x, m = pd.Series(s.x), pd.Series(s.monetary)
    repeat = (s.x >= 1.0) & (s.monetary > 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if expected is None:
            fitter = (ParetoNBDFitter if model == "pareto_nbd" else BetaGeoFitter)(
                penalizer_coef=0.0)
            fitter.fit(x, pd.Series(s.t_x), pd.Series(s.big_t))
            expected = np.asarray(fitter.conditional_expected_number_of_purchases_up_to_time(
                weeks, x, pd.Series(s.t_x), pd.Series(s.big_t)), dtype=np.float64)
        gg = GammaGammaFitter(penalizer_coef=0.0).fit(x[repeat], m[repeat])
        aov = np.asarray(gg.conditional_expected_average_profit(x, m), dtype=np.float64)
    return np.asarray(expected, dtype=np.float64) * aov, {
        k: float(v) for k, v in gg.params_.items()}


@dataclass(frozen=True)
class ChurnCalibration:
    """P(no holdout purchase) against what happened: ``brier`` (ours), ``base_rate`` (the
    share with no holdout purchase), ``brier_constant`` (the constant predictor's Brier
    score, ``base_rate (1 - base_rate)``) and the reliability table: per bin ``lower``,
    ``upper``, ``n``, ``mean_predicted`` and ``observed`` (None in an empty bin)."""

    brier: float
    base_rate: float
    brier_constant: float
    reliability: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"brier": self.brier, "base_rate": self.base_rate,
                "brier_constant": self.brier_constant, "reliability": self.reliability}


def churn_calibration(predicted: Sequence[float] | FloatArray,
                      no_purchase: Sequence[bool] | FloatArray, bins: int = BINS
                      ) -> ChurnCalibration:
    """Brier score and reliability table of probabilities ``predicted`` (shape ``(n,)``, in
    [0, 1]) of the events ``no_purchase`` (shape ``(n,)``); bin ``i`` holds
    ``i / bins <= p < (i + 1) / bins`` (the last one includes 1).

    >>> c = churn_calibration([0.05, 0.15, 0.95, 1.0], [False, True, True, True], bins=2)
    >>> round(c.brier, 4), c.base_rate, c.brier_constant
    (0.1819, 0.75, 0.1875)
    >>> [(r["n"], r["mean_predicted"], r["observed"]) for r in c.reliability]
    [(2, 0.1, 0.5), (2, 0.975, 1.0)]
    """
    p = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(no_purchase, dtype=np.float64)
    if p.ndim != 1 or p.shape != y.shape or p.size == 0:
        raise ValueError(f"need two non-empty vectors of one length, got {p.shape}, {y.shape}")
    if not (np.isfinite(p).all() and ((p >= 0.0) & (p <= 1.0)).all()):
        raise ValueError("probabilities must be finite and in [0, 1]")
    rate = float(y.mean())
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    table = []
    for i in range(bins):
        inside = which == i
        n = int(inside.sum())
        table.append({"lower": i / bins, "upper": (i + 1) / bins, "n": n,
                      "mean_predicted": float(p[inside].mean()) if n else None,
                      "observed": float(y[inside].mean()) if n else None})
    return ChurnCalibration(float(((p - y) ** 2).mean()), rate, rate * (1.0 - rate), table)


def p_no_purchase(params: ForecastParams, s: SpendSummary, weeks: float) -> FloatArray:
    """Our model's P(no purchase in the next ``weeks`` weeks) per customer, shape ``(n,)``."""
    windows = pareto_nbd_windows if isinstance(params, ParetoNbdParams) else bgnbd_windows
    memo: dict[tuple[float, float, float], float] = {}
    out = np.empty(s.x.size)
    for i, h in enumerate(zip(s.x.tolist(), s.t_x.tolist(), s.big_t.tolist(), strict=True)):
        if h not in memo:
            memo[h] = windows.p_no_purchase(params, weeks, *h)
        out[i] = memo[h]
    return out


@dataclass(frozen=True)
class ValueEvaluation:
    """What :func:`evaluate_value` measures; ``as_dict`` is JSON-ready."""

    spend_ours: dict[str, Any]
    spend_lifetimes: dict[str, Any]
    total_actual_spend: float
    value_params: dict[str, dict[str, float]]
    monetary_frequency_correlation: float | None
    churn: ChurnCalibration
    rows: dict[str, FloatArray]  # per customer: predicted spend (ours, lifetimes), P(churn)

    def as_dict(self) -> dict[str, Any]:
        return {"ours": self.spend_ours, "lifetimes": self.spend_lifetimes,
                "total_actual": self.total_actual_spend, "params": self.value_params,
                "monetary_frequency_correlation": self.monetary_frequency_correlation,
                "churn": self.churn.as_dict()}


def _spend_score(predicted: FloatArray, actual: FloatArray) -> dict[str, Any]:
    out = score(predicted, actual).as_dict()
    out.pop("auc")  # "spends at all" is the churn section's question
    return out


def evaluate_value(params: ForecastParams, s: SpendSummary, weeks: float,
                   lifetimes_expected: FloatArray | None = None) -> ValueEvaluation:
    """Holdout spend of ours and lifetimes' (MAE, RMSE, Pearson, total predicted; units of
    the order values) and churn calibration over ``weeks`` weeks; ``lifetimes_expected``:
    lifetimes' expected holdout purchases of ``params``' model on the same rows, if known
    (see :func:`lifetimes_holdout_spend`)."""
    ours, _, gg = our_holdout_spend(params, s, weeks)
    theirs, their_gg = lifetimes_holdout_spend(model_name(params), s, weeks, lifetimes_expected)
    try:
        corr: float | None = gamma_gamma.monetary_frequency_correlation(s.x, s.monetary)
    except ValueError:  # too few repeaters, or a constant side
        corr = None
    churn_p = p_no_purchase(params, s, weeks)
    return ValueEvaluation(
        spend_ours=_spend_score(ours, s.holdout_spend),
        spend_lifetimes=_spend_score(theirs, s.holdout_spend),
        total_actual_spend=float(s.holdout_spend.sum()),
        value_params={"ours": gg.to_dict(), "lifetimes": their_gg},
        monetary_frequency_correlation=corr,
        churn=churn_calibration(churn_p, s.holdout_purchases == 0.0),
        rows={"spend_ours": ours, "spend_lifetimes": theirs, "p_no_purchase": churn_p})


def name_change_share(model: SegmentModel, rows: Sequence[Mapping[str, float]],
                      days: float = 30.0) -> float:
    """The share of customers whose segment name changes when ``model`` (fitted on
    ``rows``, :func:`models.features.rfm` features) is refitted on the same customers
    ``days`` days later without a new purchase: recency grown by ``days``, frequency and
    monetary unchanged (:func:`models.learn.segmentation.name_churn`)."""
    if not (days >= 0.0 and math.isfinite(days)):
        raise ValueError(f"days must be finite and >= 0, got {days!r}")
    before = [dict(r) for r in rows]
    later = [{**r, "recency_days": r["recency_days"] + days} for r in before]
    return name_churn(model, before, later)
