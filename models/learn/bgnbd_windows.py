"""Churn windows and predictive purchase counts under the BG/NBD model.

Companion of :mod:`models.learn.bgnbd` (same parameters, same ``(x, t_x, T)`` history, same
scalar ``math`` style for the per-customer hot path).  ``X(T, T+t)`` is the number of
purchases in the next ``t`` time units.

Conditional PMF.  Given the history, the customer is alive at ``T`` with probability
``P_A = p_alive(x, t_x, T)`` (note 021, as in :mod:`models.learn.bgnbd`); if alive,
``lambda`` and ``p`` are a posteriori independent, ``lambda ~ Gamma(r+x, alpha+T)`` and
``p ~ Beta(a, b+x)``, and by memorylessness the window is a fresh BG/NBD purchase process: with
``NB_j = Gamma(r+x+j) / (Gamma(r+x) j!) (1-w)^(r+x) w^j``, ``w = t / (alpha+T+t)``::

    P(X(T,T+t) = k | x, t_x, T) = [k = 0] (1 - P_A) + P_A * (
        B(a, b+x+k) / B(a, b+x) * NB_k
        + [k > 0] B(a+1, b+x+k-1) / B(a, b+x) * (1 - sum_{j<k} NB_j))

(the individual-level ``P(X(t) = k | lambda, p)`` that FHL 2005 integrate over the prior
for ``P(X(t) = x)``, here integrated over this posterior instead; the BG/NBD counterpart of
Fader & Hardie's conditional-PMF note 028 for the Pareto/NBD).  Its ``k = 0`` term is
``P(X = 0) = 1 - P_A (1 - (1-w)^(r+x))``, so the limit for ``t -> inf`` is ``1 - P_A`` and
:func:`next_order_quantile` is closed too.

Reference figures (CDNOW sample parameters, 13 weeks):

>>> cdnow = BgNbdParams(r=0.2426, alpha=4.4136, a=0.7929, b=2.4259)
>>> [round(p_no_purchase(cdnow, 13.0, *h), 3) for h in [(2, 30.43, 38.86), (7, 29.43, 38.86),
...                                                      (0, 0.0, 38.86)]]
[0.677, 0.454, 0.938]
>>> purchase_count_interval(cdnow, 52.0, 7, 29.43, 38.86)
(0.0, 11.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import islice

from models.learn.bgnbd import BgNbdParams, _p_alive, _zero_horizon
from models.learn.btyd_data import check_history

__all__ = ["next_order_quantile", "p_no_purchase", "purchase_count_interval"]
__all__ += ["purchase_count_pmf"]

_MAX_COUNT = 100_000  # purchase_count_interval: give up beyond this many purchases


def _log_one_minus_w(params: BgNbdParams, t: float, T: float) -> float:
    """``log(1 - w) = log((alpha+T) / (alpha+T+t)) <= 0``."""
    return math.log(params.alpha + T) - math.log(params.alpha + T + t)


def p_no_purchase(params: BgNbdParams, t: float, x: float, t_x: float, T: float,
                  alive: float | None = None) -> float:
    """P(X(T, T+t) = 0 | x, t_x, T) = 1 - P_A (1 - ((alpha+T)/(alpha+T+t))^(r+x)).

    The ``k = 0`` term of the conditional PMF (module docstring).  Raises ``ValueError``
    on an invalid history or a negative / infinite horizon.

    >>> p_no_purchase(BgNbdParams(0.2426, 4.4136, 0.7929, 2.4259), 0.0, 2, 30.43, 38.86)
    1.0
    """
    check_history(x, t_x, T)
    if _zero_horizon(t):
        return 1.0
    buy_if_alive = -math.expm1((params.r + x) * _log_one_minus_w(params, t, T))
    p_a = _p_alive(params, x, t_x, T) if alive is None else alive
    return 1.0 - p_a * buy_if_alive


def _pmf_terms(params: BgNbdParams, t: float, x: float, t_x: float, T: float,
               alive: float | None = None) -> Iterator[float]:
    """Yield ``P(X(T, T+t) = k | x, t_x, T)`` for ``k = 0, 1, ...`` (``t > 0``)."""
    p_a = _p_alive(params, x, t_x, T) if alive is None else alive
    rx, a, bx = params.r + x, params.a, params.b + x
    log_w = math.log(t) - math.log(params.alpha + T + t)
    log_nb = rx * _log_one_minus_w(params, t, T)  # log NB_0
    ratio = 1.0  # B(a, b+x+k) / B(a, b+x)
    nb = math.exp(log_nb)
    yield 1.0 - p_a + p_a * nb
    cum_nb = nb  # sum_{j<k} NB_j
    k = 0
    while True:
        # step k -> k+1: B(a+1, b+x+k) / B(a, b+x) = ratio * a / (a+b+x+k)
        dropped = ratio * a / (a + bx + k) * max(1.0 - cum_nb, 0.0)
        ratio *= (bx + k) / (a + bx + k)
        log_nb += math.log((rx + k) / (k + 1.0)) + log_w
        k += 1
        nb = math.exp(log_nb)
        yield p_a * (ratio * nb + dropped)
        cum_nb += nb


def purchase_count_pmf(params: BgNbdParams, t: float, x: float, t_x: float, T: float,
                       n_max: int, alive: float | None = None) -> list[float]:
    """``[P(X(T, T+t) = k | x, t_x, T) for k in 0..n_max]`` (module docstring's formula).

    The negative binomial terms run in log space (no underflow for heavy buyers over long
    horizons) and the beta ratios by their one-step recurrences, ``O(n_max)`` ``math`` calls.

    >>> pmf = purchase_count_pmf(BgNbdParams(0.2426, 4.4136, 0.7929, 2.4259),
    ...                          13.0, 2, 30.43, 38.86, 3)
    >>> [round(v, 4) for v in pmf]
    [0.6765, 0.2263, 0.0703, 0.0198]
    """
    check_history(x, t_x, T)
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max!r}")
    if _zero_horizon(t):
        return [1.0] + [0.0] * n_max
    return list(islice(_pmf_terms(params, t, x, t_x, T, alive), n_max + 1))


def purchase_count_interval(params: BgNbdParams, t: float, x: float, t_x: float, T: float,
                            level: float = 0.8, alive: float | None = None
                            ) -> tuple[float, float]:
    """Equal-tailed ``level`` interval of X(T, T+t): its ``(1-level)/2`` and ``(1+level)/2``
    quantiles (smallest ``k`` with ``P(X <= k) >= q``, up to 1e-12), as floats.

    The PMF is summed term by term and stops at the upper quantile.

    >>> purchase_count_interval(BgNbdParams(0.2426, 4.4136, 0.7929, 2.4259),
    ...                         13.0, 2, 30.43, 38.86)
    (0.0, 1.0)
    """
    check_history(x, t_x, T)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if _zero_horizon(t):
        return 0.0, 0.0
    lo_q, hi_q = (1.0 - level) / 2.0 - 1e-12, (1.0 + level) / 2.0 - 1e-12
    cdf, lo = 0.0, -1.0
    for k, p in enumerate(_pmf_terms(params, t, x, t_x, T, alive)):
        cdf += p
        if lo < 0.0 and cdf >= lo_q:
            lo = float(k)
        if cdf >= hi_q:
            return lo, float(k)
        if k >= _MAX_COUNT:
            break
    raise ValueError("purchase count quantile beyond the supported range")


def next_order_quantile(params: BgNbdParams, q: float, x: float, t_x: float, T: float,
                        alive: float | None = None) -> float | None:
    """Smallest ``t`` with ``P(X(T, T+t) >= 1 | x, t_x, T) >= q``, or ``None`` if never.

    ``P(X >= 1) = P_A (1 - ((alpha+T)/(alpha+T+t))^(r+x))`` increases to ``P_A`` as
    ``t -> inf``, so the answer is ``None`` when ``q >= P_A`` and otherwise, inverting,
    ``t = (alpha+T) (exp(-log(1 - q/P_A) / (r+x)) - 1)`` (no root finder needed).

    >>> cdnow = BgNbdParams(0.2426, 4.4136, 0.7929, 2.4259)
    >>> round(next_order_quantile(cdnow, 0.5, 7, 29.43, 38.86), 2)
    10.03
    >>> next_order_quantile(cdnow, 0.8, 2, 30.43, 38.86) is None
    True
    """
    check_history(x, t_x, T)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    if q == 0.0:
        return 0.0
    p_a = _p_alive(params, x, t_x, T) if alive is None else alive
    if q >= p_a:
        return None
    return (params.alpha + T) * math.expm1(-math.log1p(-q / p_a) / (params.r + x))
