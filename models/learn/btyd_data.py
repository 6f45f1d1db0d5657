"""Input checks shared by the BTYD models (BG/NBD, Pareto/NBD): (x, t_x, T) histories in
weeks, with optional weights for aggregated rows."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

_FArray = NDArray[np.float64]


def as_data(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike, weights: ArrayLike | None
) -> tuple[_FArray, _FArray, _FArray, _FArray]:
    w = np.ones_like(np.atleast_1d(np.asarray(x, dtype=np.float64))) if weights is None else weights
    arrays = [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (x, t_x, T, w)]
    xa, ta, Ta, wa = arrays
    if any(v.ndim != 1 for v in arrays):
        raise ValueError("x, t_x, T and weights must be one-dimensional")
    if len({v.shape[0] for v in arrays}) != 1:
        raise ValueError("x, t_x, T and weights must have the same length")
    if xa.shape[0] == 0:
        raise ValueError("empty input")
    if not all(bool(np.all(np.isfinite(v) & (v >= 0.0))) for v in arrays):
        raise ValueError("x, t_x, T and weights must be finite and non-negative")
    if bool(np.any(ta > Ta)):
        raise ValueError("t_x must not exceed T")
    if not float(wa.sum()) > 0.0:
        raise ValueError("weights must have a positive sum")
    return xa, ta, Ta, wa


def check_history(x: float, t_x: float, T: float) -> None:
    if not (x >= 0.0 and 0.0 <= t_x <= T < math.inf):
        raise ValueError(f"invalid history x={x!r}, t_x={t_x!r}, T={T!r}")
