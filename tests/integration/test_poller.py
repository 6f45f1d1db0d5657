"""Poller edge cases against the emulator: expired iterators, throttling, closed shards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from caa.aws import Aws
from caa.settings import Settings
from consumers.worker import Worker
from producers.publisher import Publisher
from producers.synthetic import generate

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
        w = Worker(s, faulty, c["dynamodb"])
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
    from consumers.lease import GroupBusy

    async def scenario() -> None:
        async with Aws(settings).clients("kinesis", "dynamodb") as c:
            first = Worker(settings, c["kinesis"], c["dynamodb"])
            second = Worker(settings, c["kinesis"], c["dynamodb"])
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
