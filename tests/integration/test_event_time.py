"""Issue 14 through ``caa consume`` as a real process on moto: an event dated 2100 and one in
UTC year 0 are dead-lettered, the shard goes on, the active customers' P(alive) is not
collapsed (also after a restart), a producer retry under a new event id counts once, and
``caa dlq redrive`` re-checks the event time against the letter's arrival."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from caa.aws import Aws
from caa.settings import Settings
from models.events import LineItem, PurchaseEvent
from producers.publisher import Publisher

pytestmark = pytest.mark.integration

CUSTOMERS = 200


def _order(cid: str, n: int, at: datetime, event_id: str | None = None) -> PurchaseEvent:
    return PurchaseEvent(
        event_id=event_id or f"{cid}-e{n}", order_id=f"{cid}-o{n}", customer_id=cid,
        occurred_at=at, currency="EUR",
        items=[LineItem(product_id="tea", category="drinks", quantity=1,
                        unit_price=Decimal("4.50"))],
        total=Decimal("4.50"))


def _consume(*flags: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "caa.cli.main", "consume", "--until-idle",
                           "--json", *flags], env=os.environ.copy(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _redrive() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "caa.cli.main", "dlq", "redrive", "--json"],
                          env=os.environ.copy(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def _predictions(s: Settings) -> dict[str, tuple[float, str]]:
    ddb = Aws(s).client("dynamodb")
    items = ddb.get_paginator("scan").paginate(TableName=s.table("predictions"))
    return {i["customer_id"]["S"]: (float(i["p_alive"]["N"]), i["as_of"]["S"])
            for page in items for i in page["Items"]}


def _letters(s: Settings) -> list[dict[str, Any]]:
    items = Aws(s).client("dynamodb").scan(TableName=s.table("dead-letters"))["Items"]
    return sorted(items, key=lambda i: i["kind"]["S"])


def _assert_not_collapsed(s: Settings, now: datetime) -> None:
    preds = _predictions(s)
    assert len(preds) == CUSTOMERS
    for cid, (alive, as_of) in preds.items():
        assert alive > 0.5, (cid, alive, as_of)
        assert datetime.fromisoformat(as_of) <= now, (cid, as_of)


def test_a_future_and_a_year_zero_event_are_dead_lettered_and_the_stream_goes_on(
    fresh_settings: Callable[..., Settings],
) -> None:
    s = fresh_settings(refit_interval_s="0")
    start = datetime.now(UTC)
    kinesis = Aws(s).client("kinesis")
    day = timedelta(days=1)
    events = [_order(f"c{c:03d}", n, start - (40 - 12 * n) * day)
              for n in range(4) for c in range(CUSTOMERS)]
    Publisher(kinesis, s.stream_name).publish(events)
    future = _order("c000", 99, datetime(2100, 1, 1, tzinfo=UTC))
    year0 = _order("c001", 98, datetime(2024, 1, 1, tzinfo=UTC)).model_dump(mode="json")
    year0["occurred_at"] = "0001-01-01T00:00:00+14:00"
    kinesis.put_record(StreamName=s.stream_name, Data=future.to_bytes(), PartitionKey="c000")
    kinesis.put_record(StreamName=s.stream_name, Data=json.dumps(year0).encode(),
                       PartitionKey="c001")
    retry = _order("c002", 3, events[3 * CUSTOMERS + 2].occurred_at, event_id="c002-retry")
    after = _order("c003", 4, start - day)
    Publisher(kinesis, s.stream_name).publish([retry, after])

    first = _consume()
    assert first["rejected"] == 2 and first["duplicate_orders"] == 1
    assert first["applied"] == 4 * CUSTOMERS + 1  # the shard went on past both
    letters = _letters(s)
    assert [d["kind"]["S"] for d in letters] == ["future_event", "time_out_of_range"]
    assert all("arrival_ts" in d for d in letters)  # kept for the redrive's re-check
    customers = Aws(s).client("dynamodb")
    c002 = customers.get_item(TableName=s.table("customers"),
                              Key={"customer_id": {"S": "c002"}})["Item"]
    assert (c002["purchases"]["N"], c002["spend"]["M"]) == ("4", {"EUR": {"N": "1800"}})
    _assert_not_collapsed(s, datetime.now(UTC))

    # A restart (its refit included) keeps it so.
    Publisher(kinesis, s.stream_name).publish([_order("c004", 5, datetime.now(UTC) - day)])
    second = _consume()
    assert second["applied"] == 1 and second["rejected"] == 0
    _assert_not_collapsed(s, datetime.now(UTC))

    # The redrive re-checks the time against the letter's arrival: still rejected, and why.
    assert _redrive() == {"checked": 2, "redriven": 0, "dry_run": False, "kept": {},
                          "other_streams": 0,
                          "still_rejected": {"future_event": 1, "time_out_of_range": 1}}
    reasons = {d["kind"]["S"]: d["reason"]["S"] for d in _letters(s)}
    assert "after the record arrived" in reasons["future_event"]
    assert "0001-01-01T00:00:00+14:00" in reasons["time_out_of_range"]


def test_redrive_rejects_a_letter_whose_partition_key_is_not_its_customer(
    fresh_settings: Callable[..., Settings],
) -> None:
    s = fresh_settings(refit_interval_s="0")
    kinesis = Aws(s).client("kinesis")
    ok = _order("c1", 1, datetime.now(UTC) - timedelta(days=1))
    kinesis.put_record(StreamName=s.stream_name, Data=ok.to_bytes(), PartitionKey="c2")
    kinesis.put_record(StreamName=s.stream_name, Data=b"{oops", PartitionKey="c1")
    first = _consume()
    assert first["rejected"] == 2
    # the decoder alone would accept the first letter; the redrive checks what the consumer
    # checks, so it stays open with its reason
    assert _redrive()["still_rejected"] == {"not_json": 1, "partition_key": 1}


def test_a_restarted_consumer_forecasts_late_purchases_as_of_the_streams_time(
    fresh_settings: Callable[..., Settings],
) -> None:
    """A new process's first batch holds only a customer's old purchases (a producer's late
    data): the watermark started at 0 in every process, so that batch forecast them as of
    their own last purchase (P(alive) 1.0, churn low). The watermark is kept with the
    models' snapshot: the restarted consumer forecasts as of the time the stream reached."""
    s = fresh_settings(refit_interval_s="0")
    kinesis = Aws(s).client("kinesis")
    now, day = datetime.now(UTC), timedelta(days=1)
    Publisher(kinesis, s.stream_name).publish(
        [_order(f"c{c:03d}", n, now - (40 - 12 * n) * day) for n in range(4) for c in range(20)])
    first = _consume()
    assert first["applied"] == 80
    reached = max(as_of for _, as_of in _predictions(s).values())
    assert datetime.fromisoformat(reached) >= now - 5 * day
    Publisher(kinesis, s.stream_name).publish(
        [_order("late", n, now - (400 - 30 * n) * day) for n in range(2)])
    second = _consume("--no-refit")  # a new process (a refit re-forecasts everyone)
    assert second["applied"] == 2
    alive, as_of = _predictions(s)["late"]
    assert as_of == reached  # not its own last purchase, 370 days ago
    assert alive < 0.9
