"""Pareto/NBD ("Pareto / negative binomial distribution") customer model.

Reference: D. C. Schmittlein, D. G. Morrison and R. Colombo (1987), "Counting Your
Customers: Who Are They and What Will They Do Next?", Management Science 33(1), 1-24;
P. S. Fader and B. G. S. Hardie (2005), "A Note on Deriving the Pareto/NBD Model and
Related Expressions" (brucehardie.com/notes/009), whose equation numbers are cited below.

Model, per customer: while alive, transactions follow a Poisson process with rate
``lambda ~ Gamma(shape=r, rate=alpha)``; the unobserved lifetime is exponential with rate
``mu ~ Gamma(shape=s, rate=beta)`` (a customer can drop out at any time, not only right
after a purchase as in BG/NBD). A history is the same ``(x, t_x, T)`` summary as for
:mod:`models.learn.bgnbd` (repeat purchases, time of the last one and age, from the first
purchase; any time unit, callers use weeks).

Numerics. The likelihood's "dropped out in (t_x, T]" term is a difference of two Gauss
hypergeometric functions (eqs. 19-20).  We evaluate each in its Euler-transformed form
``2F1(1, b; c; z)`` with ``0 <= z < 1`` on the branch ``max(alpha, beta)`` (the one
lifetimes uses), which is bounded for large ``x`` where the raw form overflows, and we
keep the difference in log space (``log(-expm1(.))``).  ``scipy.special.hyp2f1`` is
accurate for ``z <= 0.9``; ``z`` goes above only when ``alpha / beta`` is beyond a factor
of ten (for instance on a young table, where nobody has had time to drop out and the fit
drifts towards ``beta -> inf``), and there :mod:`models.learn.hypergeometric` takes over.

The module is pure (no I/O).  :func:`fit` estimates ``(r, alpha, s, beta)`` by maximum
likelihood; the scalar scorers use ``math`` and two scalar ``hyp2f1`` calls for
:func:`p_alive` (a few microseconds), none for :func:`expected_purchases_if_alive`.

>>> p_alive(DEFAULT_PRIOR, 0, 0.0, 0.0)
1.0
>>> sample = ParetoNbdParams(r=0.5533, alpha=10.578, s=0.6062, beta=11.668)
>>> round(p_alive(sample, 2, 30.43, 38.86), 4)
0.8691
>>> round(expected_purchases(sample, 39.0, 2, 30.43, 38.86), 4)
1.4551
>>> round(expected_purchases_unconditional(sample, 52.0), 4)
1.4735
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import gammaln

from models.learn.btyd_data import as_data, check_history
from models.learn.hypergeometric import hyp2f1_1, hyp2f1_1_scalar

__all__ = ["DEFAULT_PRIOR", "ParetoNbdParams", "expected_purchases"]
__all__ += ["expected_purchases_if_alive", "expected_purchases_unconditional", "fit"]
__all__ += ["log_likelihood", "p_alive"]

_FArray = NDArray[np.float64]
_LOG_BOUND = 30.0  # optimiser box on log-parameters: exp(+-30) ~ 1e13 / 1e-13
_S_NEAR_ONE = 1e-9  # |s - 1| below this: the expectation's limit form


@dataclass(frozen=True, slots=True)
class ParetoNbdParams:
    """Pareto/NBD parameters: ``lambda ~ Gamma(r, alpha)``, ``mu ~ Gamma(s, beta)``.

    >>> ParetoNbdParams.from_dict({"r": 1, "alpha": 2, "s": 3, "beta": 4}).to_dict()
    {'r': 1.0, 'alpha': 2.0, 's': 3.0, 'beta': 4.0}
    """

    r: float
    alpha: float
    s: float
    beta: float

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "s", "beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"Pareto/NBD parameter {name} must be finite and > 0, "
                                 f"got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "s": self.s, "beta": self.beta}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> ParetoNbdParams:
        return cls(r=float(d["r"]), alpha=float(d["alpha"]), s=float(d["s"]),
                   beta=float(d["beta"]))


DEFAULT_PRIOR: ParetoNbdParams = ParetoNbdParams(r=0.5, alpha=10.0, s=0.5, beta=10.0)
"""Weakly informative *prior* used before the first fit: of the order of magnitude of
retail data measured in weeks (cf. CDNOW), NOT a fitted value."""


def _log_tail(p: tuple[float, float, float, float], x: _FArray, t: _FArray) -> _FArray:
    """``log[(r+s+x) * integral_t^inf (alpha+u)^-(r+x) (beta+u)^-(s+1) du]``, i.e. the log of
    eq. 19's (alpha >= beta) or eq. 20's (alpha < beta) term at ``t``, Euler-transformed."""
    r, alpha, s, beta = p
    c = r + s + x + 1.0
    if alpha >= beta:
        f = hyp2f1_1(r + x, c, (beta + t) / (alpha + t))
        return -(r + x) * np.log(alpha + t) - s * np.log(beta + t) + np.log(f)
    f = hyp2f1_1(np.full_like(x, s + 1.0), c, (alpha + t) / (beta + t))
    return -(r + x - 1.0) * np.log(alpha + t) - (s + 1.0) * np.log(beta + t) + np.log(f)


def _log_likelihoods(p: tuple[float, float, float, float], x: _FArray, t_x: _FArray,
                     T: _FArray) -> _FArray:
    """Per-customer log-likelihood (eq. 18)."""
    r, alpha, s, beta = p
    a1 = gammaln(r + x) - gammaln(r) + r * math.log(alpha) + s * math.log(beta)
    alive = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
    g_tx, g_T = _log_tail(p, x, t_x), _log_tail(p, x, T)
    with np.errstate(divide="ignore"):  # t_x == T: nothing left to die in, log(0) = -inf
        dead = np.log(s / (r + s + x)) + g_tx + np.log(-np.expm1(np.minimum(g_T - g_tx, 0.0)))
    ll: _FArray = a1 + np.logaddexp(alive, dead)
    return ll


def log_likelihood(
    params: ParetoNbdParams,
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    weights: ArrayLike | None = None,
) -> float:
    """Total (weighted) Pareto/NBD log-likelihood of the data under ``params``.

    >>> round(log_likelihood(DEFAULT_PRIOR, [0, 2], [0.0, 30.43], [38.86, 38.86]), 4)
    -10.0389
    """
    x_, t_, T_, w = as_data(x, t_x, T, weights)
    p = (params.r, params.alpha, params.s, params.beta)
    return float(w @ _log_likelihoods(p, x_, t_, T_))


def _neg_mean_ll(theta: _FArray, data: tuple[_FArray, _FArray, _FArray, _FArray],
                 scale: float) -> float:
    r, alpha, s, beta = (float(v) for v in np.exp(theta))
    x, t_x, T, w = data
    value = -scale * float(w @ _log_likelihoods((r, alpha, s, beta), x, t_x, T))
    return value if math.isfinite(value) else math.inf


def fit(
    x: ArrayLike,
    t_x: ArrayLike,
    T: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    initial: ParetoNbdParams | None = None,
    max_iter: int = 500,
) -> ParetoNbdParams:
    """Maximum-likelihood estimate of the Pareto/NBD parameters.

    L-BFGS-B over log-parameters (box ``exp(+-30)``: every parameter positive) with
    central-difference gradients, fully deterministic.  The default start is lifetimes':
    ``r = s = 1`` and ``alpha = beta = max(T)`` (lifetimes starts at ~1 with time rescaled
    so that ``max(T) = 1``).  ``weights[i]`` is the number of customers sharing the row
    ``(x[i], t_x[i], T[i])``.  Raises ``ValueError`` on empty / ragged / non-finite /
    negative input or ``t_x > T``; if ``max_iter`` is exhausted the best point found so
    far is returned.

    Synthetic check (true r=0.5, alpha=5, s=0.8, beta=12; 40 weeks of observation):

    >>> import numpy as np
    >>> rng = np.random.default_rng(11)
    >>> n = 4000
    >>> lam, mu = rng.gamma(0.5, 1 / 5.0, n), rng.gamma(0.8, 1 / 12.0, n)
    >>> alive_until = np.minimum(rng.exponential(1 / mu), 40.0)
    >>> rows = []
    >>> for i in range(n):
    ...     times = np.cumsum(rng.exponential(1 / lam[i], 200))
    ...     seen = times[times <= alive_until[i]]
    ...     rows.append((len(seen), seen[-1] if len(seen) else 0.0, 40.0))
    >>> x, t_x, T = np.array(rows).T
    >>> {k: round(v, 2) for k, v in fit(x, t_x, T).to_dict().items()}
    {'r': 0.52, 'alpha': 5.29, 's': 0.74, 'beta': 10.84}
    """
    data = as_data(x, t_x, T, weights)
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    if initial is None:
        horizon = max(float(data[2].max()), 1.0)
        initial = ParetoNbdParams(1.0, horizon, 1.0, horizon)
    start = [initial.r, initial.alpha, initial.s, initial.beta]
    theta0 = np.clip(np.log(start), -_LOG_BOUND, _LOG_BOUND)
    res = minimize(
        _neg_mean_ll,
        theta0,
        args=(data, 1.0 / float(data[3].sum())),  # mean LL: scale-free tolerances
        jac="3-point",
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 4,
        options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-10},
    )
    return ParetoNbdParams(*(float(v) for v in np.exp(res.x)))


def _check_horizon(t: float) -> None:
    if not 0.0 <= t < math.inf:
        raise ValueError(f"horizon t must be finite and >= 0, got {t!r}")


def p_alive(params: ParetoNbdParams, x: float, t_x: float, T: float) -> float:
    """P(customer still alive at T | x, t_x, T) (eqs. 36-37); 1.0 when ``t_x == T``.

    Raises ``ValueError`` unless ``x >= 0`` and ``0 <= t_x <= T < inf``.

    >>> p_alive(DEFAULT_PRIOR, 3, 10.0, 10.0)
    1.0
    >>> p_alive(DEFAULT_PRIOR, 5, 9.0, 10.0) > p_alive(DEFAULT_PRIOR, 5, 2.0, 10.0)
    True
    """
    check_history(x, t_x, T)
    if t_x >= T:
        return 1.0
    r, alpha, s, beta = params.r, params.alpha, params.s, params.beta
    rx = r + x
    c = rx + s + 1.0
    la_T, lb_T = math.log(alpha + T), math.log(beta + T)
    la_tx, lb_tx = math.log(alpha + t_x), math.log(beta + t_x)
    # odds(dead) = s/(r+s+x) * e^k * (F(t_x) e^E - F(T)), E = e1 ln((a+T)/(a+t_x)) + e2 ln(..)
    if alpha >= beta:
        b, e1, e2, k, hi, lo = rx, rx, s, 0.0, alpha, beta
    else:
        b, e1, e2, k, hi, lo = s + 1.0, rx - 1.0, s + 1.0, la_T - lb_T, beta, alpha
    f_tx = hyp2f1_1_scalar(b, c, (lo + t_x) / (hi + t_x))
    f_T = hyp2f1_1_scalar(b, c, (lo + T) / (hi + T))
    big_e = e1 * (la_T - la_tx) + e2 * (lb_T - lb_tx)
    ratio = f_T / f_tx * math.exp(-big_e) if big_e > -700.0 else math.inf
    if not ratio < 1.0:
        return 1.0
    log_odds = math.log(s / (rx + s)) + k + math.log(f_tx) + big_e + math.log1p(-ratio)
    if log_odds > 0.0:
        e = math.exp(-log_odds)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(log_odds))


#: :func:`p_alive` memoised (pure; ``params`` are frozen): the forecaster's 30/90-day
#: figures and the customer outlook ask it of the same history, one after the other
p_alive_memo = lru_cache(maxsize=1 << 15)(p_alive)


def expected_purchases_if_alive(params: ParetoNbdParams, t: float, x: float, T: float) -> float:
    """E[transactions in (T, T+t] | alive at T, x]: eq. 41 without its P(alive) factor,
    ``(r+x)(beta+T) / ((alpha+T)(s-1)) * [1 - ((beta+T)/(beta+T+t))^(s-1)]`` (its limit
    ``(r+x)(beta+T)/(alpha+T) * ln((beta+T+t)/(beta+T))`` at ``s = 1``).

    >>> expected_purchases_if_alive(DEFAULT_PRIOR, 0.0, 3, 20.0)
    0.0
    """
    _check_horizon(t)
    if not (x >= 0.0 and 0.0 <= T < math.inf):
        raise ValueError(f"invalid history x={x!r}, T={T!r}")
    if t == 0.0:
        return 0.0
    r, alpha, s, beta = params.r, params.alpha, params.s, params.beta
    log_q = math.log(beta + T) - math.log(beta + T + t)  # <= 0
    sm1 = s - 1.0
    h = -log_q if abs(sm1) < _S_NEAR_ONE else -math.expm1(sm1 * log_q) / sm1
    return (r + x) / (alpha + T) * (beta + T) * h


def expected_purchases(params: ParetoNbdParams, t: float, x: float, t_x: float, T: float
                       ) -> float:
    """E[number of transactions in (T, T+t] | x, t_x, T] (eq. 41).

    >>> round(expected_purchases(ParetoNbdParams(0.5533, 10.578, 0.6062, 11.668),
    ...                          39, 0, 0.0, 38.86), 4)
    0.1071
    """
    return p_alive(params, x, t_x, T) * expected_purchases_if_alive(params, t, x, T)


def expected_purchases_unconditional(params: ParetoNbdParams, t: float) -> float:
    """E[X(t)]: expected repeat transactions in (0, t] for a new customer (eq. 27).

    >>> expected_purchases_unconditional(DEFAULT_PRIOR, 0.0)
    0.0
    """
    return expected_purchases_if_alive(params, t, 0.0, 0.0)
