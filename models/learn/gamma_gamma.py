"""Gamma-Gamma model of the monetary value (average order value) of repeat purchases.

References: P. S. Fader, B. G. S. Hardie and K. L. Lee (2005), "RFM and CLV: Using
Iso-value Curves for Customer Base Analysis", Journal of Marketing Research 42(4),
415-430 (appendix); and P. S. Fader and B. G. S. Hardie (2013), "The Gamma-Gamma
Model of Monetary Value" (brucehardie.com/notes/025), cited below as "FH 2013".

Model (FH 2013): the value ``z_i`` of each of a customer's ``x`` repeat
transactions is ``Gamma(shape=p, rate=nu)``, i.i.d. given ``nu``, so the customer's
mean order value is ``E(Z | nu) = p / nu``; across customers ``nu ~ Gamma(shape=q,
rate=v)`` (``v`` is the note's ``gamma``).  A customer is summarised by

* ``frequency`` -- ``x``, the number of repeat purchases (purchase days minus 1),
* ``monetary``  -- ``mbar``, the mean value of those ``x`` repeat purchases (the
  first purchase is excluded, as in FH 2013).

The model assumes spend is independent of the purchase process: check with
:func:`monetary_frequency_correlation` (it should be near 0).  ``v`` is in currency
units: rescaling all amounts by ``c`` rescales ``v`` by ``c`` and leaves ``p, q``.
The module is pure (no I/O); :func:`conditional_expected_order_value` is plain
``math`` and meant to be called per customer on the hot path.

>>> round(conditional_expected_order_value(DEFAULT_PRIOR, 2, 22.35), 2)
24.66
>>> round(conditional_expected_order_value(DEFAULT_PRIOR, 0, 0.0), 2)
35.22
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.special import digamma, gammaincinv, gammaln

__all__ = ["DEFAULT_PRIOR", "MIN_CUSTOMERS", "GammaGammaParams", "conditional_expected_order_value"]
__all__ += ["fit", "log_likelihood", "monetary_frequency_correlation", "order_value_interval"]

_FArray = NDArray[np.float64]
_LOG_BOUND = 30.0  # optimiser box on log-parameters, as in models.learn.bgnbd
MIN_CUSTOMERS = 3  # fewest usable (x >= 1, mbar > 0) customers fit() accepts


@dataclass(frozen=True, slots=True)
class GammaGammaParams:
    """Gamma-Gamma parameters: ``z ~ Gamma(p, nu)``, ``nu ~ Gamma(q, v)`` (FH 2013).

    >>> GammaGammaParams.from_dict({"p": 6, "q": 3, "v": 15}).to_dict()
    {'p': 6.0, 'q': 3.0, 'v': 15.0}
    >>> GammaGammaParams(6.0, 3.0, 15.0).population_mean
    45.0
    """

    p: float
    q: float
    v: float

    def __post_init__(self) -> None:
        for name in ("p", "q", "v"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"Gamma-Gamma parameter {name} must be finite and > 0: {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "v": self.v}

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> GammaGammaParams:
        return cls(p=float(d["p"]), q=float(d["q"]), v=float(d["v"]))

    @property
    def population_mean(self) -> float:
        """``E(Z) = p v / (q - 1)`` (FH 2013); ``inf`` when ``q <= 1``."""
        return self.p * self.v / (self.q - 1.0) if self.q > 1.0 else math.inf


DEFAULT_PRIOR: GammaGammaParams = GammaGammaParams(p=6.25, q=3.74, v=15.44)
"""Prior used before the first fit: the CDNOW-sample estimates published in FH 2013
(p = 6.25, q = 3.74, gamma = 15.44; US dollars of 1997, population mean
order value about $35).  ``v`` scales with the currency unit, so this is only an
order-of-magnitude starting point; :func:`fit` rescales it to the data's mean."""


def _check_scalar(frequency: float, monetary: float) -> None:
    if not (0.0 <= frequency < math.inf):
        raise ValueError(f"frequency must be finite and >= 0, got {frequency!r}")
    if frequency > 0.0 and not (0.0 <= monetary < math.inf):
        raise ValueError(f"monetary must be finite and >= 0 when frequency > 0, got {monetary!r}")


def _repeaters(frequency: ArrayLike, monetary: ArrayLike) -> tuple[_FArray, _FArray]:
    """The usable customers (``x >= 1`` and ``mbar > 0``) after validating every row."""
    x = np.atleast_1d(np.asarray(frequency, dtype=np.float64))
    m = np.atleast_1d(np.asarray(monetary, dtype=np.float64))
    if x.ndim != 1 or m.shape != x.shape:
        raise ValueError("frequency and monetary must be one-dimensional and of the same length")
    if not bool(np.all(np.isfinite(x) & (x >= 0.0))):
        raise ValueError("frequency must be finite and >= 0")
    if not bool(np.all(np.isfinite(m) & (m >= 0.0))):
        raise ValueError("monetary must be finite and >= 0 (net out refunds upstream)")
    keep = (x >= 1.0) & (m > 0.0)
    return x[keep], m[keep]


