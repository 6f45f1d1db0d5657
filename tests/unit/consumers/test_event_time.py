"""Issue 14: event time one can trust (items 4 and 9) and order-level idempotency (item 6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from consumers.admission import admit
from consumers.core import StreamRecord, decode_batch, process_batch
from consumers.instrument.metrics import batch_deltas
from models.events import EventRejected, PurchaseEvent
from models.prediction import Prediction
from models.state import CustomerState
from tests.unit.consumers.test_state_and_core import event, records, view

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _dated(e: PurchaseEvent, occurred_at: str, event_id: str, order_id: str) -> bytes:
    body = e.model_dump(mode="json")
    body.update(occurred_at=occurred_at, event_id=event_id, order_id=order_id)
    return PurchaseEvent.model_validate(body).to_bytes()


def _active(n: int = 200) -> dict[str, CustomerState]:
    """``n`` customers buying every 10 days up to the last day (P(alive) 1.0)."""
    states: dict[str, CustomerState] = {}
    for c in range(n):
        cid = f"c{c}"
        for k in range(10):
            states.setdefault(cid, CustomerState.new(cid)).apply(
                event(c * 100 + k, cid, 60 + 10 * k))
    return states


def _alive(predictions: list[Prediction]) -> list[float]:
    return [p.p_alive for p in predictions]


def test_a_purchase_dated_2100_is_dead_lettered_and_never_becomes_the_watermark() -> None:
    states = _active()
    last = max(s.last_ts for s in states.values())
    e = event(99_999, "c0", 150)
    future = StreamRecord(_dated(e, "2100-01-01T00:00:00Z", "ef", "of"), "1", "c0", "shard-0",
                          arrived_at=NOW)
    touch = [StreamRecord(event(50_000 + c, f"c{c}", 150).to_bytes(), str(2 + c), f"c{c}",
                          "shard-0", arrived_at=NOW) for c in range(200)]
    batch = decode_batch([future, *touch], now=NOW)
    assert [d.kind for d in batch.rejected.values()] == ["future_event"]
    r = process_batch(batch, states, view(), now=NOW, watermark=last)
    assert r.outcomes[0].status == "rejected" and "future_event" in r.outcomes[0].reason
    assert r.watermark <= int(NOW.timestamp())
    assert r.states["c0"].last_ts < int(NOW.timestamp())
    # nobody collapsed to 0.0: the same forecasts as without the 2100 record
    clean = process_batch(decode_batch(touch, now=NOW), states, view(), now=NOW, watermark=last)
    assert _alive(r.predictions) == _alive(clean.predictions)
    assert len(r.predictions) == 200 and min(_alive(r.predictions)) > 0.9
    assert r.checkpoints == {"shard-0": "201"}  # the shard goes on


def test_the_watermark_never_runs_ahead_of_the_latest_arrival() -> None:
    # a state written before future events were refused (or an event inside the tolerance)
    ahead = CustomerState.sketch("a", [0], last_ts=int(datetime(2100, 1, 1,
                                                                  tzinfo=UTC).timestamp()))
    rec = StreamRecord(event(2, "a", 10).to_bytes(), "1", "a", "s",
                       arrived_at=NOW - timedelta(hours=1))
    r = process_batch(decode_batch([rec], now=NOW), {"a": ahead}, view(), now=NOW)
    assert r.watermark == int(NOW.timestamp()) - 3600
    # unknown arrival: the batch's clock is the ceiling
    rec = StreamRecord(event(3, "a", 10).to_bytes(), "1", "a", "s")
    r = process_batch(decode_batch([rec], now=NOW), {"a": ahead}, view(), now=NOW)
    assert r.watermark == int(NOW.timestamp())


def test_a_purchase_within_the_future_tolerance_is_never_after_its_predictions_as_of() -> None:
    """A purchase dated 100 s after its arrival (a producer's clock a little ahead, within
    the tolerance) is applied; the watermark stays at the arrival, and that customer's
    prediction is as of the purchase, not before it; another customer's is as of the
    watermark."""
    ahead = _dated(event(1, "a", 0), (NOW + timedelta(seconds=100)).isoformat(), "e-a", "o-a")
    other = _dated(event(2, "b", 0), (NOW - timedelta(hours=1)).isoformat(), "e-b", "o-b")
    recs = [StreamRecord(ahead, "1", "a", "s", arrived_at=NOW),
            StreamRecord(other, "2", "b", "s", arrived_at=NOW)]
    r = process_batch(decode_batch(recs, now=NOW), {}, view(), now=NOW)
    assert r.counts["applied"] == 2 and r.watermark == int(NOW.timestamp())
    by = {p.customer_id: p for p in r.predictions}
    assert by["a"].last_event.occurred_at == NOW + timedelta(seconds=100) == by["a"].as_of
    assert by["b"].as_of == NOW > by["b"].last_event.occurred_at


def test_tolerance_and_late_events() -> None:
    e = event(1, "a", 0)
    arrived = e.occurred_at.timestamp() - 200  # 200 s of producer clock skew: accepted
    assert admit(e.to_bytes(), "a", arrival_ts=arrived, now_ts=0.0).event_id == "e1"
    try:
        admit(e.to_bytes(), "a", arrival_ts=arrived, now_ts=0.0, future_tolerance_s=100)
    except EventRejected as exc:
        assert exc.kind == "future_event"
    else:
        raise AssertionError("accepted an event 200 s ahead with a tolerance of 100 s")
    # a backfill: occurred in 1997, arriving now
    old = _dated(e, "1997-01-01T00:00:00Z", "e9", "o9")
    assert decode_batch([StreamRecord(old, "1", "a", "s")], now=NOW).rejected == {}


def test_year_zero_and_pre_1970_are_out_of_range_and_do_not_crash_the_batch() -> None:
    e = event(1, "a", 0)
    year0 = StreamRecord(_dated(e, "0001-01-01T00:00:00+14:00", "y0", "y0"), "1", "a", "s")
    old = StreamRecord(_dated(e, "1969-12-31T23:59:59Z", "y1", "y1"), "2", "a", "s")
    good = StreamRecord(e.to_bytes(), "3", "a", "s")
    batch = decode_batch([year0, old, good], now=NOW)
    assert [d.kind for d in batch.rejected.values()] == ["time_out_of_range"] * 2
    r = process_batch(batch, {}, view(), now=NOW)
    assert [o.status for o in r.outcomes] == ["rejected", "rejected", "applied"]
    assert r.states["a"].purchases == 1 and len(r.predictions) == 1


def test_the_same_order_under_a_new_event_id_counts_once() -> None:
    e = event(1, "a", 0)
    retry = _dated(e, e.occurred_at.isoformat(), "e1-retry", e.order_id)
    recs = [*records([e]), StreamRecord(retry, "2", "a", "shard-0")]
    r = process_batch(decode_batch(recs, now=NOW), {}, view(), now=NOW)
    assert [o.status for o in r.outcomes] == ["applied", "duplicate_order"]
    assert r.states["a"].purchases == 1 and r.states["a"].spend_minor == {"EUR": 250}
    assert r.counts["duplicate_order"] == 1
    assert batch_deltas(r.counts)["records_duplicate_order"] == 1.0
    # across batches too (the order digest is in the stored state), and a plain
    # redelivery of the first event stays a "duplicate"
    again = process_batch(decode_batch([StreamRecord(retry, "3", "a", "shard-0"),
                                        *records([e], start=4)], now=NOW),
                          r.states, view(), now=NOW)
    assert [o.status for o in again.outcomes] == ["duplicate_order", "duplicate"]
    assert again.states == {}
    back = CustomerState.from_parts("a", 1, r.states["a"].to_json(),
                                    *r.states["a"].book.pack())
    assert back.apply(PurchaseEvent.model_validate_json(retry)) == "duplicate_order"


def test_a_second_order_of_the_customer_still_counts() -> None:
    e = event(1, "a", 0)
    other = _dated(e, (e.occurred_at + timedelta(days=1)).isoformat(), "e2", "o2")
    recs = [*records([e]), StreamRecord(other, "2", "a", "shard-0")]
    r = process_batch(decode_batch(recs, now=NOW), {}, view(), now=NOW)
    assert r.states["a"].purchases == 2
