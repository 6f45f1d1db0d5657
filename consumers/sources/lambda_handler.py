"""The Lambda adapter: a Kinesis event source mapping batch through the same core.

Built on aws-lambda-powertools' batch utility (``BatchProcessor`` with
``EventType.KinesisDataStreams``; the mapping has ``ReportBatchItemFailures``
on). Powertools hands records to a handler one by one; our core wants the whole
batch at once (one BatchGetItem for its customers, one BatchWriteItem per 25
states), so :class:`CoreBatchProcessor` runs the batch through
:meth:`BatchApplier.apply` when it is prepared and the record handler only
reports each record's outcome:

- applied, duplicate, or rejected into the dead letters (poison is handled, so
  it does not block the shard): success;
- effects not durably written (DynamoDB failing past its retries): every record
  of the batch is a failure, so ``batchItemFailures`` makes Lambda retry the batch
  from its first record; the digests make the retry count once.

Each invocation prints its counts (records applied, duplicates, dead letters, or a
shard write failure) to stdout in CloudWatch Embedded Metric Format, under the
names the dashboard reads; Lambda's log group turns them into metrics.

The function's handler is ``caa.entry.lambda_stream.handler``: on the first invocation it
builds the settings and a :class:`Runtime` (clients, applier and event loop), reused while
the environment is warm. No state cache: a shard's batches may run in another environment
next. AI analysis is not run here (debounce windows outlive an invocation); the
statistical prediction is written.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import (
    KinesisStreamRecord,
)

from consumers.applier import BatchApplier
from consumers.core import RecordOutcome, StreamRecord
from consumers.instrument.metrics import EmfMetrics, MetricSink, batch_deltas
from consumers.sources.records import from_lambda


class EffectsNotWritten(RuntimeError):
    """The batch's effects could not be written: this record must be delivered again."""


def stream_records(raw: Mapping[str, Any]) -> list[StreamRecord]:
    """One record of a Kinesis event source mapping event, as the core takes it: its user
    records when it is a KPL aggregate (:mod:`consumers.sources.records`)."""
    return from_lambda(raw)


class CoreBatchProcessor(BatchProcessor):
    """powertools' Kinesis batch processor whose batch goes through the core once."""

    def __init__(self, applier: BatchApplier, loop: asyncio.AbstractEventLoop,
                 metrics: MetricSink | None = None) -> None:
        super().__init__(EventType.KinesisDataStreams, raise_on_entire_batch_failure=False)
        self.applier = applier
        self.loop = loop
        self.metrics = metrics
        self.outcomes: dict[str, RecordOutcome] = {}
        self.failure: Exception | None = None

    def _prepare(self) -> None:
        super()._prepare()  # type: ignore[no-untyped-call]
        self.outcomes, self.failure = {}, None
        records = [rec for r in self.records for rec in stream_records(r)]
        try:
            result = self.loop.run_until_complete(self.applier.apply(records))
        except Exception as exc:  # noqa: BLE001 - becomes each record's failure below
            self.failure = exc
            self._metric({"shard_write_failures": 1})
            return
        self.outcomes = {o.sequence_number: o for o in result.outcomes}
        self._metric(batch_deltas(result.counts))

    def _metric(self, deltas: dict[str, float]) -> None:
        if self.metrics is not None:  # EMF is a print: it cannot fail the batch
            self.loop.run_until_complete(self.metrics.put(deltas))

    def report(self, record: KinesisStreamRecord) -> str:
        """The record handler: this record's outcome, or the batch's failure raised."""
        if self.failure is not None:
            raise EffectsNotWritten(f"batch not written: {self.failure}") from self.failure
        # a KPL aggregate's user records share its sequence number: the last one's outcome
        return self.outcomes[record.kinesis.sequence_number].status


class Runtime:
    """What a warm Lambda environment keeps between invocations.

    ``open_applier`` opens the clients on the stack it is given (closed by :meth:`close`)
    and returns the applier, its models loaded; it runs on this runtime's event loop.
    """

    def __init__(self, open_applier: Callable[[AsyncExitStack], Awaitable[BatchApplier]],
                 stream: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._stack = AsyncExitStack()
        applier = self.loop.run_until_complete(open_applier(self._stack))
        self.processor = CoreBatchProcessor(
            applier, self.loop, EmfMetrics(sys.stdout, {"Stream": stream}))

    def handle(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        return dict(process_partial_response(
            event=dict(event), record_handler=self.processor.report,
            processor=self.processor, context=context))

    def close(self) -> None:
        self.loop.run_until_complete(self._stack.aclose())
        self.loop.close()


def failed_sequence_numbers(response: Mapping[str, Sequence[Mapping[str, str]]]) -> list[str]:
    """``{"batchItemFailures": [{"itemIdentifier": seq}, ...]}`` -> the sequence numbers.

    >>> failed_sequence_numbers({"batchItemFailures": [{"itemIdentifier": "49"}]})
    ['49']
    """
    return [f["itemIdentifier"] for f in response.get("batchItemFailures", [])]
