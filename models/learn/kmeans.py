"""Batch k-means: k-means++ seeding and Lloyd iterations, deterministic for a seed.

Used by :class:`models.learn.segmentation.SegmentModel` at the end of its warm-up and at
each refit over the whole customer table. The seeding is the greedy k-means++ of
Arthur & Vassilvitskii (2007) with ``2 + log k`` candidates per centre, as in
scikit-learn's ``_kmeans_plusplus``; the stopping rule is scikit-learn's (total squared
centre shift at most ``TOL`` times the mean feature variance). Distances are summed
feature by feature in a fixed order and ties go to the lowest centre index, so results
do not depend on BLAS or hash ordering.

>>> import numpy as np
>>> x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
>>> centres, labels = kmeans(x, k=2, seed=0, n_init=3, max_iter=50)
>>> sorted(np.round(centres, 2).tolist())
[[0.05, 0.0], [5.05, 5.0]]
>>> int(labels[0] == labels[1]), int(labels[0] == labels[2])
(1, 0)
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["TOL", "kmeans", "sq_dists"]

#: Lloyd stops when the total squared centre shift <= TOL * mean feature variance
TOL = 1e-4

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


def sq_dists(x: FloatArray, centres: FloatArray) -> FloatArray:
    """Squared distances, shape (n, k); summed feature by feature in a fixed order."""
    out = np.zeros((centres.shape[0], x.shape[0]), dtype=np.float64)
    for j, c in enumerate(centres):
        for col, ci in zip(x.T, c, strict=True):
            diff = col - ci
            out[j] += diff * diff
    return out.T


def _kmeans_pp(x: FloatArray, k: int, rng: np.random.Generator) -> FloatArray:
    """Greedy k-means++ seeding (2 + log k candidates per centre, as in scikit-learn)."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(n))]
    closest = sq_dists(x, x[chosen])[:, 0]
    for _ in range(1, k):
        potential = float(closest.sum())
        if potential > 0.0:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * potential)
            cand = np.minimum(cand, n - 1)
        else:
            cand = rng.integers(n, size=trials)
        cand_closest = np.minimum(closest[:, None], sq_dists(x, x[cand]))
        best = int(np.argmin(cand_closest.sum(axis=0)))
        chosen.append(int(cand[best]))
        closest = cand_closest[:, best]
    return x[chosen].copy()


def _lloyd(
    x: FloatArray, centres: FloatArray, max_iter: int, tol: float
) -> tuple[FloatArray, float]:
    """Lloyd iterations until labels repeat or centres move less than ``tol`` in total."""
    k = centres.shape[0]
    rows = np.arange(x.shape[0])
    prev: IntArray | None = None
    for _ in range(max_iter):
        dist = sq_dists(x, centres)
        labels = np.argmin(dist, axis=1)  # first minimum: ties to the lowest index
        if prev is not None and np.array_equal(labels, prev):
            break
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=col, minlength=k) for col in x.T], axis=1)
        new = sums / np.maximum(counts, 1)[:, None]
        own = dist[rows, labels]
        for j in np.flatnonzero(counts == 0):  # empty: move to the worst-served point
            far = int(np.argmax(own))
            new[j] = x[far]
            own[far] = -1.0
        shift = float(((new - centres) ** 2).sum())
        centres, prev = new, labels
        if shift <= tol:
            break
    inertia = float(sq_dists(x, centres).min(axis=1).sum())
    return centres, inertia


def kmeans(
    x: FloatArray, k: int, seed: int, n_init: int, max_iter: int
) -> tuple[FloatArray, IntArray]:
    """Best of ``n_init`` k-means++ / Lloyd runs by inertia (first wins ties)."""
    rng = np.random.default_rng(seed)
    tol = TOL * float(x.var(axis=0).mean())  # as scikit-learn: relative to the data
    best: FloatArray | None = None
    best_inertia = math.inf
    for _ in range(n_init):
        centres, inertia = _lloyd(x, _kmeans_pp(x, k, rng), max_iter, tol)
        if best is None or inertia < best_inertia:
            best, best_inertia = centres, inertia
    assert best is not None
    return best, np.argmin(sq_dists(x, best), axis=1)
