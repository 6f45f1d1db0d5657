"""Tests for models.learn.segment_names: names that hold, shared names, alignment, and
their meaning and stability on the real CDNOW customers."""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import itertools
import json
import math
from collections import defaultdict
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from models.learn.segment_names import (
    HYSTERESIS,
    LAPSED_DAYS,
    MERGE_DISTANCE,
    ONE_TIME_MAX,
    RULES,
    SEGMENT_NAMES,
    Reference,
    align,
    changed_share,
    name_centres,
    satisfies,
)
from models.learn.segmentation import FEATURES, SegmentModel, name_churn
from tests.unit.models.learn.test_segmentation import make_blobs

PRECEDENCE = list(dict.fromkeys(n for n, _ in RULES))
# Customers spread evenly: recency 0..495 days, frequency 1..10, order value 10..109.
GRID = [[5.0 * i, 1.0 + i % 10, 10.0 + i] for i in range(100)]
REF = Reference.from_rows(GRID)


def test_rule_table() -> None:
    assert set(PRECEDENCE) == set(SEGMENT_NAMES) and PRECEDENCE[-1] == "Needs attention"
    assert [round(c) for c in REF.cuts[0]] == [95, 195, 295, 395]
    assert REF.cut("monetary", "q80") == REF.cuts[2][3] and REF.cut("frequency", 1.5) == 1.5
    with pytest.raises(ValueError, match="unknown"):
        satisfies("Whales", [1.0, 1.0, 1.0], REF)


def test_cuts_are_customer_quantiles() -> None:
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.exponential(100, 999), rng.integers(1, 9, 999),
                            rng.lognormal(3, 1, 999)])
    ref = Reference.from_rows(rows.tolist())
    for i, cuts in enumerate(ref.cuts):
        for q, cut in zip((0.2, 0.4, 0.6, 0.8), cuts, strict=True):
            assert np.isclose(rows[:, i], cut, rtol=1e-9, atol=0).any()  # a customer's
            low, high = cut * (1 - 1e-9), cut * (1 + 1e-9)  # (up to float rounding)
            assert (rows[:, i] < low).mean() <= q <= (rows[:, i] <= high).mean()


@pytest.mark.parametrize("seed", range(5))
def test_fresh_name_is_first_rule_that_holds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    centres = np.column_stack([rng.uniform(0, 500, 60), rng.uniform(1, 10, 60),
                               rng.uniform(10, 110, 60)])
    centres = centres[::6]  # ten far-apart-enough centres
    names = name_centres(centres.tolist(), REF)
    for c, name in zip(centres.tolist(), names, strict=True):
        assert satisfies(name, c, REF)
        assert not any(satisfies(n, c, REF) for n in PRECEDENCE[:PRECEDENCE.index(name)])


def test_each_name_means_its_predicate() -> None:
    q = {f: REF.cuts[i] for i, f in enumerate(FEATURES)}  # (q20, q40, q60, q80)
    cases = {
        "New customers": [10.0, 1.0, 50.0],  # bought recently, one purchase day
        "Champions": [10.0, 9.0, 60.0],
        "Loyal": [150.0, 9.0, 20.0],
        "Big spenders": [150.0, 2.0, 105.0],
        "At risk": [450.0, 9.0, 20.0],
        "Hibernating": [450.0, 1.0, 20.0],
        "Needs attention": [250.0, 3.0, 50.0],
    }
    for name, c in cases.items():
        assert name_centres([c], REF) == [name]
    r, f, _ = cases["New customers"]
    assert r < q["recency_days"][0] and f < ONE_TIME_MAX
    assert cases["Hibernating"][0] >= q["recency_days"][2]
    # a one-time buyer from long ago is never "new", however cheap or dear
    for value in (10.0, 60.0, 105.0):
        assert name_centres([[450.0, 1.0, value]], REF)[0] != "New customers"


def test_a_name_that_would_lie_is_not_used() -> None:
    # No centre bought recently (all beyond q60): no New customers, Champions, Loyal, ...
    lapsed = [[400.0 + 10 * i, 1.0 + i, 20.0 + 15 * i] for i in range(6)]
    assert set(name_centres(lapsed, REF)) <= {"At risk", "Hibernating"}


def test_identical_and_indistinguishable_centres_share_a_name() -> None:
    assert len(set(name_centres([[200.0, 3.0, 40.0]] * 6, REF))) == 1
    q20 = REF.cuts[0][0]
    # two centres straddling the recency q20 cut, 0.01 sd apart: one name (their mean's)
    eps = math.exp(0.005 * REF.sd[0])
    pair = [[(q20 + 1) / eps - 1, 9.0, 60.0], [(q20 + 1) * eps - 1, 9.0, 60.0]]
    assert satisfies("Champions", pair[0], REF) != satisfies("Champions", pair[1], REF)
    names = name_centres(pair, REF)
    assert names[0] == names[1]
    far = [[10.0, 9.0, 60.0], [450.0, 1.0, 20.0]]
    z = np.log1p(np.array(far)) / np.array(REF.sd)
    assert float(np.linalg.norm(z[0] - z[1])) > MERGE_DISTANCE
    assert name_centres(far, REF) == ["Champions", "Hibernating"]


