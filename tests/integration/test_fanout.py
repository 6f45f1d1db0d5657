"""Enhanced fan-out (``CAA_READ_MODE=fanout``) on kinesis-mock, DynamoDB on moto: every
event applied exactly once, renewed subscriptions losing and repeating nothing, a restart
resuming from the checkpoint, a write failure holding its shard, and a split and a merge
read parents before children.

Each test has its own stream (``fresh_settings``) and its own consumer name: kinesis-mock
holds a subscription for a few seconds after its connection is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from consumers.core import BatchResult
from consumers.sources.fanout import INITIAL_RESPONSE, FanoutPoller, _WithInitialResponse
from consumers.sources.worker import Worker
from deploy.local.emulator import Emulator
from models.events import PurchaseEvent
from producers.datasets.synthetic import generate
from producers.publisher import Publisher
from tests.integration.test_poller import assert_held_then_recovered, run_with_a_stuck_customer
from tests.integration.test_reshard import open_shards, record_applied, wait_active

pytestmark = pytest.mark.integration

#: a guard against hanging, never an assertion: the checks after it fail if it runs out
PATIENCE_S = 240.0


@pytest.fixture
def efo_settings(kinesis_mock: Emulator, fresh_settings: Callable[..., Settings],
                 monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Fresh settings in fanout mode, Kinesis on kinesis-mock, a consumer name of its own."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock.endpoint)

    def make(**env: str) -> Settings:
        defaults = {"read_mode": "fanout", "efo_consumer_name": f"efo-{uuid.uuid4().hex[:8]}",
                    "shard_count": "2", "refit_interval_s": "0"}
        s = fresh_settings(**{**defaults, **env})
        assert Aws(s).client("kinesis").meta.endpoint_url == kinesis_mock.endpoint
        return s

    return make


class Spy:
    """The real aiobotocore Kinesis client, counting records that came by GetRecords to be
    read (``get_records_records``) apart from the one-record GetRecords that checks whether
    a closed shard is drained (``drain_checks``; ``FanoutPoller._drained``: it applies
    nothing, and it can see a record when kinesis-mock's subscription lags behind the
    shard)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.exceptions = client.exceptions
        self.get_records_records = 0
        self.drain_checks = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get_records(self, **kw: Any) -> Any:
        resp = await self._client.get_records(**kw)
        if kw.get("Limit") == 1:
            self.drain_checks += 1
        else:
            self.get_records_records += len(resp.get("Records", []))
        return resp


@dataclass
class Run:
    """What one worker applied: event ids per customer in order, and per batch its shard
    and the number of the subscription it came by."""

    worker: Worker
    spy: Spy
    applied: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    batches: list[tuple[str, int]] = field(default_factory=list)
    states: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def poller(self) -> FanoutPoller:
        assert isinstance(self.worker.poller, FanoutPoller)
        return self.worker.poller

    def all_applied(self) -> Counter[str]:
        return Counter(e for ids in self.applied.values() for e in ids)


async def run_worker(s: Settings, scenario: Callable[[Run], Awaitable[None]] | None = None
                     ) -> Run:
    """One worker in fanout mode: until idle, or while ``scenario`` runs (then stopped)."""
    async with Aws(s).clients("kinesis", "dynamodb") as c:
        spy = Spy(c["kinesis"])
        applied: dict[str, list[str]] = defaultdict(list)
        batches: list[tuple[str, int]] = []
        pollers: list[FanoutPoller] = []

        def on_batch(shard_id: str, _result: BatchResult) -> None:
            batches.append((shard_id, pollers[0].subscriptions))

        w = wiring.worker(s, spy, c["dynamodb"], on_batch=on_batch)
        assert isinstance(w.poller, FanoutPoller)
        pollers.append(w.poller)
        run = Run(w, spy, applied, batches)
        w.poller.discovery_interval = 0.5
        record_applied(w, applied)
        if scenario is None:
            await w.run(until_idle=True, final_refit=False)
        else:
            stop = asyncio.Event()
            task = asyncio.create_task(w.run(stop=stop, final_refit=False))
            try:
                await scenario(run)
            finally:
                stop.set()
                await task
        run.states = {x.customer_id: (x.purchases, sum(x.spend_minor.values()))
                      for x in await w.customers.all()}
        return run


