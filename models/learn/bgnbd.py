"""BG/NBD ("beta-geometric / negative binomial distribution") customer model.

Reference: P. S. Fader, B. G. S. Hardie and K. L. Lee (2005), "'Counting Your
Customers' the Easy Way: An Alternative to the Pareto/NBD Model", Marketing
Science 24(2), 275-284; and Fader, Hardie & Lee's note "Computing P(alive)
Using the BG/NBD Model" (brucehardie.com/notes/021).

Model, per customer: while alive, transactions follow a Poisson process with
rate ``lambda ~ Gamma(shape=r, rate=alpha)``; after each *repeat* transaction
the customer becomes inactive for good with probability ``p ~ Beta(a, b)``.
A customer's history is summarised as

* ``x``   -- number of repeat purchases (distinct purchase periods minus 1),
* ``t_x`` -- time of the last purchase, measured from the first purchase,
* ``T``   -- age: time from the first purchase to the evaluation time,

in any time unit (``alpha`` is expressed in that unit; callers use weeks).
The module is pure (no I/O): :func:`fit` estimates ``(r, alpha, a, b)`` by
maximum likelihood, the scalar functions :func:`p_alive`,
:func:`expected_purchases` and :func:`expected_purchases_unconditional` score
one customer at a time and are written for speed (``math`` + scalar
``scipy.special`` calls, no array construction).

>>> p_alive(DEFAULT_PRIOR, 0, 0, 10)
1.0
>>> round(p_alive(DEFAULT_PRIOR, 3, 2.0, 20.0), 4)
0.0824
>>> round(expected_purchases_unconditional(DEFAULT_PRIOR, 52.0), 3)
1.375
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import digamma, gammaln, hyp2f1

from models.learn.btyd_data import as_data, check_history

__all__ = ["DEFAULT_PRIOR", "BgNbdParams", "expected_purchases"]
__all__ += ["expected_purchases_unconditional", "fit", "log_likelihood", "p_alive"]

_FArray = NDArray[np.float64]
_LOG_BOUND = 30.0  # optimiser box on log-parameters: exp(+-30) ~ 1e13 / 1e-13
_DEGENERATE_EPS = 1e-6  # |a - 1| or |a + b + x - 1| below this -> symmetric nudge


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    """BG/NBD parameters: ``lambda ~ Gamma(r, alpha)``, ``p ~ Beta(a, b)``.

    >>> BgNbdParams.from_dict({"r": 1, "alpha": 2, "a": 3, "b": 4}).to_dict()
    {'r': 1.0, 'alpha': 2.0, 'a': 3.0, 'b': 4.0}
    """

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"BG/NBD parameter {name} must be finite and > 0, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> BgNbdParams:
        return cls(r=float(d["r"]), alpha=float(d["alpha"]), a=float(d["a"]), b=float(d["b"]))


DEFAULT_PRIOR: BgNbdParams = BgNbdParams(r=0.25, alpha=5.0, a=0.8, b=2.5)
"""Weakly informative *prior* used before the first fit (and as the default
optimiser start).  It is NOT a fitted value: it is merely of the order of
magnitude typical of retail data measured in weeks (cf. CDNOW in the paper)."""


def _neg_ll_and_grad(
    theta: _FArray, data: tuple[_FArray, _FArray, _FArray, _FArray], scale: float
) -> tuple[float, _FArray]:
    """Negative total log-likelihood (times ``scale``) and its gradient w.r.t. log-params.

    Per customer (FHL 2005, eq. 6):  ll = A1 + A2 + log(exp(A3) + [x > 0] exp(A4)) with
    A1 = lnG(r+x) - lnG(r) + r ln(alpha),  A2 = lnB(a, b+x) - lnB(a, b),
    A3 = -(r+x) ln(alpha+T),  A4 = ln a - ln(b+x-1) - (r+x) ln(alpha+t_x).
    """
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    x, t_x, T, w = data
    rep = x > 0.0
    bx1 = b + np.where(rep, x - 1.0, 0.0)  # b + x - 1 for repeaters, harmless b otherwise
    ln_aT, ln_at = np.log(alpha + T), np.log(alpha + t_x)
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * ln_aT
    a4 = np.where(rep, math.log(a) - np.log(bx1) - (r + x) * ln_at, -np.inf)
    lse = np.logaddexp(a3, a4)
    ll = a1 + a2 + lse
    w4 = np.exp(a4 - lse)  # posterior weight of the "dropped out after t_x" branch
    w3 = 1.0 - w4
    d_r = digamma(r + x) - digamma(r) + math.log(alpha) - w3 * ln_aT - w4 * ln_at
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
    d_ab = digamma(a + b) - digamma(a + b + x)
    d_a = d_ab + w4 / a
    d_b = d_ab + digamma(b + x) - digamma(b) - w4 / bx1
    grad = np.array([r * (w @ d_r), alpha * (w @ d_alpha), a * (w @ d_a), b * (w @ d_b)])
    return -scale * float(w @ ll), -scale * grad


def log_likelihood(
    params: BgNbdParams,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    weights: ArrayLike | None = None,
) -> float:
    """Total (weighted) BG/NBD log-likelihood of the data under ``params``.

    >>> round(log_likelihood(DEFAULT_PRIOR, [0, 2], [0.0, 30.43], [38.86, 38.86]), 4)
    -9.98
    """
    theta = np.log(np.array([params.r, params.alpha, params.a, params.b]))
    return -_neg_ll_and_grad(theta, as_data(x, t_x, T, weights), 1.0)[0]


def fit(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    initial: BgNbdParams | None = None,
    max_iter: int = 500,
) -> BgNbdParams:
    """Maximum-likelihood estimate of the BG/NBD parameters.

    Optimises over log-parameters with L-BFGS-B and the analytic gradient (fully
    deterministic).  ``weights[i]`` is the number of customers sharing the row
    ``(x[i], t_x[i], T[i])``, so identical rows can be aggregated.  Raises
    ``ValueError`` on empty / ragged / non-finite / negative input or ``t_x > T``.
    If ``max_iter`` is exhausted the best point found so far is returned.

    Synthetic check (true r=0.5, alpha=4, a=1, b=3; 30 weeks of observation):

    >>> import numpy as np
    >>> rng = np.random.default_rng(7)
    >>> rows = []
    >>> for _ in range(3000):
    ...     lam, p = rng.gamma(0.5, 1 / 4.0), rng.beta(1.0, 3.0)
    ...     t, x, t_x = rng.exponential(1 / lam), 0, 0.0
    ...     while t <= 30.0:
    ...         x, t_x = x + 1, t
    ...         if rng.random() < p:
    ...             break
    ...         t += rng.exponential(1 / lam)
    ...     rows.append((x, t_x, 30.0))
    >>> x, t_x, T = np.array(rows).T
    >>> {k: round(v, 2) for k, v in fit(x, t_x, T).to_dict().items()}
    {'r': 0.49, 'alpha': 3.9, 'a': 1.06, 'b': 3.17}
    """
    data = as_data(x, t_x, T, weights)
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    start = DEFAULT_PRIOR if initial is None else initial
    theta0 = np.clip(np.log([start.r, start.alpha, start.a, start.b]), -_LOG_BOUND, _LOG_BOUND)
    res = minimize(
        _neg_ll_and_grad,
        theta0,
        args=(data, 1.0 / float(data[3].sum())),  # mean LL: scale-free tolerances
        jac=True,
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 4,
        options={"maxiter": max_iter, "ftol": 1e-13, "gtol": 1e-9},
    )
    return BgNbdParams(*(float(v) for v in np.exp(res.x)))


def _zero_horizon(t: float) -> bool:
    if not 0.0 <= t < math.inf:
        raise ValueError(f"horizon t must be finite and >= 0, got {t!r}")
    return t == 0.0


def _p_alive(params: BgNbdParams, x: float, t_x: float, T: float) -> float:
    if x <= 0.0:
        return 1.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    # odds(dead) = a / (b+x-1) * ((alpha+T) / (alpha+t_x))^(r+x), handled in log space
    log_odds = math.log(a / (b + x - 1.0)) + (r + x) * (math.log(alpha + T) - math.log(alpha + t_x))
    if log_odds > 0.0:
        e = math.exp(-log_odds)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(log_odds))


def p_alive(params: BgNbdParams, x: float, t_x: float, T: float) -> float:
    """P(customer still alive | x, t_x, T); exactly 1.0 when ``x == 0``.

    Like the other scalar scorers it raises ``ValueError`` unless ``x >= 0`` and
    ``0 <= t_x <= T < inf`` (histories are never silently repaired).

    >>> p_alive(DEFAULT_PRIOR, 0, 0, 10)
    1.0
    >>> p_alive(DEFAULT_PRIOR, 5, 10.0, 10.0) > p_alive(DEFAULT_PRIOR, 5, 2.0, 10.0)
    True
    """
    check_history(x, t_x, T)
    return _p_alive(params, x, t_x, T)


def _growth(params: BgNbdParams, x: float, T: float, t: float) -> float:
    """(a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)].

    ``z = t/(alpha+T+t)`` tends to 1 for long horizons.  Of the two equivalent
    Gauss forms we evaluate the one whose series converges at ``z = 1``: the
    direct one if ``c-A-B = a-1-r-x > 0``, else Euler's transformation
    ``2F1(A,B;c;z) = (1-z)^(c-A-B) 2F1(c-A, c-B; c; z)``, which gives
    ``(1-z)^(a-1) 2F1(a+b-1-r, a-1; c; z)`` with small upper parameters, so it is
    also accurate for very large ``x``.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    c = a + b + x - 1.0
    if abs(a - 1.0) < _DEGENERATE_EPS or abs(c) < _DEGENERATE_EPS:
        # removable singularity (a == 1 or c == 0): evaluate at two points nudged
        # upwards (so every parameter stays positive) and extrapolate linearly back
        d = 2.0 * _DEGENERATE_EPS
        da, db = (d, 0.0) if abs(a - 1.0) < _DEGENERATE_EPS or a >= b else (0.0, d)
        if abs(a - 1.0) < _DEGENERATE_EPS and a < 1.0:
            da = 2.0 * d  # from just below 1, step clear over it
        near, far = (BgNbdParams(r, alpha, a + s * da, b + s * db) for s in (1.0, 2.0))
        return max(0.0, 2.0 * _growth(near, x, T, t) - _growth(far, x, T, t))
    log_1mz = math.log(alpha + T) - math.log(alpha + T + t)  # log(1 - z) <= 0
    z = t / (alpha + T + t)
    for direct in (a - 1.0 - r - x > 0.0, a - 1.0 - r - x <= 0.0):  # preferred form, then the other
        if direct:
            hyp, power = float(hyp2f1(r + x, b + x, c, z)), r + x
        else:
            hyp, power = float(hyp2f1(a + b - 1.0 - r, a - 1.0, c, z)), a - 1.0
        term = math.exp(min(power * log_1mz, 700.0)) * hyp
        if math.isfinite(term):
            break
    value = c / (a - 1.0) * (1.0 - term)
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), 1.7976931348623157e308)  # clamp: finite and non-negative


def expected_purchases(params: BgNbdParams, t: float, x: float, t_x: float, T: float) -> float:
    """E[number of transactions in (T, T+t] | x, t_x, T]  (FHL 2005, eq. 10).

    >>> round(expected_purchases(BgNbdParams(0.243, 4.414, 0.793, 2.426), 39, 2, 30.43, 38.86), 3)
    1.226
    """
    check_history(x, t_x, T)
    if _zero_horizon(t):
        return 0.0
    return _growth(params, x, T, t) * _p_alive(params, x, t_x, T)


def expected_purchases_unconditional(params: BgNbdParams, t: float) -> float:
    """E[X(t)]: expected repeat transactions in (0, t] for a new customer (FHL 2005, eq. 9).

    >>> expected_purchases_unconditional(DEFAULT_PRIOR, 0.0)
    0.0
    """
    if _zero_horizon(t):
        return 0.0
    return _growth(params, 0.0, 0.0, t)
