"""Churn windows and predictive purchase counts under the Pareto/NBD model.

Companion of :mod:`models.learn.pareto_nbd` (same parameters and ``(x, t_x, T)`` history).
``X(T, T+t)`` is the number of purchases in the next ``t`` time units.  Reference: P. S.
Fader and B. G. S. Hardie, "Deriving the Conditional PMF of the Pareto/NBD Model"
(brucehardie.com/notes/028), whose route we follow:

* with probability ``1 - P_A`` (``P_A = p_alive``, note 009 eqs. 36-37) the customer is
  already dead and ``X = 0``;
* if alive at ``T``, ``lambda ~ Gamma(A, a)`` and ``mu ~ Gamma(s, b)`` independently, with
  ``A = r+x``, ``a = alpha+T``, ``b = beta+T`` (note 028, the posterior given ``Omega > T``),
  and given ``(lambda, mu)`` with ``nu = lambda+mu``, ``pi = lambda/nu``, the window count is
  ``P(X >= k) = pi^k P(Poisson(nu t) >= k)`` (the first ``k`` of the competing events must
  be purchases).

No purchase.  ``k = 1`` gives ``P(X >= 1 | alive) = Pi(a, b) - D Pi(a+t, b+t)`` with
``D = (a/(a+t))^A (b/(b+t))^s`` and ``Pi(a, b) = E[lambda / (lambda+mu)]``, which is one
Gauss hypergeometric function of the kind :func:`p_alive` uses (Euler-transformed to
``2F1(1, .; .; .)``)::

    Pi(a, b) = A b / (a (A+s)) 2F1(1, A+1; A+s+1; 1 - b/a)   if a >= b
             = A / (A+s)       2F1(1, s;   A+s+1; 1 - a/b)   if a <  b

so ``P(X = 0) = 1 - P_A (Pi(a, b) - D Pi(a+t, b+t))``, with limit ``1 - P_A Pi(a, b)``
for ``t -> inf``.

PMF.  Written with Gauss functions, ``P(X = k)`` needs a double sum of ``2F1`` terms (one
per ``j <= k`` from the Poisson tail).  We evaluate the same expectation as a series instead:
for ``a >= b``, ``Gamma(s, b)`` is the
``NB(s, b/a)`` mixture over ``j`` of ``Gamma(s+j, a)`` (compare Laplace transforms), and with
equal rates ``pi ~ Beta(A, s+j)`` is independent of ``nu ~ Gamma(A+s+j, a)``, so that with
``L = A, M = s+j, R = L+M`` and ``N ~ NB(R, t/(a+t))``::

    P(X = k | alive) = sum_j NB(j; s, b/a) (L)_k / (R)_k [P(N = k) + M/(R+k) P(N > k)]

(for ``a < b`` the roles swap: ``lambda`` is the ``NB(A, a/b)`` mixture of ``Gamma(A+j, b)``,
``L = A+j``, ``M = s``, rate ``b``).  All terms are positive, the ``j``-series converges
geometrically with ratio ``1 - min(a, b)/max(a, b)`` (the ``2F1`` argument) and is
truncated where the weights fall below ``exp(-40)``; it is evaluated with numpy in log space.
When that would take more than ``_MAX_TERMS`` terms (``max(a, b) / min(a, b)`` beyond ~75,
i.e. a young table with an extreme ``alpha / beta``), a Gauss-Legendre quadrature of the
same expectation over the remaining lifetime takes over (:func:`_alive_pmf_quadrature`;
agrees with the series to ~1e-13 where both run).  ``P(X = 0)`` from either route agrees
with the closed form above to ~1e-15 (a test), and the PMF with a 2-D quadrature of the
individual-level PMF over the full posterior (mpmath, 6 digits checked).

>>> sample = ParetoNbdParams(r=0.5533, alpha=10.578, s=0.6062, beta=11.668)
>>> round(p_no_purchase(sample, 13.0, 2, 30.43, 38.86), 4)
0.6331
>>> [round(v, 4) for v in purchase_count_pmf(sample, 13.0, 2, 30.43, 38.86, 2)]
[0.6331, 0.2424, 0.0869]
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammaln, roots_legendre

from models.learn.btyd_data import check_history
from models.learn.hypergeometric import hyp2f1_1_scalar
from models.learn.pareto_nbd import ParetoNbdParams, expected_purchases_if_alive, p_alive

__all__ = ["next_order_quantile", "p_no_purchase", "purchase_count_interval"]
__all__ += ["purchase_count_pmf"]

_MAX_COUNT = 100_000  # purchase_count_interval: give up beyond this many purchases
_LOG_TAIL = 40.0  # series truncation: drop mixture weights below ~exp(-40) = 4e-18
_MAX_TERMS = 3000  # mixture terms, beyond which the quadrature takes over
_MAX_DOUBLINGS = 200  # next_order_quantile: bracket search up to 2^200 time units


def _check_horizon(t: float) -> None:
    if not 0.0 <= t < math.inf:
        raise ValueError(f"horizon t must be finite and >= 0, got {t!r}")


def _pi(big_a: float, s: float, a: float, b: float) -> float:
    """``E[lambda / (lambda+mu)]`` for ``lambda ~ Gamma(A, a)``, ``mu ~ Gamma(s, b)``."""
    c = big_a + s + 1.0
    if a >= b:
        return big_a * b / (a * (big_a + s)) * hyp2f1_1_scalar(big_a + 1.0, c, b / a)
    return big_a / (big_a + s) * hyp2f1_1_scalar(s, c, a / b)


def _buy_if_alive(params: ParetoNbdParams, t: float, x: float, T: float,
                  pi_now: float | None = None) -> float:
    """``P(X(T, T+t) >= 1 | alive at T) = Pi(a, b) - D Pi(a+t, b+t)`` (module docstring);
    ``pi_now`` is ``Pi(a, b)`` if already known."""
    big_a, s = params.r + x, params.s
    a, b = params.alpha + T, params.beta + T
    if pi_now is None:
        pi_now = _pi(big_a, s, a, b)
    log_d = big_a * (math.log(a) - math.log(a + t)) + s * (math.log(b) - math.log(b + t))
    far = math.exp(log_d) * _pi(big_a, s, a + t, b + t) if log_d > -745.0 else 0.0
    return min(max(pi_now - far, 0.0), 1.0)


def p_no_purchase(params: ParetoNbdParams, t: float, x: float, t_x: float, T: float,
                  alive: float | None = None) -> float:
    """P(X(T, T+t) = 0 | x, t_x, T) = 1 - P_A (Pi(a, b) - D Pi(a+t, b+t)) (module docstring).

    Two ``2F1`` calls on top of :func:`p_alive`'s two.  Raises ``ValueError`` on an invalid
    history or a negative / infinite horizon.

    >>> p_no_purchase(ParetoNbdParams(0.5533, 10.578, 0.6062, 11.668), 0.0, 2, 30.43, 38.86)
    1.0
    """
    check_history(x, t_x, T)
    _check_horizon(t)
    if t == 0.0:
        return 1.0
    p_a = p_alive(params, x, t_x, T) if alive is None else alive
    return 1.0 - p_a * _buy_if_alive_memo(params, t, x, T)


#: ``(params, t, x, T)`` and ``(params, x, T)`` results kept by the memoised helpers below:
#: what does not depend on ``t_x`` is shared by every history with the same ``x`` and ``T``
#: (a third as many as the ``(x, t_x, T)`` histories in a CDNOW replay)
_MEMO = 1 << 14


@lru_cache(maxsize=_MEMO)
def _buy_if_alive_memo(params: ParetoNbdParams, t: float, x: float, T: float) -> float:
    return _buy_if_alive(params, t, x, T)


@lru_cache(maxsize=_MEMO)
def _pi_now(params: ParetoNbdParams, x: float, T: float) -> float:
    return _pi(params.r + x, params.s, params.alpha + T, params.beta + T)


def _mixture(params: ParetoNbdParams, x: float, T: float
             ) -> tuple[list[float], float, bool, float] | None:
    """Weights ``NB(j; shape, p)`` (truncated below ~4e-18 past the mean), the mixed
    Gamma's base shape (``A`` or ``s``), whether ``lambda`` is the mixed one, and the rate;
    ``None`` if that would take more than ``_MAX_TERMS`` terms."""
    big_a, s = params.r + x, params.s
    a, b = params.alpha + T, params.beta + T
    shape, p = (s, b / a) if a >= b else (big_a, a / b)
    y = 1.0 - p
    log_w = shape * math.log(p)
    weights = [math.exp(log_w)]
    if y > 0.0:
        log_y, mean = math.log(y), shape * y / p
        if mean + 8.0 * math.sqrt(shape * y) / p - _LOG_TAIL / log_y > _MAX_TERMS:
            return None
        j = 0
        while j < _MAX_TERMS and (j < mean or log_w > -_LOG_TAIL):
            log_w += math.log((shape + j) / (j + 1.0)) + log_y
            j += 1
            weights.append(math.exp(log_w))
    return weights, shape, a < b, max(a, b)


def _alive_pmf_series(params: ParetoNbdParams, t: float, x: float, n_max: int,
                      mixture: tuple[list[float], float, bool, float]) -> np.ndarray:
    """``P(X = k | alive)``, ``k <= n_max``, by the mixture series (module docstring)."""
    weights, shape, mixed_lambda, rate = mixture
    rows = _series_rows if n_max <= _SERIES_MEMO_MAX else _series_rows.__wrapped__
    log_steps, ratio, spread = rows(params, x, n_max, len(weights), shape, mixed_lambda)
    big_r = params.r + x + params.s + np.arange(float(len(weights)))  # L + M
    log_w = math.log(t) - math.log(rate + t)
    steps = np.empty((n_max + 1, len(weights)))
    steps[0] = big_r * (math.log(rate) - math.log(rate + t))  # log (1-w)^R = log NB(0)
    steps[1:] = log_steps  # log NB(k+1) - log NB(k) - log w
    np.cumsum(steps, axis=0, out=steps)
    steps += _k_column(n_max) * log_w
    nb = np.exp(steps)  # P(N = k)
    tail = 1.0 - np.cumsum(nb, axis=0)  # P(N > k)
    comp = ratio * (nb + spread * np.maximum(tail, 0.0))
    out: np.ndarray = comp @ np.array(weights)
    return out


#: the longest series whose rows are memoised (about 24 bytes per count and term each), so
#: the memo stays within a few MB whatever the customers
_SERIES_MEMO_MAX = 256


@lru_cache(maxsize=_MEMO >> 2)
def _series_rows(params: ParetoNbdParams, x: float, n_max: int, n_terms: int, shape: float,
                 mixed_lambda: bool) -> tuple[np.ndarray, ...]:
    """What :func:`_alive_pmf_series` needs that does not depend on ``t`` or on the rate
    (the same element by element as computing it there; read-only, memoised): the steps
    ``log(R+k) - log(k+1)`` of ``log NB(k)``, ``(L)_k / (R)_k`` and ``M / (R+k)``."""
    j = np.arange(float(n_terms))
    big_r = params.r + x + params.s + j  # L + M
    big_l = shape + j if mixed_lambda else np.full_like(j, params.r + x)
    i, log_i1 = _steps(n_max)
    log_r = np.log(big_r + i)  # row i: log(R+i), i = 0..n_max-1
    log_steps = log_r - log_i1
    ratio_steps = np.zeros((n_max + 1, n_terms))
    np.subtract(np.log(big_l + i), log_r, out=ratio_steps[1:])  # log (L+k)/(R+k)
    np.cumsum(ratio_steps, axis=0, out=ratio_steps)
    ratio = np.exp(ratio_steps)  # (L)_k / (R)_k
    spread = (big_r - big_l) / (big_r + _k_column(n_max))
    return _frozen(log_steps, ratio, spread)


def _alive_pmf_quadrature(params: ParetoNbdParams, t: float, x: float, T: float,
                          n_max: int) -> np.ndarray:
    """``P(X = k | alive)`` for extreme ``(alpha+T) / (beta+T)``, where the series is long.

    Conditioning on the remaining lifetime ``tau`` (Lomax: ``P(tau > u) = (b/(b+u))^s``),
    ``P(X = k | alive) = (b/(b+t))^s NB_k(t) + int_0^t NB_k(u) s b^s (b+u)^-(s+1) du`` with
    ``NB_k(u) = Gamma(A+k) / (Gamma(A) k!) (a/(a+u))^A (u/(a+u))^k``; the integral is done by
    Gauss-Legendre in ``v = log(1 + u/min(a, b))``, which moves both singularities
    (``u = -a, -b``) to ``Im v = pi`` or ``-inf``.
    """
    big_a, s = params.r + x, params.s
    a, b = params.alpha + T, params.beta + T
    m = min(a, b)
    nodes, gl_weights = _legendre(min(1 << (64 + 2 * n_max).bit_length(), 2048))
    half = 0.5 * math.log1p(t / m)
    v = half * (nodes + 1.0)
    u = np.append(m * np.expm1(v), t)  # last column: u = t for the "alive at T+t" term
    k = _k_column(n_max)
    log_nb = (gammaln(big_a + k) - gammaln(big_a) - gammaln(k + 1.0)
              + big_a * (math.log(a) - np.log(a + u)) + k * (np.log(u) - np.log(a + u)))
    log_f = math.log(s) + s * math.log(b) - (s + 1.0) * np.log(b + u[:-1]) + np.log(m) + v
    inner = np.exp(log_nb[:, :-1] + log_f) @ (half * gl_weights)
    out: np.ndarray = inner + np.exp(log_nb[:, -1] + s * (math.log(b) - math.log(b + t)))
    return out


def purchase_count_pmf(params: ParetoNbdParams, t: float, x: float, t_x: float, T: float,
                       n_max: int, alive: float | None = None) -> list[float]:
    """``[P(X(T, T+t) = k | x, t_x, T) for k in 0..n_max]`` (module docstring's series).

    ``O(n_max * J)`` work for ``J`` mixture terms (about 10-30 for typical customers, where
    ``T`` brings ``alpha+T`` and ``beta+T`` close), as a few numpy operations in log space.
    Beyond ``_MAX_TERMS`` terms (``max/min`` of the two rates above ~100) a quadrature of
    the same expectation takes over (:func:`_alive_pmf_quadrature`).

    >>> pmf = purchase_count_pmf(ParetoNbdParams(0.5533, 10.578, 0.6062, 11.668),
    ...                          52.0, 0, 0.0, 38.86, 400)
    >>> round(sum(pmf), 12), round(pmf[0], 4)
    (1.0, 0.9201)
    """
    check_history(x, t_x, T)
    _check_horizon(t)
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, got {n_max!r}")
    if t == 0.0:
        return [1.0] + [0.0] * n_max
    p_a = p_alive(params, x, t_x, T) if alive is None else alive
    out = p_a * _alive_pmf(params, t, x, T, n_max)
    out[0] += 1.0 - p_a
    pmf: list[float] = out.tolist()
    return pmf


@lru_cache(maxsize=_MEMO)
def _alive_pmf(params: ParetoNbdParams, t: float, x: float, T: float, n_max: int
               ) -> np.ndarray:
    """``P(X(T, T+t) = k | alive at T)``, ``k <= n_max`` (read-only: memoised; it does not
    depend on ``t_x``)."""
    mixture = _mixture(params, x, T)
    if mixture is None:
        if_alive = _alive_pmf_quadrature(params, t, x, T, n_max)
    else:
        if_alive = _alive_pmf_series(params, t, x, n_max, mixture)
    return _frozen(if_alive)[0]


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for arr in arrays:
        arr.flags.writeable = False  # cached: shared between calls
    return arrays


@lru_cache(maxsize=8)
def _legendre(n: int) -> tuple[np.ndarray, ...]:
    return _frozen(*roots_legendre(n))


@lru_cache(maxsize=64)
def _steps(n_max: int) -> tuple[np.ndarray, ...]:
    i = np.arange(float(n_max))[:, None]
    return _frozen(i, np.log(i + 1.0))


@lru_cache(maxsize=64)
def _k_column(n_max: int) -> np.ndarray:
    return _frozen(np.arange(n_max + 1.0)[:, None])[0]


def purchase_count_interval(params: ParetoNbdParams, t: float, x: float, t_x: float,
                            T: float, level: float = 0.8, alive: float | None = None
                            ) -> tuple[float, float]:
    """Equal-tailed ``level`` interval of X(T, T+t): its ``(1-level)/2`` and ``(1+level)/2``
    quantiles (smallest ``k`` with ``P(X <= k) >= q``), as floats.

    >>> purchase_count_interval(ParetoNbdParams(0.5533, 10.578, 0.6062, 11.668),
    ...                         13.0, 2, 30.43, 38.86)
    (0.0, 2.0)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    n = _first_guess(params, t, x, T)
    while True:
        pmf = purchase_count_pmf(params, t, x, t_x, T, n, alive)
        cdf, lo = 0.0, None
        for k, p in enumerate(pmf):
            cdf += p
            if lo is None and cdf >= lo_q - 1e-12:
                lo = float(k)
            if cdf >= hi_q - 1e-12:
                return (lo if lo is not None else float(k)), float(k)
        if n >= _MAX_COUNT:
            raise ValueError("purchase count quantile beyond the supported range")
        n *= 4


@lru_cache(maxsize=_MEMO >> 2)
def _first_guess(params: ParetoNbdParams, t: float, x: float, T: float) -> int:
    """:func:`purchase_count_interval`'s first number of counts, usually enough (memoised:
    it does not depend on ``t_x``)."""
    mean = expected_purchases_if_alive(params, t, x, T)  # validates t; no 2F1
    return int(2.0 * mean + 6.0 * math.sqrt(mean)) + 6


def next_order_quantile(params: ParetoNbdParams, q: float, x: float, t_x: float, T: float,
                        alive: float | None = None) -> float | None:
    """Smallest ``t`` with ``P(X(T, T+t) >= 1 | x, t_x, T) >= q``, or ``None`` if never.

    ``P(X >= 1) = P_A (Pi(a, b) - D(t) Pi(a+t, b+t))`` increases to ``P_A Pi(a, b)`` (the
    probability of ever buying again) as ``t -> inf``: ``None`` when ``q`` is at or above
    that limit, else the root of the monotone function by ``brentq`` on a doubling bracket.

    >>> sample = ParetoNbdParams(0.5533, 10.578, 0.6062, 11.668)
    >>> [round(next_order_quantile(sample, q, 2, 30.43, 38.86), 2) for q in (0.2, 0.5)]
    [5.53, 23.76]
    >>> next_order_quantile(sample, 0.8, 2, 30.43, 38.86) is None  # limit: 0.7046
    True
    """
    check_history(x, t_x, T)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    if q == 0.0:
        return 0.0
    p_a = p_alive(params, x, t_x, T) if alive is None else alive
    pi_now = _pi_now(params, x, T)
    if q >= p_a * pi_now:  # also when p_alive underflows to 0
        return None
    target = q / p_a

    def gap(t: float) -> float:
        return _buy_if_alive(params, t, x, T, pi_now) - target

    lo, hi = 0.0, 1.0
    for _ in range(_MAX_DOUBLINGS):
        # the bracket's ends do not depend on q or t_x: memoised (the 50% and 80% dates,
        # and every history with this x and T, share them)
        if _buy_if_alive_memo(params, hi, x, T) - target >= 0.0:
            root: float = brentq(gap, lo, hi, xtol=1e-9, rtol=1e-12)
            return root
        lo, hi = hi, 2.0 * hi
    return None
