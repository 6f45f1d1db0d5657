"""The refit's value-routing cuts compare buyers like for like: each active repeat customer's
CLV as of their own last purchase (consumers.refit.route_cuts_doc)."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.analysis.value_route import clv_percentiles
from consumers.refit import route_cuts_doc
from models.learn import pareto_nbd
from models.learn.forecaster import Forecaster
from models.prediction import SegmentRef
from models.state import DAY, CustomerState

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SEG = SegmentRef(id=0, name="")


def customers() -> list[CustomerState]:
    """150 repeat customers: every 3rd to 14th day from day i % 40, for 2 to 9 purchases."""
    return [CustomerState.sketch(f"c{i}", [i % 40 + k * (3 + i % 12) for k in range(2 + i % 8)],
                                 order_minor=1000 + 37 * i)
            for i in range(150)]


def test_the_cuts_are_taken_at_each_customer_s_last_purchase() -> None:
    f = Forecaster(pareto_nbd.DEFAULT_PRIOR)
    states = customers()
    as_of = max(s.last_ts for s in states) + 10 * DAY
    doc = route_cuts_doc(f, states, as_of)
    at_own = [f.predict(s, SEG, s.last_ts, NOW).clv for s in states]
    at_refit = [f.predict(s, SEG, as_of, NOW).clv for s in states]
    assert doc == clv_percentiles([c for c in at_own if c is not None], as_of=as_of)
    # it matters: as of the refit, customers who bought weeks ago have decayed
    assert doc != clv_percentiles([c for c in at_refit if c is not None], as_of=as_of)
    assert doc is not None and doc["customers"] == 150
