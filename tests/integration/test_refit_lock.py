"""One refit at a time across processes and functions (issue 15, item 4): the refit lock
is a lease row in the checkpoints table, taken with a conditional put. Two refits started
together against the emulator: one runs, the other is skipped and names the holder; the
lock is released at the end, so the next refit runs; one that waits runs after the first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from consumers.applier import BatchApplier
from consumers.refit import (
    REFIT_GROUP,
    RefitReport,
    RefitSkipped,
    locked_refit,
    refit,
    refit_lock,
)
from consumers.registry import PARETO_NBD
from consumers.stores.checkpoints import CheckpointStore, Lease
from models.state import CustomerState
from producers.datasets.cdnow import load_events


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings()


def states(limit: int = 1_500) -> list[CustomerState]:
    by_id: dict[str, CustomerState] = {}
    for e in load_events(limit=limit):
        by_id.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    return list(by_id.values())


def lock_rows(s: Settings, a: BatchApplier) -> CheckpointStore:
    return CheckpointStore(a.customers.db, wiring.tables(s).checkpoints, REFIT_GROUP)


async def two_refits(s: Settings, wait_s: float) -> tuple[
        list[RefitReport | RefitSkipped | None], int, bool]:
    """Two "processes" (each its own client, registry and lock owner) refit at once: their
    outcomes, the purchase model's version after both, and whether the lock row is gone."""
    async with AsyncExitStack() as stack:
        first = await wiring.open_applier(s, stack)
        second = await wiring.open_applier(s, stack)
        await first.customers.save(states())
        outcomes = await asyncio.gather(*(
            locked_refit(refit_lock(lock_rows(s, a), f"test:{n}"),
                         lambda a=a: refit(a.customers, a.predictions, a.registry,  # type: ignore[misc]
                                           rewrite=True),
                         wait_s=wait_s, poll_s=0.1)
            for n, a in (("first", first), ("second", second))))
        stored = await first.registry.store.load(PARETO_NBD)
        left = await lock_rows(s, first).lease()
    return list(outcomes), stored[0] if stored else 0, left is None


def test_a_second_concurrent_refit_is_skipped_and_says_why(settings: Settings) -> None:
    outcomes, version, released = asyncio.run(two_refits(settings, wait_s=0))
    ran = [o for o in outcomes if isinstance(o, RefitReport)]
    skipped = [o for o in outcomes if isinstance(o, RefitSkipped)]
    assert len(ran) == 1 and len(skipped) == 1, outcomes
    assert version == ran[0].forecast_version == 1  # one refit wrote the models
    assert skipped[0].holder in ("test:first", "test:second")
    assert "another refit holds the refit lock" in skipped[0].reason
    assert released  # released at the end: the next refit may run
    outcomes, version, released = asyncio.run(two_refits(settings, wait_s=0))
    assert sum(isinstance(o, RefitReport) for o in outcomes) == 1 and version == 2


def test_a_refit_that_waits_for_the_lock_runs_after_the_first(settings: Settings) -> None:
    outcomes, version, released = asyncio.run(two_refits(settings, wait_s=60))
    reports = [o for o in outcomes if isinstance(o, RefitReport)]
    assert len(reports) == 2, outcomes
    assert sorted(r.forecast_version for r in reports) == [1, 2] and version == 2
    assert released


def test_the_workers_periodic_refit_skips_while_another_holds_the_lock(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """The local worker takes the same lock: held elsewhere (the scheduled function), its
    periodic refit is skipped and says so on stderr; free again, it runs."""

    async def scenario() -> tuple[RefitReport | None, RefitReport | None, int]:
        async with Aws(settings).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(settings, c["kinesis"], c["dynamodb"])
            await w.customers.save(states(300))
            rows = lock_rows(settings, w.applier)
            assert await rows.claim_lease(Lease("lambda/scheduled", time.time() + 60),
                                          time.time())
            skipped = await w._refit(rewrite=False)
            assert await rows.release_lease("lambda/scheduled")
            ran = await w._refit(rewrite=False)
            return skipped, ran, len(w.refits_skipped)

    skipped, ran, count = asyncio.run(scenario())
    assert skipped is None and count == 1
    assert ran is not None and ran.forecast_version == 1
    err = capsys.readouterr().err
    assert "caa: refit skipped: another refit holds the refit lock (lambda/scheduled" in err
