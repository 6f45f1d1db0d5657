"""Incremental RFM customer segmentation with a JSON-serialisable snapshot.

Features are the raw, non-negative ``recency_days``, ``frequency`` and ``monetary``
values of a customer.  Each is mapped to log space with ``log1p``; distances are
measured after standardising with running (Welford) statistics.  Centres are kept in
*log* space, not standardised space, so they keep their meaning while the scaler
statistics drift; the standardisation only weights the distance:
``sum(((x_log - c_log) / sd) ** 2)``.

Life cycle: (1) warm-up buffers the first ``warmup`` points (log space); when it is full
the centres come from batch k-means (k-means++ seeding with ``default_rng(seed)``, Lloyd
iterations, best of 10 by inertia) and the buffer is dropped.  (2) Then sequential
(MacQueen) k-means: the nearest centre moves towards the point by ``1 / count``, or by
``max_step`` when that is larger, so mature centres can follow slow drift.  (3) ``refit``
replaces centres, counts and scaler statistics with a batch k-means over a whole table.
A model that has centres keeps their ids: Lloyd iterations warm-started from the old
centres win unless the fresh k-means is more than ``WARM_SLACK`` better in inertia, and
fresh centres are matched to the old ones (:func:`~models.learn.segment_names.align`), so
a customer's segment changes only when the customer (or the population) does.

Names (:meth:`SegmentModel.segment_names`) come from the rule table of
:mod:`models.learn.segment_names`: each centre is placed among the customers of the last
warm-up or refit (their quintile cuts, kept in the snapshot as ``reference``), a name is
used only when its predicate holds, and the names fixed at the last refit (``names``) are
kept while they still hold within a small slack.

Deterministic: features are visited in ``FEATURES`` order, ties go to the lowest centre
index and no set/hash ordering is used, so results do not depend on ``PYTHONHASHSEED``.

>>> import random
>>> rng = random.Random(7)
>>> model = SegmentModel(n_clusters=5, warmup=50)
>>> for _ in range(200):
...     model.learn_one({
...         "recency_days": rng.expovariate(1 / 30),
...         "frequency": rng.randint(1, 20),
...         "monetary": rng.uniform(5, 500),
...     })
>>> model.is_ready
True
>>> snapshot = model.to_dict()
>>> customer = {"recency_days": 3.0, "frequency": 12, "monetary": 250.0}
>>> segment = model.predict_one(customer)
>>> 0 <= segment < 5
True
>>> model.to_dict() == snapshot  # predict_one does not touch the model
True
>>> SegmentModel.from_dict(snapshot).predict_one(customer) == segment
True
>>> names = model.segment_names()
>>> sorted(names) == list(range(5)) and set(names.values()) <= set(SEGMENT_NAMES)
True
>>> SegmentModel().predict_one(customer)  # no centres yet: always 0
0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal

import numpy as np
import numpy.typing as npt
from river import base

from models.learn.kmeans import TOL, _lloyd, kmeans, sq_dists
from models.learn.segment_names import FEATURES, SEGMENT_NAMES, Reference, align, name_centres

__all__ = ["FEATURES", "SEGMENT_NAMES", "SegmentModel", "name_churn"]

FORMAT_VERSION = 1
_SD_FLOOR = 1e-6  # smallest standard deviation used for a feature (log units)
_DISTANCE_SD_FLOOR = 0.1  # the same for distance_one (log units: about 10%)
_WARMUP_N_INIT = 10
_WARMUP_MAX_ITER = 100
#: a refit keeps the warm start from the old centres unless a fresh k-means is this much
#: better (relative inertia): stability over a marginally lower objective
WARM_SLACK = 0.02

FloatArray = npt.NDArray[np.float64]


class SegmentModel(base.Clusterer):
    """Streaming k-means over standardised log RFM features.

    Parameters
    ----------
    n_clusters
        Number of segments, 5 to 7.
    seed
        Seed of the ``numpy.random.Generator`` used by every batch k-means
        (warm-up initialisation and ``refit``).
    warmup
        Number of points buffered before the centres are initialised (at least
        ``n_clusters``).  The buffer is part of the snapshot.
    max_step
        Lower bound, in (0, 1], on the MacQueen step ``1 / count``.  ``None`` (default)
        gives the plain running mean of each centre; e.g. ``0.01`` keeps every centre an
        exponential moving average over roughly the last 100 assigned points.

    Input dicts must contain every key of ``FEATURES`` with a finite, non-negative
    number; other keys are ignored.  ``predict_one`` returns 0 until the model
    ``is_ready`` (has centres).
    """

    def __init__(
        self, n_clusters: int = 6, seed: int = 42, warmup: int = 500, max_step: float | None = None
    ) -> None:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int):
            raise TypeError(f"n_clusters must be an int, got {n_clusters!r}")
        if not 5 <= n_clusters <= 7:
            raise ValueError(f"n_clusters must be between 5 and 7, got {n_clusters}")
        if warmup < n_clusters:
            raise ValueError(f"warmup must be >= n_clusters ({n_clusters}), got {warmup}")
        if max_step is not None and not 0.0 < max_step <= 1.0:
            raise ValueError(f"max_step must be None or in (0, 1], got {max_step}")
        self.n_clusters = n_clusters
        self.seed = seed
        self.warmup = warmup
        self.max_step = max_step
        dim = len(FEATURES)
        self._n = 0  # points seen by the scaler
        self._mean = [0.0] * dim  # running mean of log1p features
        self._m2 = [0.0] * dim  # running sum of squared deviations (Welford)
        self._centres: list[list[float]] = []  # log space
        self._counts: list[int] = []
        self._buffer: list[list[float]] = []  # log space, warm-up only
        self._reference: Reference | None = None  # customers' quintiles at the last fit
        self._names: list[str] | None = None  # names fixed at the last fit

    @staticmethod
    def _log(x: Mapping[str, float]) -> list[float]:
        out = []
        for name in FEATURES:
            v = float(x[name])
            if not (v >= 0.0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number >= 0, got {x[name]!r}")
            out.append(math.log1p(v))
        return out

    def _sd(self) -> list[float]:
        if self._n == 0:
            return [1.0] * len(FEATURES)
        return [max(math.sqrt(m2 / self._n), _SD_FLOOR) for m2 in self._m2]

    def _standardise(self, z: list[float]) -> list[float]:
        return [(v - m) / s for v, m, s in zip(z, self._mean, self._sd(), strict=True)]

    def _nearest(self, z: list[float]) -> int:
        """Nearest centre in standardised space; ties go to the lowest index."""
        (z0, z1, z2), (w0, w1, w2) = z, [1.0 / (s * s) for s in self._sd()]
        best, best_d = 0, math.inf
        for j, (c0, c1, c2) in enumerate(self._centres):
            a, b, c = z0 - c0, z1 - c1, z2 - c2
            d = a * a * w0 + b * b * w1 + c * c * w2
            if d < best_d:
                best, best_d = j, d
        return best

    def _fit_batch(self, z_log: FloatArray, n_init: int, max_iter: int) -> None:
        """Batch k-means; new centres take the ids of the old ones they match, names are
        fixed from the rule table (keeping the matched old names while they hold)."""
        old = self._centres
        previous = self.segment_names() if old else {}
        mean = np.asarray(self._mean, dtype=np.float64)
        sd = np.asarray(self._sd(), dtype=np.float64)
        x = (z_log - mean) / sd
        centres, labels = kmeans(x, self.n_clusters, self.seed, n_init, max_iter)
        order = list(range(self.n_clusters))
        if len(old) == self.n_clusters:  # warm start from the old centres: kept if near-best
            warm, warm_inertia = _lloyd(x, (np.asarray(old) - mean) / sd, max_iter,
                                        TOL * float(x.var(axis=0).mean()))
            inertia = float(sq_dists(x, centres).min(axis=1).sum())
            if warm_inertia <= (1.0 + WARM_SLACK) * inertia:
                centres, labels = warm, np.argmin(sq_dists(x, warm), axis=1)
            else:
                order = align(np.asarray(old), centres * sd + mean, sd)
        counts = np.bincount(labels, minlength=self.n_clusters)
        centres = centres * sd + mean
        self._centres = centres[order].tolist()
        self._counts = counts[order].tolist()
        self._buffer = []
        self._reference = Reference.from_log(z_log)
        self._names = name_centres(
            self._raw_centres(), self._reference, [previous.get(j) for j in range(len(order))])

    def _raw_centres(self) -> list[list[float]]:
        return [[math.expm1(v) for v in c] for c in self._centres]

    def learn_one(self, x: dict[str, float]) -> None:  # type: ignore[override]
        """Update the scaler, then the warm-up buffer or the nearest centre."""
        z = self._log(x)
        self._n += 1
        n = self._n
        mean, m2 = self._mean, self._m2
        for i, zi in enumerate(z):
            delta = zi - mean[i]
            mean[i] += delta / n
            m2[i] += delta * (zi - mean[i])
        if not self._centres:
            self._buffer.append(z)
            if len(self._buffer) >= self.warmup:
                self._fit_batch(np.asarray(self._buffer), _WARMUP_N_INIT, _WARMUP_MAX_ITER)
            return
        j = self._nearest(z)
        self._counts[j] += 1
        step = 1.0 / self._counts[j]
        if self.max_step is not None and step < self.max_step:
            step = self.max_step
        c = self._centres[j]
        for i, zi in enumerate(z):
            c[i] += step * (zi - c[i])

    def predict_one(self, x: dict[str, float]) -> int:  # type: ignore[override]
        """Index of the nearest centre; pure.  Returns 0 before the model is ready."""
        z = self._log(x)
        if not self._centres:
            return 0
        return self._nearest(z)

    def distance_one(self, x: Mapping[str, float]) -> float:
        """Distance to the nearest centre (pure; 0.0 before ready), in the log sds of the
        customers at the last warm-up or refit (:attr:`reference`), not the running ones: a
        drift signal must not rescale itself with the drift (models.learn.drift)."""
        z = self._log(x)
        if not self._centres:
            return 0.0
        c = self._centres[self._nearest(z)]
        # a feature all but constant at that fit (every customer bought once) would make
        # any move in it enormous: its sd counts as at least _DISTANCE_SD_FLOOR
        sd = [max(v, _DISTANCE_SD_FLOOR) for v in self.reference.sd]
        return math.sqrt(sum(((a - b) / s) ** 2 for a, b, s in zip(z, c, sd, strict=True)))

    def refit(
        self, rows: Sequence[Mapping[str, float]], n_init: int = 10, max_iter: int = 100
    ) -> None:
        """Batch k-means over ``rows``, replacing centres, counts and scaler statistics.

        Deterministic for given rows, ``seed`` and previous centres: when the model has
        centres, new centre ``j`` is the one matched to old centre ``j``
        (:func:`~models.learn.segment_names.align`), so ids and names carry over.  Drops
        any warm-up buffer.
        """
        if len(rows) < self.n_clusters:
            raise ValueError(f"refit needs at least {self.n_clusters} rows, got {len(rows)}")
        if n_init < 1 or max_iter < 1:
            raise ValueError("n_init and max_iter must be >= 1")
        z_log = np.asarray([self._log(r) for r in rows], dtype=np.float64)
        mean = z_log.mean(axis=0)
        self._n = len(rows)
        self._mean = mean.tolist()
        self._m2 = ((z_log - mean) ** 2).sum(axis=0).tolist()
        self._fit_batch(z_log, n_init, max_iter)

    @property
    def is_ready(self) -> bool:
        """True once centres exist (after warm-up or ``refit``)."""
        return bool(self._centres)

    def transform_one(self, x: Mapping[str, float]) -> tuple[float, ...]:
        """``log1p`` of each feature in ``FEATURES`` order, standardised (pure).

        With no data seen yet the statistics are mean 0, sd 1.
        """
        return tuple(self._standardise(self._log(x)))

    @property
    def reference(self) -> Reference:
        """The customers' quintile cuts the names are judged against: those of the last
        warm-up or refit, or (a snapshot from before they were kept) a normal approximation
        from the scaler."""
        if self._reference is not None:
            return self._reference
        return Reference.from_scaler(self._mean, self._sd())

    def segment_names(self) -> dict[int, str]:
        """Name of each centre id by :func:`~models.learn.segment_names.name_centres` (the
        names fixed at the last fit are kept while they hold); {} before ready.  Names may
        repeat; a name whose predicate holds for no centre is not used."""
        if not self._centres:
            return {}
        names = name_centres(self._raw_centres(), self.reference, self._names)
        return dict(enumerate(names))

    def describe(self) -> list[dict[str, object]]:
        """Per centre: id, name, count and the centre in original units."""
        names = self.segment_names()
        return [
            {
                "id": j,
                "name": names[j],
                "count": self._counts[j],
                "centre": {f: math.expm1(v) for f, v in zip(FEATURES, c, strict=True)},
            }
            for j, c in enumerate(self._centres)
        ]

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable snapshot (plain ints, floats and lists)."""
        return {
            "format": FORMAT_VERSION,
            "features": list(FEATURES),
            "n_clusters": self.n_clusters,
            "seed": self.seed,
            "warmup": self.warmup,
            "max_step": self.max_step,
            "n_seen": self._n,
            "mean": list(self._mean),
            "m2": list(self._m2),
            "centres": [list(c) for c in self._centres],
            "counts": list(self._counts),
            "buffer": [list(z) for z in self._buffer],
            "reference": None if self._reference is None else self._reference.to_dict(),
            "names": None if self._names is None else list(self._names),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> SegmentModel:
        """Rebuild a model from ``to_dict()`` output (numbers may be ``Decimal``)."""
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported snapshot format {d.get('format')!r}")
        if _list(d.get("features")) != list(FEATURES):
            raise ValueError(f"snapshot features {d.get('features')!r} != {list(FEATURES)}")
        max_step = d.get("max_step")
        model = cls(
            n_clusters=_int(d["n_clusters"]),
            seed=_int(d["seed"]),
            warmup=_int(d["warmup"]),
            max_step=None if max_step is None else _float(max_step),
        )
        model._n = _int(d["n_seen"])
        model._mean = _vector(d["mean"])
        model._m2 = _vector(d["m2"])
        model._centres = [_vector(c) for c in _list(d["centres"])]
        model._counts = [_int(c) for c in _list(d["counts"])]
        model._buffer = [_vector(z) for z in _list(d["buffer"])]
        reference, names = d.get("reference"), d.get("names")  # absent in older snapshots
        if isinstance(reference, Mapping):
            model._reference = Reference.from_dict(reference)
        if names is not None:
            model._names = [str(n) for n in _list(names)]
        if len(model._centres) not in (0, model.n_clusters):
            raise ValueError(f"snapshot has {len(model._centres)} centres")
        if len(model._counts) != len(model._centres) or (model._centres and model._buffer):
            raise ValueError("inconsistent snapshot: counts/centres/buffer")
        if model._names is not None and len(model._names) != len(model._centres):
            raise ValueError("inconsistent snapshot: names/centres")
        return model


def name_churn(model: SegmentModel, rows: Sequence[dict[str, float]],
               new_rows: Sequence[dict[str, float]], seed: int | None = None) -> float:
    """Share of customers whose segment name changes at a refit: ``rows`` named by
    ``model`` as it is, against ``new_rows`` (the same customers, in the same order) named
    by a copy refitted on them, optionally with another ``seed``.  ``model`` is not
    changed.  A measurement for tests: with no new purchases (recency grown by some days,
    or another seed) it should stay small.

    >>> model = SegmentModel(n_clusters=5)
    >>> rows = [{"recency_days": float(d), "frequency": float(1 + d % 7),
    ...          "monetary": float(10 + d % 13)} for d in range(300)]
    >>> model.refit(rows)
    >>> name_churn(model, rows, rows, seed=1)
    0.0
    """
    if len(rows) != len(new_rows):
        raise ValueError("rows and new_rows must be the same customers")
    names = model.segment_names()
    before = [names[model.predict_one(r)] for r in rows]
    after = SegmentModel.from_dict(model.to_dict())
    if seed is not None:
        after.seed = seed
    after.refit(new_rows)
    names = after.segment_names()
    changed = sum(b != names[after.predict_one(r)] for b, r in zip(before, new_rows, strict=True))
    return changed / len(rows) if rows else 0.0


def _list(v: object) -> list[object]:
    if not isinstance(v, list | tuple):
        raise ValueError(f"expected a list, got {type(v).__name__}")
    return list(v)


def _float(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)


def _int(v: object) -> int:
    f = _float(v)
    if not f.is_integer():
        raise ValueError(f"expected an integer, got {v!r}")
    return int(f)


def _vector(v: object) -> list[float]:
    out = [_float(e) for e in _list(v)]
    if len(out) != len(FEATURES):
        raise ValueError(f"expected {len(FEATURES)} values, got {len(out)}")
    return out
