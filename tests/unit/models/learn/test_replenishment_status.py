"""A next purchase's status (due, upcoming, later, lapsed) and what it sets off: a customer
who stopped buying an item long ago gets no "due" reminder for it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models.learn.forecaster import DEFAULT_PRIOR, LAPSE_MIN_DAYS, Forecaster
from models.prediction import Prediction, SegmentRef
from models.state import DAY, CustomerState

NOW = datetime(2024, 1, 1, tzinfo=UTC)
SEGMENT = SegmentRef(id=0, name="Loyal")


def predict(days: list[int], as_of_day: int) -> Prediction:
    s = CustomerState.sketch("c1", days, products={"milk": days})
    s.categories = s.products.clone()
    s.categories["dairy"] = s.categories.pop("milk")
    return Forecaster(DEFAULT_PRIOR).predict(s, SEGMENT, as_of_day * DAY, NOW)


@pytest.mark.parametrize(("gap", "as_of_after_last", "status"), [
    (7, 7, "due"),                         # on its day
    (7, 7 + LAPSE_MIN_DAYS, "due"),        # 14 days overdue: still due (the floor)
    (7, 7 + LAPSE_MIN_DAYS + 1, "lapsed"),  # past the floor and past one gap
    (30, 30 + 30, "due"),                  # one whole gap overdue: due
    (30, 30 + 31, "lapsed"),               # more than one gap overdue
    (30, 25, "upcoming"),
    (30, 10, "later"),
])
def test_an_item_missed_more_than_a_gap_and_two_weeks_is_lapsed(
        gap: int, as_of_after_last: int, status: str) -> None:
    days = [0, gap, 2 * gap, 3 * gap]
    p = predict(days, days[-1] + as_of_after_last)
    assert {n.key: n.status for n in p.next_purchases} == {"milk": status, "dairy": status}
    reminded = status in ("due", "upcoming")
    assert [a.key for a in p.alerts] == (["milk"] if reminded else [])
    assert [r.key for r in p.recommendations if r.kind == "product"] == (
        ["milk"] if reminded else [])
    if status == "lapsed":  # still a category affinity: what they bought is not forgotten
        assert [(r.key, r.reason) for r in p.recommendations] == [
            ("dairy", "category_affinity")]
