"""The prediction change feed end to end: the real Worker writes predictions on moto's
server, and `caa watch` reads them back from the predictions table's DynamoDB stream."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.cli.watch import watch
from caa.settings import Settings
from caa.wiring import ensure_resources
from consumers.ops.changefeed import FeedItem
from deploy.resources import ensure_table
from models.change import PredictionChange
from models.events import LineItem, PurchaseEvent
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _event(cid: str, day: int, product: str = "milk", price: str = "2.00") -> PurchaseEvent:
    return PurchaseEvent(
        event_id=f"{cid}-{day}-{product}", order_id=f"o-{cid}-{day}", customer_id=cid,
        occurred_at=datetime(2024, 1, 1, 10, tzinfo=UTC) + timedelta(days=day), currency="EUR",
        items=[LineItem(product_id=product, category="food", quantity=1,
                        unit_price=Decimal(price))],
        total=Decimal(price), consent=True,
    )


async def _consume(s: Settings) -> dict[str, dict[str, Any]]:
    async with Aws(s).clients("kinesis", "dynamodb") as c:
        w = wiring.worker(s, c["kinesis"], c["dynamodb"])
        await w.run(until_idle=True, final_refit=False)
        return {p["customer_id"]: p for p in await w.predictions.all()}


def consume(s: Settings, events: list[PurchaseEvent]) -> dict[str, dict[str, Any]]:
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    return asyncio.run(_consume(s))


def watch_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[PredictionChange]:
    capsys.readouterr()
    assert cli.main(["watch", "--json", *args]) == 0
    out = capsys.readouterr().out
    return [PredictionChange.model_validate_json(line) for line in out.splitlines()]


def test_watch_yields_the_changes_the_worker_wrote_with_old_and_new(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(refit_interval_s="0", reporting_currency="EUR")  # the events' currency
    first = consume(s, [_event("a", 1), _event("b", 1), _event("c", 1, "bread", "3.50")])
    assert set(first) == {"a", "b", "c"}

    assert len(watch_json(capsys, "--limit", "2")) == 2  # stops at the limit
    created = watch_json(capsys)
    assert sorted(c.customer_id for c in created) == ["a", "b", "c"]
    for c in created:
        stored = first[c.customer_id]
        assert (c.schema_version, c.kind, c.old) == (1, "created", None)
        assert c.new is not None
        assert c.new.segment.model_dump() == stored["segment"]
        assert c.new.p_alive == stored["p_alive"]
        assert c.new.expected_purchases_90d == stored["expected_purchases_90d"]
        assert c.new.purchases == stored["purchases"] == 1
        assert {"segment", "p_alive", "purchases", "customer_id"} <= set(c.changed)
        assert "generated_at" not in c.changed

    second = consume(s, [_event("a", 9, "bread", "4.00")])  # a buys again
    changes = watch_json(capsys, "--customer", "a")
    assert [c.kind for c in changes] == ["created", "updated"]
    before, after = changes
    assert int(after.sequence) > int(before.sequence)
    assert after.old == before.new  # the old image is what the first change made
    assert after.old is not None and after.new is not None
    assert (after.old.purchases, after.new.purchases) == (1, 2)
    assert after.new.spend == second["a"]["spend"] == 6.0
    assert after.new.p_alive == second["a"]["p_alive"]
    assert {"purchases", "spend", "last_event"} <= set(after.changed)
    assert "customer_id" not in after.changed

    ddb = Aws(s).client("dynamodb")
    ddb.delete_item(TableName=s.table("predictions"), Key={"customer_id": {"S": "b"}})
    gone = watch_json(capsys, "--customer", "b")[-1]
    assert (gone.kind, gone.new, gone.changed) == ("deleted", None, [])
    assert gone.old == next(c.new for c in created if c.customer_id == "b")

    capsys.readouterr()
    assert cli.main(["watch", "--customer", "a"]) == 0  # for a person: one line a change
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "created" in lines[0] and "updated" in lines[1]
    assert "purchases" in lines[1]


def test_watch_from_latest_follows_new_changes_only(
    fresh_settings: Callable[..., Settings],
) -> None:
    s = fresh_settings(refit_interval_s="0")
    consume(s, [_event("old", 1)])
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish([_event("new", 2)])

    async def scenario() -> list[FeedItem]:
        got: list[FeedItem] = []
        opened = asyncio.Event()
        task = asyncio.create_task(watch(
            s, Aws(s), start="latest", follow=True, limit=1, emit=got.append,
            opened=opened.set))
        await opened.wait()
        await _consume(s)  # writes the prediction of "new" while the feed follows
        await asyncio.wait_for(task, 60)  # a hang guard, not a timing assertion
        return got

    got = asyncio.run(scenario())
    assert len(got) == 1
    change = got[0]
    assert isinstance(change, PredictionChange)
    assert (change.customer_id, change.kind) == ("new", "created")


def test_setup_enables_the_stream_on_an_existing_table_once(aws_env: str) -> None:
    run = uuid.uuid4().hex[:8]
    s = Settings().model_copy(update={"stream_name": f"stream-{run}",
                                      "table_prefix": f"t{run}-", "shard_count": 1})
    ddb = Aws(s).client("dynamodb")
    ensure_table(ddb, s.table("predictions"), "customer_id", None)  # as an older setup did
    assert "StreamSpecification" not in ddb.describe_table(
        TableName=s.table("predictions"))["Table"]
    created = ensure_resources(s, Aws(s).client("kinesis"), ddb)
    assert f"stream on {s.table('predictions')} (NEW_AND_OLD_IMAGES)" in created.created
    assert ensure_resources(s, Aws(s).client("kinesis"), ddb).created == []  # idempotent
    spec = ddb.describe_table(TableName=s.table("predictions"))["Table"]["StreamSpecification"]
    assert spec == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert not any("StreamSpecification" in ddb.describe_table(TableName=s.table(t))["Table"]
                   for t in ("customers", "usage"))
