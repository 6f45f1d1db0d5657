"""The statistical purchase forecaster (also the fallback for the AI analysis).

Population parameters of a BG/NBD or a Pareto/NBD model (whichever the parameters
are: :mod:`models.learn.bgnbd`, :mod:`models.learn.pareto_nbd`) are fitted by maximum likelihood
over the customer-state table and refitted periodically; per customer, P(alive) and
expected purchases follow in closed form from the customer's (x, t_x, T), so each
purchase updates them at once. Product- and category-level replenishment comes from
the customer's own inter-purchase intervals.

>>> from datetime import datetime, timezone
>>> from models.state import CustomerState, DAY
>>> s = CustomerState.sketch("c1", [0, 7, 14, 21], products={"milk": [0, 7, 14, 21]})
>>> s.categories = s.products.clone(); s.categories["dairy"] = s.categories.pop("milk")
>>> f = Forecaster(DEFAULT_PRIOR)
>>> now = datetime(2024, 1, 1, tzinfo=timezone.utc)
>>> p = f.predict(s, SegmentRef(id=0, name="Loyal"), 27 * DAY, now)
>>> [(n.key, str(n.expected_date), n.status) for n in p.next_purchases]
[('dairy', '1970-01-29', 'upcoming'), ('milk', '1970-01-29', 'upcoming')]
>>> p.data_quality, p.alerts[0].kind
('C', 'replenishment_upcoming')
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Literal, NamedTuple

from models.features import WEEK_DAYS, _gamma_gamma_inputs, _order_value
from models.item_stats import ItemStats
from models.learn import bgnbd, pareto_nbd
from models.learn.bgnbd import DEFAULT_PRIOR, BgNbdParams
from models.learn.gamma_gamma import GammaGammaParams
from models.learn.outlook import DEFAULT_OUTLOOK, OutlookConfig, _if_alive, customer_outlook
from models.learn.pareto_nbd import ParetoNbdParams
from models.money import NO_RATES, Rates
from models.prediction import (
    Alert,
    Grade,
    LastEvent,
    NextPurchase,
    Prediction,
    Recommendation,
    SegmentRef,
    Status,
    shared,
    validator,
)
from models.state import DAY, CustomerState
from models.variant import NO_EXPERIMENT, VariantPlan

__all__ = ["DEFAULT_PRIOR", "ForecastParams", "Forecaster", "expected_purchases", "model_name"]
__all__ += ["purchase_forecast"]

_EPOCH = date(1970, 1, 1)

#: the fitted parameters of either purchase model; their type says which model it is
ForecastParams = BgNbdParams | ParetoNbdParams


def model_name(params: ForecastParams) -> str:
    """The model's key in ``model_versions`` and in the models table.

    >>> model_name(DEFAULT_PRIOR), model_name(pareto_nbd.DEFAULT_PRIOR)
    ('bgnbd', 'pareto_nbd')
    """
    return "pareto_nbd" if isinstance(params, ParetoNbdParams) else "bgnbd"


def purchase_forecast(params: ForecastParams, x: float, t_x: float, big_t: float,
                      horizons: Sequence[float]) -> tuple[float, list[float]]:
    """P(alive) and the expected purchases over each horizon (in weeks) of a history.

    >>> alive, (e4,) = purchase_forecast(pareto_nbd.DEFAULT_PRIOR, 2, 3.0, 5.0, [4.0])
    >>> round(alive, 4), round(e4, 4)
    (0.918, 0.5759)
    """
    if isinstance(params, ParetoNbdParams):  # one P(alive) for every horizon
        alive = pareto_nbd.p_alive_memo(params, x, t_x, big_t)
        return alive, [alive * pareto_nbd.expected_purchases_if_alive(params, h, x, big_t)
                       for h in horizons]
    return bgnbd.p_alive(params, x, t_x, big_t), [
        bgnbd.expected_purchases(params, h, x, t_x, big_t) for h in horizons]


@lru_cache(maxsize=1 << 15)
def _memo_forecast(params: ForecastParams, x: float, t_x: float, big_t: float,
                   horizons: tuple[float, ...]) -> tuple[float, tuple[float, ...]]:
    """:func:`purchase_forecast`, memoised (pure; ``params`` are frozen): a batch's buyers
    share few histories (see :data:`models.learn.outlook.COUNT_CACHE_SIZE`)."""
    if isinstance(params, ParetoNbdParams):  # what purchase_forecast computes, but the
        # expected purchases if alive shared with the outlook's (memoised by x and T)
        alive = pareto_nbd.p_alive_memo(params, x, t_x, big_t)
        return alive, tuple([alive * e for e in _if_alive(params, x, big_t, horizons)])
    alive, expected = purchase_forecast(params, x, t_x, big_t, horizons)
    return alive, tuple(expected)


@lru_cache(maxsize=16)
def _in_weeks(horizons_days: tuple[int, ...]) -> tuple[float, ...]:
    """The horizons (days) in weeks, memoised (a forecaster's are the same every time)."""
    return tuple(h / WEEK_DAYS for h in horizons_days)


def expected_purchases(params: ForecastParams, t: float, x: float, t_x: float, big_t: float
                       ) -> float:
    """Expected purchases in the next ``t`` weeks under either model."""
    return purchase_forecast(params, x, t_x, big_t, [t])[1][0]


def _day_date(day: float) -> date:
    return _EPOCH + timedelta(days=round(day))


def interval_confidence(interval: tuple[float, float]) -> float:
    """The prediction's confidence from the 80% interval of its purchases in the next 90
    days (the model's predictive count distribution): ``1 / (1 + width)``, so 1.0 when the
    model all but knows the count (the interval is one number), 0.5 when it spans two
    counts, and lower as the outcome spreads.

    >>> [interval_confidence(i) for i in ((0.0, 0.0), (0.0, 1.0), (1.0, 4.0))]
    [1.0, 0.5, 0.25]
    """
    return round(1.0 / (1.0 + interval[1] - interval[0]), 3)


def data_quality(n_days: int, tenure_days: int) -> tuple[Grade, str, float]:
    """Grade, a reason a person can read, and a confidence in [0, 1] for a history (the
    prediction's confidence only before a purchase gives it an interval:
    :func:`interval_confidence`)."""
    history = 1.0 - math.exp(-(n_days - 1) / 3.0)
    span = min(1.0, tenure_days / 180.0)
    confidence = round(0.15 + 0.8 * history * (0.5 + 0.5 * span), 3)
    what = f"{n_days} purchase day{'s' if n_days != 1 else ''} over {tenure_days} days"
    if n_days <= 1:
        return "D", f"{what}: a single purchase, forecasts rest on population averages", confidence
    if n_days == 2 or tenure_days < 30:
        return "C", f"{what}: thin history, forecasts are weak", confidence
    if n_days < 5 or tenure_days < 90:
        return "B", f"{what}: moderate history", confidence
    return "A", f"{what}: rich history", confidence


#: :func:`data_quality`, memoised (pure; histories share their day counts and tenures)
_data_quality = lru_cache(maxsize=1 << 12, typed=True)(data_quality)


#: an item overdue by more than its mean gap between purchase days, and by more than this
#: many days, is ``lapsed``, not ``due``: the customer has missed it at least twice over
#: (a replenishment reminder for milk not bought for a year is not one a marketer sends);
#: lapsed items make no alert and no recommendation
LAPSE_MIN_DAYS = 14
#: the statuses that make a replenishment alert and recommendation
_REMINDED = frozenset({"due", "upcoming"})

#: items with at most this many days kept have their gap spread memoised (a bounded memo:
#: 4,096 tuples of at most 64 ints)
_SPREAD_MEMO_DAYS = 64


def _gap_spread(days: list[int]) -> float:
    """The coefficient of variation of the gaps between ``days`` (three or more)."""
    if len(days) <= _SPREAD_MEMO_DAYS:
        return _gap_spread_memo(tuple(days))
    return _gap_spread_of(days)


@lru_cache(maxsize=1 << 12)
def _gap_spread_memo(days: tuple[int, ...]) -> float:
    """:func:`_gap_spread_of`, memoised (pure): a product and its category often have the
    same days, and an item's days stay the same until it is bought again."""
    return _gap_spread_of(days)


def _gap_spread_of(days: Sequence[int]) -> float:
    gaps = [b - a for a, b in itertools.pairwise(days)]
    gap_mean = sum(gaps) / len(gaps)
    var = sum([(g - gap_mean) ** 2 for g in gaps]) / len(gaps)
    return math.sqrt(var) / gap_mean if gap_mean > 0 else 1.0


class _Next(NamedTuple):
    """A :class:`NextPurchase` as plain data, in the order shown: by expected date, then
    confidence (highest first), kind and key."""

    expected_date: date
    neg_confidence: float
    kind: Literal["product", "category"]
    key: str
    avg_days_between: float
    purchases: int
    confidence: float
    status: Status

    def order(self) -> tuple[date, float, str, str]:
        return self[:4]

    def model(self) -> NextPurchase:
        return _NEXT_PURCHASE({
            "kind": self.kind, "key": self.key, "expected_date": self.expected_date,
            "avg_days_between": self.avg_days_between, "purchases": self.purchases,
            "confidence": self.confidence, "status": self.status})


#: the models' own validation of their fields (:func:`models.prediction.validator`)
_PREDICTION = validator(Prediction)
_NEXT_PURCHASE = validator(NextPurchase)
_ALERT = validator(Alert)
_RECOMMENDATION = validator(Recommendation)
_LAST_EVENT = validator(LastEvent)


class Forecaster:
    """Statistical predictions from a state and fitted population parameters."""

    def __init__(
        self,
        params: ForecastParams,
        params_version: int = 0,
        horizons_days: tuple[int, int] = (30, 90),
        max_items: int = 5,
        variants: VariantPlan = NO_EXPERIMENT,
        value_params: GammaGammaParams | None = None,
        outlook: OutlookConfig = DEFAULT_OUTLOOK,
        refit_reason: str | None = None,
    ) -> None:
        self.params = params
        self.params_version = params_version
        self.variants = variants
        #: the Gamma-Gamma spend model fitted with ``params`` (None: not yet; each
        #: customer's own mean order value stands in)
        self.value_params = value_params
        self.outlook = outlook
        #: why ``params`` were last refitted (carried into every prediction)
        self.refit_reason = refit_reason
        self.horizons_days = horizons_days
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.max_items = max_items

    def _next(
        self, kind: str, key: str, stats: ItemStats, as_of_day: int, dead: frozenset[int]
    ) -> _Next | None:
        """The mean gap is over all the item's distinct days (``day_count``), its spread
        (coefficient of variation) over the gaps between the days kept one by one (those
        within the de-duplication horizon: all of them for most customers). Plain data:
        :meth:`predict` builds :class:`NextPurchase` only for the ones it shows. Its status:
        :data:`models.prediction.Status` (``lapsed``: :data:`LAPSE_MIN_DAYS`).

        ``dead``: the customer's days of cancelled orders only
        (:attr:`models.state_view.StateView.dead_days`): the item's stats keep the days of
        every order placed; those do not count, as if the orders had never been placed
        (:meth:`ItemStats.counted`; an item none of whose kept days counts has no next
        purchase: its last day is not known)."""
        if stats.orders <= 0:
            return None
        days, day_count, last_day, mean = stats.counted(dead)
        if mean is None:
            return None
        n_gaps = day_count - 1
        cv = _gap_spread(days) if n_gaps > 1 and mean > 0 and len(days) > 2 else 1.0
        confidence = round((1.0 - 1.0 / math.sqrt(n_gaps + 1)) / (1.0 + cv), 3)
        expected = last_day + mean
        status: Status
        if as_of_day - expected > max(mean, LAPSE_MIN_DAYS):
            status = "lapsed"
        elif as_of_day >= expected:
            status = "due"
        elif expected - as_of_day <= max(2.0, 0.25 * mean):
            status = "upcoming"
        else:
            status = "later"
        return _Next(_day_date(expected), -confidence,
                     "product" if kind == "product" else "category", key,
                     round(mean, 2), day_count, confidence, status)

    def predict(
        self, state: CustomerState, segment: SegmentRef, as_of_ts: int, now: datetime,
        segments_version: int = 0, rates: Rates = NO_RATES,
    ) -> Prediction:
        """The prediction for one customer as of ``as_of_ts`` (event time, epoch seconds);
        money in ``rates``' reporting currency (currencies without a rate are named in
        ``unconverted`` and left out of ``spend``)."""
        n_days = state.purchase_days
        if n_days:
            first_day, last_day = state.first_day, state.last_day
            # bgnbd_inputs(state, as_of_ts), with the day figures read once
            as_of_day = max(last_day, as_of_ts // DAY)
            x, t_x, big_t = (n_days - 1, (last_day - first_day) / WEEK_DAYS,
                             (as_of_day - first_day) / WEEK_DAYS)
            tenure = as_of_day - first_day
        else:
            x, t_x, big_t = 0, 0.0, 0.0
            as_of_day = max(0, as_of_ts // DAY)
            tenure = 0
        grade, reason, confidence = _data_quality(n_days, tenure)
        spend, unconverted = state.spend(rates)
        days_ahead = self.horizons_days
        weeks_ahead = (_in_weeks(days_ahead) if isinstance(days_ahead, tuple)
                       else tuple(h / WEEK_DAYS for h in days_ahead))
        alive, (e30, e90) = _memo_forecast(self.params, x, t_x, big_t, weeks_ahead)
        nexts = []
        next_of = self._next
        dead = state.view.dead_days
        for kind, table in (("product", state.products), ("category", state.categories)):
            for key, stats in table.items():
                if (n := next_of(kind, key, stats, as_of_day, dead)) is not None:
                    nexts.append(n)
        nexts.sort(key=_Next.order)
        max_items = self.max_items
        showing = [n.model() for n in nexts[:max_items]]
        # in one pass: the first max_items products due or upcoming (the recommendations)
        # and the first max_items of them with a confidence of 0.2 or more (the alerts)
        soon: list[_Next] = []
        sure: list[_Next] = []
        if max_items > 0:
            for n in nexts:
                if n.kind == "product" and n.status in _REMINDED:
                    if len(soon) < max_items:
                        soon.append(n)
                    if n.confidence >= 0.2:
                        sure.append(n)
                        if len(sure) == max_items:
                            break
        alerts = [
            _ALERT({
                "kind": "replenishment_due" if n.status == "due" else "replenishment_upcoming",
                "key": n.key,
                "expected_date": n.expected_date,
                "message": f"{n.kind} {n.key!r} is {n.status}: bought every "
                f"{n.avg_days_between:g} days, next expected {n.expected_date}",
            })
            for n in sure
        ]
        extra: dict[str, object] = {}
        if n_days:
            # gamma_gamma_inputs and state.order_value, from the conversion made above
            gx, mbar = _gamma_gamma_inputs(state, rates, spend, unconverted)
            o = customer_outlook(
                self.params, self.value_params, x, t_x, big_t, spend=spend,
                order_value=_order_value(state, spend, unconverted),
                monetary_repeat=mbar if gx else 0.0,
                purchase_days=n_days, first_day=first_day,
                last_day=last_day, as_of_day=as_of_day, config=self.outlook)
            extra = {"value": o.value, "churn": o.churn, "timing": o.timing,
                     "clv": o.value.clv, "churn_band": o.churn.band,
                     "expected_purchases_90d_interval": o.interval_90d,
                     "confidence": interval_confidence(o.interval_90d)}
        extra.setdefault("confidence", confidence)  # no purchase yet: the history's
        extra.update({
            "refit_reason": self.refit_reason,
            "customer_id": state.customer_id,
            "variant": self.variants.assign(state.customer_id),
            "segment": segment,
            "p_alive": round(alive, 4),
            "expected_purchases_30d": round(e30, 4),
            "expected_purchases_90d": round(e90, 4),
            "next_purchases": showing,
            "alerts": alerts,
            "recommendations": self._recommend(state, soon),
            "data_quality": grade,
            "data_quality_reason": reason,
            "purchases": state.purchases,
            "spend": round(spend, 2),
            "currency": rates.reporting,
            "unconverted": list(unconverted),
            "model_versions": {model_name(self.params): self.params_version,
                               "segments": segments_version},
            "as_of": datetime.fromtimestamp(as_of_ts, UTC),
            "generated_at": now,
            "last_event": _LAST_EVENT({
                "event_id": state.last_event_id,
                "occurred_at": datetime.fromtimestamp(state.last_event_ts, UTC),
            }),
        })
        return _PREDICTION(extra)

    def _recommend(
        self, state: CustomerState, soon: list[_Next]
    ) -> list[Recommendation]:
        """``soon``: the first ``max_items`` products due or upcoming, in order."""
        recs = [
            _RECOMMENDATION({
                "key": n.key,
                "kind": "product",
                "reason": "replenishment_due" if n.status == "due" else "replenishment_upcoming",
                "score": n.confidence,
            })
            for n in soon
        ]
        total = 0
        ranked: list[tuple[int, str]] = []  # (-orders, key): keys are distinct
        for key, c in state.categories.items():
            orders = c.orders
            if orders > 0:
                total += orders
                ranked.append((-orders, key))
        total = total or 1
        ranked.sort()
        recs.extend(
            shared(Recommendation, key, "category", "category_affinity",
                   round(-neg_orders / total, 3))
            for neg_orders, key in ranked[:2]
        )
        return recs[: self.max_items]
