"""Poller edge cases against the emulator: expired iterators, throttling, closed shards."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from consumers.sources.worker import Worker
from producers.datasets.synthetic import generate
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


class Faulty:
    """Wraps the real aiobotocore Kinesis client and raises a real error class once."""

    def __init__(self, client: Any, fail_on: dict[int, str]) -> None:
        self._client = client
        self._fail_on = fail_on
        self.calls = 0
        self.exceptions = client.exceptions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get_records(self, **kw: Any) -> Any:
        self.calls += 1
        error = self._fail_on.pop(self.calls, None)
        if error:
            raise getattr(self._client.exceptions, error)(
                {"Error": {"Code": error, "Message": "injected"}}, "GetRecords")
        return await self._client.get_records(**kw)


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings(shard_count="2", get_records_limit="50")


async def run_worker(s: Settings, fail_on: dict[int, str]) -> tuple[Worker, Faulty]:
    async with Aws(s).clients("kinesis", "dynamodb") as c:
        faulty = Faulty(c["kinesis"], fail_on)
        w = wiring.worker(s, faulty, c["dynamodb"])
        await w.run(until_idle=True, final_refit=False)
        return w, faulty


def test_expired_iterators_and_throttling_lose_nothing(settings: Settings) -> None:
    events = generate(customers=30, days=40, seed=9)
    Publisher(Aws(settings).client("kinesis"), settings.stream_name).publish(events)
    w, _faulty = asyncio.run(run_worker(settings, {
        2: "ExpiredIteratorException", 4: "ProvisionedThroughputExceededException",
        6: "ExpiredIteratorException"}))
    assert w.poller.expired_iterators == 2 and w.poller.throttled == 1
    assert w.applier.totals.applied == len(events)
    assert w.applier.totals.duplicate == 0  # renewed after the last checkpoint, not before


def test_a_split_mid_stream_loses_nothing(settings: Settings) -> None:
    # moto keeps writing to a split parent and never ends it (no null NextShardIterator),
    # so the parent-before-children order is checked on kinesis-mock, not here.
    kinesis = Aws(settings).client("kinesis")
    events = generate(customers=40, days=60, seed=11)
    half = len(events) // 2
    Publisher(kinesis, settings.stream_name).publish(events[:half])
    shard = kinesis.list_shards(StreamName=settings.stream_name)["Shards"][0]
    lo, hi = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    kinesis.split_shard(StreamName=settings.stream_name, ShardToSplit=shard["ShardId"],
                        NewStartingHashKey=str((lo + hi) // 2))
    kinesis.get_waiter("stream_exists").wait(StreamName=settings.stream_name)
    Publisher(kinesis, settings.stream_name).publish(events[half:])

    w, _ = asyncio.run(run_worker(settings, {}))
    assert w.applier.totals.applied == len(events)
    assert w.applier.totals.duplicate == 0


def test_a_second_live_poller_in_the_same_group_is_refused(settings: Settings) -> None:
    from consumers.sources.lease import GroupBusy

    async def scenario() -> None:
        async with Aws(settings).clients("kinesis", "dynamodb") as c:
            first = wiring.worker(settings, c["kinesis"], c["dynamodb"])
            second = wiring.worker(settings, c["kinesis"], c["dynamodb"])
            await first.lease.acquire(1000.0)
            with pytest.raises(GroupBusy, match="held by another live worker"):
                await second.lease.acquire(1001.0)
            await second.lease.acquire(1000.0 + first.lease.ttl_s + 1)  # expired: taken over
            await first.lease.release()  # no longer ours: a no-op
            with pytest.raises(GroupBusy):
                await first.lease.acquire(1000.0 + first.lease.ttl_s + 2)
            await second.lease.release()
            await first.lease.acquire(2000.0)  # free again
            await first.lease.release()

    asyncio.run(scenario())


def test_a_dead_holder_on_this_host_is_taken_over_at_once(settings: Settings) -> None:
    import socket

    from consumers.sources.lease import GroupBusy
    from consumers.stores.checkpoints import Lease, lease_item

    ddb = Aws(settings).client("dynamodb")

    def hold(owner: str) -> None:
        ddb.put_item(TableName=settings.table("checkpoints"),
                     Item=lease_item(settings.consumer_group, Lease(owner, 9e12)))

    async def acquire() -> None:
        async with Aws(settings).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(settings, c["kinesis"], c["dynamodb"])
            await w.lease.acquire(1000.0)
            await w.lease.release()

    hold("elsewhere.example:1:abc")  # another host: we cannot tell, so we wait for expiry
    with pytest.raises(GroupBusy):
        asyncio.run(acquire())
    hold(f"{socket.gethostname()}:999999999:abc")  # this host, process gone (SIGKILL)
    asyncio.run(acquire())


class StuckCustomer:
    """The real DynamoDB client, except that every write of one customer's state (a batch
    item comes back unprocessed, a conditional put is throttled) fails for its first
    ``failing_calls`` calls."""

    def __init__(self, client: Any, table: str, customer: str, failing_calls: int) -> None:
        self._client = client
        self.exceptions = client.exceptions
        self.table, self.customer, self.left = table, customer, failing_calls
        self.failed_at: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def batch_write_item(self, RequestItems: dict[str, Any], **kw: Any) -> Any:
        ids = {r.get("PutRequest", {}).get("Item", {}).get("customer_id", {}).get("S")
               for r in RequestItems.get(self.table, [])}
        if self.left and self.customer in ids:
            self.left -= 1
            self.failed_at.append(time.monotonic())
            return {"UnprocessedItems": RequestItems}
        return await self._client.batch_write_item(RequestItems=RequestItems, **kw)

    async def put_item(self, **kw: Any) -> Any:
        if (self.left and kw.get("TableName") == self.table
                and kw.get("Item", {}).get("customer_id", {}).get("S") == self.customer):
            self.left -= 1
            self.failed_at.append(time.monotonic())
            cls = self._client.exceptions.ProvisionedThroughputExceededException
            raise cls({"Error": {"Code": "ProvisionedThroughputExceededException",
                                 "Message": "injected"}}, "PutItem")
        return await self._client.put_item(**kw)


@dataclass
class StuckRun:
    worker: Worker
    ddb: StuckCustomer
    saves: list[tuple[float, str]]  # (when, shard) of every checkpoint saved
    stuck_shard: str


def run_with_a_stuck_customer(s: Settings, failing_calls: int = 6) -> StuckRun:
    """Consume synthetic events while one customer's state writes fail ``failing_calls``
    times (the first customer: in the first batch of its shard)."""
    events = generate(customers=30, days=60, seed=4)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    stuck = events[0].customer_id
    saves: list[tuple[float, str]] = []

    async def scenario() -> tuple[Worker, StuckCustomer]:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            ddb = StuckCustomer(c["dynamodb"], s.table("customers"), stuck, failing_calls)
            w = wiring.worker(s, c["kinesis"], ddb)
            real_save = w.checkpoints.save

            async def save(shard_id: str, seq: str | None, ended: bool = False) -> None:
                saves.append((time.monotonic(), shard_id))
                await real_save(shard_id, seq, ended)

            w.poller.checkpoints.save = save  # type: ignore[method-assign,assignment]
            await w.run(until_idle=True, final_refit=False)
            return w, ddb

    w, ddb = asyncio.run(scenario())
    # nothing skipped; a retried batch finds the customers written in the failed attempt
    # (their puts went through) applied already: duplicates, never counted twice
    t = w.applier.totals
    assert t.applied + t.duplicate == len(events) and t.rejected == 0
    key = int(hashlib.md5(stuck.encode()).hexdigest(), 16)
    stuck_shard = next(
        sh["ShardId"] for sh in Aws(s).client("kinesis").list_shards(
            StreamName=s.stream_name)["Shards"]
        if int(sh["HashKeyRange"]["StartingHashKey"]) <= key
        <= int(sh["HashKeyRange"]["EndingHashKey"]))
    return StuckRun(w, ddb, saves, stuck_shard)


def assert_held_then_recovered(run: StuckRun, err: str, failures: int = 3) -> list[str]:
    """The stuck shard's checkpoint was held while its writes failed, one line said so, one
    said they recovered; returns the shards checkpointed meanwhile."""
    assert run.worker.poller.write_failures == failures
    first, healed = run.ddb.failed_at[0], run.ddb.failed_at[-1]
    during = [sid for t, sid in run.saves if first <= t <= healed]
    assert run.stuck_shard not in during
    assert f"shard {run.stuck_shard}: effects of" in err and "checkpoint held" in err
    assert f"shard {run.stuck_shard}: writes recovered after {failures} failure(s)" in err
    return during


def test_a_persistent_write_failure_holds_only_that_shards_checkpoint(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(shard_count="2", get_records_limit="20", max_write_attempts="2")
    run = run_with_a_stuck_customer(s)  # 6 failing calls, 2 attempts per batch write: 3
    during = assert_held_then_recovered(run, capsys.readouterr().err)
    assert during  # the other shard went on meanwhile


class Throttled:
    """The real DynamoDB client, except that its first batch reads and writes fail with
    DynamoDB's own throttling error (as raised once botocore's retries gave up)."""

    def __init__(self, client: Any, writes: int, reads: int) -> None:
        self._client = client
        self.exceptions = client.exceptions
        self.writes, self.reads = writes, reads

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _error(self, op: str) -> Exception:
        cls = self._client.exceptions.ProvisionedThroughputExceededException
        err: Exception = cls({"Error": {"Code": "ProvisionedThroughputExceededException",
                                        "Message": "injected"}}, op)
        return err

    async def batch_write_item(self, **kw: Any) -> Any:
        if self.writes:
            self.writes -= 1
            raise self._error("BatchWriteItem")
        return await self._client.batch_write_item(**kw)

    async def batch_get_item(self, **kw: Any) -> Any:
        if self.reads:
            self.reads -= 1
            raise self._error("BatchGetItem")
        return await self._client.batch_get_item(**kw)


def test_dynamodb_throttling_is_retried_with_backoff_and_loses_nothing(
    fresh_settings: Callable[..., Settings],
) -> None:
    s = fresh_settings(shard_count="2", get_records_limit="40")
    events = generate(customers=25, days=40, seed=5)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)

    async def scenario() -> Worker:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], Throttled(c["dynamodb"], writes=5, reads=3))
            await w.run(until_idle=True, final_refit=False)
            return w

    w = asyncio.run(scenario())
    assert w.customers.db.throttled == 8  # every injected error absorbed by a retry
    assert w.poller.write_failures == 0  # no batch had to be held for it
    assert w.applier.totals.applied == len(events)
    assert w.applier.totals.duplicate == 0
    states = asyncio.run(_states(s))
    assert sum(x.purchases for x in states) == len(events)


async def _states(s: Settings) -> list[Any]:
    async with Aws(s).clients("kinesis", "dynamodb") as c:
        return await wiring.worker(s, c["kinesis"], c["dynamodb"]).customers.all()


def test_batch_counts_reach_cloudwatch_under_the_dashboards_names(settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    events = generate(customers=30, days=20, seed=9)
    kinesis = Aws(settings).client("kinesis")
    Publisher(kinesis, settings.stream_name).publish(events)
    for i in range(2):
        kinesis.put_record(StreamName=settings.stream_name, Data=b"{bad", PartitionKey=f"x{i}")
    Publisher(kinesis, settings.stream_name).publish(events[:10])  # replayed: duplicates

    async def consume() -> None:
        async with Aws(settings).clients("kinesis", "dynamodb", "cloudwatch") as c:
            w = wiring.worker(settings, c["kinesis"], c["dynamodb"], cloudwatch=c["cloudwatch"])
            await w.run(until_idle=True, final_refit=False)

    asyncio.run(consume())
    cw = Aws(settings).client("cloudwatch")
    now = datetime.now(UTC)

    def total(name: str) -> float:
        points = cw.get_metric_statistics(
            Namespace="CustomerAIAnalytics", MetricName=name,
            Dimensions=[{"Name": "Stream", "Value": settings.stream_name}],
            StartTime=now - timedelta(hours=1), EndTime=now + timedelta(minutes=5),
            Period=3600, Statistics=["Sum"])["Datapoints"]
        return float(sum(p["Sum"] for p in points))

    assert total("records_applied") == len(events)
    assert total("records_duplicate") == 10
    assert total("dead_letters") == 2
