"""Drift detection on a per-batch signal with ``river.drift.ADWIN``: refit early?

A :class:`DriftMonitor` takes one number per batch and time, e.g. :func:`mean_distance`
(the mean standardised distance of the batch's customers to their nearest segment centre)
or :func:`mean_log_likelihood` (the batch's mean BG/NBD or Pareto/NBD log-likelihood per
customer), and feeds it to ADWIN (``clock=1``: every batch is checked).  When ADWIN finds
that the recent mean differs from the older one, :meth:`DriftMonitor.update` says a refit
should run now, with a reason such as ``"drift: mean distance to centre rose from 0.81 to
1.43 (ADWIN, delta 0.002)"``: *from* and *to* are the mean signal before and after the most
likely change point since the last detection (the split that maximises the two-sample
mean difference statistic; ADWIN says *whether*, this split *where*).  After a detection
the detector starts afresh, as river's ADWIN does at its next update.  ADWIN's bound has
a term in the signal's own units, so it suits signals of order 1 (both above are) with the
default ``delta``.

Snapshot: river's ADWIN (a Rust object) has no JSON form, so :meth:`DriftMonitor.to_dict`
keeps the signals since the last detection, at most ``window`` of them, and
:meth:`DriftMonitor.from_dict` re-feeds them to a new ADWIN.  The restored detector is
the live one exactly while fewer than ``window`` signals came since the last detection;
beyond that it has seen only the latest ``window`` of them (ADWIN itself keeps only
compressed buckets of old data).  Pure: times are passed in, no I/O, no clock read.

>>> monitor = DriftMonitor("distance")
>>> checks = [monitor.update(0.8 + 0.02 * (i % 3), at=i) for i in range(60)]
>>> any(c.refit for c in checks), checks[-1].reason
(False, 'no drift: mean distance to centre 0.82 over 60 batch(es) (ADWIN)')
>>> checks = [monitor.update(1.4 + 0.02 * (i % 3), at=60 + i) for i in range(60)]
>>> hit = next(c for c in checks if c.refit)
>>> hit.reason, hit.since
('drift: mean distance to centre rose from 0.82 to 1.42 (ADWIN, delta 0.002)', 60.0)
>>> DriftMonitor.from_dict(monitor.to_dict()).to_dict() == monitor.to_dict()
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

# river.drift.ADWIN's own engine: ``river.drift`` itself imports pandas and scikit-learn (for
# its datasets), which the Lambda artifacts leave out; ADWIN is this engine behind a wrapper
from river._river_rust.drift import AdaptiveWindowing

from models.learn import bgnbd, pareto_nbd
from models.learn.bgnbd import BgNbdParams
from models.learn.pareto_nbd import ParetoNbdParams

if TYPE_CHECKING:
    from models.learn.segmentation import SegmentModel

__all__ = ["DISTANT", "SIGNALS", "DriftCheck", "DriftMonitor", "mean_distance"]
__all__ += ["distant_flags", "mean_log_likelihood", "share_distant"]

#: signal kind -> (what it measures, the direction that means a worse fit)
SIGNALS: dict[str, tuple[str, Literal["rose", "fell"]]] = {
    "distant": ("share of customers far from every centre", "rose"),
    "distance": ("mean distance to centre", "rose"),
    "loglik": ("mean log-likelihood per customer", "fell"),
}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DriftCheck:
    """What one :meth:`DriftMonitor.update` found."""

    #: whether a refit should run now (a change was detected, in a direction that counts)
    refit: bool
    #: a sentence saying why (or that nothing changed)
    reason: str
    #: ADWIN's mean over its current window
    estimate: float
    #: time of the first signal after the estimated change point, on a detection
    since: float | None = None


#: :func:`share_distant`'s threshold: this many reference sds (log units) from every centre
DISTANT = 3.0


def share_distant(model: SegmentModel, rows: Sequence[Mapping[str, float]],
                  threshold: float = DISTANT) -> float:
    """Share of ``rows`` farther than ``threshold`` from their nearest centre (0.0 for no
    rows): a signal in [0, 1], the range ADWIN's bound is made for (Bifet & Gavaldà 2007),
    which a few far customers cannot blow up as they do a mean distance.

    >>> from models.learn.segmentation import SegmentModel
    >>> m = SegmentModel(n_clusters=5, warmup=5)
    >>> for f in range(1, 6):
    ...     m.learn_one({"recency_days": 3.0 * f, "frequency": f, "monetary": 20.0 + f})
    >>> share_distant(m, [{"recency_days": 6.0, "frequency": 2, "monetary": 22.0},
    ...                   {"recency_days": 6.0, "frequency": 2, "monetary": 9000.0}])
    0.5
    """
    if not rows:
        return 0.0
    return sum(model.distance_one(r) > threshold for r in rows) / len(rows)


def distant_flags(model: SegmentModel, rows: Sequence[Mapping[str, float]],
                  threshold: float = DISTANT) -> list[float]:
    """1.0 for each row farther than ``threshold`` from its nearest centre, else 0.0."""
    return [1.0 if model.distance_one(r) > threshold else 0.0 for r in rows]


def mean_distance(model: SegmentModel, rows: Sequence[Mapping[str, float]]) -> float:
    """Mean standardised distance of ``rows`` to their nearest centre (0.0 for no rows)."""
    return sum(model.distance_one(r) for r in rows) / len(rows) if rows else 0.0


def mean_log_likelihood(params: BgNbdParams | ParetoNbdParams,
                        histories: Sequence[tuple[int, float, float]]) -> float:
    """Mean log-likelihood per customer of ``(x, t_x, T)`` histories (weeks) under the
    purchase model ``params`` belongs to.

    >>> round(mean_log_likelihood(bgnbd.DEFAULT_PRIOR, [(0, 0.0, 38.86), (2, 30.43, 38.86)]), 2)
    -4.99
    """
    if not histories:
        raise ValueError("no histories")
    x, t_x, big_t = (list(c) for c in zip(*histories, strict=True))
    ll = (pareto_nbd.log_likelihood(params, x, t_x, big_t) if isinstance(params, ParetoNbdParams)
          else bgnbd.log_likelihood(params, x, t_x, big_t))
    return ll / len(histories)


class DriftMonitor:
    """ADWIN over one signal per batch.

    Parameters
    ----------
    signal
        A key of ``SIGNALS``: ``"distance"`` (a rise is worse) or ``"loglik"`` (a fall is).
    delta
        ADWIN's significance; smaller detects less often.
    window
        Most signals kept for the snapshot (see the module docstring).
    trigger
        ``"any"``: any detected change asks for a refit; ``"worse"``: only a change in the
        worse direction does (the other is still reported in the reason).
    grace_period, min_window_length
        Passed to ``river.drift.ADWIN``: no check before ``grace_period`` signals, and
        sub-windows shorter than ``min_window_length`` are not compared.
    """

    def __init__(self, signal: str = "distance", delta: float = 0.002, window: int = 1000,
                 trigger: Literal["any", "worse"] = "any", grace_period: int = 10,
                 min_window_length: int = 5) -> None:
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {sorted(SIGNALS)}, got {signal!r}")
        if not 0.0 < delta < 1.0 or window < 1 or trigger not in ("any", "worse"):
            raise ValueError("need 0 < delta < 1, window >= 1 and trigger 'any' or 'worse'")
        self.signal, self.delta, self.window, self.trigger = signal, delta, window, trigger
        self.grace_period, self.min_window_length = grace_period, min_window_length
        self.detections = 0
        self._reset()

    def _reset(self) -> None:
        # river.drift.ADWIN's defaults but ``clock=1`` (every update is checked)
        self._adwin = AdaptiveWindowing(delta=self.delta, clock=1, max_buckets=5,
                                        min_window_length=self.min_window_length,
                                        grace_period=self.grace_period)
        self._history: deque[tuple[float, float]] = deque(maxlen=self.window)

    @property
    def estimate(self) -> float:
        """ADWIN's mean over its window (0.0 before any signal)."""
        width = self._adwin.get_width()
        return float(self._adwin.get_total()) / width if width else 0.0

    def update(self, value: float, at: float) -> DriftCheck:
        """Feed the signal of the batch at time ``at``; whether to refit now, and why."""
        value, at = float(value), float(at)
        if not math.isfinite(value):
            raise ValueError(f"signal must be finite, got {value!r}")
        self._history.append((at, value))
        detected = bool(self._adwin.update(value))
        label, worse = SIGNALS[self.signal]
        if not detected:
            return DriftCheck(False, f"no drift: {label} {self.estimate:.2f} over "
                                     f"{len(self._history)} batch(es) (ADWIN)", self.estimate)
        cut = _change_point([v for _, v in self._history])
        values = [v for _, v in self._history]
        before, after = sum(values[:cut]) / cut, sum(values[cut:]) / (len(values) - cut)
        direction = "rose" if after > before else "fell"
        since = self._history[cut][0]
        self.detections += 1
        self._reset()  # river's ADWIN starts afresh at its next update: do it now
        return DriftCheck(self.trigger == "any" or direction == worse,
                          f"drift: {label} {direction} from {before:.2f} to {after:.2f} "
                          f"(ADWIN, delta {self.delta:g})", after, since)

    def update_many(self, values: Sequence[float], at: float) -> DriftCheck:
        """Feed one observation per customer of the batch at ``at`` (e.g. 1.0 when far
        from every centre, else 0.0: :func:`distant_flags`): ADWIN is made for a stream of
        single observations, and a batch's mean alone gives it too few to decide on. The
        first detection's check, else the last one; ``ValueError`` for no values."""
        if not values:
            raise ValueError("no values")
        last = None
        for v in values:
            last = self.update(v, at)
            if last.refit:
                return last
        assert last is not None
        return last

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable snapshot: parameters and the signals since the last reset."""
        return {"format": FORMAT_VERSION, "signal": self.signal, "delta": self.delta,
                "window": self.window, "trigger": self.trigger,
                "grace_period": self.grace_period, "min_window_length": self.min_window_length,
                "detections": self.detections,
                "history": [[at, v] for at, v in self._history]}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> DriftMonitor:
        """Rebuild from :meth:`to_dict` output (numbers may be ``Decimal``), re-feeding the
        kept signals to a new ADWIN."""
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported drift snapshot format {d.get('format')!r}")
        trigger = str(d["trigger"])
        if trigger not in ("any", "worse"):
            raise ValueError(f"bad trigger {trigger!r}")
        monitor = cls(str(d["signal"]), _num(d["delta"]), int(_num(d["window"])),
                      "any" if trigger == "any" else "worse", int(_num(d["grace_period"])),
                      int(_num(d["min_window_length"])))
        history = d["history"]
        if not isinstance(history, list | tuple):
            raise ValueError("history must be a list")
        for pair in history:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ValueError(f"bad history entry {pair!r}")
            monitor.update(_num(pair[1]), _num(pair[0]))
        monitor.detections = int(_num(d["detections"]))
        return monitor


def _change_point(values: Sequence[float]) -> int:
    """Index of the most likely change in mean (the split maximising
    ``|mean(a) - mean(b)| * sqrt(len(a) * len(b) / n)``), at least 1 from either end.

    >>> _change_point([1, 1, 1, 1, 5, 5, 5])
    4
    """
    n, total = len(values), float(sum(values))
    best, best_stat, head = 1, -1.0, 0.0
    for i in range(1, n):
        head += values[i - 1]
        a, b = head / i, (total - head) / (n - i)
        stat = abs(a - b) * math.sqrt(i * (n - i) / n)
        if stat > best_stat:
            best, best_stat = i, stat
    return best


def _num(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
        raise ValueError(f"expected a number, got {v!r}")
    return float(v)