def _neg_ll_and_grad(theta: _FArray, x: _FArray, m: _FArray, scale: float) -> tuple[float, _FArray]:
    """Negative total log-likelihood (times ``scale``) and its gradient w.r.t. log-params.

    Per customer (FH 2013; FHL 2005, appendix), with ``px = p x``:
    ll = lnG(px+q) - lnG(px) - lnG(q) + q ln v + (px-1) ln mbar + px ln x - (px+q) ln(v + x mbar).
    """
    p, q, v = (float(t) for t in np.exp(theta))
    px = p * x
    ln_vxm = np.log(v + x * m)
    ln_m = np.log(m)
    ll = (gammaln(px + q) - gammaln(px) - gammaln(q) + q * math.log(v)
          + (px - 1.0) * ln_m + px * np.log(x) - (px + q) * ln_vxm)
    psi_pxq = digamma(px + q)
    d_p = x * (psi_pxq - digamma(px) + ln_m + np.log(x) - ln_vxm)
    d_q = psi_pxq - digamma(q) + math.log(v) - ln_vxm
    d_v = q / v - (px + q) / (v + x * m)
    grad = np.array([p * d_p.sum(), q * d_q.sum(), v * d_v.sum()])
    return -scale * float(ll.sum()), -scale * grad


def log_likelihood(params: GammaGammaParams, frequency: ArrayLike, monetary: ArrayLike) -> float:
    """Total Gamma-Gamma log-likelihood of the repeat customers' mean order values.

    Customers with ``frequency == 0`` or ``monetary == 0`` contribute nothing.

    >>> round(log_likelihood(DEFAULT_PRIOR, [0, 2, 1], [0.0, 22.35, 30.0]), 4)
    -7.4999
    """
    x, m = _repeaters(frequency, monetary)
    theta = np.log([params.p, params.q, params.v])
    return -_neg_ll_and_grad(theta, x, m, 1.0)[0]


def fit(
    frequency: ArrayLike,
    monetary: ArrayLike,
    *,
    initial: GammaGammaParams | None = None,
    max_iter: int = 1000,
) -> GammaGammaParams:
    """Maximum-likelihood estimate of ``(p, q, v)`` (FH 2013).

    Uses the customers with ``frequency >= 1`` and ``monetary > 0``; raises
    ``ValueError`` on negative / non-finite / ragged input or when fewer than
    :data:`MIN_CUSTOMERS` such customers remain.  L-BFGS-B on log-parameters with
    the analytic gradient; the start is ``initial`` (default :data:`DEFAULT_PRIOR`
    with ``v`` rescaled so its population mean equals the data's mean).

    Synthetic check (true p=4, q=5, v=40, i.e. mean order value 40; ``p`` and ``v``
    are only weakly identified apart, their ratio much better):

    >>> import numpy as np
    >>> rng = np.random.default_rng(3)
    >>> x = rng.integers(1, 8, 20000).astype(float)
    >>> nu = rng.gamma(5.0, 1 / 40.0, x.size)
    >>> m = rng.gamma(4.0 * x, 1 / (x * nu))  # the mean of x Gamma(4, nu) draws
    >>> fitted = fit(x, m)
    >>> {k: round(v, 1) for k, v in fitted.to_dict().items()}, round(fitted.population_mean, 1)
    ({'p': 4.1, 'q': 5.1, 'v': 40.0}, 39.7)
    """
    x, m = _repeaters(frequency, monetary)
    if x.size < MIN_CUSTOMERS:
        raise ValueError(
            f"Gamma-Gamma fit needs >= {MIN_CUSTOMERS} customers with frequency >= 1 and "
            f"monetary > 0, got {x.size}"
        )
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    if initial is None:
        p0, q0 = DEFAULT_PRIOR.p, DEFAULT_PRIOR.q
        initial = GammaGammaParams(p0, q0, float(m.mean()) * (q0 - 1.0) / p0)
    theta0 = np.clip(np.log([initial.p, initial.q, initial.v]), -_LOG_BOUND, _LOG_BOUND)
    res = minimize(
        _neg_ll_and_grad,
        theta0,
        args=(x, m, 1.0 / x.size),  # mean LL: scale-free tolerances
        jac=True,
        method="L-BFGS-B",
        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * 3,
        options={"maxiter": max_iter, "ftol": 1e-14, "gtol": 1e-10},
    )
    return GammaGammaParams(*(float(t) for t in np.exp(res.x)))


