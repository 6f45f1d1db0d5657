"""Where a replay sends its records: back onto the stream, or straight into the processor.

:class:`StreamTarget` publishes the valid events with the orders service's publisher
(``producers.publisher``), paced to the stream's write capacity by an AIMD limiter:
1,000 records and 1 MiB a second per open shard (DescribeStreamSummary, re-read every
30 s, so a reshard or an on-demand scale-out is followed), times ``share`` when live
producers need the rest. Up to ``concurrency`` PutRecords calls are in flight at once
(to hide the round trip); each holds whole customers, so no customer's events are
reordered between calls. Invalid records are not published: they are counted in the
report and written whole to a local log (``<state_dir>/replay/<job>.rejected.jsonl``).

:class:`DirectTarget` is a bulk backfill that bypasses Kinesis: the consumer's own
:class:`~consumers.applier.BatchApplier` (as ``caa.wiring.applier`` builds it), fed
the records of a chunk grouped by customer (each customer's in source order) within
each part, in batches of about ``group_size``, so one state write covers many of a
customer's events.
Invalid records become dead letters, as the consumer makes them (keyed by their
position, so a replay again overwrites them). When the job ends it refits the models
and rewrites every prediction with the function ``caa consume --until-idle`` ends
with (``consumers.refit.refit``); the per-batch predictions, which that rewrite would
overwrite, are not written meanwhile (with ``refit=False`` they are). It holds the
consumer group's lease meanwhile, so a local ``caa consume`` cannot write the same
customers at the same time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from consumers.applier import BatchApplier
from consumers.core import Rejected, StreamRecord
from consumers.progress import NO_PROGRESS, Progress
from consumers.refit import (
    FINAL_REFIT,
    REFIT_LOCK_TTL_S,
    RefitReport,
    RefitSkipped,
    locked_refit,
    refit,
    refit_lock,
)
from consumers.sources.lease import GroupBusy, GroupLease
from consumers.stores.checkpoints import CheckpointStore
from consumers.stores.predictions import PredictionStore
from models.events import StreamEvent
from models.prediction import Prediction
from producers.pacing import AimdLimiter, Capacity
from producers.publisher import (
    MAX_BYTES_PER_CALL,
    MAX_RECORDS_PER_CALL,
    Publisher,
    PublishReport,
    batches,
)
from producers.replay.sources import SourceRecord
from producers.replay.tally import Checked, ReplayReport

CAPACITY_REFRESH_S = 30.0
Entries = list[tuple[StreamEvent, bytes]]


class Target(ABC):
    #: what a job records as its target (a resumed job must name the same)
    name: str

    @property
    def chunk(self) -> int:
        """Records per commit when the caller does not say (known after :meth:`start`)."""
        return 2000

    async def start(self) -> None:  # noqa: B027 (optional hook)
        pass

    @abstractmethod
    async def send(self, chunk: list[Checked], report: ReplayReport) -> None:
        """Returns once every record of ``chunk`` is acknowledged (published, applied or
        dead-lettered); raises when that cannot be had."""

    async def finish(self, progress: Progress = NO_PROGRESS) -> RefitReport | None:
        """After the last chunk of a job (``progress``: its phases, if it has any)."""
        return None

    async def renew(self, now: float) -> None:  # noqa: B027 (optional hook)
        """Keep whatever the target holds while a job runs."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        pass


