"""The orders-service publisher: PutRecords with partial-failure retries.

Batches hold at most 500 records and 5 MiB (data plus partition keys), as
Kinesis allows. The partition key is the customer id, so one customer's events
land on one shard in order. When PutRecords acknowledges only part of a batch,
only the failed entries are sent again, after an exponential backoff with full
jitter (:mod:`consumers.retry`); after the last attempt :class:`PublishError` hands
back every event that was not acknowledged. Nothing is dropped silently.

(Kinesis may reorder a customer's events when an earlier one fails and a later
one in the same request succeeds; the consumer's state is order-independent,
so that reorder is harmless here.)

With a ``limiter`` (:class:`producers.pacing.AimdLimiter`, as ``caa replay`` uses)
every call first waits for its share of the stream's write capacity, and each answer
tells the limiter whether Kinesis throttled it. ``put_batch`` may run in several
threads at once; they share the limiter under a lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumers.retry import Backoff, retry_until_done
from models.events import StreamEvent
from producers.pacing import AimdLimiter

MAX_RECORDS_PER_CALL = 500
MAX_BYTES_PER_CALL = 5 * 1024 * 1024
MAX_RECORD_BYTES = 1024 * 1024


class PublishError(RuntimeError):
    """Raised after the last attempt; ``unacknowledged`` holds every event not written."""

    def __init__(self, unacknowledged: list[StreamEvent], reasons: dict[str, int]) -> None:
        summary = ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items()))
        super().__init__(
            f"{len(unacknowledged)} event(s) were not acknowledged by Kinesis after "
            f"all attempts ({summary}); they are in .unacknowledged"
        )
        self.unacknowledged = unacknowledged
        self.reasons = reasons


@dataclass
class PublishReport:
    records: int = 0
    bytes: int = 0
    calls: int = 0
    retried_records: int = 0
    #: entries Kinesis refused with ProvisionedThroughputExceeded (then retried)
    throttled_records: int = 0
    seconds: float = 0.0
    shards: dict[str, int] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def batches(
    entries: Iterable[tuple[StreamEvent, bytes]],
    max_records: int = MAX_RECORDS_PER_CALL,
    max_bytes: int = MAX_BYTES_PER_CALL,
) -> Iterator[list[tuple[StreamEvent, bytes]]]:
    """Group encoded events into PutRecords-sized batches, keeping their order."""
    batch: list[tuple[StreamEvent, bytes]] = []
    size = 0
    for event, data in entries:
        n = len(data) + len(event.customer_id.encode())
        if n > MAX_RECORD_BYTES:
            raise ValueError(f"event {event.event_id} is {n} bytes, over the 1 MiB record limit")
        if batch and (len(batch) >= max_records or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append((event, data))
        size += n
    if batch:
        yield batch


class Publisher:
    """Puts events on one stream through a boto3 Kinesis client."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        *,
        max_attempts: int = 8,
        base_delay: float = 0.05,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        limiter: AimdLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.stream_name = stream_name
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.limiter = limiter
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def backoff(self) -> Backoff:
        """Full jitter from ``base_delay``, doubling per call, capped at ``max_delay``."""
        return Backoff(base=self.base_delay, cap=self.max_delay, attempts=self.max_attempts)

    def _feedback(self, throttled: bool) -> None:
        if self.limiter is not None:
            with self._lock:
                if throttled:
                    self.limiter.throttled(self._clock())
                else:
                    self.limiter.succeeded(self._clock())

    def _pace(self, pending: Sequence[tuple[StreamEvent, bytes]]) -> None:
        if self.limiter is not None:
            size = sum(len(data) + len(event.customer_id.encode()) for event, data in pending)
            with self._lock:
                wait = self.limiter.reserve(len(pending), size, self._clock())
            self._sleep(wait)

    def put_batch(
        self, batch: Sequence[tuple[StreamEvent, bytes]], report: PublishReport
    ) -> None:
        reasons: dict[str, int] = {}

        def put(pending: list[tuple[StreamEvent, bytes]]) -> list[tuple[StreamEvent, bytes]]:
            return self._put(pending, reasons, report)

        def retrying(pending: list[tuple[StreamEvent, bytes]]) -> None:
            report.retried_records += len(pending)

        left = retry_until_done(self.backoff, put, list(batch), rng=self._rng,
                                sleep=self._sleep, on_retry=retrying)
        if left:
            raise PublishError([event for event, _ in left], reasons)

    def _put(self, pending: list[tuple[StreamEvent, bytes]], reasons: dict[str, int],
             report: PublishReport) -> list[tuple[StreamEvent, bytes]]:
        """One PutRecords call; returns the entries not acknowledged."""
        throttled = "ProvisionedThroughputExceededException"
        self._pace(pending)
        report.calls += 1
        try:
            response = self._client.put_records(
                StreamName=self.stream_name,
                Records=[
                    {"Data": data, "PartitionKey": event.customer_id}
                    for event, data in pending
                ],
            )
        except self._client.exceptions.ProvisionedThroughputExceededException:
            reasons[throttled] = reasons.get(throttled, 0) + len(pending)
            report.throttled_records += len(pending)
            self._feedback(throttled=True)
            return pending
        failed: list[tuple[StreamEvent, bytes]] = []
        refused = 0
        for entry, result in zip(pending, response["Records"], strict=True):
            code = result.get("ErrorCode")
            if code:
                failed.append(entry)
                reasons[code] = reasons.get(code, 0) + 1
                refused += int(code == throttled)
            else:
                shard = result["ShardId"]
                report.shards[shard] = report.shards.get(shard, 0) + 1
                report.records += 1
                report.bytes += len(entry[1])
        report.throttled_records += refused
        self._feedback(throttled=refused > 0)
        return failed

    def publish(
        self,
        events: Iterable[StreamEvent],
        progress: Callable[[int], None] | None = None,
    ) -> PublishReport:
        """Publish in order; raises :class:`PublishError` with everything not acknowledged."""
        report = PublishReport()
        started = time.perf_counter()
        all_batches = batches((e, e.to_bytes()) for e in events)
        for batch in all_batches:
            try:
                self.put_batch(batch, report)
            except PublishError as exc:
                rest = [e for b in all_batches for e, _ in b]
                raise PublishError(exc.unacknowledged + rest, exc.reasons) from None
            if progress:
                progress(len(batch))
        report.seconds = time.perf_counter() - started
        return report
