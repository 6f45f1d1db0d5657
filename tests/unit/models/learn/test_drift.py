"""Tests for models.learn.drift: ADWIN on a per-batch signal, reasons, snapshots."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import numpy as np
import pytest

from models.learn import bgnbd, pareto_nbd
from models.learn.drift import DriftCheck, DriftMonitor, mean_distance, mean_log_likelihood
from models.learn.segmentation import FEATURES, SegmentModel


def noisy(level: float, n: int, seed: int, sd: float = 0.05) -> list[float]:
    return [float(v) for v in level + np.random.default_rng(seed).normal(0.0, sd, n)]


def feed(monitor: DriftMonitor, values: list[float], start: float = 0.0) -> list[DriftCheck]:
    return [monitor.update(v, at=start + 3600.0 * i) for i, v in enumerate(values)]


def test_stable_signal_never_asks_for_a_refit() -> None:
    monitor = DriftMonitor()
    checks = feed(monitor, noisy(0.8, 500, 0))
    assert not any(c.refit for c in checks) and monitor.detections == 0
    assert checks[-1].reason.startswith("no drift: mean distance to centre 0.80 over 500")
    assert monitor.estimate == pytest.approx(0.8, abs=0.01)


def test_rise_in_distance_asks_for_a_refit_with_a_reason() -> None:
    monitor = DriftMonitor()
    checks = feed(monitor, noisy(0.81, 200, 1) + noisy(1.43, 100, 2))
    hits = [(i, c) for i, c in enumerate(checks) if c.refit]
    assert hits and 200 <= hits[0][0] < 230  # detected within 30 batches of the change
    i, hit = hits[0]
    m = re.fullmatch(r"drift: mean distance to centre rose from ([\d.]+) to ([\d.]+) "
                     r"\(ADWIN, delta 0\.002\)", hit.reason)
    assert m and float(m[1]) == pytest.approx(0.81, abs=0.02)
    assert float(m[2]) == pytest.approx(1.43, abs=0.05)
    assert hit.since == pytest.approx(3600.0 * 200, abs=3600.0 * 2)  # the change point
    after = checks[i + 1]
    assert not after.refit and "over 1 batch" in after.reason  # started afresh


def test_trigger_worse_only() -> None:
    distance = DriftMonitor(trigger="worse")  # a fall in distance is reported, no refit
    checks = feed(distance, noisy(1.4, 200, 3) + noisy(0.8, 60, 4))
    hit = next(c for c in checks if c.reason.startswith("drift:"))
    assert not hit.refit and " fell from 1.4" in hit.reason
    loglik = DriftMonitor("loglik", trigger="worse")  # a fall in log-likelihood is worse
    checks = feed(loglik, noisy(-4.0, 200, 5, sd=0.2) + noisy(-6.0, 60, 6, sd=0.2))
    hit = next(c for c in checks if c.reason.startswith("drift:"))
    assert hit.refit and "mean log-likelihood per customer fell from -4.0" in hit.reason


@pytest.mark.parametrize("cut", [0, 30, 150, 260])
def test_snapshot_re_feeds_and_continues_identically(cut: int) -> None:
    values = noisy(0.8, 200, 7) + noisy(1.5, 100, 8)
    live = DriftMonitor()
    feed(live, values[:cut])
    text = json.dumps(live.to_dict(), allow_nan=False)
    restored = DriftMonitor.from_dict(json.loads(text))
    via_decimal = DriftMonitor.from_dict(json.loads(text, parse_float=Decimal,
                                                    parse_int=Decimal))
    assert restored.to_dict() == live.to_dict() == via_decimal.to_dict()
    rest = values[cut:]
    assert feed(restored, rest, 3600.0 * cut) == feed(live, rest, 3600.0 * cut)
    assert restored.to_dict() == live.to_dict()


def test_window_bounds_the_snapshot() -> None:
    monitor = DriftMonitor(window=50)
    feed(monitor, noisy(0.8, 120, 9))
    history = monitor.to_dict()["history"]
    assert isinstance(history, list) and len(history) == 50
    assert history[-1][0] == 3600.0 * 119  # the latest are kept
    assert DriftMonitor.from_dict(monitor.to_dict()).to_dict() == monitor.to_dict()


def test_validation() -> None:
    for kwargs in ({"signal": "nope"}, {"delta": 0.0}, {"window": 0}, {"trigger": "all"}):
        with pytest.raises(ValueError):
            DriftMonitor(**kwargs)
    with pytest.raises(ValueError):
        DriftMonitor().update(float("nan"), at=0.0)
    d = DriftMonitor().to_dict()
    for bad in ({**d, "format": 2}, {**d, "history": [[1.0]]}, {**d, "trigger": "x"},
                {**d, "delta": "0.1"}):
        with pytest.raises(ValueError):
            DriftMonitor.from_dict(bad)


def test_distance_signal_from_a_segment_model() -> None:
    rng = np.random.default_rng(10)

    def batch(n: int, value_scale: float) -> list[dict[str, float]]:
        raw = np.column_stack([rng.exponential(60, n), rng.integers(1, 12, n),
                               rng.lognormal(3.5, 0.6, n) * value_scale])
        return [dict(zip(FEATURES, map(float, r), strict=True)) for r in raw]

    model = SegmentModel()
    model.refit(batch(2000, 1.0))
    before = model.to_dict()
    monitor = DriftMonitor()
    quiet = [monitor.update(mean_distance(model, batch(200, 1.0)), at=i) for i in range(60)]
    assert not any(c.refit for c in quiet)
    shifted = [monitor.update(mean_distance(model, batch(200, 6.0)), at=60 + i)
               for i in range(30)]  # order values six times as high
    assert any(c.refit and " rose " in c.reason for c in shifted)
    assert model.to_dict() == before and mean_distance(model, []) == 0.0


def test_log_likelihood_signal() -> None:
    hist = [(0, 0.0, 38.86), (2, 30.43, 38.86), (5, 20.0, 30.0)]
    x, t_x, big_t = zip(*hist, strict=True)
    assert mean_log_likelihood(bgnbd.DEFAULT_PRIOR, hist) == pytest.approx(
        bgnbd.log_likelihood(bgnbd.DEFAULT_PRIOR, x, t_x, big_t) / 3)
    assert mean_log_likelihood(pareto_nbd.DEFAULT_PRIOR, hist) == pytest.approx(
        pareto_nbd.log_likelihood(pareto_nbd.DEFAULT_PRIOR, x, t_x, big_t) / 3)
    with pytest.raises(ValueError):
        mean_log_likelihood(bgnbd.DEFAULT_PRIOR, [])
