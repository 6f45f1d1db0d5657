"""The KCL adapter: a record processor for the MultiLangDaemon (amazon_kclpy v3).

The Java KCL owns shard discovery, leases, load balancing, resharding (children
start after their parents' ``shard_ended`` checkpoint) and the checkpoint table;
it runs one of these processes per shard lease and talks to it over stdin/stdout.
So nothing here may print to stdout: logs and EMF metrics go to stderr.

Each ``process_records`` call is one batch through :meth:`BatchApplier.apply`;
only when it returns (effects durable) is the last sequence number checkpointed.
When the writes fail the batch is applied again after a growing pause, holding
this shard as the local poller does; the digests make every retry count once.
``shard_ended`` and ``shutdown_requested`` checkpoint (everything delivered was
applied before the call returned); ``lease_lost`` cannot.

Run by the daemon as ``python -m caa.entry.kcl`` (see :mod:`deploy.kcl`), which builds
the settings from ``CAA_*`` and the AWS variables in the daemon's environment and calls
:func:`run`. No state cache: after a lease handover another worker writes this shard's
customers.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from consumers.applier import BatchApplier
from consumers.core import BatchResult, StreamRecord
from consumers.instrument.metrics import MetricSink, batch_deltas
from consumers.retry import Backoff, Jitter
from consumers.sources.hold import KCL_LINES, ShardHold
from consumers.sources.records import KclRecord, from_kcl
from consumers.stores.dynamo import WriteFailed


def log(message: str) -> None:
    print(f"kcl-processor: {message}", file=sys.stderr, flush=True)


def stream_record(record: KclRecord, shard_id: str, stream: str) -> StreamRecord:
    """The daemon de-aggregates KPL records: each user record comes with its aggregate's
    sequence number and its sub-sequence number."""
    return from_kcl(record, shard_id, stream)


def checkpoint(checkpointer: Any, sequence_number: str | None = None,
               sub_sequence_number: int | None = None,
               attempts: int = 5, pause_s: float = 1.0) -> bool:
    """Checkpoint through the daemon, retrying what the KCL says may be retried (at a user
    record of a KPL aggregate: its sequence number and sub-sequence number).

    Returns False when this worker may no longer checkpoint (shutdown, lease lost).
    """
    from amazon_kclpy.checkpoint_error import CheckpointError

    for attempt in range(1, attempts + 1):
        try:
            checkpointer.checkpoint(sequence_number, sub_sequence_number)
            return True
        except CheckpointError as exc:
            if exc.value == "ShutdownException":
                log("checkpoint refused: shutting down")
                return False
            if exc.value == "InvalidStateException":
                log(f"checkpoint refused: invalid state ({sequence_number})")
                return False
            if exc.value != "ThrottlingException" or attempt == attempts:
                raise
            time.sleep(pause_s * attempt)
    return False


class Processor:
    """The lifecycle half of the v3 processor, run on one event loop per process."""

    def __init__(self, applier: BatchApplier, stream: str, loop: asyncio.AbstractEventLoop,
                 metrics: MetricSink | None = None, max_pause_s: float = 30.0,
                 on_batch: Callable[[str, BatchResult], None] | None = None) -> None:
        self.applier = applier
        self.stream = stream
        self.loop = loop
        self.metrics = metrics
        self.max_pause_s = max_pause_s
        # a write failure holds the shard 1 s, doubling per failure in a row, at most
        # max_pause_s (and 32 s)
        self.hold = ShardHold(Backoff(base=1.0, cap=min(max_pause_s, 32.0), jitter=Jitter.NONE),
                              KCL_LINES)
        self.on_batch = on_batch
        self.shard_id = ""
        #: (sequence number, sub-sequence number) of the last user record applied
        self.last_applied: tuple[str, int] | None = None
        self.stopping = False

    def initialize(self, shard_id: str, sequence_number: str | None) -> None:
        self.shard_id = shard_id
        self.last_applied = None
        log(f"{shard_id}: starting after {sequence_number}")

    def apply(self, records: Sequence[KclRecord]) -> BatchResult | None:
        """Apply until durable; None only if the daemon asked us to stop meanwhile."""
        batch = [stream_record(r, self.shard_id, self.stream) for r in records]
        self.hold.reset(self.shard_id)  # failures are counted per batch
        while True:
            try:
                result = self.loop.run_until_complete(self.applier.apply(batch))
            except (WriteFailed, ClientError, BotoCoreError) as exc:
                held = self.hold.failed(self.shard_id, len(batch), None, exc)
                if held.line:
                    log(held.line)
                self._metric({"shard_write_failures": 1})
                if self.stopping:
                    return None
                time.sleep(held.delay)  # the daemon waits for this call: block its thread
                continue
            recovered = self.hold.succeeded(self.shard_id)
            if recovered:
                log(recovered)
            self._metric(batch_deltas(result.counts))
            return result

    def _metric(self, deltas: dict[str, float]) -> None:
        if self.metrics is None:
            return
        try:
            self.loop.run_until_complete(self.metrics.put(deltas))
        except (ClientError, BotoCoreError, OSError) as exc:  # never stops the shard
            log(f"metric not published: {exc}")

    def process_records(self, records: Sequence[KclRecord], checkpointer: Any) -> None:
        if not records:
            return
        result = self.apply(records)
        if result is None:
            return
        last = records[-1]
        self.last_applied = (last.sequence_number, last.sub_sequence_number or 0)
        if self.on_batch is not None:
            self.on_batch(self.shard_id, result)
        checkpoint(checkpointer, *self.last_applied)

    def shard_ended(self, checkpointer: Any) -> None:
        log(f"{self.shard_id}: shard ended")
        checkpoint(checkpointer)  # required: the children start after this

    def shutdown_requested(self, checkpointer: Any) -> None:
        self.stopping = True
        if self.last_applied is not None:
            checkpoint(checkpointer, *self.last_applied)

    def lease_lost(self) -> None:
        self.stopping = True
        log(f"{self.shard_id}: lease lost")


def kcl_processor(core: Processor) -> Any:
    """``core`` behind amazon_kclpy's v3 ``RecordProcessorBase``."""
    from amazon_kclpy.v3 import processor

    class RecordProcessor(processor.RecordProcessorBase):  # type: ignore[misc]
        def initialize(self, initialize_input: Any) -> None:
            core.initialize(initialize_input.shard_id, initialize_input.sequence_number)

        def process_records(self, process_records_input: Any) -> None:
            core.process_records(process_records_input.records,
                                 process_records_input.checkpointer)

        def lease_lost(self, lease_lost_input: Any) -> None:
            core.lease_lost()

        def shard_ended(self, shard_ended_input: Any) -> None:
            core.shard_ended(shard_ended_input.checkpointer)

        def shutdown_requested(self, shutdown_requested_input: Any) -> None:
            core.shutdown_requested(shutdown_requested_input.checkpointer)

    return RecordProcessor()


def run(open_applier: Callable[[AsyncExitStack], Awaitable[BatchApplier]], stream: str) -> int:
    """Serve the daemon over stdin/stdout until it ends this process.

    ``open_applier`` opens the clients on the stack it is given (closed at the end) and
    returns the applier, its models loaded; everything runs on one event loop.
    """
    from amazon_kclpy import kcl

    from consumers.instrument.metrics import EmfMetrics

    loop = asyncio.new_event_loop()
    stack = AsyncExitStack()
    applier = loop.run_until_complete(open_applier(stack))
    core = Processor(applier, stream, loop, metrics=EmfMetrics(sys.stderr, {"Stream": stream}))
    try:
        kcl.KCLProcess(kcl_processor(core)).run()
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
    return 0
