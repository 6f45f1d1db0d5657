"""Gauss's hypergeometric function ``2F1(1, b; c; z)`` for ``c > b > 0``, ``0 <= z < 1``.

The Pareto/NBD likelihood (:mod:`models.learn.pareto_nbd`) needs this function for arguments up
to very close to 1 (``1 - z`` is the ratio ``min(alpha, beta) / max(alpha, beta)`` for a
customer with ``t = 0``, so extreme ratios during an optimisation, or a young table on which
the fit drifts towards "nobody drops out", ``beta -> inf``).  ``scipy.special.hyp2f1`` is
accurate to ~1e-9 for ``z <= 0.9`` (checked against mpmath), but near 1 it overflows for
``b`` above ~165 and is silently wrong (by up to 70%) when ``c - b - 1`` is close to an
integer.  So, with ``y = 1 - z``:

* ``z <= 0.9``: scipy;
* ``y < 0.1`` and ``max(b, c) * y <= 1``: the ``z -> 1 - z`` connection formula (DLMF
  15.8.4 with ``a = 1``; ``q = c - b - 1``)::

      2F1(1, b; c; z) = (c-1)/q * 2F1(1, b; 1-q; y)
                        + G(c) G(-q) / G(b) * y^q * (1-y)^(1-c)

  whose series converges in ~20 terms there and whose two terms do not cancel badly; at
  (within 1e-5 of) an integer ``q``, where both terms have poles, ``c`` is moved by
  ``+-d, +-2d`` and the four values are combined by Richardson extrapolation (error
  ``O(d^4)``; the poles' cancellation costs digits when ``b`` is in the thousands: 1e-7
  relative there, against mpmath, 1e-9 elsewhere);
* otherwise (``y < 0.1`` with large ``b`` or ``c``: a heavy buyer under an extreme
  ``alpha / beta``): the continued fraction of the incomplete beta function (modified
  Lentz, Numerical Recipes' ``betacf``), ~``10 / sqrt(y) < 10 sqrt(max(b, c))`` terms.

>>> round(float(hyp2f1_1(np.array([2.0]), np.array([3.5]), np.array([0.5]))[0]), 12)
1.438055098077
>>> round(float(hyp2f1_1(np.array([1.5]), np.array([3.5]), np.array([1e-12]))[0]), 9)  # q = 1
2.5
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.special import gammaln, gammasgn, hyp2f1

__all__ = ["hyp2f1_1", "hyp2f1_1_scalar"]

_FArray = NDArray[np.float64]
_SCIPY_MAX_Z = 0.9
_POLE = 1e-5  # |q - integer| below this: Richardson over c +- d, c +- 2d
_STEP = 2e-5  # d: every nudged q is at least 1e-5 from the integer
_SERIES_TERMS = 200
_CF_TERMS = 20_000


def _connection(b: _FArray, c: _FArray, y: _FArray) -> _FArray:
    q = c - b - 1.0
    term = np.ones_like(y)
    total = np.ones_like(y)
    for n in range(_SERIES_TERMS):
        term = term * (b + n) / (1.0 - q + n) * y
        total += term
        if bool(np.all(np.abs(term) <= 1e-17 * np.abs(total))):
            break
    log_t2 = gammaln(c) - gammaln(b) + gammaln(-q) + q * np.log(y) + (1.0 - c) * np.log1p(-y)
    out: _FArray = (c - 1.0) / q * total + gammasgn(-q) * np.exp(log_t2)
    return out


def _near_one(b: _FArray, c: _FArray, y: _FArray) -> _FArray:
    q = c - b - 1.0
    pole = (np.abs(q - np.round(q)) < _POLE) & (np.round(q) >= 0.0)
    out = np.empty_like(y)
    out[~pole] = _connection(b[~pole], c[~pole], y[~pole])
    if pole.any():
        bp, cp, yp = b[pole], c[pole], y[pole]
        near = sum(_connection(bp, cp + j * _STEP, yp) for j in (-1.0, 1.0))
        far = sum(_connection(bp, cp + j * _STEP, yp) for j in (-2.0, 2.0))
        out[pole] = (4.0 * near - far) / 6.0
    return out


def _continued_fraction(b: _FArray, c: _FArray, z: _FArray) -> _FArray:
    """``2F1(1, b; c; z) = 1 / (1 + d1 / (1 + d2 / (1 + ...)))`` with the incomplete beta
    function's coefficients for ``B_z(c - 1, b - c + 1)``."""
    p, q = c - 1.0, b - c + 1.0
    tiny = 1e-300
    f, cc, dd = np.ones_like(z), np.ones_like(z), np.zeros_like(z)
    for i in range(1, _CF_TERMS):
        m = i // 2
        if i % 2:
            d = -(p + m) * (p + q + m) * z / ((p + 2 * m) * (p + 2 * m + 1.0))
        else:
            d = m * (q - m) * z / ((p + 2 * m - 1.0) * (p + 2 * m))
        dd = 1.0 + d * dd
        dd = 1.0 / np.where(np.abs(dd) < tiny, tiny, dd)
        cc = 1.0 + d / cc
        cc = np.where(np.abs(cc) < tiny, tiny, cc)
        f = f * cc * dd
        if bool(np.all(np.abs(cc * dd - 1.0) < 1e-15)):
            break
    out: _FArray = 1.0 / f
    return out


