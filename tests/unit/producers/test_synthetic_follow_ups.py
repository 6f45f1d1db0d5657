"""The synthetic stream's refunds and cancellations (issue 14 item 7): about the configured
rates, never more money back than the order, after their purchase in time, each with its
own event id and the order's order_id and customer, the orders those of ``generate``,
deterministic; a few refunds published before their purchase."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest

from models.events import (
    CancellationEvent,
    PurchaseEvent,
    RefundEvent,
    StreamEvent,
    decode_event,
)
from producers.datasets.synthetic import (
    CANCEL_RATE,
    EARLY_REFUND_RATE,
    REFUND_RATE,
    generate,
    generate_stream,
)
from producers.publisher import batches

STREAM = generate_stream(customers=400, days=120, seed=11)


def _orders(events: list[StreamEvent]) -> dict[str, PurchaseEvent]:
    return {e.order_id: e for e in events if isinstance(e, PurchaseEvent)}


def _follow_ups(events: list[StreamEvent]) -> list[RefundEvent | CancellationEvent]:
    return [e for e in events if isinstance(e, RefundEvent | CancellationEvent)]


def test_the_defaults_are_a_few_percent_of_orders() -> None:
    assert (CANCEL_RATE, REFUND_RATE, EARLY_REFUND_RATE) == (0.03, 0.04, 0.02)
    kinds = Counter(type(e) for e in STREAM)
    orders = kinds[PurchaseEvent]
    assert orders > 10_000
    # binomial: 3 standard deviations at these sizes are well inside these bounds
    assert 0.025 < kinds[CancellationEvent] / orders < 0.035
    assert 0.034 < kinds[RefundEvent] / orders < 0.046


@pytest.mark.parametrize(("cancel", "refund"), [(0.1, 0.2), (0.0, 0.05), (0.5, 0.0)])
def test_the_rates_are_parameters(cancel: float, refund: float) -> None:
    events = generate_stream(customers=200, days=90, seed=5, cancel_rate=cancel,
                             refund_rate=refund)
    kinds = Counter(type(e) for e in events)
    orders = kinds[PurchaseEvent]
    for kind, rate in ((CancellationEvent, cancel), (RefundEvent, refund)):
        sd = (rate * (1 - rate) / orders) ** 0.5
        assert abs(kinds[kind] / orders - rate) <= 4 * sd + 1e-9, kind


def test_no_order_is_followed_up_twice_and_each_follow_up_names_its_order() -> None:
    orders = _orders(STREAM)
    follow = _follow_ups(STREAM)
    assert len({e.event_id for e in STREAM}) == len(STREAM)  # an event id of its own each
    assert len({e.order_id for e in follow}) == len(follow)  # cancelled or refunded, once
    for e in follow:
        order = orders[e.order_id]
        assert e.customer_id == order.customer_id  # the same partition key
        assert e.event_id != order.event_id
        assert decode_event(e.to_bytes()) == e  # the wire schema accepts it


def test_refunds_never_exceed_the_order_and_are_in_its_currency() -> None:
    orders = _orders(STREAM)
    refunds = [e for e in STREAM if isinstance(e, RefundEvent)]
    shapes: Counter[str] = Counter()
    for r in refunds:
        order = orders[r.order_id]
        assert r.currency == order.currency
        assert Decimal(0) <= r.amount <= order.total
        bought = {i.product_id: i for i in order.items}
        for line in r.items:  # returned lines are lines of the order, at most as many
            assert line.product_id in bought
            assert line.quantity <= bought[line.product_id].quantity
            assert line.unit_price == bought[line.product_id].unit_price
        if r.items:
            assert r.amount == sum((i.unit_price * i.quantity for i in r.items), Decimal(0))
        full = r.amount == order.total
        shapes["full" if full else "lines" if r.items else "amount only"] += 1
    assert min(shapes.values()) > 0.1 * len(refunds), shapes  # all three kinds, each often


def test_follow_ups_come_after_their_purchase_in_time() -> None:
    orders = _orders(STREAM)
    for e in _follow_ups(STREAM):
        gap = e.occurred_at - orders[e.order_id].occurred_at
        if isinstance(e, CancellationEvent):
            assert timedelta(minutes=1) <= gap <= timedelta(hours=1)  # shortly after
            assert e.items == orders[e.order_id].items
        else:
            assert timedelta(days=2) <= gap < timedelta(days=22)  # days later


def test_the_stream_is_in_time_order_but_for_a_few_refunds_put_before_their_purchase() -> None:
    position = {e.event_id: i for i, e in enumerate(STREAM)}
    orders = _orders(STREAM)
    early = [e for e in STREAM if isinstance(e, RefundEvent)
             and position[e.event_id] < position[orders[e.order_id].event_id]]
    refunds = sum(isinstance(e, RefundEvent) for e in STREAM)
    assert 0 < len(early) < 0.05 * refunds  # about 2% of refunds
    for r in early:  # just before its purchase, dated after it
        after = STREAM[position[r.event_id] + 1]
        assert isinstance(after, PurchaseEvent) and after.order_id == r.order_id
        assert r.occurred_at > orders[r.order_id].occurred_at
    rest = [e for e in STREAM if e not in early]
    assert all(x.occurred_at <= y.occurred_at for x, y in itertools.pairwise(rest))
    none_early = generate_stream(customers=100, days=60, seed=3, early_refund_rate=0)
    assert all(x.occurred_at <= y.occurred_at
               for x, y in itertools.pairwise(none_early))
    all_early = generate_stream(customers=100, days=60, seed=3, early_refund_rate=1)
    pos = {e.event_id: i for i, e in enumerate(all_early)}
    by_order = _orders(all_early)
    assert all(pos[e.event_id] < pos[by_order[e.order_id].event_id]
               for e in all_early if isinstance(e, RefundEvent))


def test_deterministic_and_the_orders_are_those_of_generate() -> None:
    kw = {"customers": 60, "days": 60, "seed": 9}
    a, b = generate_stream(**kw), generate_stream(**kw)  # type: ignore[arg-type]
    assert a == b
    assert a != generate_stream(customers=60, days=60, seed=10)
    orders = generate(customers=60, days=60, seed=9)
    assert [e for e in a if isinstance(e, PurchaseEvent)] == orders
    for cancel, refund in ((0.2, 0.04), (0.03, 0.3), (0.0, 0.0)):
        other = generate_stream(customers=60, days=60, seed=9, cancel_rate=cancel,
                                refund_rate=refund)
        assert [e for e in other if isinstance(e, PurchaseEvent)] == orders
    assert generate_stream(customers=60, days=60, seed=9, cancel_rate=0,
                           refund_rate=0) == orders


def test_rates_out_of_range_are_refused() -> None:
    for bad in ({"cancel_rate": -0.1}, {"cancel_rate": 0.6, "refund_rate": 0.5},
                {"early_refund_rate": 1.5}):
        with pytest.raises(ValueError, match="rate"):
            generate_stream(customers=2, days=10, seed=1, **bad)  # type: ignore[arg-type]


def test_the_publisher_batches_every_kind_under_the_customer_key() -> None:
    entries = [(e, e.to_bytes()) for e in STREAM[:3000]]
    got = [e for b in batches(entries, max_records=500) for e, _ in b]
    assert got == STREAM[:3000]
    assert {type(e) for e in got} == {PurchaseEvent, RefundEvent, CancellationEvent}
