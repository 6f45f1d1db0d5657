"""Holdout evaluation of the purchase forecasts and of the segment model (pure: no I/O).

The standard CDNOW protocol (Fader, Hardie & Lee 2005): every customer who bought on or
before ``calibration_end`` is scored with what the models knew at that cut-off, and the
score is compared with what the customer did over the next ``weeks`` weeks (the holdout).
Definitions, the same for every model compared:

* **cut-off**: 00:00 UTC of ``calibration_end``; purchases dated ``calibration_end`` are in
  the calibration (as lifetimes counts them: model time runs in whole days).
* **(x, t_x, T)**: distinct calibration purchase days minus one; weeks from the first
  purchase day to the last one and to the cut-off day. This is lifetimes'
  ``calibration_and_holdout_data(freq="D", freq_multiplier=7)`` and also what
  :func:`models.features.bgnbd_inputs` gives at the cut-off.
* **actual holdout purchases**: the customer's distinct purchase days in
  (calibration_end, calibration_end + 7 x weeks days], as that lifetimes function counts
  them (same-day purchases merged). All are repeat purchases: the customer bought before.
* **AUC**: ROC AUC of "buys again in the holdout" (actual >= 1) scored by the model's
  expected holdout purchases, for every model (the naive rate has no P(alive)).
* **anchors**: lifetimes' ``BetaGeoFitter`` and ``ParetoNBDFitter`` fitted in batch on the
  calibration summary (penalizer 0), and the naive rate ``x / T x weeks`` (0 when T = 0).

Segment quality is measured on the features the segment model uses at the cut-off
(:func:`models.features.rfm`, ``log1p``, standardised with the model's own statistics, i.e.
``SegmentModel.transform_one``): the adjusted Rand index against scikit-learn's ``KMeans``
(same k, ``n_init=10``, ``random_state=0``) and the silhouette of our assignment; the
stability measures are defined at :func:`changed_share`.

lifetimes, pandas and scikit-learn are dev/demo dependencies, not runtime ones: they are
imported inside the functions that need them, so importing this module needs none of them.

>>> h = Holdout(date(1997, 9, 30), weeks=39)
>>> h.end, h.cutoff_ts
(datetime.date(1998, 6, 30), 875577600)
>>> score([0.0, 1.0, 2.0], [0, 2, 1]).as_dict()
{'mae': 0.6666666666666666, 'rmse': 0.816496580927726, 'pearson': 0.5, 'auc': 1.0, \
'total_predicted': 3.0, 'non_finite': 0}
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from models.features import WEEK_DAYS, bgnbd_inputs
from models.learn.forecaster import ForecastParams, expected_purchases, model_name

if TYPE_CHECKING:
    import pandas as pd

    from models.learn.segmentation import SegmentModel
    from models.state import CustomerState

__all__ = [
    "Anchors", "ForecastScore", "Holdout", "SegmentScore", "adjusted_rand", "calibration_summary",
    "changed_share", "fit_anchors", "holdout_expectation", "inconsistent_predictions",
    "inputs_differ", "naive_expectation", "pearson", "roc_auc", "score", "segment_agreement",
]

FloatArray = npt.NDArray[np.float64]
#: the reference k-means' seed: any fixed value; it is not our model's seed
KMEANS_RANDOM_STATE = 0


@dataclass(frozen=True, slots=True)
class Holdout:
    """The calibration cut-off and the holdout length."""

    calibration_end: date
    weeks: int = 39

    def __post_init__(self) -> None:
        if self.weeks < 1:
            raise ValueError(f"the holdout must last at least one week, got {self.weeks}")

    @property
    def end(self) -> date:
        """The last day of the holdout (inclusive)."""
        return self.calibration_end + timedelta(days=7 * self.weeks)

    @property
    def cutoff_ts(self) -> int:
        """Epoch seconds of 00:00 UTC on ``calibration_end``: the models' as-of time."""
        return int(datetime.combine(self.calibration_end, time(0), tzinfo=UTC).timestamp())

    def in_calibration(self, day: date) -> bool:
        return day <= self.calibration_end

    def in_holdout(self, day: date) -> bool:
        return self.calibration_end < day <= self.end


