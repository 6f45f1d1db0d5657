"""Copy-on-write clones (issue 17): a clone and its original share order records and item
entries, and neither ever sees the other's changes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import CancellationEvent, LineItem, PurchaseEvent, RefundEvent, StreamEvent
from models.order_book import ORDER_HORIZON
from models.state import CustomerState
from models.state_view import StateView

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def purchase(i: int, day: int, product: str = "milk", order: int | None = None) -> PurchaseEvent:
    return PurchaseEvent(
        event_id=f"p{i}", order_id=f"o{i if order is None else order}", customer_id="c",
        occurred_at=T0 + timedelta(days=day), currency="EUR",
        items=[LineItem(product_id=product, category="cat-" + product, quantity=2,
                        unit_price=Decimal("1.25"))],
        total=Decimal("2.50"))


def refund(i: int, order: int, day: int, product: str = "milk") -> RefundEvent:
    return RefundEvent(type="refund", event_id=f"r{i}", order_id=f"o{order}", customer_id="c",
                       occurred_at=T0 + timedelta(days=day), currency="EUR",
                       amount=Decimal("1.25"),
                       items=[LineItem(product_id=product, category="cat-" + product,
                                       quantity=1, unit_price=Decimal("1.25"))])


def cancel(i: int, order: int, day: int) -> CancellationEvent:
    return CancellationEvent(type="cancellation", event_id=f"x{i}", order_id=f"o{order}",
                             customer_id="c", occurred_at=T0 + timedelta(days=day))


def folded(events: Sequence[StreamEvent]) -> CustomerState:
    s = CustomerState.new("c")
    for e in events:
        s.apply(e)
    return s


def snapshot(s: CustomerState) -> tuple[object, ...]:
    orders, events = s.book.pack()
    return (s.to_json(), orders, events, s.comparable())


history = [purchase(i, i, "milk" if i % 2 else "tea") for i in range(12)]
follow_ups = st.lists(
    st.one_of(
        st.builds(lambda i, d, p: purchase(100 + i, 12 + d, p),
                  st.integers(0, 50), st.integers(0, 30), st.sampled_from(["milk", "tea", "jam"])),
        st.builds(lambda i, o, d: refund(i, o, 12 + d),
                  st.integers(0, 50), st.integers(0, 11), st.integers(0, 30)),
        st.builds(lambda i, o, d: cancel(i, o, 12 + d),
                  st.integers(0, 50), st.integers(0, 11), st.integers(0, 30)),
    ),
    min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(follow_ups, follow_ups)
def test_a_clone_and_its_original_change_independently(mine: list[StreamEvent],
                                                       theirs: list[StreamEvent]) -> None:
    original = folded(history)
    twin = original.clone()
    for e in mine:
        twin.apply(e)
    assert snapshot(original) == snapshot(folded(history))  # the clone's changes stay there
    for e in theirs:
        original.apply(e)
    assert snapshot(twin) == snapshot(folded([*history, *mine]))  # and the original's too
    assert snapshot(original) == snapshot(folded([*history, *theirs]))


def test_compaction_of_a_clone_leaves_the_original_alone() -> None:
    many = [purchase(i, i // 4, "milk") for i in range(ORDER_HORIZON + ORDER_HORIZON // 8)]
    original = folded(many)
    before = snapshot(original)
    twin = original.clone()
    twin.apply(purchase(10_000, 400, "milk"))  # past the horizon's eighth: orders fold
    assert twin.book.base.orders > 0 and original.book.base.orders == 0
    assert snapshot(original) == before
    assert snapshot(twin) == snapshot(folded([*many, purchase(10_000, 400, "milk")]))


# -- the view kept up to date by a purchase (StateView.with_order) -------------------------

def _checked(events: Sequence[StreamEvent]) -> int:
    """Apply ``events`` to a fresh state, reading its view after each one; every view kept
    across a purchase must be the one computed from scratch. Returns how many were kept."""
    s = CustomerState.new("c")
    kept = 0
    for e in events:
        before = s.view
        s.apply(e)
        if s._view is not None and s._view is not before:
            kept += 1
            assert s._view == StateView.of(s.book), e
    return kept


mixed = st.lists(
    st.one_of(
        st.builds(lambda i, d, p, c: purchase(i, d, p, order=c),
                  st.integers(0, 40), st.integers(0, 60), st.sampled_from(["milk", "tea"]),
                  st.one_of(st.none(), st.integers(0, 40))),
        st.builds(refund,
                  st.integers(0, 40), st.integers(0, 40), st.integers(0, 60)),
        st.builds(cancel,
                  st.integers(0, 40), st.integers(0, 40), st.integers(0, 60)),
    ),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(mixed)
def test_a_view_kept_across_a_purchase_is_the_one_computed_from_scratch(
        events: list[StreamEvent]) -> None:
    _checked(events)


def test_views_stay_exact_through_compaction_and_currencies() -> None:
    events: list[StreamEvent] = []
    for i in range(ORDER_HORIZON + ORDER_HORIZON // 4):
        e = purchase(i, i // 3, "milk" if i % 3 else "tea")
        if i % 7 == 0:  # another currency and channel now and then
            e = e.model_copy(update={"currency": "USD", "channel": "app"})
        events.append(e)
        if i % 11 == 0:
            events.append(refund(i, i, i // 3))
    assert _checked(events) > ORDER_HORIZON  # the fast path ran, and stayed exact


def test_a_purchase_on_the_compacted_part_s_last_day_is_not_a_new_day() -> None:
    events: list[StreamEvent] = [
        purchase(i, 0).model_copy(update={"occurred_at": T0 + timedelta(days=i // 3,
                                                                         hours=i % 3)})
        for i in range(ORDER_HORIZON + ORDER_HORIZON // 8 + 1)]
    s = CustomerState.new("c")
    for e in events:
        s.apply(e)
    base = s.book.base
    assert base.orders and base.last_ts // 86_400 == s.book.base.floor_ts // 86_400
    late = purchase(99_999, 0).model_copy(
        update={"occurred_at": datetime.fromtimestamp(base.last_ts, UTC) + timedelta(hours=20)})
    assert _checked([*events, late]) > 0
    s.view  # noqa: B018 - the view before, so that the purchase keeps it up to date
    days = s.purchase_days
    s.apply(late)
    assert s._view is not None and s.purchase_days == days == StateView.of(s.book).purchase_days


def test_the_view_after_orders_are_folded_under_a_floor_moved_by_other_events() -> None:
    """576 purchases, then 1,200 consent statements (their digests move the floor past every
    order, folding none), then one more purchase: the orders beyond the horizon are folded
    while the floor stays where the statements put it; the view kept across that purchase
    must still be the one computed from scratch."""
    from models.events import ConsentEvent
    from models.order_book import ORDER_HORIZON

    s = CustomerState.new("c")
    n = ORDER_HORIZON + ORDER_HORIZON // 8
    for i in range(n):
        s.apply(purchase(i, i, "milk"))
    t0 = T0 + timedelta(days=n + 30)
    for i in range(1200):
        s.apply(ConsentEvent(type="consent", event_id=f"k{i}", customer_id="c",
                             occurred_at=t0 + timedelta(minutes=i), analysis=True))
    floor, folded = s.book.base.floor_ts, s.book.base.orders
    assert floor > 0 and folded == 0
    s.view  # noqa: B018 - the view kept before the purchase
    assert s.apply(purchase(n, n + 60, "milk", order=n)) == "applied"
    assert s.book.base.floor_ts == floor and s.book.base.orders > 0  # folded, floor put
    assert s._view is None or s._view == StateView.of(s.book)
    assert s.view == StateView.of(s.book)
