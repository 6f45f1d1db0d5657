"""Segment names that say what a segment is: a rule table over RFM quantiles.

A centre (``recency_days``, ``frequency`` = distinct purchase days, ``monetary`` = mean
order value; see :func:`models.features.rfm`) is placed among the *customers* of the last
refit or warm-up through their quintile cuts ``q20 < q40 < q60 < q80`` per feature
(:class:`Reference`; the cuts are customers' actual values, ``numpy.quantile`` method
``inverted_cdf``).  A name is given to a centre only when its predicate holds:

=================  ======================================================================
name               predicate (a centre, in original units)
=================  ======================================================================
New customers      recency < q20(recency) and frequency < 1.5 (one purchase day: a
                   recent *first* purchase)
Champions          recency < q20, frequency > q60 and monetary > q40
Loyal              recency < q60 and frequency > q60 (frequent, not lapsed)
Big spenders       recency < q60 and monetary > q80 (top fifth order value, not lapsed)
At risk            recency >= q60 and (frequency > q60 or monetary > q60)
Hibernating        recency >= q60, frequency <= q60 and monetary <= q60
Needs attention    anything else (the middle: no rule above holds)
=================  ======================================================================

"recent" is relative: recency below q20 means the centre bought more recently than 80%
of customers; "lapsed" (recency >= q60) means longer ago than 60% of them, or (whatever the
others did: a base that all bought long ago, like CDNOW at the end of its log) no purchase
for ``LAPSED_DAYS`` (a year). Every "not lapsed" name also needs recency under a year.  A name whose
predicate holds for no centre is simply not used, and one name may go to several
centres.  The rules are tried in the table's order; the first that holds wins.

Shared names: centres closer than ``MERGE_DISTANCE`` (Euclidean, in log1p units divided
by the reference standard deviations) are *indistinguishable*; such a group is named once,
from its mean (log space), so identical centres always share a name.  Centres are not
merged: ids stay as the k-means found them.

Stability (``previous``): a centre keeps its previous name while that name's predicate
holds with every cut relaxed by ``HYSTERESIS`` reference standard deviations (log1p
units) and no earlier rule holds with its cuts tightened by as much; otherwise the name is
fresh from the table.  So a centre near a cut does not flip at every refit.

>>> ref = Reference.from_rows([[d, f, m] for d, f, m in zip(
...     range(0, 500, 5), [1] * 50 + list(range(1, 51)), range(10, 110))])
>>> [round(c) for c in ref.cuts[0]]  # recency quintile cuts
[95, 195, 295, 395]
>>> name_centres([[10, 30, 90], [10, 1, 20], [450, 1, 15], [450, 1, 15], [450, 20, 100]],
...              ref)
['Champions', 'New customers', 'Hibernating', 'Hibernating', 'At risk']
>>> satisfies("Champions", [10, 30, 90], ref), satisfies("Loyal", [400, 30, 90], ref)
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

__all__ = ["FEATURES", "HYSTERESIS", "LAPSED_DAYS", "MERGE_DISTANCE", "ONE_TIME_MAX",
           "QUANTILES", "RULES", "SEGMENT_NAMES", "Reference", "align", "changed_share",
           "name_centres", "satisfies"]

#: the features, in this order everywhere (``SegmentModel`` takes them from here)
FEATURES: tuple[str, ...] = ("recency_days", "frequency", "monetary")
#: the reference quantiles kept per feature (quintile cuts)
QUANTILES: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
#: a centre with fewer purchase days than this bought on one day ("~1")
ONE_TIME_MAX = 1.5
#: lapsed whatever the other customers did: no purchase for a year (days)
LAPSED_DAYS = 365.0
#: centres closer than this (reference-standardised log1p units) share one name
MERGE_DISTANCE = 0.25
#: slack (reference sd, log1p units) that keeps a centre's previous name
HYSTERESIS = 0.1
_SD_FLOOR = 1e-6

#: a condition: (feature, operator, threshold); a threshold is "q20".."q80" or a number
Cond = tuple[str, str, str | float]
#: (name, conditions): a name's predicate is the OR of its rows' ANDs; order = precedence
RULES: tuple[tuple[str, tuple[Cond, ...]], ...] = (
    ("New customers", (("recency_days", "<", "q20"), ("recency_days", "<", LAPSED_DAYS),
                       ("frequency", "<", ONE_TIME_MAX))),
    ("Champions", (("recency_days", "<", "q20"), ("recency_days", "<", LAPSED_DAYS),
                   ("frequency", ">", "q60"), ("monetary", ">", "q40"))),
    ("Loyal", (("recency_days", "<", "q60"), ("recency_days", "<", LAPSED_DAYS),
               ("frequency", ">", "q60"))),
    ("Big spenders", (("recency_days", "<", "q60"), ("recency_days", "<", LAPSED_DAYS),
                      ("monetary", ">", "q80"))),
    ("At risk", (("recency_days", ">=", "q60"), ("frequency", ">", "q60"))),
    ("At risk", (("recency_days", ">=", "q60"), ("monetary", ">", "q60"))),
    ("At risk", (("recency_days", ">=", LAPSED_DAYS), ("frequency", ">", "q60"))),
    ("At risk", (("recency_days", ">=", LAPSED_DAYS), ("monetary", ">", "q60"))),
    ("Hibernating", (("recency_days", ">=", "q60"), ("frequency", "<=", "q60"),
                     ("monetary", "<=", "q60"))),
    ("Hibernating", (("recency_days", ">=", LAPSED_DAYS), ("frequency", "<=", "q60"),
                     ("monetary", "<=", "q60"))),
    ("Needs attention", ()),
)
_ORDER: tuple[str, ...] = tuple(dict.fromkeys(name for name, _ in RULES))
#: every name, in display order (the order reports and colours use; not the precedence)
SEGMENT_NAMES: tuple[str, ...] = ("Champions", "At risk", "New customers", "Hibernating",
                                  "Loyal", "Big spenders", "Needs attention")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Reference:
    """Where the customers were: quintile cuts (original units) and log1p sds per feature.

    ``cuts[i]`` are the ``QUANTILES`` of feature ``FEATURES[i]``; ``sd[i]`` the standard
    deviation of its ``log1p``.
    """

    cuts: tuple[tuple[float, ...], ...]
    sd: tuple[float, ...]

    @classmethod
    def from_log(cls, z_log: FloatArray) -> Reference:
        """From customers' ``log1p`` features (rows), as ``SegmentModel`` keeps them."""
        q = np.quantile(z_log, QUANTILES, axis=0, method="inverted_cdf")  # actual values
        sd = np.maximum(z_log.std(axis=0), _SD_FLOOR)
        return cls(tuple(tuple(round(math.expm1(v), 9) for v in col) for col in q.T),
                   tuple(float(s) for s in sd))

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]]) -> Reference:
        """From customers' raw ``(recency_days, frequency, monetary)`` rows."""
        return cls.from_log(np.log1p(np.asarray(rows, dtype=np.float64)))

    @classmethod
    def from_scaler(cls, mean: Sequence[float], sd: Sequence[float]) -> Reference:
        """Normal approximation from log-space mean and sd (a snapshot without cuts).

        >>> [round(c) for c in Reference.from_scaler([3, 1, 3], [1, 0.5, 1]).cuts[0]]
        [8, 15, 25, 46]
        """
        z = [-0.8416212335729143, -0.2533471031357997, 0.2533471031357997, 0.8416212335729143]
        return cls(tuple(tuple(math.expm1(max(m + s * zq, 0.0)) for zq in z)
                         for m, s in zip(mean, sd, strict=True)),
                   tuple(max(float(s), _SD_FLOOR) for s in sd))

    def cut(self, feature: str, threshold: str | float) -> float:
        """The threshold in original units (``"q60"``: the feature's 60% cut)."""
        if isinstance(threshold, str):
            return self.cuts[FEATURES.index(feature)][QUANTILES.index(int(threshold[1:]) / 100)]
        return threshold

    def to_dict(self) -> dict[str, object]:
        return {"cuts": [list(c) for c in self.cuts], "sd": list(self.sd)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Reference:
        cuts, sd = d["cuts"], d["sd"]
        if not isinstance(cuts, list | tuple) or not isinstance(sd, list | tuple):
            raise ValueError("reference needs 'cuts' and 'sd' lists")
        out = cls(tuple(tuple(float(v) for v in c) for c in cuts), tuple(float(s) for s in sd))
        if len(out.sd) != len(FEATURES) or any(len(c) != len(QUANTILES) for c in out.cuts) \
                or len(out.cuts) != len(FEATURES):
            raise ValueError(f"bad reference shape: {d!r}")
        return out


def _holds(conds: tuple[Cond, ...], z: Sequence[float], ref: Reference, slack: float) -> bool:
    """All conditions on log1p centre ``z``; ``slack`` > 0 relaxes, < 0 tightens (sd)."""
    for feature, op, threshold in conds:
        i = FEATURES.index(feature)
        cut, s = math.log1p(ref.cut(feature, threshold)), slack * ref.sd[i]
        if op == "<" and not z[i] < cut + s:
            return False
        if op == "<=" and not z[i] <= cut + s:
            return False
        if op == ">" and not z[i] > cut - s:
            return False
        if op == ">=" and not z[i] >= cut - s:
            return False
    return True


def _satisfies_log(name: str, z: Sequence[float], ref: Reference, slack: float) -> bool:
    return any(_holds(conds, z, ref, slack) for n, conds in RULES if n == name)


def satisfies(name: str, centre: Sequence[float], reference: Reference,
              slack: float = 0.0) -> bool:
    """Whether ``name``'s own predicate (its table rows) holds for a centre in original
    units; ``slack`` relaxes every cut by that many reference sds (log1p units)."""
    if name not in _ORDER:
        raise ValueError(f"unknown segment name {name!r}")
    return _satisfies_log(name, [math.log1p(v) for v in centre], reference, slack)


def _name_one(z: Sequence[float], ref: Reference, previous: Sequence[str]) -> str:
    for prev in previous:  # the first previous name that still holds (with slack) stays
        if prev in _ORDER and _satisfies_log(prev, z, ref, HYSTERESIS) and not any(
                _satisfies_log(n, z, ref, -HYSTERESIS) for n in _ORDER[:_ORDER.index(prev)]):
            return prev
    return next(n for n in _ORDER if _satisfies_log(n, z, ref, 0.0))


def name_centres(centres: Sequence[Sequence[float]], reference: Reference,
                 previous: Sequence[str | None] | None = None) -> list[str]:
    """One name per centre (original units), by the rule table; indistinguishable centres
    share the name of their mean; ``previous[j]`` (the name centre ``j`` had, or None)
    is kept while it holds within ``HYSTERESIS``."""
    z = np.log1p(np.asarray(centres, dtype=np.float64)).reshape(len(centres), len(FEATURES))
    sd = np.asarray(reference.sd)
    group = list(range(len(z)))  # union-find over close pairs (single linkage)

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            if float(np.sqrt((((z[i] - z[j]) / sd) ** 2).sum())) < MERGE_DISTANCE:
                group[max(root(i), root(j))] = min(root(i), root(j))
    names: dict[int, str] = {}
    for r in sorted({root(i) for i in range(len(z))}):
        members = [i for i in range(len(z)) if root(i) == r]
        prev = [p for i in members if previous and (p := previous[i]) is not None]
        names[r] = _name_one(z[members].mean(axis=0).tolist(), reference, prev)
    return [names[root(i)] for i in range(len(z))]


def align(old: npt.ArrayLike, new: npt.ArrayLike, sd: npt.ArrayLike) -> list[int]:
    """``order`` such that ``new[order[j]]`` takes old id ``j``: the assignment that
    minimises the total squared distance (``sd``-standardised; centres in the same space,
    e.g. log1p), by ``scipy.optimize.linear_sum_assignment``.

    >>> align([[0, 0], [5, 5], [9, 0]], [[5.1, 5], [9, 0.2], [0.1, 0]], [1, 1])
    [2, 0, 1]
    """
    a = np.asarray(old, dtype=np.float64) / np.asarray(sd, dtype=np.float64)
    b = np.asarray(new, dtype=np.float64) / np.asarray(sd, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot align {a.shape[0]} centres with {b.shape[0]}")
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return [int(c) for _, c in sorted(zip(rows.tolist(), cols.tolist(), strict=True))]


def changed_share(before: Sequence[str], after: Sequence[str]) -> float:
    """Share of positions whose name differs (0.0 for no customers).

    >>> changed_share(["Loyal", "Champions"], ["Loyal", "At risk"])
    0.5
    """
    if len(before) != len(after):
        raise ValueError("before and after must name the same customers")
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(before) if before \
        else 0.0
