"""The day of a customer's next order under Pareto/NBD, found day by day.

:func:`models.learn.pareto_nbd_windows.next_order_quantile` finds the time ``t`` (weeks)
at which ``P(X(T, T+t) >= 1 | x, t_x, T)`` reaches ``q`` with ``brentq`` to 1e-9 weeks, and
the outlook shows it as a date: ``round(as_of_day + 7 t)``. A date needs only the day
cell the root falls in. :func:`next_order_day` finds that cell by bisection over the
cells' ends ``t_k = (k + 1/2) / 7`` weeks, ``k = 0 .. 365``, on the function that does not
depend on ``t_x`` or ``q`` (``P(X >= 1 | alive at T)``, the module docstring of
:mod:`models.learn.pareto_nbd_windows`): its values at the cells' ends are kept per
``(x, T)``, so every history with the same ``x`` and ``T`` and both the 50% and the 80%
dates share them, where each ``brentq`` started afresh.

It gives the same date as ``brentq`` did. The root is in cell ``k`` when
``f(t_{k-1}) < q / P_A <= f(t_k)``; the slope of ``f`` is at most the posterior mean
purchase rate if alive, ``(r+x)/(alpha+T)`` per week (the density of the first purchase
time is ``E[lambda 1{no purchase, alive}] <= E[lambda]``), so a target at least
``1e-8 (r+x)/(alpha+T) + 1e-12`` inside both ends puts the root over ``1e-8`` weeks from
the cell's edges, beyond both ``brentq``'s tolerance and the rounding of ``as_of_day +
7 t``. A target nearer an edge (about one in 10^7), or a root beyond the last cell, is
left to ``next_order_quantile`` itself.

>>> from models.learn.pareto_nbd import ParetoNbdParams
>>> from models.learn.pareto_nbd_windows import next_order_quantile
>>> sample = ParetoNbdParams(0.5533, 10.578, 0.6062, 11.668)
>>> round(next_order_day(sample, 0.5, 2, 30.43, 38.86) * 7), round(
...     next_order_quantile(sample, 0.5, 2, 30.43, 38.86) * 7)
(166, 166)
"""

from __future__ import annotations

import math
from array import array
from functools import lru_cache

from models.learn.btyd_data import check_history
from models.learn.pareto_nbd import ParetoNbdParams, p_alive
from models.learn.pareto_nbd_windows import _buy_if_alive, _pi_now, next_order_quantile

__all__ = ["DAY_CELLS", "next_order_day"]

#: day cells searched (0 .. 365 days ahead: the outlook's horizon is a year)
DAY_CELLS = 366
_WEEK = 7.0
#: the least distance (weeks) of a root from its cell's edges for the cell to be taken
_MARGIN_WEEKS = 1e-8


#: ``(x, T)`` pairs whose cell ends are kept, each in an array of :data:`DAY_CELLS` doubles
#: (NaN: not computed yet; about 3 KB a pair, 12 MB at most); a CDNOW replay has 7,822 pairs
#: in all, a batch's buyers a few hundred
_PAIRS = 1 << 12
_UNKNOWN = [math.nan] * DAY_CELLS


@lru_cache(maxsize=_PAIRS)
def _cell_ends(params: ParetoNbdParams, x: float, T: float) -> array[float]:
    """``[P(X(T, T + t_k) >= 1 | alive at T) for k in 0..365]``, filled as the searches
    need them (NaN until then)."""
    return array("d", _UNKNOWN)


def _at_end(params: ParetoNbdParams, x: float, T: float, pi_now: float, ends: array[float],
            k: int) -> float:
    value = ends[k]
    if math.isnan(value):  # not computed yet
        value = ends[k] = _buy_if_alive(params, (k + 0.5) / _WEEK, x, T, pi_now)
    return value


def next_order_day(params: ParetoNbdParams, q: float, x: float, t_x: float, T: float,
                   alive: float | None = None) -> float | None:
    """``next_order_quantile`` to the day: ``k / 7`` weeks for the day ``k`` (0-365) its root
    rounds to, or that function's own result (a root within 1e-8 weeks of a half day, or
    beyond the last cell; None when ``q`` is never reached). So ``round(as_of_day + 7 *
    result)`` is the date ``next_order_quantile`` gives.

    Raises ``ValueError`` on an invalid history or ``q`` outside [0, 1].
    """
    check_history(x, t_x, T)
    if not 0.0 < q < 1.0:
        return next_order_quantile(params, q, x, t_x, T, alive)
    p_a = p_alive(params, x, t_x, T) if alive is None else alive
    pi_now = _pi_now(params, x, T)
    if q >= p_a * pi_now:  # never (next_order_quantile's own test)
        return None
    target = q / p_a
    ends = _cell_ends(params, x, T)
    eps = _MARGIN_WEEKS * (params.r + x) / (params.alpha + T) + 1e-12
    if _at_end(params, x, T, pi_now, ends, DAY_CELLS - 1) < target + eps:
        return next_order_quantile(params, q, x, t_x, T, alive)
    lo, hi = -1, DAY_CELLS - 1  # f(t_lo) < target <= f(t_hi), f(t_-1) = f(0) = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _at_end(params, x, T, pi_now, ends, mid) >= target:
            hi = mid
        else:
            lo = mid
    below = _at_end(params, x, T, pi_now, ends, lo) if lo >= 0 else 0.0
    if target - below < eps or _at_end(params, x, T, pi_now, ends, hi) - target < eps:
        return next_order_quantile(params, q, x, t_x, T, alive)
    return hi / _WEEK
