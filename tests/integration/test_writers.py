"""More than one writer of a customer, against the emulator (issue 14, item 8): the same
clients as production, only the endpoint differs.

- one customer's 50 purchases spread by ``ExplicitHashKey`` over 4 shards: one local
  poller (``caa consume``'s worker) keeps all 50 (before conditional writes: about 12);
- two concurrent Lambda invocations on two shards' batches keep all 50 and report no
  failures (before: 25);
- a checkpoint that would move backwards is refused by DynamoDB's condition;
- a worker paused past its lease, whose group another worker took, stops before writing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.entry import lambda_stream
from caa.settings import Settings
from consumers.sources.lambda_handler import failed_sequence_numbers
from consumers.sources.lease import GroupLease, LeaseLost
from consumers.stores.checkpoints import CheckpointStore
from consumers.stores.dynamo import Dynamo
from tests.integration.test_lambda import kinesis_events

pytestmark = pytest.mark.integration

CUSTOMER = "00042"
N = 50


def purchase(i: int) -> bytes:
    return json.dumps({
        "event_id": f"ev-{i}", "order_id": f"order-{i}", "customer_id": CUSTOMER,
        "occurred_at": f"2024-0{1 + i // 28}-{1 + i % 28:02d}T10:00:00Z", "currency": "USD",
        "items": [{"product_id": "p1", "category": "books", "quantity": 1,
                   "unit_price": "10.00"}], "total": "10.00"}).encode()


def publish_spread(s: Settings) -> int:
    """The customer's purchases, partition key = customer id, each sent by ExplicitHashKey
    to the shards in turn; how many shards got some."""
    kinesis = Aws(s).client("kinesis")
    shards = kinesis.list_shards(StreamName=s.stream_name)["Shards"]
    starts = [int(sh["HashKeyRange"]["StartingHashKey"]) for sh in shards]
    for i in range(N):
        kinesis.put_record(StreamName=s.stream_name, Data=purchase(i), PartitionKey=CUSTOMER,
                           ExplicitHashKey=str(starts[i % len(starts)]))
    return len(starts)


def purchases(s: Settings) -> int:
    item = Aws(s).client("dynamodb").get_item(
        TableName=s.table("customers"), Key={"customer_id": {"S": CUSTOMER}},
        ConsistentRead=True)["Item"]
    return int(item["purchases"]["N"])


def test_one_poller_over_four_shards_keeps_every_purchase(
        fresh_settings: Callable[..., Settings]) -> None:
    s = fresh_settings(shard_count="4", get_records_limit="5")
    assert publish_spread(s) == 4

    async def consume() -> Any:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"])
            await w.run(until_idle=True, final_refit=False)
            return w

    w = asyncio.run(consume())
    assert purchases(s) == N
    assert w.applier.totals.applied == N
    assert w.applier.totals.conflicts > 0  # the four shards did race for the customer


def test_two_concurrent_lambda_invocations_keep_every_purchase(
        fresh_settings: Callable[..., Settings]) -> None:
    s = fresh_settings(shard_count="2")
    assert publish_spread(s) == 2
    events = kinesis_events(s)
    assert [len(e["Records"]) for e in events] == [N // 2, N // 2]
    runtimes = [lambda_stream.runtime(s) for _ in events]
    answers: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def invoke(k: int) -> None:
        start.wait()
        answers[k] = failed_sequence_numbers(runtimes[k].handle(events[k]))

    threads = [threading.Thread(target=invoke, args=(k,)) for k in (0, 1)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for rt in runtimes:
            rt.close()
    assert answers == [[], []]
    assert purchases(s) == N


def test_a_checkpoint_never_moves_backwards(fresh_settings: Callable[..., Settings]) -> None:
    s = fresh_settings()

    async def go() -> tuple[list[bool], int, str]:
        async with Aws(s).clients("dynamodb") as c:
            cps = CheckpointStore(Dynamo(c["dynamodb"]), s.table("checkpoints"), "g")
            done = [await cps.save("shard-1", "4960000000000000000000000000000000000009"[:39]),
                    await cps.save("shard-1", "99"),  # shorter: smaller, refused
                    await cps.save("shard-1", "496000000000000000000000000000000000001"),
                    await cps.save("shard-1", "496000000000000000000000000000000000000"),
                    await cps.save("shard-1", "496000000000000000000000000000000000001",
                                   ended=True)]
            stored = (await cps.all())["shard-1"]
            assert stored.ended
            return done, cps.refused, str(stored.sequence_number)

    done, refused, stored = asyncio.run(go())
    assert done == [True, False, True, False, True] and refused == 2
    assert stored == "496000000000000000000000000000000000001"


def test_a_worker_paused_past_its_lease_stops_before_writing(
        fresh_settings: Callable[..., Settings]) -> None:
    s = fresh_settings()

    async def go() -> str:
        async with Aws(s).clients("dynamodb") as c:
            db = Dynamo(c["dynamodb"])
            table = s.table("checkpoints")
            first = GroupLease(db, table, "g", owner="host-a:1:aa", ttl_s=0.5, margin_s=0.1)
            await first.acquire(time.time())
            await first.ensure()  # held
            await asyncio.sleep(1.0)  # "SIGSTOPped" past its lease
            await first.ensure()  # nobody took it meanwhile: renewed, still ours
            await asyncio.sleep(1.0)
            second = GroupLease(db, table, "g", owner="host-b:2:bb", ttl_s=30.0)
            await second.acquire(time.time())  # the lease had expired: taken over
            with pytest.raises(LeaseLost) as lost:
                await first.ensure()
            with pytest.raises(LeaseLost):  # and it stays lost
                await first.ensure()
            await second.ensure()
            return str(lost.value)

    assert "lost the lease of consumer group 'g' to host-b:2:bb" in asyncio.run(go())
