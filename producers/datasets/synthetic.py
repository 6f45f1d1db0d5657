"""A seeded generator of grocery-style orders, for product-level features.

Each customer has a personal set of staples, each with its own replenishment
cycle (days between purchases, jittered per order), a preferred channel, and a
habit of "bursts": a second small order minutes after the first (the item they
forgot). Same seed, same events, whatever the machine or PYTHONHASHSEED.

:func:`generate` gives the orders only (:class:`~models.events.PurchaseEvent`).
:func:`generate_stream` gives the same orders (event for event, for the same seed and
knobs) plus what happens to some of them afterwards, as the orders service publishes it,
each with its own event id, the order's ``order_id`` and customer id (the partition key):

* ``cancel_rate`` (default 3%) of orders are cancelled (:class:`CancellationEvent`,
  with the order's lines) ``cancel_after_s`` (default 1 to 60 minutes) after being placed;
* ``refund_rate`` (default 4%) of orders get one :class:`RefundEvent`
  ``refund_after_days`` (default 2 to 21 days) later, in the order's currency: 30% in
  full (every line, the order's total), 50% some lines returned (a few of the lines, part
  of their quantities; the amount is those lines' worth), 20% an amount given back
  without returned lines (10-50% of the total). A refund never exceeds its order's total.
  Refunds may be dated after the last order of the ``days`` window;
* ``early_refund_rate`` (default 2%) of those refunds come *before* their purchase in the
  stream's order (a producer's retry that lost the race), to exercise out-of-order
  handling; they keep their true time, after the purchase.

An order is cancelled or refunded, never both. Everything else is in time order (ties by
event id). The follow-ups draw on a random stream of their own (per seed and customer),
so the orders of a seed are the same whatever the rates.

>>> a = generate(customers=5, days=30, seed=7)
>>> b = generate(customers=5, days=30, seed=7)
>>> [e.event_id for e in a] == [e.event_id for e in b] and len(a) > 10
True
>>> all(x.occurred_at <= y.occurred_at for x, y in zip(a, a[1:]))
True
>>> s = generate_stream(customers=40, days=60, seed=7, early_refund_rate=0)
>>> [e for e in s if isinstance(e, PurchaseEvent)] == generate(customers=40, days=60, seed=7)
True
>>> sorted({type(e).__name__ for e in s})
['CancellationEvent', 'PurchaseEvent', 'RefundEvent']
>>> all(x.occurred_at <= y.occurred_at for x, y in zip(s, s[1:]))
True
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal

from models.events import (
    CancellationEvent,
    Contact,
    LineItem,
    PurchaseEvent,
    RefundEvent,
    StreamEvent,
)
from models.money import exponent

#: (product_id, category, unit price, typical days between purchases)
CATALOG: tuple[tuple[str, str, str, int], ...] = (
    ("milk-1l", "dairy", "1.19", 4),
    ("yoghurt-500g", "dairy", "1.79", 7),
    ("butter-250g", "dairy", "2.49", 14),
    ("cheese-gouda", "dairy", "3.99", 10),
    ("eggs-10", "dairy", "2.99", 9),
    ("bread-rye", "bakery", "2.29", 3),
    ("croissants-4", "bakery", "2.99", 6),
    ("apples-1kg", "produce", "2.49", 6),
    ("bananas", "produce", "1.69", 5),
    ("tomatoes-500g", "produce", "1.99", 5),
    ("salad-mix", "produce", "1.49", 4),
    ("pasta-500g", "pantry", "1.29", 14),
    ("rice-1kg", "pantry", "2.19", 21),
    ("olive-oil-750ml", "pantry", "6.99", 35),
    ("coffee-beans-1kg", "beverages", "13.99", 21),
    ("tea-green", "beverages", "3.49", 30),
    ("water-6x1.5l", "beverages", "3.29", 7),
    ("orange-juice-1l", "beverages", "2.59", 6),
    ("detergent-2l", "household", "7.99", 42),
    ("dish-tabs-40", "household", "6.49", 30),
    ("toilet-paper-8", "household", "4.99", 21),
    ("diapers-44", "baby", "12.99", 10),
    ("baby-wipes", "baby", "2.79", 12),
    ("cat-food-12", "pet", "9.99", 14),
    ("dog-food-4kg", "pet", "17.99", 28),
    ("chocolate-100g", "snacks", "1.49", 8),
    ("crisps-175g", "snacks", "1.99", 9),
    ("shampoo-300ml", "personal-care", "3.95", 40),
    ("toothpaste", "personal-care", "2.45", 35),
    ("chicken-breast", "meat", "6.49", 7),
)
CHANNELS = ("app", "web", "store")


@dataclass(slots=True)
class _Staple:
    index: int
    cycle: float
    next_day: float
    quantity: int


def _customer_events(cid: str, rng: random.Random, start: datetime, days: int,
                     burst_rate: float, burst_gap_s: tuple[int, int] = (120, 900),
                     burst_orders: int = 2) -> list[PurchaseEvent]:
    n_staples = rng.randint(3, 9)
    staples = [
        _Staple(i, CATALOG[i][3] * rng.uniform(0.7, 1.5), rng.uniform(0, CATALOG[i][3]),
                rng.choice((1, 1, 1, 2, 3)))
        for i in sorted(rng.sample(range(len(CATALOG)), n_staples))
    ]
    channel = rng.choice(CHANNELS)
    shop_every = rng.choice((2, 3, 4, 7))
    consent = rng.random() < 0.8
    # personal data as orders services send it: accepted, never stored or analysed
    contact = Contact(name=f"Shopper {cid}", email=f"shopper.{cid}@example.com",
                      phone=f"+49 30 {rng.randint(1_000_000, 9_999_999)}",
                      address=f"{rng.randint(1, 200)} Market Street, Berlin")
    events: list[PurchaseEvent] = []
    day = rng.uniform(0, shop_every)
    while day < days:
        due = [s for s in staples if s.next_day <= day + shop_every / 2]
        if due:
            at = start + timedelta(days=int(day), hours=rng.randint(7, 21),
                                   minutes=rng.randint(0, 59), seconds=rng.randint(0, 59))
            baskets = [due]
            if len(due) > 1 and rng.random() < burst_rate:  # forgot something: more orders
                k = 2 if burst_orders <= 2 else rng.randint(2, min(burst_orders, len(due)))
                cuts = sorted(rng.sample(range(1, len(due)), k - 1))
                baskets = [due[a:b] for a, b in itertools.pairwise([0, *cuts, len(due)])]
            for b, basket in enumerate(baskets):
                n = len(events)
                items = [LineItem(product_id=CATALOG[s.index][0], category=CATALOG[s.index][1],
                                  quantity=s.quantity, unit_price=Decimal(CATALOG[s.index][2]))
                         for s in basket]
                events.append(PurchaseEvent(
                    event_id=f"syn-{cid}-{n:05d}",
                    order_id=f"syn-order-{cid}-{n:05d}",
                    customer_id=cid,
                    occurred_at=at + timedelta(seconds=b * rng.randint(*burst_gap_s)),
                    currency="EUR",
                    items=items,
                    total=sum((i.unit_price * i.quantity for i in items), Decimal("0")),
                    channel=channel,
                    consent=consent,
                    contact=contact,
                ))
            for s in due:
                s.next_day = day + s.cycle * rng.uniform(0.8, 1.25)
        day += shop_every * rng.uniform(0.6, 1.6)
    return events


def generate(customers: int = 1000, days: int = 120, seed: int = 42,
             start: datetime | None = None, burst_rate: float = 0.3,
             burst_gap_s: tuple[int, int] = (120, 900),
             burst_orders: int = 2) -> list[PurchaseEvent]:
    """Orders of ``customers`` shoppers over ``days`` days, sorted by time."""
    rng = random.Random(seed)
    begin = start or datetime(2024, 1, 1, tzinfo=UTC)
    events: list[PurchaseEvent] = []
    for c in range(customers):
        cid = f"g{c:07d}"
        events.extend(_customer_events(cid, random.Random(rng.getrandbits(64)), begin, days,
                                       burst_rate, burst_gap_s, burst_orders))
    events.sort(key=lambda e: (e.occurred_at, e.event_id))
    return events


#: :func:`generate_stream`'s defaults: the share of orders cancelled, of orders refunded,
#: and of refunds published before their purchase
CANCEL_RATE = 0.03
REFUND_RATE = 0.04
EARLY_REFUND_RATE = 0.02


def _refund(order: PurchaseEvent, rng: random.Random, at: datetime) -> RefundEvent:
    """A full refund, some lines returned, or an amount without lines; at most the total."""
    kind = rng.random()
    if kind < 0.3:  # in full: every line back
        items = list(order.items)
        amount = order.total
    elif kind < 0.8:  # some lines returned, part of their quantities
        picked = sorted(rng.sample(range(len(order.items)), rng.randint(1, len(order.items))))
        items = [order.items[i].model_copy(
                     update={"quantity": rng.randint(1, order.items[i].quantity)})
                 for i in picked]
        amount = sum((i.unit_price * i.quantity for i in items), Decimal("0"))
    else:  # money back without a return (a goodwill gesture, a damaged delivery)
        items = []
        unit = Decimal(1).scaleb(-exponent(order.currency))
        share = Decimal(rng.randint(10, 50)) / 100
        amount = (order.total * share).quantize(unit, rounding=ROUND_DOWN)
    return RefundEvent(type="refund", event_id=f"{order.event_id}-refund",
                       order_id=order.order_id, customer_id=order.customer_id,
                       occurred_at=at, currency=order.currency, amount=amount, items=items)


def _check_rates(cancel_rate: float, refund_rate: float, early_refund_rate: float) -> None:
    if not (min(cancel_rate, refund_rate) >= 0 and cancel_rate + refund_rate <= 1
            and 0 <= early_refund_rate <= 1):
        raise ValueError("cancel_rate and refund_rate must be >= 0 with a sum <= 1, "
                         "early_refund_rate in [0, 1]")


def follow_ups(orders: list[PurchaseEvent], rng: random.Random, *,
               cancel_rate: float = CANCEL_RATE, refund_rate: float = REFUND_RATE,
               early_refund_rate: float = EARLY_REFUND_RATE,
               cancel_after_s: tuple[int, int] = (60, 3600),
               refund_after_days: tuple[int, int] = (2, 21),
               ) -> list[tuple[CancellationEvent | RefundEvent, bool]]:
    """What happens to some of one customer's ``orders`` (in their order) afterwards: each
    cancellation or refund with whether it is published before its purchase."""
    _check_rates(cancel_rate, refund_rate, early_refund_rate)
    out: list[tuple[CancellationEvent | RefundEvent, bool]] = []
    for order in orders:
        u = rng.random()
        if u < cancel_rate:
            at = order.occurred_at + timedelta(seconds=rng.randint(*cancel_after_s))
            out.append((CancellationEvent(
                type="cancellation", event_id=f"{order.event_id}-cancel",
                order_id=order.order_id, customer_id=order.customer_id, occurred_at=at,
                items=list(order.items), currency=order.currency), False))
        elif u < cancel_rate + refund_rate:
            at = order.occurred_at + timedelta(days=rng.randint(*refund_after_days),
                                               seconds=rng.randint(0, 86_399))
            refund = _refund(order, rng, at)
            out.append((refund, rng.random() < early_refund_rate))
    return out


def generate_stream(customers: int = 1000, days: int = 120, seed: int = 42,
                    start: datetime | None = None, burst_rate: float = 0.3,
                    burst_gap_s: tuple[int, int] = (120, 900), burst_orders: int = 2, *,
                    cancel_rate: float = CANCEL_RATE, refund_rate: float = REFUND_RATE,
                    early_refund_rate: float = EARLY_REFUND_RATE,
                    cancel_after_s: tuple[int, int] = (60, 3600),
                    refund_after_days: tuple[int, int] = (2, 21)) -> list[StreamEvent]:
    """:func:`generate`'s orders with their cancellations and refunds (see the module's
    text for the rates), in stream order: by time, except the refunds published early,
    each just before its purchase."""
    _check_rates(cancel_rate, refund_rate, early_refund_rate)
    orders = generate(customers, days, seed, start, burst_rate, burst_gap_s, burst_orders)
    by_customer: dict[str, list[PurchaseEvent]] = {}
    for order in orders:
        by_customer.setdefault(order.customer_id, []).append(order)
    on_time: list[StreamEvent] = list(orders)
    early: dict[str, list[StreamEvent]] = {}  # order id -> refunds published before it
    for cid in sorted(by_customer):
        # a random stream of its own, so the orders stay those of generate()
        rng = random.Random(f"synthetic-follow-ups:{seed}:{cid}")
        for event, ahead in follow_ups(
                sorted(by_customer[cid], key=lambda e: e.event_id), rng,
                cancel_rate=cancel_rate, refund_rate=refund_rate,
                early_refund_rate=early_refund_rate, cancel_after_s=cancel_after_s,
                refund_after_days=refund_after_days):
            if ahead:
                early.setdefault(event.order_id, []).append(event)
            else:
                on_time.append(event)
    on_time.sort(key=lambda e: (e.occurred_at, e.event_id))
    out: list[StreamEvent] = []
    for e in on_time:
        if isinstance(e, PurchaseEvent):
            out += early.get(e.order_id, [])
        out.append(e)
    return out
