"""Resharding while consuming, on kinesis-mock (Kinesis as AWS validates it; moto never
closes a split parent): a split and then a merge mid-stream; every event is applied once
and each customer's events in the order they were published."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from consumers.core import BatchResult, StreamRecord
from consumers.sources.worker import Worker
from deploy.local.emulator import Emulator
from producers.datasets.synthetic import generate
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def open_shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    shards = kinesis.list_shards(StreamName=stream)["Shards"]
    return sorted((s for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"]),
                  key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))


def wait_active(kinesis: Any, stream: str) -> None:
    kinesis.get_waiter("stream_exists").wait(StreamName=stream,
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def record_applied(w: Worker, applied: dict[str, list[str]]) -> None:
    """Wrap the worker's applier: each customer's event ids, in the order they were applied."""
    real_apply = w.applier.apply

    async def apply(records: Sequence[StreamRecord]) -> BatchResult:
        result = await real_apply(records)
        done = {(o.shard_id, o.sequence_number) for o in result.outcomes
                if o.status == "applied"}
        for r in records:
            if (r.shard_id, r.sequence_number) in done:
                e = json.loads(r.data)
                applied[e["customer_id"]].append(e["event_id"])
        return result

    w.applier.apply = apply  # type: ignore[method-assign]


def test_split_and_merge_mid_stream_apply_every_event_once_and_in_order(
    kinesis_mock: Emulator, fresh_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock.endpoint)  # DynamoDB: moto
    s = fresh_settings(shard_count="2", get_records_limit="25", refit_interval_s="0")
    kinesis = Aws(s).client("kinesis")
    assert kinesis.meta.endpoint_url == kinesis_mock.endpoint
    events = generate(customers=60, days=60, seed=3)
    thirds = [events[: len(events) // 3], events[len(events) // 3: 2 * len(events) // 3],
              events[2 * len(events) // 3:]]
    publisher = Publisher(kinesis, s.stream_name)
    applied: dict[str, list[str]] = defaultdict(list)  # customer -> event ids, as applied

    async def scenario() -> Worker:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"])
            w.poller.discovery_interval = 0.5
            record_applied(w, applied)
            stop = asyncio.Event()
            task = asyncio.create_task(w.run(stop=stop, final_refit=False))
            loop = asyncio.get_running_loop()

            async def wait_for(n: int) -> None:
                deadline = loop.time() + 120
                while w.applier.totals.records < n and loop.time() < deadline:
                    await asyncio.sleep(0.05)

            await loop.run_in_executor(None, publisher.publish, thirds[0])
            await wait_for(50)  # consuming, far from drained
            parent = open_shards(kinesis, s.stream_name)[0]
            lo, hi = (int(parent["HashKeyRange"][k]) for k in ("StartingHashKey",
                                                                "EndingHashKey"))
            kinesis.split_shard(StreamName=s.stream_name, ShardToSplit=parent["ShardId"],
                                NewStartingHashKey=str((lo + hi) // 2))
            await loop.run_in_executor(None, wait_active, kinesis, s.stream_name)
            await loop.run_in_executor(None, publisher.publish, thirds[1])
            a, b = open_shards(kinesis, s.stream_name)[1:3]  # adjacent: a child and the other
            kinesis.merge_shards(StreamName=s.stream_name, ShardToMerge=a["ShardId"],
                                 AdjacentShardToMerge=b["ShardId"])
            await loop.run_in_executor(None, wait_active, kinesis, s.stream_name)
            await loop.run_in_executor(None, publisher.publish, thirds[2])
            await wait_for(len(events))
            stop.set()
            await task
            return w

    w = asyncio.run(scenario())
    shards = kinesis.list_shards(StreamName=s.stream_name)["Shards"]
    assert len(shards) == 5  # 2 + 2 children of the split + 1 of the merge
    assert w.applier.totals.applied == len(events)
    assert w.applier.totals.duplicate == 0
    published: dict[str, list[str]] = defaultdict(list)
    for e in events:
        published[e.customer_id].append(e.event_id)
    assert dict(applied) == dict(published)  # each customer's events once, in order
