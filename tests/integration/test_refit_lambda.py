"""The scheduled refit function (issue 15, item 4): EventBridge Scheduler's input in, one
refit under the refit lock against the tables on the emulator, a summary out; the models
table gets a new version each run, and a run that finds the lock held is skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from caa import wiring
from caa.entry import refit_lambda
from caa.settings import Settings
from consumers.analysis.analyzer import statistical_analysis
from consumers.refit import REFIT_GROUP
from consumers.registry import PARETO_NBD, SEGMENTS
from consumers.stores.checkpoints import CheckpointStore, Lease
from models.analysis import AnalysisRecord
from models.prompt import build_input
from models.state import CustomerState
from producers.datasets.cdnow import load_events

#: what RefitSchedule's target sends (deploy/template.yaml), times filled in
SCHEDULED = {"job": "refit", "source": "caa.scheduler",
             "scheduled_time": "2026-11-30T18:00:00Z",
             "execution_id": "0c7d3b1e-5b4c-4c2f-9a0e-3f1c2b7a9d10"}


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings()


async def seed(s: Settings, limit: int = 1_200) -> int:
    by_id: dict[str, CustomerState] = {}
    for e in load_events(limit=limit):
        by_id.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    async with AsyncExitStack() as stack:
        applier = await wiring.open_applier(s, stack)
        await applier.customers.save(by_id.values())
    return len(by_id)


async def versions(s: Settings) -> tuple[int, int, int]:
    """The purchase model's and the segment model's versions, and the predictions."""
    async with AsyncExitStack() as stack:
        applier = await wiring.open_applier(s, stack)
        store = applier.registry.store
        pn, seg = await store.load(PARETO_NBD), await store.load(SEGMENTS)
        return (pn[0] if pn else 0, seg[0] if seg else 0,
                len(await applier.predictions.all()))


def invoke(request_id: str) -> dict[str, Any]:
    return refit_lambda.handler(dict(SCHEDULED), SimpleNamespace(aws_request_id=request_id))


def test_a_scheduled_invocation_refits_and_writes_new_model_versions(
        settings: Settings) -> None:
    customers = asyncio.run(seed(settings))
    first = invoke("req-1")
    assert first["status"] == "refitted", first
    assert first["customers"] == customers == first["predictions_rewritten"]
    assert first["scheduled_time"] == SCHEDULED["scheduled_time"]
    assert first["owner"] == "lambda/req-1"
    assert asyncio.run(versions(settings)) == (1, 1, customers)
    second = invoke("req-2")  # the lock was released: the next schedule runs
    assert (second["status"], second["forecast_version"]) == ("refitted", 2)
    assert asyncio.run(versions(settings))[:2] == (2, 2)


def test_an_invocation_while_another_refit_holds_the_lock_is_skipped(
        settings: Settings) -> None:
    asyncio.run(seed(settings, limit=300))

    async def hold() -> None:
        async with AsyncExitStack() as stack:
            db = (await wiring.open_applier(settings, stack)).customers.db
            rows = CheckpointStore(db, wiring.tables(settings).checkpoints, REFIT_GROUP)
            assert await rows.claim_lease(Lease("lambda/other", time.time() + 60), time.time())

    asyncio.run(hold())
    out = invoke("req-3")
    assert out["status"] == "skipped" and out["holder"] == "lambda/other", out
    assert "another refit holds the refit lock" in out["reason"]
    assert asyncio.run(versions(settings)) == (0, 0, 0)  # nothing written


def test_the_rewritten_predictions_keep_their_analyses(settings: Settings) -> None:
    """The function builds no prompt: a prediction it rewrites carries the customer's
    latest stored analysis over (consumers.refit.KeptAnalyses)."""
    asyncio.run(seed(settings, limit=300))

    async def analyse() -> AnalysisRecord:
        async with AsyncExitStack() as stack:
            applier = await wiring.open_applier(settings, stack)
            state = (await applier.customers.load(["00001"]))["00001"]
            x = build_input(state, None, as_of_ts=state.last_ts, key=b"k" * 32,
                            reference_order_value=10.0)
            rec = AnalysisRecord(customer_id="00001", at=datetime(2026, 11, 1, tzinfo=UTC),
                                 as_of=date(2026, 11, 1), source="statistical",
                                 model="statistical", trigger="on_demand",
                                 analysis=statistical_analysis(x))
            await wiring.analysis_store(settings, applier.customers.db).record(rec)
            return rec

    async def prediction() -> dict[str, Any] | None:
        async with AsyncExitStack() as stack:
            return await (await wiring.open_applier(settings, stack)).predictions.get("00001")

    rec = asyncio.run(analyse())
    assert invoke("req-4")["status"] == "refitted"
    got = asyncio.run(prediction())
    assert got is not None and got["analysis_model"] == "statistical"
    assert got["analysis"] == rec.analysis.model_dump(mode="json")