class RejectedLog:
    """Invalid records a stream replay skipped, one JSON object a line, whole payload kept.

    Truncated to its committed length when a job resumes, so it lists each record once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def open(self, committed: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("ab")
        self._fh.truncate(committed)
        self._fh.seek(committed)

    @property
    def size(self) -> int:
        return self._fh.tell() if self._fh else 0

    def write(self, rejected: list[Checked]) -> None:
        if self._fh is None or not rejected:
            return
        for c in rejected:
            r = c.record
            entry: dict[str, Any] = {"where": r.where, "part": r.part, "position": r.position,
                                     "line": r.line, "kind": c.kind, "reason": c.reason}
            try:
                entry["data"] = r.data.decode("utf-8")
            except UnicodeDecodeError:
                entry["data_base64"] = base64.b64encode(r.data).decode()
            self._fh.write(json.dumps(entry).encode() + b"\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def lanes(entries: list[tuple[StreamEvent, bytes]]) -> list[list[Entries]]:
    """PutRecords batches that may be in flight together: each holds whole customers (in
    their order), so concurrent calls never reorder a customer's events; a customer too
    big for one call gets a lane of its own, its batches sent one after another."""
    groups: dict[str, Entries] = {}
    for entry in entries:
        groups.setdefault(entry[0].customer_id, []).append(entry)
    out: list[list[Entries]] = []
    batch: Entries = []
    size = 0
    for recs in groups.values():
        n = sum(len(data) + len(event.customer_id.encode()) for event, data in recs)
        if len(recs) > MAX_RECORDS_PER_CALL or n > MAX_BYTES_PER_CALL:
            out.append(list(batches(recs)))
            continue
        if batch and (len(batch) + len(recs) > MAX_RECORDS_PER_CALL
                      or size + n > MAX_BYTES_PER_CALL):
            out.append([batch])
            batch, size = [], 0
        batch += recs
        size += n
    if batch:
        out.append([batch])
    return out


class StreamTarget(Target):
    def __init__(self, kinesis: Any, stream: str, *, share: float = 1.0,
                 log: RejectedLog | None = None, concurrency: int = 4, max_attempts: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kinesis = kinesis
        self.stream = stream
        self.name = f"stream:{stream}"
        self.limiter = AimdLimiter(Capacity.for_shards(1), ceiling=share,
                                   floor=min(0.02, share))
        self.publisher = Publisher(kinesis, stream, max_attempts=max_attempts,
                                   limiter=self.limiter, clock=clock)
        self.log = log
        self.shards = 0
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="replay-put")
        self._clock = clock
        self._refreshed = float("-inf")

    def _refresh(self) -> None:
        summary = self.kinesis.describe_stream_summary(StreamName=self.stream)
        self.shards = int(summary["StreamDescriptionSummary"]["OpenShardCount"])
        self.limiter.set_capacity(Capacity.for_shards(max(1, self.shards)))
        self._refreshed = self._clock()

    @property
    def capacity_records_per_s(self) -> float:
        return self.limiter.capacity.records_per_s

    @property
    def chunk(self) -> int:
        """About two seconds of the capacity (at least 2,000 records): each chunk ends
        with a wait for its last call, which a longer chunk amortises."""
        return max(2000, int(2 * self.limiter.records_per_s) // 500 * 500)

    async def start(self) -> None:
        await asyncio.to_thread(self._refresh)

    async def send(self, chunk: list[Checked], report: ReplayReport) -> None:
        if self._clock() - self._refreshed >= CAPACITY_REFRESH_S:
            await asyncio.to_thread(self._refresh)
        todo = lanes([(c.event, c.event.to_bytes()) for c in chunk if c.event is not None])
        results = [PublishReport() for _ in todo]

        def put(i: int) -> None:
            for batch in todo[i]:
                self.publisher.put_batch(batch, results[i])

        loop = asyncio.get_running_loop()
        done = await asyncio.gather(*(loop.run_in_executor(self._pool, put, i)
                                      for i in range(len(todo))), return_exceptions=True)
        for r in results:  # every lane has finished: nothing is in flight any more
            report.published += r.records
            report.throttled += r.throttled_records
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        if self.log is not None:
            self.log.write([c for c in chunk if c.event is None])

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.log is not None:
            self.log.close()


def by_customer(records: list[SourceRecord], size: int) -> list[list[SourceRecord]]:
    """Batches of about ``size`` records holding whole customers (each customer's records
    in their order; a customer with more than ``size`` records fills a batch alone).

    >>> recs = [SourceRecord("f", str(i), 1, b"", k) for i, k in enumerate("abacbd")]
    >>> [[r.key + r.position for r in b] for b in by_customer(recs, 3)]
    [['a0', 'a2'], ['b1', 'b4', 'c3'], ['d5']]
    """
    groups: dict[str, list[SourceRecord]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r)
    out: list[list[SourceRecord]] = []
    batch: list[SourceRecord] = []
    for recs in groups.values():
        if batch and len(batch) + len(recs) > size:
            out.append(batch)
            batch = []
        batch.extend(recs)
    if batch:
        out.append(batch)
    return out


class DeferredPredictions(PredictionStore):
    """Per-batch predictions of a backfill that ends with a refit are not written: the
    refit rewrites every customer's (deletions of erased customers still go through)."""

    async def save(self, predictions: Iterable[Prediction]) -> None:
        return None


