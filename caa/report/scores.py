"""The per-customer evaluation file, ``out/evaluation-customers.csv``, and its summaries.

``caa evaluate`` writes it (:meth:`Scores.write`), ``caa report`` reads it
(:meth:`Scores.read`) for the calibration plot and the lift chart. The contract: UTF-8,
comma-separated, one header row, then one row per evaluated customer:

=============  ===========================================================================
column         meaning
=============  ===========================================================================
customer_id    the customer's id as in the stream (unique)
predicted      our expected purchases over the holdout (finite, >= 0)
actual         the customer's purchases in the holdout as the evaluation counts them
               (distinct purchase days; an integer >= 0)
score          our ranking score for "buys again in the holdout" (finite; higher means
               more likely; e.g. P(at least one purchase in the holdout), or ``predicted``)
bgnbd,         optional: an anchor model's expected holdout purchases for the same customer;
pareto_nbd,    empty or ``nan`` where the anchor has no finite prediction (an anchor with
naive          any is left out of the plots)
=============  ===========================================================================

Other columns are ignored. "Bought again" means ``actual >= 1``.

>>> import numpy as np
>>> [(b.n, b.mean_predicted, b.mean_actual) for b in calibration_bins(
...     np.array([0.1, 0.2, 1.0, 3.0]), np.array([0.0, 1.0, 1.0, 2.0]), bins=2)]
[(2, 0.15000000000000002, 0.5), (2, 2.0, 1.5)]
>>> [(d.n, d.bought_share, d.lift) for d in lift_deciles(
...     np.array([0.9, 0.1, 0.8, 0.2]), np.array([1.0, 0.0, 2.0, 0.0]), groups=2)]
[(2, 1.0, 2.0), (2, 0.0, 0.0)]
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["ANCHORS", "COLUMNS", "Bin", "Decile", "ScoreFileError", "Scores",
           "calibration_bins", "gains", "lift_deciles"]

FloatArray = npt.NDArray[np.float64]
COLUMNS = ("customer_id", "predicted", "actual", "score")
ANCHORS = ("bgnbd", "pareto_nbd", "naive")


class ScoreFileError(ValueError):
    """The file does not follow the contract; the message names the row and column."""


def _number(text: str, where: str) -> float:
    try:
        return float(text) if text.strip() else math.nan
    except ValueError:
        raise ScoreFileError(f"{where}: not a number: {text!r}") from None


@dataclass(frozen=True)
class Scores:
    """The file's rows, column by column."""

    customer_ids: list[str]
    predicted: FloatArray
    actual: FloatArray
    score: FloatArray
    #: anchor name -> its predictions (NaN where it has none)
    anchors: dict[str, FloatArray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.customer_ids)
        for name, col in (("predicted", self.predicted), ("actual", self.actual),
                          ("score", self.score), *self.anchors.items()):
            if col.shape != (n,):
                raise ScoreFileError(f"{name}: {col.shape[0]} values for {n} customers")
        if len(set(self.customer_ids)) != n:
            raise ScoreFileError("customer_id: not unique")
        for name, col in (("predicted", self.predicted), ("score", self.score)):
            if not np.isfinite(col).all():
                raise ScoreFileError(f"{name}: every value must be finite")
        if (self.predicted < 0).any():
            raise ScoreFileError("predicted: must be >= 0")
        if not (np.isfinite(self.actual).all() and (self.actual >= 0).all()
                and (self.actual == np.round(self.actual)).all()):
            raise ScoreFileError("actual: must be whole numbers >= 0")

    @classmethod
    def of(cls, customer_ids: Sequence[str], predicted: npt.ArrayLike, actual: npt.ArrayLike,
           score: npt.ArrayLike, anchors: Mapping[str, npt.ArrayLike] | None = None) -> Scores:
        f = np.float64
        return cls(list(customer_ids), np.asarray(predicted, dtype=f),
                   np.asarray(actual, dtype=f), np.asarray(score, dtype=f),
                   {k: np.asarray(v, dtype=f) for k, v in (anchors or {}).items()})

    @property
    def bought(self) -> npt.NDArray[np.bool_]:
        return self.actual >= 1.0

    def finite_anchors(self) -> dict[str, FloatArray]:
        """The anchors with a finite prediction for every customer."""
        return {k: v for k, v in self.anchors.items() if np.isfinite(v).all()}

    def write(self, path: Path) -> None:
        """Write the file (``repr`` of floats: read back exactly)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        names = [a for a in ANCHORS if a in self.anchors]
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow([*COLUMNS, *names])
            for i, cid in enumerate(self.customer_ids):
                out.writerow([cid, repr(float(self.predicted[i])), int(self.actual[i]),
                              repr(float(self.score[i])),
                              *(repr(float(self.anchors[a][i])) for a in names)])

    @classmethod
    def read(cls, path: Path) -> Scores:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = csv.DictReader(fh)
            header = rows.fieldnames or []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise ScoreFileError(f"{path}: missing column(s) {', '.join(missing)} "
                                     f"(the header must name {', '.join(COLUMNS)})")
            names = [a for a in ANCHORS if a in header]
            ids: list[str] = []
            cols: dict[str, list[float]] = {c: [] for c in (*COLUMNS[1:], *names)}
            for line, row in enumerate(rows, start=2):
                ids.append(row["customer_id"])
                for c, values in cols.items():
                    values.append(_number(row[c] or "", f"{path}:{line} {c}"))
        if not ids:
            raise ScoreFileError(f"{path}: no customer rows")
        return cls.of(ids, cols["predicted"], cols["actual"], cols["score"],
                      {a: cols[a] for a in names})


@dataclass(frozen=True, slots=True)
class Bin:
    n: int
    mean_predicted: float
    mean_actual: float


def _groups(order: npt.NDArray[np.intp], k: int) -> list[npt.NDArray[np.intp]]:
    return [g for g in np.array_split(order, min(k, order.size)) if g.size]


def calibration_bins(predicted: FloatArray, actual: FloatArray, bins: int = 10) -> list[Bin]:
    """Customers sorted by ``predicted`` (stable: ties in file order) cut into ``bins``
    groups of equal size (within one); per group the mean predicted and mean actual."""
    groups = _groups(np.argsort(predicted, kind="stable"), bins)
    return [Bin(int(g.size), float(predicted[g].mean()), float(actual[g].mean()))
            for g in groups]


@dataclass(frozen=True, slots=True)
class Decile:
    n: int
    bought_share: float  # share of the group who bought again
    lift: float  # bought_share / the base rate (0 when nobody bought again)


def lift_deciles(score: FloatArray, actual: FloatArray, groups: int = 10) -> list[Decile]:
    """Customers sorted by ``score``, highest first (stable: ties in file order), cut into
    ``groups`` of equal size (within one): per group the share who bought again
    (``actual >= 1``) and its ratio to the share over everyone (the base rate)."""
    bought = actual >= 1.0
    base = float(bought.mean())
    out = []
    for g in _groups(np.argsort(-score, kind="stable"), groups):
        share = float(bought[g].mean())
        out.append(Decile(int(g.size), share, share / base if base > 0 else 0.0))
    return out


def gains(score: FloatArray, actual: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The cumulative gains curve: (share of customers contacted, highest ``score`` first;
    share of all who bought again found among them), both from 0 to 1."""
    bought = (actual >= 1.0)[np.argsort(-score, kind="stable")].astype(np.float64)
    total = bought.sum()
    x = np.arange(bought.size + 1, dtype=np.float64) / max(1, bought.size)
    y = np.concatenate([[0.0], np.cumsum(bought) / total if total > 0 else bought * 0.0])
    return x, y
