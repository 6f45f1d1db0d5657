"""Customers bigger than a DynamoDB item used to be (issue 14 item 2), through the real local
consumer on the emulator: their state items stay bounded, their predictions are right, and
the other customers of their shard keep moving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from consumers.stores.customers import CustomerStore
from consumers.stores.dynamo import Dynamo
from models.events import CancellationEvent, LineItem, PurchaseEvent, RefundEvent, StreamEvent
from models.state import MAX_STATE_BYTES, CustomerState
from producers.publisher import Publisher

pytestmark = pytest.mark.integration

T0 = datetime(2015, 1, 1, tzinfo=UTC)  # 20,000 orders 3 h apart end in 2021


def purchase(cid: str, n: int, at: datetime, lines: list[str],
             currency: str = "EUR", price: str = "1.00") -> PurchaseEvent:
    items = [LineItem(product_id=p, category="c-" + p[-1], quantity=1, unit_price=Decimal(price))
             for p in lines]
    return PurchaseEvent(event_id=f"{cid}-e{n}", order_id=f"{cid}-o{n}", customer_id=cid,
                         occurred_at=at, currency=currency, items=items,
                         total=Decimal(price) * len(items))


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings(shard_count="1", get_records_limit="1000")


async def _consume(s: Settings) -> dict[str, CustomerState]:
    async with Aws(s).clients("kinesis", "dynamodb") as c:
        w = wiring.worker(s, c["kinesis"], c["dynamodb"])
        await w.run(until_idle=True, final_refit=False)
        store = CustomerStore(Dynamo(c["dynamodb"]), wiring.tables(s).customers)
        return {x.customer_id: x for x in await store.all()}


async def _dead_letters(s: Settings) -> list[dict[str, object]]:
    async with Aws(s).clients("dynamodb") as c:
        return [{k: v.get("S") for k, v in item.items()} for item in
                await Dynamo(c["dynamodb"]).scan(wiring.tables(s).dead_letters)]


def test_huge_customers_are_bounded_and_their_shard_keeps_moving(settings: Settings) -> None:
    events: list[StreamEvent] = []
    # 20,000 orders (about 1 MB of state item before the horizon: DynamoDB refused it)
    busy_at = [T0 + timedelta(hours=3 * n) for n in range(20_000)]
    events += [purchase("busy", n, at, ["milk"]) for n, at in enumerate(busy_at)]
    # 4 orders of 500 distinct lines each: 2,000 distinct products
    events += [purchase("wide", n, T0 + timedelta(days=n),
                        [f"sku-{n}-{k:03d}" for k in range(500)]) for n in range(4)]
    # three currencies, a refund and a cancellation, and a customer behind them all
    events += [purchase("money", 0, T0, ["a"], "EUR", "40.00"),
               purchase("money", 1, T0 + timedelta(days=1), ["b"], "JPY", "6000"),
               purchase("money", 2, T0 + timedelta(days=2), ["c"], "USD", "15.00"),
               RefundEvent(type="refund", event_id="money-r", order_id="money-o0",
                           customer_id="money", occurred_at=T0 + timedelta(days=3),
                           currency="EUR", amount=Decimal("10.00")),
               CancellationEvent(type="cancellation", event_id="money-x", order_id="money-o2",
                                 customer_id="money", occurred_at=T0 + timedelta(days=3))]
    events += [purchase("after", 0, T0 + timedelta(days=5), ["tea"])]
    # the next day, the producer replays busy's first hundred orders: beyond the horizon
    events += [e.model_copy(update={"event_id": f"{e.event_id}-again"}) for e in events[:100]]
    Publisher(Aws(settings).client("kinesis"), settings.stream_name).publish(events)
    states = asyncio.run(_consume(settings))
    busy, wide, money = states["busy"], states["wide"], states["money"]
    assert busy.purchases == 20_000 and busy.size() < MAX_STATE_BYTES
    assert busy.purchase_days == len({at.date() for at in busy_at})
    assert wide.purchases == 4 and wide.quantity == 2000 and len(wide.products) <= 256
    assert money.spend_minor == {"EUR": 3000, "JPY": 6000} and money.purchases == 2
    assert states["after"].purchases == 1  # the shard went on past them all
    dead = asyncio.run(_dead_letters(settings))
    assert len(dead) == 100 and {d["kind"] for d in dead} == {"beyond_horizon"}