async def wait_until(check: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE_S
    while not check() and loop.time() < deadline:
        await asyncio.sleep(0.05)


def expected_states(events: Sequence[PurchaseEvent]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for e in events:
        n, cents = out.get(e.customer_id, (0, 0))
        out[e.customer_id] = (n + 1, cents + int(e.total * 100))
    return out


def in_publish_order(events: Sequence[PurchaseEvent]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        out[e.customer_id].append(e.event_id)
    return dict(out)


def test_a_missing_initial_response_is_supplied_and_a_present_one_left_alone() -> None:
    class Body:
        def __init__(self, chunks: list[bytes]) -> None:
            self.content = self
            self.chunks = chunks

        async def iter_chunks(self) -> Any:
            for c in self.chunks:
                yield c, True

    async def read(chunks: list[bytes]) -> bytes:
        return b"".join([c async for c, _ in _WithInitialResponse(Body(chunks)).iter_chunks()])

    from consumers.sources.fanout import _message
    event = _message({":message-type": "event", ":event-type": "SubscribeToShardEvent"},
                     b'{"Records":[]}')
    aws_like = INITIAL_RESPONSE + event + event
    assert asyncio.run(read([aws_like[:5], aws_like[5:40], aws_like[40:]])) == aws_like
    mock_like = event + event
    assert asyncio.run(read([mock_like[:7], mock_like[7:]])) == INITIAL_RESPONSE + mock_like


def test_fanout_applies_every_event_exactly_once(efo_settings: Callable[..., Settings]) -> None:
    s = efo_settings()
    events = generate(customers=40, days=60, seed=5)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)

    run = asyncio.run(run_worker(s))

    assert run.all_applied() == Counter(e.event_id for e in events)  # each exactly once
    assert dict(run.applied) == in_publish_order(events)  # and each customer's in order
    assert run.worker.applier.totals.records == len(events)  # nothing read twice
    assert run.worker.applier.totals.duplicate == 0
    assert run.states == expected_states(events)  # in DynamoDB, from the source events
    assert run.spy.get_records_records == 0  # every record came by SubscribeToShard
    assert run.poller.subscriptions >= s.shard_count
    assert {shard for shard, _ in run.batches} == {
        sh["ShardId"] for sh in Aws(s).client("kinesis").list_shards(
            StreamName=s.stream_name)["Shards"]}


@pytest.mark.long
def test_renewed_subscriptions_lose_and_repeat_nothing(
    efo_settings: Callable[..., Settings],
) -> None:
    s = efo_settings(efo_renewal_s="2")
    kinesis = Aws(s).client("kinesis")
    events = generate(customers=40, days=60, seed=7)
    parts = [events[i::4] for i in range(4)]
    publisher = Publisher(kinesis, s.stream_name)

    async def scenario(run: Run) -> None:
        loop = asyncio.get_running_loop()
        published = 0
        totals, poller = run.worker.applier.totals, run.poller
        for part in parts:
            renewed = poller.renewals
            await loop.run_in_executor(None, publisher.publish, part)
            published += len(part)

            def consumed(n: int = published) -> bool:
                return totals.records >= n

            def renewed_each(r: int = renewed) -> bool:
                return poller.renewals >= r + s.shard_count

            await wait_until(consumed)
            await wait_until(renewed_each)

    run = asyncio.run(run_worker(s, scenario))

    assert run.poller.renewals >= 4 * s.shard_count
    assert len({sub for _, sub in run.batches}) >= 4  # records came by several subscriptions
    assert run.all_applied() == Counter(e.event_id for e in events)
    assert run.worker.applier.totals.records == len(events)  # renewed after, not before
    assert run.worker.applier.totals.duplicate == 0
    assert run.states == expected_states(events)


def test_a_restart_resumes_from_the_checkpoint(efo_settings: Callable[..., Settings]) -> None:
    s = efo_settings()
    kinesis = Aws(s).client("kinesis")
    events = generate(customers=40, days=60, seed=8)
    first, second = events[: len(events) // 2], events[len(events) // 2:]
    Publisher(kinesis, s.stream_name).publish(first)
    one = asyncio.run(run_worker(s))
    assert one.worker.applier.totals.records == len(first)

    Publisher(kinesis, s.stream_name).publish(second)
    two = asyncio.run(run_worker(s))  # the same consumer group and stream consumer

    assert two.poller.consumer_arn == one.poller.consumer_arn  # registered once, reused
    arn = kinesis.describe_stream_summary(StreamName=s.stream_name)[
        "StreamDescriptionSummary"]["StreamARN"]
    assert [c["ConsumerName"] for c in kinesis.list_stream_consumers(
        StreamARN=arn)["Consumers"]] == [s.efo_consumer]
    assert two.all_applied() == Counter(e.event_id for e in second)  # none of the first
    assert two.worker.applier.totals.records == len(second)  # nothing re-read
    assert two.states == expected_states(events)


def test_split_and_merge_in_fanout_mode_read_parents_before_children(
    efo_settings: Callable[..., Settings],
) -> None:
    s = efo_settings(get_records_limit="25")
    kinesis = Aws(s).client("kinesis")
    events = generate(customers=60, days=60, seed=3)
    thirds = [events[: len(events) // 3], events[len(events) // 3: 2 * len(events) // 3],
              events[2 * len(events) // 3:]]
    publisher = Publisher(kinesis, s.stream_name)

    async def scenario(run: Run) -> None:
        loop = asyncio.get_running_loop()
        totals = run.worker.applier.totals
        await loop.run_in_executor(None, publisher.publish, thirds[0])
        await wait_until(lambda: totals.records >= 50)
        parent = open_shards(kinesis, s.stream_name)[0]
        lo, hi = (int(parent["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
        kinesis.split_shard(StreamName=s.stream_name, ShardToSplit=parent["ShardId"],
                            NewStartingHashKey=str((lo + hi) // 2))
        await loop.run_in_executor(None, wait_active, kinesis, s.stream_name)
        await loop.run_in_executor(None, publisher.publish, thirds[1])
        a, b = open_shards(kinesis, s.stream_name)[1:3]  # adjacent: a child and the other
        kinesis.merge_shards(StreamName=s.stream_name, ShardToMerge=a["ShardId"],
                             AdjacentShardToMerge=b["ShardId"])
        await loop.run_in_executor(None, wait_active, kinesis, s.stream_name)
        await loop.run_in_executor(None, publisher.publish, thirds[2])
        await wait_until(lambda: totals.records >= len(events))

    run = asyncio.run(run_worker(s, scenario))

    shards = kinesis.list_shards(StreamName=s.stream_name)["Shards"]
    assert len(shards) == 5  # 2 + 2 children of the split + 1 of the merge
    assert run.all_applied() == Counter(e.event_id for e in events)
    assert run.worker.applier.totals.duplicate == 0
    assert dict(run.applied) == in_publish_order(events)  # each customer's events in order
    order = [shard for shard, _ in run.batches]
    for sh in shards:
        parents = [sh[k] for k in ("ParentShardId", "AdjacentParentShardId") if k in sh]
        if sh["ShardId"] in order:
            for parent in (p for p in parents if p in order):
                last_of_parent = max(i for i, x in enumerate(order) if x == parent)
                assert order.index(sh["ShardId"]) > last_of_parent
    closed = [sh["ShardId"] for sh in shards
              if "EndingSequenceNumber" in sh["SequenceNumberRange"]]
    assert len(closed) == 3
    assert run.poller.ended_by_check + run.poller.ended_by_event == 3
    assert run.spy.get_records_records == 0


@pytest.mark.long
def test_a_write_failure_holds_the_shard_and_resubscribes_from_its_checkpoint(
    efo_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = efo_settings(get_records_limit="20", max_write_attempts="2")
    run = run_with_a_stuck_customer(s)
    assert isinstance(run.worker.poller, FanoutPoller)
    assert_held_then_recovered(run, capsys.readouterr().err)
    assert run.worker.poller.subscriptions >= s.shard_count + 3  # each hold re-subscribes