def hyp2f1_1(b: _FArray, c: _FArray, one_minus_z: _FArray) -> _FArray:
    """``2F1(1, b; c; 1 - one_minus_z)`` elementwise for arrays of one shape with
    ``c > b > 0`` and ``0 < one_minus_z <= 1``; the argument is passed as ``1 - z`` so that
    callers can compute it without cancellation when ``z`` is close to 1."""
    b, c, y = (np.asarray(v, dtype=np.float64) for v in (b, c, one_minus_z))
    z = 1.0 - y
    out: _FArray = np.asarray(hyp2f1(1.0, b, c, np.minimum(z, _SCIPY_MAX_Z)), dtype=np.float64)
    high = z > _SCIPY_MAX_Z
    if high.any():
        bh, ch, yh = b[high], c[high], y[high]
        series = np.maximum(bh, ch) * yh <= 1.0
        vals = np.empty_like(yh)
        vals[series] = _near_one(bh[series], ch[series], yh[series])
        vals[~series] = _continued_fraction(bh[~series], ch[~series], 1.0 - yh[~series])
        out[high] = vals
    return out


def _connection_scalar(b: float, c: float, y: float) -> float:
    """:func:`_connection` for one argument, in plain ``math`` (~5 us instead of ~30)."""
    q = c - b - 1.0
    term = total = 1.0
    for n in range(_SERIES_TERMS):
        term *= (b + n) / (1.0 - q + n) * y
        total += term
        if abs(term) <= 1e-17 * abs(total):
            break
    log_t2 = (math.lgamma(c) - math.lgamma(b) + math.lgamma(-q) + q * math.log(y)
              + (1.0 - c) * math.log1p(-y))
    sign = 1.0 if q < 0.0 or math.floor(q) % 2 else -1.0  # of Gamma(-q)
    return (c - 1.0) / q * total + sign * math.exp(log_t2)


def hyp2f1_1_scalar(b: float, c: float, one_minus_z: float) -> float:
    """:func:`hyp2f1_1` for one argument: scipy's scalar call for ``z <= 0.9`` (~2 us),
    the connection formula in plain ``math`` near 1 (~5-20 us), else the continued
    fraction (arrays of one).

    >>> hyp2f1_1_scalar(1.5, 3.5, 1e-12) == float(hyp2f1_1(*(np.array([v]) for v in
    ...                                                      (1.5, 3.5, 1e-12)))[0])
    True
    """
    y = one_minus_z
    if 1.0 - y <= _SCIPY_MAX_Z:
        return float(hyp2f1(1.0, b, c, 1.0 - y))
    if max(b, c) * y > 1.0:
        return float(_continued_fraction(*(np.array([v]) for v in (b, c, 1.0 - y)))[0])
    q = c - b - 1.0
    if abs(q - round(q)) < _POLE and round(q) >= 0:
        near = sum(_connection_scalar(b, c + j * _STEP, y) for j in (-1.0, 1.0))
        far = sum(_connection_scalar(b, c + j * _STEP, y) for j in (-2.0, 2.0))
        return (4.0 * near - far) / 6.0
    return _connection_scalar(b, c, y)