def test_previous_name_is_kept_near_a_cut_only() -> None:
    q20 = REF.cuts[0][0]
    just_out = [(q20 + 1) * math.exp(0.5 * HYSTERESIS * REF.sd[0]) - 1, 9.0, 60.0]
    far_out = [(q20 + 1) * math.exp(3 * HYSTERESIS * REF.sd[0]) - 1, 9.0, 60.0]
    assert name_centres([just_out], REF) == ["Loyal"]  # fresh: not recent enough
    assert name_centres([just_out], REF, ["Champions"]) == ["Champions"]  # kept
    assert name_centres([far_out], REF, ["Champions"]) == ["Loyal"]
    assert name_centres([[10.0, 9.0, 60.0]], REF, ["Loyal"]) == ["Champions"]  # clearly up
    assert name_centres([[10.0, 9.0, 60.0]], REF, ["no such name"]) == ["Champions"]


def test_align_is_the_optimal_matching() -> None:
    rng = np.random.default_rng(3)
    old = rng.normal(size=(6, 3))
    perm = rng.permutation(6)
    new = old[perm] + rng.normal(scale=0.05, size=(6, 3))
    order = align(old.tolist(), new.tolist(), [1.0, 1.0, 1.0])
    assert np.allclose(new[order], old, atol=0.3) and sorted(order) == list(range(6))
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))  # random: brute force agrees

    def cost(o: tuple[int, ...] | list[int]) -> float:
        return float(((a - b[list(o)]) ** 2).sum())

    best = min(itertools.permutations(range(5)), key=cost)
    assert cost(align(a.tolist(), b.tolist(), [1.0, 1.0, 1.0])) == pytest.approx(cost(best))
    with pytest.raises(ValueError):
        align(a.tolist(), b[:4].tolist(), [1.0, 1.0, 1.0])
    assert changed_share([], []) == 0.0


def test_reference_round_trip() -> None:
    assert Reference.from_dict(REF.to_dict()) == REF
    with pytest.raises(ValueError):
        Reference.from_dict({"cuts": [[1.0]], "sd": [1.0]})


# -- in SegmentModel ------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs() -> list[dict[str, float]]:
    return make_blobs()[0]


def test_snapshot_keeps_reference_and_names(blobs: list[dict[str, float]]) -> None:
    model = SegmentModel()
    model.refit(blobs)
    d: Any = model.to_dict()
    assert d["names"] == [model.segment_names()[j] for j in range(6)]
    assert d["reference"]["cuts"][0] == sorted(d["reference"]["cuts"][0])
    text = json.dumps(d, allow_nan=False)
    restored = SegmentModel.from_dict(json.loads(text, parse_float=Decimal, parse_int=Decimal))
    assert restored.to_dict() == d and restored.segment_names() == model.segment_names()
    old = {k: v for k, v in d.items() if k not in ("reference", "names")}  # older snapshot
    assert SegmentModel.from_dict(old).segment_names()  # approximate cuts from the scaler
    with pytest.raises(ValueError):
        SegmentModel.from_dict({**d, "names": ["Loyal"]})


def test_refit_keeps_ids_and_distance(blobs: list[dict[str, float]]) -> None:
    rows = blobs
    model = SegmentModel()
    model.refit(rows[:1200])
    first = [model.predict_one(r) for r in rows]
    names = model.segment_names()
    model.refit(rows[1200:])  # other customers from the same blobs
    assert np.mean(np.array([model.predict_one(r) for r in rows]) == first) > 0.99
    assert model.segment_names() == names
    z = model.transform_one(rows[0])
    centre: Any = model.describe()[model.predict_one(rows[0])]["centre"]
    c = model.transform_one(centre)
    assert model.distance_one(rows[0]) == pytest.approx(math.dist(z, c))
    assert SegmentModel().distance_one(rows[0]) == 0.0


# -- the real CDNOW customers ------------------------------------------------------------

END = dt.date(1998, 6, 30)  # the log's last day: recency is counted to it


@functools.cache
def cdnow_rows() -> tuple[dict[str, float], ...]:
    """Each customer's features as models.features.rfm defines them: days since the last
    purchase, distinct purchase days, and mean order value (each log row is one order)."""
    days: dict[str, set[dt.date]] = defaultdict(set)
    spend: dict[str, float] = defaultdict(float)
    orders: dict[str, int] = defaultdict(int)
    path = importlib.resources.files("lifetimes.datasets") / "CDNOW_master.txt"
    with path.open(encoding="ascii") as fh:
        for line in fh:
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue
            customer, day, _, dollars = parts
            days[customer].add(dt.date(int(day[:4]), int(day[4:6]), int(day[6:])))
            spend[customer] += float(dollars)
            orders[customer] += 1
    assert sum(orders.values()) == 69_659 and len(days) == 23_570
    return tuple({"recency_days": float((END - max(days[c])).days),
                  "frequency": float(len(days[c])),
                  "monetary": spend[c] / orders[c]} for c in sorted(days))