# -- forecast metrics ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ForecastScore:
    """A model's holdout figures; all None when some of its predictions are not finite
    (``non_finite`` counts them: lifetimes' BG/NBD gives NaN when a + b + x - 1 < 0)."""

    mae: float | None
    rmse: float | None
    pearson: float | None  # None when a side is constant
    auc: float | None  # None when every customer did (or did not) buy again
    total_predicted: float | None
    non_finite: int = 0

    def as_dict(self) -> dict[str, float | None]:
        return {"mae": self.mae, "rmse": self.rmse, "pearson": self.pearson, "auc": self.auc,
                "total_predicted": self.total_predicted, "non_finite": self.non_finite}


def _vectors(predicted: Sequence[float] | FloatArray,
             actual: Sequence[float] | FloatArray) -> tuple[FloatArray, FloatArray]:
    p = np.asarray(predicted, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if p.ndim != 1 or p.shape != a.shape or p.size == 0:
        raise ValueError(f"need two non-empty vectors of one length, got {p.shape}, {a.shape}")
    if not (np.isfinite(p).all() and np.isfinite(a).all()):
        raise ValueError("predictions and actuals must be finite")
    return p, a


def pearson(x: Sequence[float] | FloatArray, y: Sequence[float] | FloatArray) -> float | None:
    """Pearson's correlation; None when either side is constant.

    >>> pearson([1, 2, 3], [2, 4, 7]), pearson([1, 1], [0, 1])
    (0.9933992677987828, None)
    """
    a, b = _vectors(x, y)
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(da @ da) * float(db @ db))
    return float(da @ db) / den if den > 0.0 else None


