"""Bytes of a customer's state item as its history grows (pure: no emulator).

What is measured. A customer's state built by applying purchases
(:meth:`models.state.CustomerState.apply`), written as the customers table writes it
(:func:`consumers.stores.customers.state_to_item`), and sized as DynamoDB sizes an item: the
UTF-8 length of every attribute name plus its value (strings in UTF-8, binary in bytes,
numbers about one byte per two digits plus one; maps and lists add 3 bytes plus one per
element; from the DynamoDB developer guide, "Item sizes and formats").

Shapes (BENCH_STATE_ORDERS, default 1,000, 10,000 and 20,000 orders):

* ``grocery``: 3 orders a day, 4 lines each from 60 products in 12 categories;
* ``wide``: 4 orders of 500 distinct lines each, and one customer with 2,000 distinct
  products over 400 orders (the issue's examples);
* ``cdnow``: every customer of the full CDNOW log, mean and largest item.

The limit the state is held to is :data:`models.state.MAX_STATE_BYTES`; DynamoDB's is
400 KB. Run: ``python bench/state_size.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

from consumers.stores.customers import state_to_item
from models.events import LineItem, PurchaseEvent
from models.state import MAX_STATE_BYTES, CustomerState
from producers.datasets.cdnow import DatasetMissing, load_events

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def _number_bytes(text: str) -> int:
    digits = len(text.lstrip("-").replace(".", "").lstrip("0")) or 1
    return (digits + 1) // 2 + 1


def attribute_bytes(value: dict[str, Any]) -> int:
    """DynamoDB's size of one AttributeValue (see the module docstring)."""
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "B":
        return len(v)
    if kind == "N":
        return _number_bytes(v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + attribute_bytes(x) for k, x in v.items())
    if kind == "L":
        return 3 + sum(1 + attribute_bytes(x) for x in v)
    if kind == "NS":
        return sum(_number_bytes(x) for x in v)
    return 1


def item_bytes(item: dict[str, Any]) -> int:
    return sum(len(name.encode()) + attribute_bytes(v) for name, v in item.items())


def purchase(n: int, at: datetime, lines: list[tuple[str, str]]) -> PurchaseEvent:
    items = [LineItem(product_id=p, category=c, quantity=1, unit_price=Decimal("2.50"))
             for p, c in lines]
    return PurchaseEvent(event_id=f"e{n}", order_id=f"o{n}", customer_id="c", occurred_at=at,
                         currency="EUR", items=items, total=Decimal("2.50") * len(items))


def grocery(orders: int) -> CustomerState:
    s = CustomerState.new("c")
    for n in range(orders):
        lines = [(f"product-{(n * 7 + k * 13) % 60:02d}", f"category-{(n + k) % 12:02d}")
                 for k in range(4)]
        s.apply(purchase(n, T0 + timedelta(hours=8 * n), lines))
    return s


def wide(orders: int, lines: int) -> CustomerState:
    s = CustomerState.new("c")
    for n in range(orders):
        s.apply(purchase(n, T0 + timedelta(days=n),
                         [(f"sku-{n:04d}-{k:03d}", f"category-{k % 40:02d}")
                          for k in range(lines)]))
    return s


def main() -> None:
    sizes = [int(x) for x in os.environ.get("BENCH_STATE_ORDERS", "1000,10000,20000").split(",")]
    print(f"state item bytes (DynamoDB item size; the state is held under {MAX_STATE_BYTES:,},"
          " DynamoDB refuses 400 KB)")
    rows: list[tuple[str, Callable[[], CustomerState]]] = [
        (f"grocery, {n:,} orders", partial(grocery, n)) for n in sizes]
    rows += [("4 orders x 500 distinct lines", partial(wide, 4, 500)),
             ("400 orders x 5 lines = 2,000 products", partial(wide, 400, 5))]
    for label, build in rows:
        t0 = time.process_time()
        state = build()
        cpu = time.process_time() - t0
        item = state_to_item(state)
        print(f"  {label:40s} {item_bytes(item):>9,} bytes   purchases {state.purchases:>6,}"
              f"   products kept {len(state.products):>4}   build {cpu:5.2f} s CPU")
    try:
        events = load_events()
    except DatasetMissing as exc:
        print(f"  cdnow: skipped ({exc})")
        return
    states: dict[str, CustomerState] = {}
    for e in events:
        states.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    sizes = [item_bytes(state_to_item(s)) for s in states.values()]
    print(f"  {'cdnow, ' + format(len(states), ',') + ' customers':40s} "
          f"{sum(sizes) / len(sizes):>9,.0f} bytes mean, {max(sizes):,} largest")


if __name__ == "__main__":
    main()
