from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.core import ModelView, StreamRecord, decode_batch, process_batch
from models.events import LineItem, PurchaseEvent
from models.learn.forecaster import DEFAULT_PRIOR, Forecaster
from models.learn.segmentation import SegmentModel
from models.state import CustomerState

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def event(i: int, cid: str, day: int, qty: int = 1, cents: int = 250,
          product: str = "milk", consent: bool | None = None) -> PurchaseEvent:
    price = Decimal(cents) / 100
    return PurchaseEvent(
        event_id=f"e{i}", order_id=f"o{i}", customer_id=cid,
        occurred_at=T0 + timedelta(days=day, minutes=i % 50), currency="EUR",
        items=[LineItem(product_id=product, category="cat-" + product[:1], quantity=qty,
                        unit_price=price)],
        total=price * qty, consent=consent,
    )


def records(events: list[PurchaseEvent], shard: str = "shard-0", start: int = 1):
    return [StreamRecord(e.to_bytes(), str(start + n), e.customer_id, shard)
            for n, e in enumerate(events)]


def view() -> ModelView:
    return ModelView(SegmentModel(warmup=10), 0, Forecaster(DEFAULT_PRIOR))


def fold(events: list[PurchaseEvent]) -> dict[str, CustomerState]:
    out: dict[str, CustomerState] = {}
    for e in events:
        out.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    return out


def comparable(states: dict[str, CustomerState]):
    return {k: v.comparable() for k, v in sorted(states.items())}


events_strategy = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 400), st.integers(1, 5),
              st.integers(0, 5000), st.sampled_from(["milk", "bread", "tea"]),
              st.sampled_from([None, True, False])),
    min_size=1, max_size=40,
).map(lambda rows: [event(i, c, d, q, p, prod, cons)
                    for i, (c, d, q, p, prod, cons) in enumerate(rows)])


@settings(max_examples=60, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False))
def test_state_is_order_independent_and_idempotent(events, rnd):
    once = fold(events)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    twice = fold(shuffled + events[: len(events) // 2] + shuffled)
    assert comparable(once) == comparable(twice)


@settings(max_examples=30, deadline=None)
@given(events_strategy)
def test_a_batch_applied_twice_equals_once(events):
    first = process_batch(decode_batch(records(events)), {}, view(), now=NOW)
    again = process_batch(decode_batch(records(events, start=1000)), first.states, view(),
                          now=NOW)
    assert again.states == {}  # nothing changed
    assert {o.status for o in again.outcomes} == {"duplicate"}
    assert [p.purchases for p in again.predictions] == [p.purchases for p in first.predictions]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_never_crashes_on_arbitrary_bytes(data):
    batch = decode_batch([StreamRecord(data, "1", "k", "s")])
    assert len(batch.events) + len(batch.rejected) == 1


def test_state_round_trips_through_its_storage_form():
    s = fold([event(i, "a", i * 3, product=p) for i, p in enumerate(["milk", "tea", "milk"])])["a"]
    back = CustomerState.from_parts("a", s.version, s.to_json(), *s.book.pack())
    assert back.comparable() == s.comparable() and back.version == s.version


def test_batch_outcomes_dead_letters_and_checkpoint():
    evs = [event(1, "a", 0), event(2, "b", 1), event(3, "a", 2)]
    recs = records(evs)
    bad = [StreamRecord(b"\xfe\xff", "10", "x", "shard-0"),
           StreamRecord(b'{"schema_version": 3}', "11", "x", "shard-0"),
           StreamRecord(evs[1].to_bytes(), "12", "not-b", "shard-0")]
    batch = recs[:2] + bad + recs[2:]
    r = process_batch(decode_batch(batch), {}, view(), now=NOW)
    assert [o.status for o in r.outcomes] == [
        "applied", "applied", "rejected", "rejected", "rejected", "applied"]
    assert [d.kind for d in r.dead_letters] == ["not_utf8", "unknown_version", "partition_key"]
    assert r.states["a"].purchases == 2 and r.states["b"].purchases == 1
    assert r.checkpoints == {"shard-0": "12"}
    assert {p.customer_id for p in r.predictions} == {"a", "b"}
    assert len(r.learn) == 2


def test_process_batch_does_not_modify_its_inputs():
    known = fold([event(1, "a", 0)])
    before = comparable(known)
    r = process_batch(decode_batch(records([event(2, "a", 5)])), known, view(), now=NOW)
    assert comparable(known) == before
    assert r.states["a"].purchases == 2 and r.states["a"].version == 1


def test_any_interleaving_across_customers_gives_the_same_final_state():
    rng = random.Random(5)
    evs = [event(i, rng.choice("abcdef"), rng.randint(0, 300)) for i in range(200)]
    results = []
    for seed in range(3):
        order = list(evs)
        random.Random(seed).shuffle(order)
        states: dict[str, CustomerState] = {}
        for k in range(0, len(order), 17):  # batches of 17
            r = process_batch(decode_batch(records(order[k:k + 17])), states, view(), now=NOW)
            states.update(r.states)
        results.append({k: v.comparable() for k, v in sorted(states.items())})
    assert results[0] == results[1] == results[2]


def test_consent_refusal_wins_a_tie():
    a = event(1, "a", 0, consent=True)
    b = PurchaseEvent.model_validate({**a.model_dump(), "event_id": "e2", "order_id": "o2",
                                      "consent": False})
    assert fold([a, b])["a"].consent is False
    assert fold([b, a])["a"].consent is False


def test_equal_sequence_numbers_on_two_shards_are_two_records():
    a, b = event(1, "c1", 1), event(2, "c2", 2)
    batch = decode_batch([*records([a], shard="shard-0"), *records([b], shard="shard-1")])
    r = process_batch(batch, {}, view(), now=datetime(2024, 6, 1, tzinfo=UTC))
    assert [o.status for o in r.outcomes] == ["applied", "applied"]
    assert sorted(r.states) == ["c1", "c2"]
    assert r.checkpoints == {"shard-0": "1", "shard-1": "1"}