def conditional_expected_order_value(
    params: GammaGammaParams, frequency: float, monetary: float
) -> float:
    """E(M | p, q, v, x, mbar) = p (v + x mbar) / (p x + q - 1) (FH 2013; FHL 2005).

    Equivalently a weighted mean of the population mean ``p v / (q - 1)`` and the
    customer's own ``mbar`` with weight ``p x / (p x + q - 1)`` on the latter; for
    ``x == 0`` it is the population mean.  The formula is the posterior mean of
    ``p / nu`` with ``nu | data ~ Gamma(p x + q, v + x mbar)``, finite iff
    ``p x + q > 1``.  Outside that range (only possible when the fit gave
    ``q <= 1``, i.e. a spend distribution so heavy-tailed its mean is infinite):

    * ``x > 0`` and ``p x + q <= 1``: the customer's own mean ``mbar``;
    * ``x == 0`` and ``q <= 1``: the population *median* order value
      ``p v / G^-1(q, 1/2)`` (``G^-1`` the inverse regularised incomplete gamma).

    ``monetary`` is ignored when ``frequency == 0``; otherwise it must be finite and
    >= 0 (``mbar == 0``, e.g. free repeat orders, is excluded from :func:`fit`, whose
    likelihood needs ``ln mbar``, but is scored by the same formula).

    >>> P = GammaGammaParams(6.2488, 3.7446, 15.4477)  # lifetimes 0.11.3 CDNOW fit
    >>> round(conditional_expected_order_value(P, 2, 22.35), 4)
    24.6586
    >>> q_small = GammaGammaParams(0.5, 0.8, 10.0)
    >>> conditional_expected_order_value(q_small, 0, 0.0) > 0.0  # median fallback
    True
    """
    _check_scalar(frequency, monetary)
    p, q, v = params.p, params.q, params.v
    if frequency == 0.0:
        if q > 1.0:
            return p * v / (q - 1.0)
        return p * v / float(gammaincinv(q, 0.5))
    denominator = p * frequency + q - 1.0
    if denominator <= 0.0:
        return float(monetary)
    return float(p * (v + frequency * monetary) / denominator)


def order_value_interval(
    params: GammaGammaParams, frequency: float, monetary: float, level: float = 0.8
) -> tuple[float, float]:
    """Equal-tailed posterior interval of the customer's mean order value ``p / nu``.

    ``nu | x, mbar ~ Gamma(p x + q, rate = v + x mbar)`` (FH 2013, by
    conjugacy), so ``p / nu`` is inverse-gamma and its ``a`` quantile is
    ``p (v + x mbar) / G^-1(p x + q, 1 - a)``.  For ``x == 0`` this is the prior
    (population) spread.  ``monetary`` is ignored when ``frequency == 0``.

    >>> P = GammaGammaParams(6.2488, 3.7446, 15.4477)
    >>> lo, hi = order_value_interval(P, 2, 22.35)
    >>> round(lo, 2), round(hi, 2)
    (17.42, 33.15)
    """
    _check_scalar(frequency, monetary)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    shape = params.p * frequency + params.q
    scale = params.p * (params.v + (frequency * monetary if frequency > 0.0 else 0.0))
    tail = (1.0 - level) / 2.0
    scale = float(scale)
    return scale / float(gammaincinv(shape, 1.0 - tail)), scale / float(gammaincinv(shape, tail))


def monetary_frequency_correlation(frequency: ArrayLike, monetary: ArrayLike) -> float:
    """Pearson correlation of ``mbar`` and ``x`` over the repeat customers.

    The Gamma-Gamma model assumes spend is independent of the purchase process
    (FH 2013 report 0.11 on CDNOW and deem it negligible); a value
    far from 0 means the model's order-value estimates are biased.  Raises
    ``ValueError`` with fewer than :data:`MIN_CUSTOMERS` repeat customers or when
    either variable is constant (the correlation is undefined).

    >>> round(monetary_frequency_correlation([1, 2, 3, 0], [10.0, 20.0, 30.0, 0.0]), 6)
    1.0
    """
    x, m = _repeaters(frequency, monetary)
    if x.size < MIN_CUSTOMERS:
        raise ValueError(f"correlation needs >= {MIN_CUSTOMERS} repeat customers, got {x.size}")
    if float(np.ptp(x)) == 0.0 or float(np.ptp(m)) == 0.0:
        raise ValueError("correlation undefined: frequency or monetary is constant")
    return float(np.corrcoef(x, m)[0, 1])
