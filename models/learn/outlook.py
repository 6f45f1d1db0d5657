"""One customer's outlook: value (CLV), churn window and order timing, from the purchase
model in use (BG/NBD or Pareto/NBD) and the Gamma-Gamma spend model.

* **Value** (:class:`models.prediction.Value`): the Gamma-Gamma conditional expected order
  value (:func:`models.learn.gamma_gamma.conditional_expected_order_value`; before any fit,
  the customer's own mean), and the CLV as the discounted sum over ``clv_months`` months of
  the purchase model's expected purchases per month times that value
  (:func:`models.learn.clv.discounted_clv`; a month is 30 days, 30/7 weeks), with an 80%
  interval from the predictive count distribution over the same horizon and the Gamma-Gamma
  posterior of the order value (:func:`models.learn.clv.clv_interval`). ``historic`` is the
  spend so far, net of refunds. All in the reporting currency.
* **Churn** (:class:`models.prediction.Churn`): P(no purchase in the next 30 / 90 days |
  history) in closed form (:mod:`models.learn.bgnbd_windows`,
  :mod:`models.learn.pareto_nbd_windows`), and its band from the 90-day figure:
  ``high`` at or above :attr:`OutlookConfig.churn_high` (default 0.8), ``medium`` at or
  above :attr:`OutlookConfig.churn_medium` (0.5), else ``low``.
* **Timing** (:class:`models.prediction.Timing`): mean days between purchase days, and the
  dates by which P(at least one purchase) reaches 50% and 80% (None when that takes more
  than a year, or never happens: P(alive) is below it).
* The 80% interval of the purchases expected in the next 90 days.

Time is in weeks inside the models (x, t_x, T as :func:`models.features.bgnbd_inputs`).

>>> from models.learn.bgnbd import BgNbdParams
>>> cdnow = BgNbdParams(0.2426, 4.4136, 0.7929, 2.4259)
>>> o = customer_outlook(cdnow, None, 2, 30.43, 38.86, spend=50.0, order_value=22.35,
...                      monetary_repeat=22.35, purchase_days=3, first_day=0, last_day=213,
...                      as_of_day=272, config=OutlookConfig())
>>> o.churn.band, round(o.churn.p_no_purchase_90d, 3)
('medium', 0.679)
>>> o.timing.avg_days_between, o.timing.next_order_80 is None
(106.5, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache

from models.learn import bgnbd, bgnbd_windows, pareto_nbd, pareto_nbd_windows
from models.learn.bgnbd import BgNbdParams
from models.learn.clv import WEEKS_PER_MONTH, clv_interval, discounted_clv
from models.learn.gamma_gamma import GammaGammaParams, conditional_expected_order_value
from models.learn.pareto_nbd import ParetoNbdParams
from models.learn.pareto_nbd_next_order import next_order_day
from models.prediction import Churn, ChurnBand, Timing, Value, shared, validator

__all__ = ["DEFAULT_OUTLOOK", "CountOutlook", "Outlook", "OutlookConfig", "churn_band",
           "count_outlook", "customer_outlook"]

_EPOCH = date(1970, 1, 1)
_WEEK = 7.0
#: level of every interval here (the 10% and 90% quantiles)
LEVEL = 0.8
#: next-order dates further out than this (a year, in weeks) are given as None
TIMING_HORIZON_WEEKS = 365 / 7


@dataclass(frozen=True, slots=True)
class OutlookConfig:
    """CLV horizon and discounting (``CAA_CLV_MONTHS``, ``CAA_DISCOUNT_RATE``: per month) and
    the churn bands' thresholds on P(no purchase in 90 days) (``CAA_CHURN_MEDIUM``,
    ``CAA_CHURN_HIGH``)."""

    clv_months: int = 12
    monthly_discount_rate: float = 0.01
    churn_medium: float = 0.5
    churn_high: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 < self.churn_medium <= self.churn_high < 1.0:
            raise ValueError("need 0 < churn_medium <= churn_high < 1, got "
                             f"{self.churn_medium} and {self.churn_high}")


#: the defaults (12 months, 1% a month, bands at 0.5 and 0.8)
DEFAULT_OUTLOOK = OutlookConfig()


@dataclass(frozen=True, slots=True)
class Outlook:
    value: Value
    churn: Churn
    timing: Timing
    #: 80% interval of the purchases expected in the next 90 days
    interval_90d: tuple[float, float]


def churn_band(p_no_purchase_90d: float, config: OutlookConfig) -> ChurnBand:
    """The band of a 90-day no-purchase probability.

    >>> churn_band(0.85, OutlookConfig()), churn_band(0.5, OutlookConfig())
    ('high', 'medium')
    """
    if p_no_purchase_90d >= config.churn_high:
        return "high"
    return "medium" if p_no_purchase_90d >= config.churn_medium else "low"


def _date(day: float) -> date:
    return _EPOCH + timedelta(days=round(day))


def _windows(params: BgNbdParams | ParetoNbdParams):  # type: ignore[no-untyped-def]
    return pareto_nbd_windows if isinstance(params, ParetoNbdParams) else bgnbd_windows


@lru_cache(maxsize=1 << 14)
def _if_alive(params: ParetoNbdParams, x: float, big_t: float, horizons: tuple[float, ...]
              ) -> tuple[float, ...]:
    """Pareto/NBD's expected purchases over each horizon if alive: they do not depend on
    ``t_x``, so histories with the same ``x`` and ``T`` share them (memoised)."""
    return tuple(pareto_nbd.expected_purchases_if_alive(params, h, x, big_t) for h in horizons)


def _alive_and_cumulative(params: BgNbdParams | ParetoNbdParams, x: float, t_x: float,
                          big_t: float, horizons: list[float]) -> tuple[float, list[float]]:
    """P(alive) and the expected purchases over each horizon (weeks), P(alive) computed
    once."""
    if isinstance(params, ParetoNbdParams):
        alive = pareto_nbd.p_alive_memo(params, x, t_x, big_t)
        return alive, [alive * e for e in _if_alive(params, x, big_t, tuple(horizons))]
    return bgnbd.p_alive(params, x, t_x, big_t), [
        bgnbd.expected_purchases(params, h, x, t_x, big_t) for h in horizons]


def _next_order(params: BgNbdParams | ParetoNbdParams, q: float, x: float, t_x: float,
                big_t: float, alive: float) -> float | None:
    if isinstance(params, ParetoNbdParams):  # to the day: the date shown is all we need
        return next_order_day(params, q, x, t_x, big_t, alive)
    return bgnbd_windows.next_order_quantile(params, q, x, t_x, big_t, alive)


#: distinct histories ``(params, x, t_x, T, months)`` whose count outlook is kept (about
#: 0.5 KB each): a batch's buyers share few of them (same first day, same repeat count,
#: bought today), so a replay of CDNOW finds 60% of them here, the synthetic stream 49%
COUNT_CACHE_SIZE = 1 << 15


@dataclass(frozen=True, slots=True)
class CountOutlook:
    """What the purchase model alone says of one history: everything of :class:`Outlook`
    but money. ``cumulative[m-1]``: expected purchases within ``m`` months (30-day, for
    ``m`` in 1..months); ``count_interval``: the 80% interval of the purchases over the
    whole ``months`` (``(0, 0)`` when ``months`` is 0); ``q50`` / ``q80``: weeks until a
    next order is 50% / 80% likely (None beyond :data:`TIMING_HORIZON_WEEKS`); Pareto/NBD
    gives them to the day (:func:`models.learn.pareto_nbd_next_order.next_order_day`: the
    dates shown are the same)."""

    alive: float
    horizons: tuple[float, ...]
    cumulative: tuple[float, ...]
    count_interval: tuple[float, float]
    p30: float
    p90: float
    q50: float | None
    q80: float | None
    interval_90d: tuple[float, float]


@lru_cache(maxsize=COUNT_CACHE_SIZE)
def count_outlook(params: BgNbdParams | ParetoNbdParams, x: float, t_x: float, big_t: float,
                  months: int) -> CountOutlook:
    """The :class:`CountOutlook` of the history ``(x, t_x, T)`` (weeks) over ``months``.

    Pure, and memoised (:data:`COUNT_CACHE_SIZE` most recent histories; ``params`` are
    frozen, so a refit's new ones are new keys): the same history gives the same
    (identical) result.

    >>> from models.learn.bgnbd import BgNbdParams
    >>> c = count_outlook(BgNbdParams(0.2426, 4.4136, 0.7929, 2.4259), 2, 30.43, 38.86, 12)
    >>> round(c.p90, 3), len(c.cumulative), c.q80 is None
    (0.679, 12, True)
    """
    w = _windows(params)
    horizons = [m * WEEKS_PER_MONTH for m in range(1, months + 1)]
    alive, cumulative = _alive_and_cumulative(params, x, t_x, big_t, horizons)
    if months:
        count_interval = w.purchase_count_interval(params, horizons[-1], x, t_x, big_t,
                                                   LEVEL, alive)
    else:
        count_interval = (0.0, 0.0)
    p30 = w.p_no_purchase(params, 30 / _WEEK, x, t_x, big_t, alive)
    p90 = w.p_no_purchase(params, 90 / _WEEK, x, t_x, big_t, alive)
    # a date more than a year out is not a date a marketer can use (and BG/NBD gives
    # customers with no repeat P(alive) 1, so centuries): None, like "never"
    p_year = 1.0 - w.p_no_purchase(params, TIMING_HORIZON_WEEKS, x, t_x, big_t, alive)
    q50 = _next_order(params, 0.5, x, t_x, big_t, alive) if p_year >= 0.5 else None
    q80 = _next_order(params, 0.8, x, t_x, big_t, alive) if p_year >= 0.8 else None
    interval = w.purchase_count_interval(params, 90 / _WEEK, x, t_x, big_t, LEVEL, alive)
    return CountOutlook(alive, tuple(horizons), tuple(cumulative), count_interval, p30, p90,
                        q50, q80, interval)


#: distinct ``(params, x, t_x, T, config)`` whose money-free part of the outlook is kept
#: (about 0.4 KB each beyond the :func:`count_outlook` entry they share): a batch's buyers
#: share them, and 4,096 find as many as :data:`COUNT_CACHE_SIZE` do in a replay
_PARTS_CACHE_SIZE = 1 << 12


@lru_cache(maxsize=_PARTS_CACHE_SIZE)
def _outlook_parts(params: BgNbdParams | ParetoNbdParams, x: float, t_x: float, big_t: float,
                   config: OutlookConfig) -> tuple[CountOutlook, float, Churn]:
    """The :func:`count_outlook` of a history, its CLV per unit of order value (what
    :func:`discounted_clv` sums before multiplying by the order value: the CLV is this
    times the order value, the same product) and its :class:`Churn` (memoised: pure)."""
    months = config.clv_months
    c = count_outlook(params, x, t_x, big_t, months)
    table = dict(zip(c.horizons, c.cumulative, strict=True))
    per_unit = discounted_clv(table.__getitem__, 1.0, months, config.monthly_discount_rate)
    churn = shared(Churn, round(c.p30, 4), round(c.p90, 4), churn_band(c.p90, config))
    return c, per_unit, churn


_VALUE = validator(Value)  # Value(**fields), without BaseModel.__init__'s frame


def customer_outlook(params: BgNbdParams | ParetoNbdParams, value_params: GammaGammaParams | None,
                     x: float, t_x: float, big_t: float, *, spend: float, order_value: float,
                     monetary_repeat: float, purchase_days: int, first_day: int,
                     last_day: int, as_of_day: int, config: OutlookConfig) -> Outlook:
    """The outlook of one history ``(x, t_x, T)`` (weeks).

    ``spend`` is the customer's spend so far net of refunds, ``order_value`` their mean
    order value and ``monetary_repeat`` the mean value of their repeat purchase days (the
    Gamma-Gamma input), all in the reporting currency; days are UTC day numbers.
    ``value_params`` None (no Gamma-Gamma fit yet): the order value is the customer's own.
    A customer who has kept nothing so far (``spend`` 0: free orders, every order refunded,
    or no order in a currency with a rate) has an order value, CLV and interval of 0: the
    Gamma-Gamma model describes positive spend (FHL 2005), and scored with ``mbar`` 0 its
    posterior falls back on the population's mean, so a serial returner was valued like a
    paying customer. The purchase model's part is :func:`count_outlook` (memoised).
    """
    months = config.clv_months
    c, per_unit, churn = _outlook_parts(params, x, t_x, big_t, config)
    kept_nothing = spend <= 0.0
    if kept_nothing:
        aov = 0.0
    elif value_params is not None:
        aov = conditional_expected_order_value(value_params, x, monetary_repeat if x else 0.0)
    else:
        aov = order_value
    if not (0.0 <= aov < math.inf):  # as discounted_clv checks it
        raise ValueError(f"order_value must be finite and >= 0, got {aov!r}")
    clv = per_unit * aov
    if months:
        expected = c.cumulative[-1]
        lo_n, hi_n = c.count_interval
        clv_lo, clv_hi = clv_interval(clv, expected, lo_n, hi_n,
                                      spend=None if kept_nothing else value_params,
                                      frequency=x, monetary=monetary_repeat if x else 0.0)
    else:
        clv_lo = clv_hi = 0.0
    value = _VALUE({"clv": round(clv, 2), "clv_low": round(min(clv_lo, clv), 2),
                    "clv_high": round(max(clv_hi, clv), 2),
                    "expected_order_value": round(aov, 2), "historic": round(spend, 2),
                    "months": months, "monthly_discount_rate": config.monthly_discount_rate})
    q50, q80 = c.q50, c.q80
    timing = shared(
        Timing,
        round((last_day - first_day) / (purchase_days - 1), 2) if purchase_days > 1 else None,
        _date(as_of_day + q50 * _WEEK) if q50 is not None else None,
        _date(as_of_day + q80 * _WEEK) if q80 is not None else None)
    return Outlook(value, churn, timing, c.interval_90d)