@pytest.fixture(scope="module")
def cdnow() -> tuple[SegmentModel, list[dict[str, float]]]:
    rows = list(cdnow_rows())
    model = SegmentModel(n_clusters=6)
    model.refit(rows)
    return model, rows


def centres(model: SegmentModel) -> list[tuple[str, int, list[float]]]:
    return [(str(d["name"]), int(str(d["count"])),
             [float(d["centre"][f]) for f in FEATURES])  # type: ignore[index]
            for d in model.describe()]


def test_cdnow_names_mean_what_they_say(cdnow) -> None:
    model, rows = cdnow
    ref = model.reference
    x = np.array([[r[f] for f in FEATURES] for r in rows])
    for i in range(3):  # the cuts are the customers' quintiles
        assert list(ref.cuts[i]) == pytest.approx(
            np.quantile(x[:, i], [0.2, 0.4, 0.6, 0.8], method="inverted_cdf"))
    table = centres(model)
    print("\nCDNOW, k=6: name, customers, recency_days, frequency, monetary")
    for name, n, (r, f, m) in table:
        print(f"  {name:16s} {n:6d} {r:7.1f} {f:5.2f} {m:7.2f}")
    q_r, q_f, q_m = ref.cuts
    for name, _, c in table:
        assert satisfies(name, c, ref)
    recency = [c[0] for _, _, c in table]
    frequency = [c[1] for _, _, c in table]
    value = [c[2] for _, _, c in table]
    names = [n for n, _, _ in table]
    # New customers: a recent *first* purchase.  CDNOW is one cohort (first purchases in
    # Q1 1997), so no one-time buyer is recent and the name must not be used at all.
    one_timers = x[x[:, 1] == 1]
    assert one_timers[:, 0].min() >= 456
    assert "New customers" not in names
    for j, name in enumerate(names):
        if name == "New customers":  # (on other data) recency among the lowest, ~1 purchase
            assert recency[j] < q_r[0] and frequency[j] < ONE_TIME_MAX
    # Champions: every one bought more recently than 80% of customers, more often than
    # 60%; the most recent and the most frequent centre are Champions.
    assert names[int(np.argmin(recency))] == "Champions"
    assert names[int(np.argmax(frequency))] == "Champions"
    for j in (j for j, n in enumerate(names) if n == "Champions"):
        assert recency[j] < q_r[0] and frequency[j] > q_f[2] and value[j] > q_m[1]
    # lapsed: longer ago than 60% of customers, or a year whatever the others did
    lapsed = [recency[j] >= q_r[2] or recency[j] >= LAPSED_DAYS for j in range(6)]
    # Big spenders (if used): the highest order value of all centres not lapsed. On CDNOW
    # the dearest centre last bought 430 days before the end of the log: lapsed, At risk.
    for j in (j for j, n in enumerate(names) if n == "Big spenders"):
        assert not lapsed[j] and value[j] == max(value[k] for k in range(6) if not lapsed[k])
    dearest = int(np.argmax(value))
    assert lapsed[dearest] and names[dearest] == "At risk"
    # At risk (if used): bought often or dear, but lapsed
    for j in (j for j, n in enumerate(names) if n == "At risk"):
        assert lapsed[j] and (frequency[j] > q_f[2] or value[j] > q_m[2])
    # Hibernating: long ago, few, low; the cheapest centre here
    for j in (j for j, n in enumerate(names) if n == "Hibernating"):
        assert lapsed[j] and frequency[j] <= q_f[2] and value[j] <= q_m[2]
    assert names[int(np.argmin(value))] == "Hibernating"
    # Loyal: frequent and not lapsed
    for j in (j for j, n in enumerate(names) if n == "Loyal"):
        assert frequency[j] > q_f[2] and not lapsed[j]
    # nobody who last bought over a year ago is in a "not lapsed" segment
    for j, name in enumerate(names):
        if recency[j] >= LAPSED_DAYS:
            assert name in ("At risk", "Hibernating", "Needs attention")


def test_cdnow_names_are_stable_across_refits(cdnow) -> None:
    model, rows = cdnow
    other_seed = name_churn(model, rows, rows, seed=7)
    month_later = [{**r, "recency_days": r["recency_days"] + 30} for r in rows]
    no_purchase = name_churn(model, rows, month_later)
    print(f"\nCDNOW name changes at a refit: another seed {other_seed:.2%}, "
          f"30 days later with no purchase {no_purchase:.2%}")
    assert other_seed < 0.05 and no_purchase < 0.05
