"""The local poller: reads every shard of the stream with aiobotocore.

Shaped like a bytewax input: *list parts* (ListShards, with parent links),
*resume from state* (the shard's checkpoint, AFTER_SEQUENCE_NUMBER, else
TRIM_HORIZON), *next batch* (GetRecords). It handles explicitly:

- closed shards: a shard whose ``NextShardIterator`` is gone is checkpointed as
  ended, and only then are its children started (a parent is drained before its
  children, so each customer's events stay in order across a reshard);
- resharding while running: the shard list is re-read periodically;
- expired iterators: a fresh one is taken from the last checkpoint;
- throttling: exponential backoff with full jitter (:mod:`consumers.retry`: 0.1 s
  doubling to at most 5 s per throttled call in a row);
- effects that cannot be written (DynamoDB throttling or errors outlasting the
  store's retries): that shard's checkpoint is held, one line is logged, a
  metric is raised, and the same records are re-read after a growing pause
  (:mod:`consumers.sources.hold`: 0.5 s doubling to at most 30 s); the other
  shards go on.

A checkpoint is written only after :meth:`BatchApplier.apply` returned, i.e.
after the batch's effects are durable, and only after ``guard`` (the worker's lease
check, :meth:`~consumers.sources.lease.GroupLease.ensure`) passed; a lost lease
(:class:`~consumers.sources.lease.LeaseLost`) ends every shard and :meth:`Poller.run`.
A checkpoint the store refuses because the stored one is further along (another worker
is ahead on that shard) is counted (:attr:`Poller.refused_checkpoints`, metric
``checkpoints_refused``), logged, and the shard is read again from the stored checkpoint.
Setting the ``stop`` event (SIGTERM) lets each shard finish and checkpoint its batch in
flight, then return.

``CAA_READ_MODE=fanout`` reads by enhanced fan-out instead (:mod:`consumers.sources.fanout`):
only ``consume_shard`` differs; its records go through the same :meth:`Poller.apply_batch`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from consumers.applier import BatchApplier
from consumers.core import BatchResult, StreamRecord
from consumers.instrument.chaos import NO_CHAOS, Chaos
from consumers.instrument.metrics import Metrics, MetricSink, batch_deltas
from consumers.retry import Backoff, Jitter, pause
from consumers.sources.hold import POLLER_LINES, ShardHold
from consumers.sources.records import from_kinesis
from consumers.stores.checkpoints import Checkpoint, CheckpointStore
from consumers.stores.dynamo import WriteFailed

#: seconds between PutMetricData calls for the batch counts (one call, not one per batch)
METRICS_FLUSH_S = 10.0
#: GetRecords throttled: up to 0.2 s (full jitter), doubling per throttle in a row, at most 5 s
THROTTLE_BACKOFF = Backoff(base=0.1, cap=5.0)
#: effects not written: hold the shard 0.5 s, doubling per failure in a row, at most 30 s
HOLD_BACKOFF = Backoff(base=0.5, cap=30.0, jitter=Jitter.NONE)


@dataclass(frozen=True)
class Shard:
    shard_id: str
    parents: tuple[str, ...]
    closed: bool = False  # ListShards gave it an EndingSequenceNumber


@dataclass
class Progress:
    """One shard's position: its last checkpointed sequence number (the failed writes in
    a row, while the shard is held, are counted by :attr:`Poller.hold`)."""

    shard_id: str
    after: str | None
    #: the last checkpoint was refused: the stored one is further along
    refused: bool = False


class Poller:
    def __init__(
        self,
        kinesis: Any,
        stream_name: str,
        checkpoints: CheckpointStore,
        applier: BatchApplier,
        *,
        limit: int = 5000,
        poll_interval: float = 0.25,
        min_call_interval: float = 0.2,
        idle_polls: int = 3,
        discovery_interval: float = 10.0,
        on_batch: Callable[[str, BatchResult], None] | None = None,
        chaos: Chaos = NO_CHAOS,
        metrics: MetricSink | None = None,
    ) -> None:
        self.kinesis = kinesis
        self.stream_name = stream_name
        self.checkpoints = checkpoints
        self.applier = applier
        self.limit = limit
        self.poll_interval = poll_interval
        self.min_call_interval = min_call_interval
        self.idle_polls = idle_polls
        self.discovery_interval = discovery_interval
        self.on_batch = on_batch
        self.chaos = chaos
        self.metrics: MetricSink = metrics or Metrics(None, {})
        self.write_failures = 0
        self.hold = ShardHold(HOLD_BACKOFF, POLLER_LINES)
        self.metric_failures = 0
        self._throttle_attempts: dict[str, int] = {}
        self.expired_iterators = 0
        self.throttled = 0
        self.refused_checkpoints = 0
        #: awaited before every checkpoint; raises to stop (the worker's lease check)
        self.guard: Callable[[], Awaitable[None]] | None = None
        self._counts: Counter[str] = Counter()
        self._counted_since = time.monotonic()

    async def list_shards(self) -> list[Shard]:
        shards: list[Shard] = []
        args: dict[str, Any] = {"StreamName": self.stream_name}
        while True:
            resp = await self.kinesis.list_shards(**args)
            for s in resp["Shards"]:
                parents = tuple(
                    p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p
                )
                closed = "EndingSequenceNumber" in s.get("SequenceNumberRange", {})
                shards.append(Shard(s["ShardId"], parents, closed))
            token = resp.get("NextToken")
            if not token:
                return shards
            args = {"NextToken": token}

    async def _iterator(self, shard_id: str, after: str | None) -> str:
        kw: dict[str, Any] = {"StreamName": self.stream_name, "ShardId": shard_id}
        if after:
            kw.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        else:
            kw.update(ShardIteratorType="TRIM_HORIZON")
        resp = await self.kinesis.get_shard_iterator(**kw)
        return str(resp["ShardIterator"])

    async def _get_records(self, shard_id: str, iterator: str | None, after: str | None
                           ) -> tuple[dict[str, Any] | None, str | None]:
        """One GetRecords; (None, iterator to retry with) after an expired iterator (renewed
        from the checkpoint) or throttling (after a backoff with jitter)."""
        errors = self.kinesis.exceptions
        try:
            resp = await self.kinesis.get_records(ShardIterator=iterator, Limit=self.limit)
        except errors.ExpiredIteratorException:
            self.expired_iterators += 1
            return None, await self._iterator(shard_id, after)
        except errors.ProvisionedThroughputExceededException:
            self.throttled += 1
            attempt = self._throttle_attempts[shard_id] = self._throttle_attempts.get(
                shard_id, 0) + 1
            await THROTTLE_BACKOFF.sleep(attempt)
            return None, iterator
        self._throttle_attempts.pop(shard_id, None)
        return resp, resp.get("NextShardIterator")

    def _records(self, shard_id: str, raw: list[dict[str, Any]]) -> list[StreamRecord]:
        """KPL aggregates de-aggregated (:mod:`consumers.sources.records`)."""
        return from_kinesis(raw, shard_id, self.stream_name)

    async def _count(self, deltas: dict[str, float]) -> None:
        """Batch counts add up here and go out at most every ``METRICS_FLUSH_S``."""
        self._counts.update(deltas)
        if time.monotonic() - self._counted_since >= METRICS_FLUSH_S:
            await self._flush_counts()

    async def _flush_counts(self) -> None:
        counts = {k: float(v) for k, v in self._counts.items()}
        self._counts = Counter()
        self._counted_since = time.monotonic()
        if counts:
            await self._metric(counts)

    async def _metric(self, deltas: dict[str, float]) -> None:
        """Metrics are best effort: a CloudWatch failure is counted, never stops a shard."""
        try:
            await self.metrics.put(deltas)
        except (ClientError, BotoCoreError):
            self.metric_failures += 1

    async def _hold(self, shard_id: str, n: int, after: str | None, exc: Exception,
                    stop: asyncio.Event) -> None:
        """A batch's effects could not be written: nothing is checkpointed, one line is
        logged (then every tenth time), a metric raised, and this shard pauses; the other
        shards go on. Effects written in part are idempotent to redo."""
        self.write_failures += 1
        await self._metric({"shard_write_failures": 1})
        held = self.hold.failed(shard_id, n, after, exc)
        if held.line:
            print(held.line, file=sys.stderr, flush=True)
        await pause(held.delay, stop)

    async def _checkpoint(self, p: Progress, after: str | None, ended: bool) -> None:
        """Checkpoint after the lease check; a refusal marks ``p`` refused (the shard is
        read again from the stored checkpoint)."""
        if self.guard is not None:
            await self.guard()
        if await self.checkpoints.save(p.shard_id, after, ended=ended) is not False:
            return
        self.refused_checkpoints += 1
        p.refused = True
        await self._metric({"checkpoints_refused": 1})
        print(f"shard {p.shard_id}: checkpoint at {after} refused, the stored one is further "
              "along (another worker ahead); re-reading from it", file=sys.stderr, flush=True)

    async def apply_batch(self, p: Progress, raw: list[dict[str, Any]], ended: bool,
                          stop: asyncio.Event) -> bool:
        """The one apply-then-checkpoint path of every read mode (GetRecords, SubscribeToShard).

        Writes the records' effects, then checkpoints the last one (``ended``: the shard is
        closed and this was its last batch). False when the effects could not be written:
        nothing was checkpointed, the shard was held, and the caller re-reads after
        ``p.after``."""
        if not raw:
            if ended:
                await self._checkpoint(p, p.after, ended=True)
            return True
        records = self._records(p.shard_id, raw)
        try:
            result = await self.applier.apply(records)  # effects durable from here
        except (WriteFailed, ClientError, BotoCoreError) as exc:
            await self._hold(p.shard_id, len(records), p.after, exc, stop)
            return False
        recovered = self.hold.succeeded(p.shard_id)
        if recovered:
            print(recovered, file=sys.stderr, flush=True)
        await self._count(batch_deltas(result.counts))
        self.chaos.point("before_checkpoint")
        # the Kinesis sequence number of the last record: every user record of an aggregate
        # is applied by now, so a re-read starts after the whole aggregate
        p.after = raw[-1]["SequenceNumber"]
        await self._checkpoint(p, p.after, ended=ended)
        self.chaos.point("after_checkpoint")
        if self.on_batch:
            self.on_batch(p.shard_id, result)
        return True

    async def consume_shard(
        self, shard_id: str, after: str | None, until_idle: bool, stop: asyncio.Event
    ) -> str:
        """Consume one shard; returns "ended", "idle", "stopped" or "refused" (a checkpoint
        was refused: read it again from the stored one). :class:`LeaseLost` from the
        guard ends it."""
        p = Progress(shard_id, after)
        iterator: str | None = await self._iterator(shard_id, after)
        idle = 0
        loop = asyncio.get_running_loop()
        last_call = 0.0
        while not stop.is_set():
            wait = self.min_call_interval - (loop.time() - last_call)
            if wait > 0:
                await asyncio.sleep(wait)
            last_call = loop.time()
            resp, iterator = await self._get_records(shard_id, iterator, p.after)
            if resp is None:
                continue
            raw = resp.get("Records", [])
            if not await self.apply_batch(p, raw, iterator is None, stop):
                iterator = await self._iterator(shard_id, p.after)  # re-read the same
                continue
            if p.refused:
                return "refused"  # run() starts it again from the stored checkpoint
            if iterator is None:
                return "ended"
            if raw:
                idle = 0
            else:
                if resp.get("MillisBehindLatest", 0) == 0:
                    idle += 1
                if until_idle and idle >= self.idle_polls:
                    return "idle"
                await asyncio.sleep(self.poll_interval)
        return "stopped"

    def _ready(self, shards: list[Shard], cps: dict[str, Checkpoint],
               skip: set[str]) -> list[Shard]:
        known = {s.shard_id for s in shards}
        ended = {sid for sid, c in cps.items() if c.ended}
        return [
            s for s in shards
            if s.shard_id not in ended and s.shard_id not in skip
            and all(p in ended or p not in known for p in s.parents)
        ]

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None) -> None:
        try:
            await self._run(until_idle, stop or asyncio.Event())
        finally:
            await self._flush_counts()

    async def _run(self, until_idle: bool, stop: asyncio.Event) -> None:
        running: dict[str, asyncio.Task[str]] = {}
        finished_idle: set[str] = set()
        while not stop.is_set():
            shards = await self.list_shards()
            cps = await self.checkpoints.all()
            for s in self._ready(shards, cps, set(running) | finished_idle):
                cp = cps.get(s.shard_id)
                self.hold.reset(s.shard_id)  # a new read of the shard starts unheld
                running[s.shard_id] = asyncio.create_task(
                    self.consume_shard(s.shard_id, cp.sequence_number if cp else None,
                                       until_idle, stop),
                    name=s.shard_id,
                )
            if not running:
                if until_idle:
                    return
                await pause(self.discovery_interval, stop)
                continue
            done, _ = await asyncio.wait(
                running.values(), timeout=self.discovery_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                del running[task.get_name()]
                if task.exception() is not None:  # a lost lease: no shard may go on
                    for other in running.values():
                        other.cancel()
                    await asyncio.gather(*running.values(), return_exceptions=True)
                    task.result()
                if task.result() == "idle":
                    finished_idle.add(task.get_name())
        if running:
            await asyncio.gather(*running.values())
        print("poller stopped after finishing the batches in flight", file=sys.stderr)
