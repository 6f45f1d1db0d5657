"""Drift-aware refits (issue 16 item 8): ADWIN on whether each customer of a batch is far
from every segment centre triggers a refit early, in addition to the schedule, and every
prediction records why the models were last refitted. The local worker refits at once; the
stream function asks the refit function's scheduled check, which refits on the request and
says ``not_due`` when nothing asks. moto's server over HTTP, the production clients and handlers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from models.events import LineItem, PurchaseEvent
from producers.datasets.synthetic import generate
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _shifted(n: int, start: datetime) -> list[PurchaseEvent]:
    """``n`` new customers, each with one order 300 times a grocery basket's value: far from
    every centre the grocery customers made."""
    out = []
    for i in range(n):
        price = Decimal(4000 + 37 * (i % 50))
        out.append(PurchaseEvent(
            event_id=f"shift-e{i}", order_id=f"shift-o{i}", customer_id=f"s{i:05d}",
            occurred_at=start + timedelta(minutes=i), currency="USD",
            items=[LineItem(product_id=f"tv{i % 7}", category="electronics", quantity=1,
                            unit_price=price)], total=price))
    return out


def _events() -> list[PurchaseEvent]:
    before = generate(customers=150, days=30, seed=5)
    return [*before, *_shifted(400, before[-1].occurred_at + timedelta(days=1))]


def _reasons(s: Settings) -> set[str]:
    ddb = Aws(s).client("dynamodb")
    return {json.loads(i["detail"]["S"]).get("refit_reason") or ""
            for page in ddb.get_paginator("scan").paginate(TableName=s.table("predictions"))
            for i in page["Items"]}


def test_the_local_worker_refits_when_it_sees_drift(
        fresh_settings: Callable[..., Settings]) -> None:
    """No refit schedule (``CAA_REFIT_INTERVAL_S=0``): a stream whose customers change
    abruptly still gets a refit, with ADWIN's reason in the predictions written after it."""
    s = fresh_settings(refit_interval_s="0", get_records_limit="25", segment_warmup="40")
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(_events())

    async def consume() -> tuple[list[str], str | None]:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"])
            reasons: list[str] = []
            real = w._refit

            async def recording(*args: Any, **kwargs: Any) -> Any:
                reasons.append(str(kwargs.get("reason")))
                return await real(*args, **kwargs)

            w._refit = recording  # type: ignore[method-assign]
            await w.run(until_idle=True, final_refit=False)
            await asyncio.sleep(0)
            return reasons, w.registry.refit_reasons.get(w.registry.forecast_model)

    reasons, kept = asyncio.run(consume())
    assert reasons and all(r.startswith("drift: share of customers far from every centre rose")
                           for r in reasons)
    assert kept is not None and kept.startswith("drift: ")
    assert any(r.startswith("drift: ") for r in _reasons(s))  # the rewritten predictions


def test_the_stream_function_asks_and_the_scheduled_check_refits(
        fresh_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream function's drift leaves a refit request in the models table; the refit
    function's scheduled check (``when_due``) refits for it, with its reason, and removes
    it; the next check, nothing pending and the last refit recent, is ``not_due``."""
    from caa.entry import lambda_stream, refit_lambda
    from tests.integration.test_lambda import kinesis_events

    s = fresh_settings(refit_interval_s="3600", segment_warmup="40")
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(_events())
    monkeypatch.setattr(lambda_stream, "_runtime", [])
    try:
        for event in kinesis_events(s):
            records = event["Records"]
            for i in range(0, len(records), 25):  # batches of 25, as the mapping would cut
                assert lambda_stream.handler({"Records": records[i:i + 25]}) == {
                    "batchItemFailures": []}
    finally:
        for rt in lambda_stream._runtime:
            rt.close()
    ddb = Aws(s).client("dynamodb")
    pending = ddb.get_item(TableName=s.table("models"), Key={"name": {"S": "refit_request"}})
    assert "Item" in pending
    asked = json.loads(pending["Item"]["body"]["S"])["reason"]
    assert asked.startswith("drift: share of customers far from every centre rose")

    done = refit_lambda.handler({"job": "refit", "when_due": True,
                                 "scheduled_time": datetime.now(UTC).isoformat()})
    assert (done["status"], done["refit_reason"]) == ("refitted", asked), done
    assert "Item" not in ddb.get_item(TableName=s.table("models"),
                                      Key={"name": {"S": "refit_request"}})
    assert _reasons(s) == {asked}
    later = refit_lambda.handler({"job": "refit", "when_due": True})
    assert later["status"] == "not_due", later
