"""Producers' real data in the customer state (issue 14 items 2, 5, 7): huge customers stay
bounded and correct, money stays per currency, refunds and cancellations apply exactly once
in any order."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.core import ModelView, StreamRecord, decode_batch, process_batch
from models.events import (
    CancellationEvent,
    ConsentEvent,
    LineItem,
    PurchaseEvent,
    RefundEvent,
    StreamEvent,
)
from models.features import bgnbd_inputs, rfm
from models.learn.forecaster import DEFAULT_PRIOR, Forecaster
from models.learn.segmentation import SegmentModel
from models.money import NO_RATES, Rates
from models.order_book import ORDER_HORIZON, PENDING_MAX
from models.prediction import SegmentRef
from models.state import DAY, MAX_STATE_BYTES, CustomerState

T0 = datetime(2020, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def buy(n: int, at: datetime, total: str = "10.00", currency: str = "USD",
        lines: list[tuple[str, int, str]] | None = None, cid: str = "c") -> PurchaseEvent:
    items = [LineItem(product_id=p, category="cat-" + p[:1], quantity=q,
                      unit_price=Decimal(u)) for p, q, u in (lines or [("milk", 1, total)])]
    return PurchaseEvent(event_id=f"e{n}", order_id=f"o{n}", customer_id=cid, occurred_at=at,
                         currency=currency, items=items,
                         total=sum((i.unit_price * i.quantity for i in items), Decimal(0)))


def refund(n: int, order: int, at: datetime, amount: str, currency: str = "USD",
           lines: list[tuple[str, int, str]] | None = None) -> RefundEvent:
    return RefundEvent(type="refund", event_id=f"r{n}", order_id=f"o{order}", customer_id="c",
                       occurred_at=at, currency=currency, amount=Decimal(amount),
                       items=[LineItem(product_id=p, category="cat-" + p[:1], quantity=q,
                                       unit_price=Decimal(u)) for p, q, u in lines or []])


def cancel(n: int, order: int, at: datetime) -> CancellationEvent:
    return CancellationEvent(type="cancellation", event_id=f"x{n}", order_id=f"o{order}",
                             customer_id="c", occurred_at=at)


def consent_event(n: int, at: datetime) -> ConsentEvent:
    return ConsentEvent(type="consent", event_id=f"k{n}", customer_id="c", occurred_at=at,
                        analysis=n % 2 == 0)


def fold(events: Sequence[StreamEvent], cid: str = "c") -> CustomerState:
    s = CustomerState.new(cid)
    for e in events:
        s.apply(e)
    return s


def view(rates: Rates = NO_RATES) -> ModelView:
    return ModelView(SegmentModel(warmup=10), 0, Forecaster(DEFAULT_PRIOR), rates=rates)


def run(events: Sequence[StreamEvent], states: dict[str, CustomerState] | None = None,
        rates: Rates = NO_RATES):
    recs = [StreamRecord(e.to_bytes(), str(i + 1), e.customer_id, "shard-0")
            for i, e in enumerate(events)]
    return process_batch(decode_batch(recs, now=NOW), states or {}, view(rates), now=NOW)


# -- item 2: bounded state ---------------------------------------------------------------


def test_a_20000_order_customer_stays_bounded_and_exact_where_it_matters() -> None:
    orders = [buy(i, T0 + timedelta(hours=2 * i)) for i in range(20_000)]
    s = fold(orders)
    assert s.size() < MAX_STATE_BYTES
    days = {int(e.occurred_at.timestamp()) // DAY for e in orders}
    assert (s.purchases, s.purchase_days, s.spend_minor) == (20_000, len(days),
                                                             {"USD": 20_000 * 1000})
    assert (s.first_day, s.last_day) == (min(days), max(days))
    assert s.products["milk"].day_count == len(days)
    x, t_x, _ = bgnbd_inputs(s, s.last_ts)
    assert (x, t_x) == (len(days) - 1, (max(days) - min(days)) / 7)
    # a redelivery of any of the latest 1,024 orders is a duplicate, an older one refused
    assert s.apply(orders[-ORDER_HORIZON]) == "duplicate"
    assert s.apply(orders[0]) == "beyond_horizon"
    assert s.purchases == 20_000


def test_the_huge_customer_goes_through_the_core_and_gets_a_prediction() -> None:
    orders = [buy(i, T0 + timedelta(hours=2 * i)) for i in range(20_000)]
    r = run(orders)
    assert r.counts == {"applied": 20_000, "duplicate": 0, "duplicate_order": 0, "rejected": 0}
    assert r.states["c"].size() < MAX_STATE_BYTES
    (p,) = r.predictions
    assert p.purchases == 20_000 and p.spend == 200_000.0 and 0.0 <= p.p_alive <= 1.0
    # the next batch replays the first hundred: refused with a reason, never counted twice
    again = run(orders[:100], {"c": r.states["c"]})
    assert again.counts["rejected"] == 100 and again.states == {}
    assert {d.kind for d in again.dead_letters} == {"beyond_horizon"}


def test_four_orders_of_500_distinct_lines_stay_bounded() -> None:
    orders = [buy(i, T0 + timedelta(days=i),
                  lines=[(f"p{i}-{k:03d}", 1, "1.00") for k in range(500)]) for i in range(4)]
    r = run(orders)
    s = r.states["c"]
    assert s.size() < MAX_STATE_BYTES and len(s.products) <= 256
    assert (s.purchases, s.spend_minor, s.quantity) == (4, {"USD": 200_000}, 2000)
    assert {k[:2] for k in s.products} == {"p3"}  # the most recently bought are kept
    assert r.predictions[0].purchases == 4


# -- item 5: money by currency -----------------------------------------------------------


def test_three_currencies_are_never_summed_silently() -> None:
    events: list[StreamEvent] = [buy(1, T0, "40.00", "EUR"),
                                 buy(2, T0 + timedelta(days=1), "6000", "JPY"),
                                 buy(3, T0 + timedelta(days=2), "15.00", "USD")]
    s = fold(events)
    assert s.spend_minor == {"EUR": 4000, "JPY": 6000, "USD": 1500}
    rates = Rates("USD", {"EUR": 1.08, "JPY": 0.0067}, as_of="2026-11-30")
    assert s.spend(rates) == (98.4, ())
    assert rfm(s, s.last_ts, rates)["monetary"] == 98.4 / 3
    partial = Rates("USD", {"EUR": 1.08})
    assert s.spend(partial) == (58.2, ("JPY",))
    assert rfm(s, s.last_ts, partial)["monetary"] == 58.2 / 2  # JPY order left out
    (p,) = run(events, rates=partial).predictions
    assert (p.spend, p.currency, p.unconverted) == (58.2, "USD", ["JPY"])


# -- item 7: refunds and cancellations ----------------------------------------------------


def test_a_cancellation_takes_the_order_out_of_everything() -> None:
    orders = [buy(i, T0 + timedelta(days=10 * i)) for i in range(3)]
    s = fold([*orders, cancel(1, 2, T0 + timedelta(days=21))])
    assert (s.purchases, s.purchase_days, s.spend_minor) == (2, 2, {"USD": 2000})
    assert s.last_day == (T0 + timedelta(days=10)).timestamp() // DAY
    assert bgnbd_inputs(s, int((T0 + timedelta(days=30)).timestamp())) == (1, 10 / 7, 30 / 7)
    # a second cancellation of the order (a new event id) changes nothing
    assert s.apply(cancel(2, 2, T0 + timedelta(days=22))) == "duplicate_order"
    # cancelling every order leaves a customer without purchases: no prediction
    r = run([*orders, *(cancel(i, i, T0 + timedelta(days=30)) for i in range(3))])
    assert r.states["c"].purchases == 0 and r.predictions == []


@given(st.permutations(range(3)), st.booleans(), st.booleans())
@settings(max_examples=25, deadline=None)
def test_a_cancelled_order_drives_no_replenishment_in_any_order(
        order: list[int], with_lines: bool, same_day_order: bool) -> None:
    """Two orders of milk 5 days apart, the second cancelled (with its lines or without):
    milk was bought on one day only, so no mean gap, no next purchase, no recommendation
    (the item's stats keep every placed order's day: the cancelled one's does not count).
    In any delivery order. An order of other goods on the cancelled one's day keeps that
    day a purchase day, not a milk day: the known limit is that then it still counts."""
    first, second = (buy(i, T0 + timedelta(days=5 * i)) for i in range(2))
    gone = CancellationEvent(
        type="cancellation", event_id="x1", order_id="o1", customer_id="c",
        occurred_at=T0 + timedelta(days=6),
        **({"currency": "USD", "items": second.items} if with_lines else {}))
    three: list[StreamEvent] = [first, second, gone]
    events = [three[i] for i in order]
    if same_day_order:
        events.append(buy(7, T0 + timedelta(days=5, hours=1), lines=[("bread", 1, "2.00")]))
    (p,) = run(events).predictions
    milk = [n for n in p.next_purchases if n.key in ("milk", "cat-m")]
    if same_day_order:
        assert {n.key for n in milk} == {"milk", "cat-m"}  # the limit, stated above
    else:
        assert milk == [] and p.recommendations[:1] != [] and all(
            r.key != "milk" for r in p.recommendations)
        assert p.timing is not None and p.timing.avg_days_between is None


def test_refunds_reduce_spend_and_quantities_once_and_never_below_zero() -> None:
    order = buy(1, T0, lines=[("milk", 4, "2.50"), ("tea", 1, "5.00")])
    back = refund(1, 1, T0 + timedelta(days=3), "5.00", lines=[("milk", 2, "2.50")])
    s = fold([order, back, back])
    assert s.spend_minor == {"USD": 1000} and s.products["milk"].quantity == 2
    assert s.purchases == 1  # a refund keeps the order
    s.apply(refund(2, 1, T0 + timedelta(days=4), "50.00"))
    assert s.spend_minor == {"USD": 0}
    assert s.apply(refund(3, 1, T0 + timedelta(days=5), "1", currency="JPY")) == \
        "currency_mismatch"


def test_follow_ups_before_their_purchase_give_the_same_state_in_any_order() -> None:
    events: list[StreamEvent] = [
        buy(1, T0, lines=[("milk", 4, "2.50")]), buy(2, T0 + timedelta(days=3)),
        refund(1, 1, T0 + timedelta(days=5), "2.50", lines=[("milk", 1, "2.50")]),
        cancel(1, 2, T0 + timedelta(days=6)), buy(3, T0 + timedelta(days=9), "3.00")]
    states = {fold(list(p)).comparable() for p in itertools.permutations(events)}
    assert len(states) == 1
    s = fold(events)
    # the cancellation carries no lines: order 2's milk stays in the product statistics
    assert (s.purchases, s.spend_minor, s.products["milk"].quantity) == (2, {"USD": 1050}, 5)


def test_a_follow_up_in_another_currency_is_refused_in_any_order_after_an_agreeing_one(
) -> None:
    """A refund in the order's currency and one in another, around their purchase: the
    other one is refused (a dead letter) in every order where the first follow-up agrees
    with the purchase; and a cancellation with lines in another currency is refused too."""
    order = buy(1, T0, currency="EUR", lines=[("milk", 4, "2.50")])
    eur = refund(1, 1, T0 + timedelta(days=2), "1.00", currency="EUR")
    jpy = refund(2, 1, T0 + timedelta(days=3), "300", currency="JPY")
    seen = set()
    orders: list[list[StreamEvent]] = [[order, eur, jpy], [eur, order, jpy], [eur, jpy, order]]
    for events in orders:
        s = CustomerState.new("c")
        assert [s.apply(e) for e in events].count("currency_mismatch") == 1
        assert s.spend_minor == {"EUR": 900} and set(s.products["milk"].spend) == {"EUR"}
        seen.add(s.comparable())
    assert len(seen) == 1
    usd_lines = CancellationEvent(
        type="cancellation", event_id="x9", order_id="o1", customer_id="c",
        occurred_at=T0 + timedelta(days=4), currency="USD",
        items=[LineItem(product_id="milk", category="cat-m", quantity=4,
                        unit_price=Decimal("2.50"))])
    for first in (order, eur):  # placed, or known from a follow-up only
        s = fold([first])
        assert s.apply(usd_lines) == "currency_mismatch"
        assert all("USD" not in st.spend for _, st in s.products.items())


follow_ups = st.lists(
    st.tuples(st.sampled_from(["buy", "refund", "cancel"]), st.integers(0, 6),
              st.integers(0, 60), st.integers(1, 3000)), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(follow_ups, st.randoms(use_true_random=False))
def test_any_delivery_order_and_redelivery_gives_one_state(rows, rnd) -> None:
    events: list[StreamEvent] = []
    for n, (kind, order, day, cents) in enumerate(rows):
        at = T0 + timedelta(days=day, minutes=n)
        amount = f"{cents / 100:.2f}"
        if kind == "buy":  # (which event of an order re-sent under a new id counts depends
            # on arrival, and the states then differ in their last event: not generated)
            events.append(buy(order, T0 + timedelta(days=order), "1.00"))
        elif kind == "refund":
            events.append(refund(n, order, at, amount, lines=[("milk", 1, "0.01")]))
        else:
            events.append(cancel(n, order, at))
    once = fold(events)
    shuffled = list(events) + rnd.sample(events, len(events) // 2)  # redeliveries too
    rnd.shuffle(shuffled)
    again = fold(shuffled)
    # the same effect: body and orders (of two cancellations of one order, whichever came
    # first is the one whose event id is remembered; the other is a duplicate_order)
    assert (again.to_json(), again.book.pack()[0]) == (once.to_json(), once.book.pack()[0])


# -- every record of a customer whose handling raised is a dead letter; the rest go on -----


def test_an_exception_for_one_customer_dead_letters_only_that_customer(monkeypatch) -> None:
    broken = Forecaster(DEFAULT_PRIOR)
    real = broken.predict

    def predict(state, *args, **kwargs):
        if state.customer_id == "bad":
            raise ZeroDivisionError("a defect")
        return real(state, *args, **kwargs)

    monkeypatch.setattr(broken, "predict", predict)
    events = [buy(1, T0, cid="bad"), buy(2, T0, cid="good"), buy(3, T0, cid="bad")]
    recs = [StreamRecord(e.to_bytes(), str(i + 1), e.customer_id, "shard-0")
            for i, e in enumerate(events)]
    r = process_batch(decode_batch(recs, now=NOW), {},
                      ModelView(SegmentModel(warmup=10), 0, broken), now=NOW)
    assert [o.status for o in r.outcomes] == ["rejected", "applied", "rejected"]
    assert [d.kind for d in r.dead_letters] == ["internal_error", "internal_error"]
    assert "ZeroDivisionError: a defect" in r.dead_letters[0].reason
    assert set(r.states) == {"good"} and [p.customer_id for p in r.predictions] == ["good"]
    assert r.checkpoints == {"shard-0": "3"}


# -- found by review: the horizon, overflow, stale predictions, sizes ----------------------


def test_orders_sharing_a_second_keep_the_horizon_and_a_consent_flood_keeps_the_orders() -> None:
    s = fold([buy(i, T0) for i in range(600)])  # a bulk import: one second
    assert s.purchases == 600 and len(s.book.orders) == 600  # nothing refused, none folded
    s = fold([buy(i, T0 + timedelta(days=i)) for i in range(50)])
    for n in range(1200):
        s.apply(consent_event(n, T0 + timedelta(days=50, seconds=n)))
    assert len(s.book.orders) == 50  # the digests' horizon folds no order
    assert s.apply(refund(1, 49, T0 + timedelta(days=60), "1.00")) == "applied"
    assert s.spend_minor == {"USD": 49_900}


def test_follow_ups_for_unknown_orders_wait_in_bounded_numbers() -> None:
    s = fold([buy(0, T0), *(cancel(n, 1000 + n, T0 + timedelta(minutes=n))
                            for n in range(600))])
    assert len(s.book.orders) <= 1 + PENDING_MAX and s.purchases == 1


def test_refunds_past_64_bits_cannot_break_the_item() -> None:
    s = fold([buy(1, T0, "10.000", "KWD")])
    big = "99999999999.999"
    for n in range(10_000):
        s.apply(refund(n, 1, T0 + timedelta(seconds=n + 1), big, currency="KWD"))
    assert s.spend_minor == {"KWD": 0} and s.book.pack()  # packs (no struct.error)


def test_a_customer_whose_orders_are_all_cancelled_loses_the_prediction() -> None:
    first = run([buy(1, T0)])
    assert [p.customer_id for p in first.predictions] == ["c"] and first.retired == set()
    r = run([cancel(1, 1, T0 + timedelta(days=1))], {"c": first.states["c"]})
    assert r.predictions == [] and r.retired == {"c"} and r.erased == set()


def test_many_currencies_and_wide_names_stay_under_the_bound() -> None:
    codes = ["EUR", "USD", "JPY", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF",
             "KWD", "BHD", "CAD", "AUD", "NZD"]
    events = []
    for n in range(400):
        e = buy(n, T0 + timedelta(hours=n), "1", codes[n % len(codes)],
                lines=[(f"p{n % 300:03d}-{k}", 1, "1") for k in range(8)])
        wide = [i.model_copy(update={"category": "\U0001f600" * 120 + f"{(n + k) % 90:02d}"})
                for k, i in enumerate(e.items)]
        events.append(e.model_copy(update={"items": wide}))
    s = fold(events)
    s.bound()
    assert s.size() <= MAX_STATE_BYTES


def test_a_reused_event_id_with_another_time_is_a_dead_letter_not_a_duplicate() -> None:
    """The same event id on another order at another time: not a redelivery, and the order
    it carries must not vanish as one; a true redelivery (the same event) stays a
    duplicate, and so does a consent statement's."""
    first = buy(1, T0)
    other = buy(2, T0 + timedelta(days=3), total="999.00").model_copy(
        update={"event_id": first.event_id})
    k = consent_event(4, T0 + timedelta(days=1))
    k_again = k.model_copy(update={"occurred_at": T0 + timedelta(days=2)})
    r = run([first, first, other, k, k, k_again])
    assert [o.status for o in r.outcomes] == [
        "applied", "duplicate", "rejected", "applied", "duplicate", "rejected"]
    assert [d.kind for d in r.dead_letters] == ["event_id_reused", "event_id_reused"]
    assert "event_id" in r.dead_letters[0].reason
    assert r.states["c"].purchases == 1


def test_a_reused_event_id_at_the_same_time_on_another_purchase_is_a_dead_letter() -> None:
    """The same event id and occurred_at, but another order, total or currency (a producer
    that reuses ids, e.g. one per second): not a redelivery. Each must be a letter, not a
    silent duplicate that loses the order; the true redelivery stays a duplicate, also
    after a refund and a cancellation of the order and after compaction has moved the
    floor."""
    first = buy(1, T0)
    again = first.model_copy()
    other_order = buy(2, T0).model_copy(update={"event_id": first.event_id})
    other_total = buy(1, T0, total="11.00")
    other_currency = first.model_copy(update={"currency": "EUR"})
    r = run([first, again, other_order, other_total, other_currency,
             refund(1, 1, T0 + timedelta(days=1), "2.00"), cancel(1, 1, T0 + timedelta(days=2)),
             again])
    assert [o.status for o in r.outcomes] == [
        "applied", "duplicate", "rejected", "rejected", "rejected", "applied", "applied",
        "duplicate"]
    assert [d.kind for d in r.dead_letters] == ["event_id_reused"] * 3
    assert "another order, currency or total" in r.dead_letters[0].reason

    # past compaction: the latest purchase's redelivery is still a duplicate, and another
    # order under its id still a letter
    many = [buy(n, T0 + timedelta(hours=n)) for n in range(ORDER_HORIZON + ORDER_HORIZON // 8 + 2)]
    last = many[-1]
    r = run([*many, last, last.model_copy(update={"order_id": "elsewhere"})])
    assert r.states["c"].book.base.floor_ts > 0
    assert [o.status for o in r.outcomes[-2:]] == ["duplicate", "rejected"]
    assert [d.kind for d in r.dead_letters] == ["event_id_reused"]


def test_an_item_whose_kept_days_are_gone_has_no_next_purchase_and_no_gap() -> None:
    """Milk bought 5 times long ago (those days compacted: only counted) and once lately,
    that order cancelled: its last day is not known, so no "due every 0 days" alert, no
    recommendation, and the AI analysis's input gives no gap either; likewise an item whose
    days are all compacted."""
    from models.item_stats import ItemStats
    from models.prompt import build_input

    orders = [buy(i, T0 + timedelta(days=i), lines=[("bread", 1, "2.00")]) for i in range(3)]
    s = fold([*orders, buy(9, T0 + timedelta(days=40)), cancel(9, 9, T0 + timedelta(days=41))])
    dead = int((T0 + timedelta(days=40)).timestamp()) // DAY
    s.products["milk"] = ItemStats(orders=5, quantity=5, spend={"USD": 5000}, early=5,
                                   first_day=s.first_day - 100, days=[dead])
    s.products["tea"] = ItemStats(orders=3, quantity=3, spend={"USD": 900}, early=3,
                                  first_day=s.first_day - 50, days=[])
    assert s.view.dead_days == {dead}
    at = int((T0 + timedelta(days=60)).timestamp())
    p = Forecaster(DEFAULT_PRIOR).predict(s, SegmentRef(id=0, name="x"), at, NOW)
    assert not {"milk", "tea"} & {n.key for n in p.next_purchases}
    assert not {"milk", "tea"} & ({a.key for a in p.alerts} | {r.key for r in p.recommendations})
    x = build_input(s, None, as_of_ts=at, key=b"k", reference_order_value=10.0)
    items = {i.name: i for i in x.products}
    assert items["milk"].avg_days_between is None and items["milk"].purchase_days == 5
    assert items["tea"].avg_days_between is None


def test_a_refund_before_its_purchase_in_another_currency_is_said_not_dropped() -> None:
    """A JPY refund received before its EUR purchase was applied, then set to nothing when
    the purchase came, with no word anywhere (after the purchase the same refund is a
    ``currency_mismatch`` dead letter). The purchase still applies; the state says the
    refund was dropped, and the core makes it a dead letter of the purchase's record."""
    from consumers.core import ModelView, StreamRecord, decode_batch, process_batch
    from models.learn.forecaster import DEFAULT_PRIOR, Forecaster
    from models.learn.segmentation import SegmentModel

    order = buy(1, T0, currency="EUR", lines=[("milk", 4, "2.50")])
    jpy = refund(2, 1, T0 - timedelta(hours=1), "300", currency="JPY")
    s = CustomerState.new("c")
    assert [s.apply(jpy), s.apply(order)] == ["applied", "applied_refund_dropped"]
    assert s.spend_minor == {"EUR": 1000} and s.purchases == 1
    assert s.apply(order) == "duplicate"  # a redelivery: said once
    assert s.apply(order.model_copy(update={"event_id": "e9"})) == "duplicate_order"
    eur = refund(3, 1, T0 - timedelta(hours=1), "1.00", currency="EUR")
    s = CustomerState.new("c")
    assert [s.apply(eur), s.apply(order)] == ["applied", "applied"]  # same currency: kept
    records = [StreamRecord(jpy.to_bytes(), "1", "c", "shard-0"),
               StreamRecord(order.to_bytes(), "2", "c", "shard-0")]
    models = ModelView(SegmentModel(), 0, Forecaster(DEFAULT_PRIOR))
    r = process_batch(decode_batch(records, now=T0), {}, models, now=T0)
    assert [o.status for o in r.outcomes] == ["applied", "applied"]
    (letter,) = r.dead_letters
    assert letter.record.sequence_number == "2" and letter.kind == "currency_mismatch"
    assert "this purchase was applied, but refunds of its order" in letter.reason
    assert r.states["c"].spend_minor == {"EUR": 1000} and len(r.predictions) == 1


def test_a_customer_who_kept_nothing_is_worth_nothing() -> None:
    """Three free orders, or three orders each refunded in full: the Gamma-Gamma model
    (positive spend only) scored with a mean of 0 fell back on the population's mean, and
    such a customer showed a CLV near a paying one's. They are worth 0, interval too; a
    customer who paid is not."""
    from models.learn.gamma_gamma import GammaGammaParams

    forecaster = Forecaster(DEFAULT_PRIOR, value_params=GammaGammaParams(6.2488, 3.7446, 15.4477))
    days = [T0 + timedelta(days=d) for d in (0, 20, 40)]
    free = fold([buy(i, at, "0.00") for i, at in enumerate(days)])
    returned = fold([e for i, at in enumerate(days)
                     for e in (buy(i, at, "10.00"), refund(i, i, at + timedelta(days=1), "10.00"))])
    paying = fold([buy(i, at, "10.00") for i, at in enumerate(days)])
    as_of = int((T0 + timedelta(days=45)).timestamp())
    values = {}
    for name, state in (("free", free), ("returned", returned), ("paying", paying)):
        p = forecaster.predict(state, SegmentRef(id=0, name="s"), as_of, NOW)
        assert p.value is not None
        values[name] = (p.value.clv, p.value.clv_low, p.value.clv_high,
                        p.value.expected_order_value, p.value.historic)
    assert values["free"] == values["returned"] == (0.0, 0.0, 0.0, 0.0, 0.0)
    clv, low, high, order_value, historic = values["paying"]
    assert 0 <= low <= clv < high and clv > 0 and order_value > 0 and historic == 30.0