def roc_auc(labels: Sequence[bool] | npt.NDArray[np.bool_],
            scores: Sequence[float] | FloatArray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, tied scores count one half); None when
    ``labels`` are all alike.

    >>> roc_auc([False, True, False, True], [0.1, 0.4, 0.4, 0.8])
    0.875
    """
    y = np.asarray(labels, dtype=bool)
    s, _ = _vectors(scores, y.astype(np.float64))
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def score(predicted: Sequence[float] | FloatArray,
          actual: Sequence[float] | FloatArray) -> ForecastScore:
    """MAE, RMSE, Pearson, AUC of "actual >= 1" by ``predicted``, and the predicted total.

    >>> score([1.0, float("nan")], [1, 0])
    ForecastScore(mae=None, rmse=None, pearson=None, auc=None, total_predicted=None, non_finite=1)
    """
    bad = int(np.count_nonzero(~np.isfinite(np.asarray(predicted, dtype=np.float64))))
    if bad:
        _vectors(np.zeros(len(predicted)), actual)  # the shapes and actuals must still hold
        return ForecastScore(None, None, None, None, None, non_finite=bad)
    p, a = _vectors(predicted, actual)
    err = p - a
    return ForecastScore(
        mae=float(np.abs(err).mean()),
        rmse=math.sqrt(float((err * err).mean())),
        pearson=pearson(p, a),
        auc=roc_auc(a >= 1.0, p),
        total_predicted=float(p.sum()),
    )


# -- calibration summary and anchors -------------------------------------------------------
def calibration_summary(transactions: Iterable[tuple[str, date]], holdout: Holdout) -> pd.DataFrame:
    """Per calibration customer (index, sorted): ``frequency_cal``, ``recency_cal``, ``T_cal``
    (weeks), ``frequency_holdout`` and ``duration_holdout``, from lifetimes'
    ``calibration_and_holdout_data`` (``freq="D"``, ``freq_multiplier=7``).

    ``transactions`` are (customer id, purchase day); days after the holdout are ignored.
    Raises ``ValueError`` when nobody bought in the calibration or in the holdout.
    """
    import pandas as pd
    from lifetimes.utils import calibration_and_holdout_data

    frame = pd.DataFrame(list(transactions), columns=["customer_id", "day"])
    if frame.empty or not frame["day"].map(holdout.in_calibration).any():
        raise ValueError(f"no purchase on or before {holdout.calibration_end}")
    frame["day"] = pd.to_datetime(frame["day"])
    with warnings.catch_warnings():  # lifetimes writes into a slice (SettingWithCopyWarning)
        warnings.simplefilter("ignore")
        summary = calibration_and_holdout_data(
            frame, "customer_id", "day",
            calibration_period_end=pd.Timestamp(holdout.calibration_end),
            observation_period_end=pd.Timestamp(holdout.end),
            freq="D", freq_multiplier=7,
        )
    return summary.sort_index()


@dataclass(frozen=True)
class Anchors:
    """Expected holdout purchases per summary row, and the fitted parameters."""

    bgnbd: FloatArray
    pareto_nbd: FloatArray
    naive: FloatArray
    bgnbd_params: dict[str, float]
    pareto_nbd_params: dict[str, float]


def fit_anchors(summary: pd.DataFrame, weeks: float) -> Anchors:
    """lifetimes' BG/NBD and Pareto/NBD fitted on ``summary`` (penalizer 0), and the naive
    rate, each predicting the expected purchases in the next ``weeks`` weeks."""
    from lifetimes import BetaGeoFitter, ParetoNBDFitter

    x, t_x, big_t = (summary[c] for c in ("frequency_cal", "recency_cal", "T_cal"))
    out: dict[str, tuple[FloatArray, dict[str, float]]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fitter in (("bgnbd", BetaGeoFitter(penalizer_coef=0.0)),
                             ("pareto_nbd", ParetoNBDFitter(penalizer_coef=0.0))):
            fitter.fit(x, t_x, big_t)
            pred = fitter.conditional_expected_number_of_purchases_up_to_time(
                weeks, x, t_x, big_t)
            out[name] = (np.asarray(pred, dtype=np.float64),
                         {k: float(v) for k, v in fitter.params_.items()})
    naive = naive_expectation(x.to_numpy(dtype=np.float64), big_t.to_numpy(dtype=np.float64),
                              weeks)
    return Anchors(out["bgnbd"][0], out["pareto_nbd"][0], naive, out["bgnbd"][1],
                   out["pareto_nbd"][1])


def naive_expectation(x: FloatArray, big_t: FloatArray, weeks: float) -> FloatArray:
    """The naive anchor: the calibration repeat rate ``x / T`` times ``weeks`` (0 at T = 0).

    >>> naive_expectation(np.array([2.0, 0.0, 3.0]), np.array([4.0, 5.0, 0.0]), 39.0).tolist()
    [19.5, 0.0, 0.0]
    """
    return np.divide(x * weeks, big_t, out=np.zeros_like(x), where=big_t > 0.0)


# -- our pipeline's forecast -----------------------------------------------------------------
def holdout_expectation(params: ForecastParams, state: CustomerState, holdout: Holdout
                        ) -> float:
    """Our model's (BG/NBD or Pareto/NBD, by the type of ``params``) expected purchases over
    the holdout for a state as of the cut-off."""
    x, t_x, big_t = bgnbd_inputs(state, holdout.cutoff_ts)
    return expected_purchases(params, float(holdout.weeks), x, t_x, big_t)


def inputs_differ(summary: pd.DataFrame, states: Mapping[str, CustomerState],
                  holdout: Holdout) -> list[str]:
    """Customers whose (x, t_x, T) from the stream's state is not lifetimes' (expected: none)."""
    out = []
    for cid, row in zip(summary.index, summary.itertuples(index=False), strict=True):
        state = states.get(cid)
        ours = bgnbd_inputs(state, holdout.cutoff_ts) if state else None
        theirs = (row.frequency_cal, row.recency_cal, row.T_cal)
        if ours is None or any(abs(a - b) > 1e-9 for a, b in zip(ours, theirs, strict=True)):
            out.append(str(cid))
    return out


def inconsistent_predictions(
    predictions: Mapping[str, Mapping[str, Any]], states: Mapping[str, CustomerState],
    params: ForecastParams, version: int, holdout: Holdout, horizon_days: float = 90.0,
) -> list[str]:
    """Customers whose stored prediction is not as of the cut-off, was not made by version
    ``version`` of ``params``' model (``model_versions["bgnbd"]`` or ``["pareto_nbd"]``),
    or whose ``expected_purchases_90d`` is not what ``params`` and the state give (so the
    holdout expectation computed here is the pipeline's own)."""
    name = model_name(params)
    out = []
    for cid, state in states.items():
        p = predictions.get(cid)
        if p is None:
            out.append(cid)
            continue
        as_of = datetime.fromisoformat(str(p["as_of"])).timestamp()
        x, t_x, big_t = bgnbd_inputs(state, holdout.cutoff_ts)
        want = expected_purchases(params, horizon_days / WEEK_DAYS, x, t_x, big_t)
        if (as_of != holdout.cutoff_ts or p["model_versions"].get(name) != version
                or abs(float(p["expected_purchases_90d"]) - want) > 1e-4):
            out.append(cid)
    return out


# -- segments ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SegmentScore:
    ari: float
    silhouette: float | None  # None with a single segment
    stability: float | None  # None when no customer had a segment at their last purchase
    stability_customers: int
    refit_churn: float
    #: ARI between the streaming model's partition at the cut-off and the refitted one's
    streaming_ari: float
    sizes: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"ari": self.ari, "silhouette": self.silhouette, "stability": self.stability,
                "stability_customers": self.stability_customers,
                "refit_churn": self.refit_churn, "streaming_ari": self.streaming_ari,
                "sizes": self.sizes}