class DirectTarget(Target):
    def __init__(self, applier: BatchApplier, table_prefix: str, *, origin: str,
                 lease: GroupLease | None = None, group_size: int = 300,
                 refit: bool = True, chunk: int = 10_000) -> None:
        self.applier = applier
        self.predictions = applier.predictions
        if refit:
            applier.predictions = DeferredPredictions(self.predictions.db, self.predictions.table)
        self.name = f"direct:{table_prefix}"
        self._chunk = chunk
        self.origin = origin
        self.lease = lease
        self.group_size = group_size
        self.refit = refit

    async def start(self) -> None:
        await self.renew(time.time())
        await self.applier.registry.load()

    async def renew(self, now: float) -> None:
        if self.lease is None:
            return
        try:
            await self.lease.acquire(now)
        except GroupBusy:
            raise GroupBusy(
                f"a consumer holds the consumer group {self.lease.group!r}: a direct backfill "
                "writes the same customers, so it needs the group to itself; stop the "
                "consumer, or replay --to stream") from None

    def _record(self, r: SourceRecord) -> StreamRecord:
        return StreamRecord(r.data, r.sequence_number, r.key, r.part, self.origin,
                            sub_sequence_number=r.sub_sequence_number,
                            aggregated="/" in r.position)

    async def send(self, chunk: list[Checked], report: ReplayReport) -> None:
        unframed = [Rejected(self._record(c.record), c.kind, c.reason)
                    for c in chunk if c.record.problem is not None]
        if unframed:
            await self.applier.dead_letters.save(unframed)
            report.dead_lettered += len(unframed)
        # the core tells records apart by sequence number, unique only within a part
        parts: dict[str, list[SourceRecord]] = {}
        for c in chunk:
            if c.record.problem is None:
                parts.setdefault(c.record.part, []).append(c.record)
        for batch in (b for records in parts.values()
                      for b in by_customer(records, self.group_size)):
            result = await self.applier.apply([self._record(r) for r in batch])
            report.applied += result.counts["applied"]
            report.duplicates += result.counts["duplicate"]
            report.duplicate_orders += result.counts["duplicate_order"]
            report.dead_lettered += result.counts["rejected"]

    @property
    def chunk(self) -> int:
        return self._chunk

    async def finish(self, progress: Progress = NO_PROGRESS) -> RefitReport | None:
        """The refit ``caa consume --until-idle`` ends with: both models over the customer
        table, every prediction rewritten as of the latest event."""
        if not self.refit:
            return None
        a = self.applier

        def run() -> Awaitable[RefitReport | None]:
            return refit(a.customers, self.predictions, a.registry, rewrite=True,
                         enricher=a.enricher, active_days=0, reason=FINAL_REFIT,
                         progress=progress)

        if self.lease is None:
            return await run()
        # under the refit lock, as the consumer's final refit: waiting for one running
        lock = refit_lock(CheckpointStore(self.lease.db, self.lease.table, self.lease.group),
                          self.lease.owner)
        outcome = await locked_refit(lock, run, wait_s=REFIT_LOCK_TTL_S)
        if isinstance(outcome, RefitSkipped):
            print(f"caa: refit skipped: {outcome.reason}", file=sys.stderr)
            return None
        return outcome

    async def close(self) -> None:
        if self.lease is not None:
            await self.lease.release()
