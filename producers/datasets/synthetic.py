"""A seeded generator of grocery-style orders, for product-level features.

Each customer has a personal set of staples, each with its own replenishment
cycle (days between purchases, jittered per order), a preferred channel, and a
habit of "bursts": a second small order minutes after the first (the item they
forgot). Same seed, same events, whatever the machine or PYTHONHASHSEED.

>>> a = generate(customers=5, days=30, seed=7)
>>> b = generate(customers=5, days=30, seed=7)
>>> [e.event_id for e in a] == [e.event_id for e in b] and len(a) > 10
True
>>> all(x.occurred_at <= y.occurred_at for x, y in zip(a, a[1:]))
True
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from models.events import Contact, LineItem, PurchaseEvent

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