def segment_agreement(model: SegmentModel, features: Sequence[Mapping[str, float]],
                      labels: Sequence[int]) -> tuple[float, float | None]:
    """(ARI against scikit-learn's KMeans, silhouette of ``labels``) on ``features`` in the
    model's standardised log space; k is the model's."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    if len(features) != len(labels) or len(features) < model.n_clusters:
        raise ValueError(f"need one label per row and at least {model.n_clusters} rows")
    z = np.asarray([model.transform_one(f) for f in features], dtype=np.float64)
    reference = KMeans(n_clusters=model.n_clusters, n_init=10,
                       random_state=KMEANS_RANDOM_STATE).fit_predict(z)
    ari = adjusted_rand(labels, reference.tolist())
    used = len(set(labels))
    silhouette = float(silhouette_score(z, labels)) if 1 < used < len(labels) else None
    return ari, silhouette


def adjusted_rand(a: Sequence[int], b: Sequence[int]) -> float:
    """scikit-learn's adjusted Rand index of two labellings of the same customers.

    >>> adjusted_rand([0, 0, 1, 1], [5, 5, 2, 2]), adjusted_rand([0, 0, 1, 1], [0, 1, 0, 1])
    (1.0, -0.5)
    """
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def changed_share(before: Sequence[str], after: Sequence[str]) -> float:
    """The share of customers whose segment *name* differs between ``before`` and ``after``.

    Names, not ids: ids are arbitrary per fit, names follow the centres' ranks. The
    evaluation reports two such shares over the calibration customers:

    * ``stability``: ``before`` is the segment stored with the customer's prediction at their
      last calibration purchase (the streaming model of that batch, features as of the stream
      watermark then), ``after`` the segment stored after the final refit at the cut-off;
      over the customers whose last-purchase segment came from a ready model (a named
      segment: a prediction made while the model was still warming up carries the
      placeholder ``segment 0`` and is left out; ``stability_customers`` counts those
      kept). No customer bought in
      between (it was their last purchase), so every change happened without a new
      purchase: the model changed, or their recency grew.
    * ``refit_churn``: ``before`` is the streaming model as it stood at the cut-off (just
      before the final refit), ``after`` the refitted model, both on the customer's features
      at the cut-off, over every calibration customer: the changes due to the model alone.

    >>> changed_share(["Loyal", "At risk", "Loyal"], ["Loyal", "Loyal", "Loyal"])
    0.3333333333333333
    """
    if len(before) != len(after) or not before:
        raise ValueError("need two non-empty lists of one length")
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before)


def by_group(groups: Sequence[str | None], models: dict[str, Sequence[float] | FloatArray],
             actual: Sequence[float] | FloatArray) -> dict[str, dict[str, Any]]:
    """Each model's :func:`score` within each group (an A/B variant), on the same customers.

    >>> out = by_group(["a", "b", "a", "b"], {"m": [1.0, 0.0, 2.0, 1.0]}, [1, 0, 3, 0])
    >>> out["a"]["customers"], out["a"]["m"]["mae"], out["b"]["m"]["mae"]
    (2, 0.5, 0.5)
    """
    labels = ["(none)" if g is None else g for g in groups]
    act = np.asarray(actual, dtype=float)
    out: dict[str, dict[str, Any]] = {}
    for label in sorted(set(labels)):
        idx = np.array([i for i, g in enumerate(labels) if g == label])
        entry: dict[str, Any] = {"customers": len(idx), "total_actual": float(act[idx].sum())}
        for name, predicted in models.items():
            entry[name] = score(np.asarray(predicted, dtype=float)[idx], act[idx]).as_dict()
        out[label] = entry
    return out
