"""Durable analysis requests on SQS: the queue the enricher's in-memory one becomes.

**Sending.** Once a batch's effects are written, and before its checkpoint,
:meth:`BatchApplier.apply <consumers.applier.BatchApplier.apply>` sends one
:class:`AnalysisRequest` per changed customer (SendMessageBatch, 10 a call) with
``DelaySeconds`` = the debounce window (at most 900 s, SQS's limit). A send that still fails
after its retries fails the batch like a failed write: nothing is checkpointed, the batch is
read again. A customer whose events in a re-read batch were all duplicates (its state was
written, its request perhaps not: a crash between the two) gets a request with no version.

**Analysing.** :class:`RequestAnalyzer` takes a request and

* drops it when the customer is gone (erased) or **superseded**: the stored state's version
  is beyond the request's, so a later request (sent with that state) is coming; a burst of
  purchases thus costs one analysis, a debounce that restarts at each purchase;
* else runs the enricher's path (:meth:`Enricher.run_request
  <consumers.analysis.enricher.Enricher.run_request>`: consent, A/B plan, change-aware
  cache, call guard, Bedrock, write) on the stored state and prediction.

A finished request is deleted; a failed one (the write failed) is left to become visible
again after the queue's visibility timeout and, after ``maxReceiveCount`` receives, goes to
the dead-letter queue (the queue's redrive policy). One cut short by a stop is made visible
at once for whoever reads next. The Lambda shape (:meth:`RequestAnalyzer.handle_event`)
answers with partial batch failures (``batchItemFailures``); Lambda deletes the others.

Requests survive any crash of the consumer: they are in SQS before the checkpoint moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from consumers.analysis.enricher import STOP_GRACE_S
from consumers.core import BatchResult
from consumers.progress import NO_PROGRESS, Progress
from consumers.retry import Backoff
from consumers.stores.dynamo import WriteFailed
from models.prediction import Prediction
from models.prompt import build_input

if TYPE_CHECKING:
    from consumers.analysis.enricher import Enricher
    from consumers.registry import ModelRegistry
    from consumers.stores.customers import CustomerStore
    from consumers.stores.predictions import PredictionStore
    from models.state import CustomerState

#: SQS's longest message delay
MAX_DELAY_S = 900
#: entries in one SendMessageBatch / DeleteMessageBatch, messages in one ReceiveMessage
SQS_BATCH = 10
#: request format version
REQUEST_VERSION = 1

Outcome = Literal["analysed", "superseded", "gone", "stopped"]


@dataclass(frozen=True, slots=True)
class AnalysisRequest:
    """Analyse ``customer_id`` as its state stood at ``version`` (None: whatever is stored).

    >>> r = AnalysisRequest("c1", 3, as_of=100, last_event_at=90, trigger="purchase",
    ...                     enqueued_at=1.5)
    >>> AnalysisRequest.from_json(r.to_json()) == r
    True
    """

    customer_id: str
    version: int | None
    #: the event time the features are judged at (the batch's watermark)
    as_of: int
    #: the customer's latest event time in that state
    last_event_at: int | None
    trigger: Literal["purchase", "schedule", "on_demand"]
    #: wall clock (epoch seconds) when it was sent
    enqueued_at: float

    def to_json(self) -> str:
        return json.dumps({"v": REQUEST_VERSION, **asdict(self)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str) -> AnalysisRequest:
        """The request in ``body``; ValueError when it is not one."""
        try:
            d = json.loads(body)
            if d.pop("v") != REQUEST_VERSION or d["trigger"] not in (
                    "purchase", "schedule", "on_demand"):
                raise ValueError(f"not a version {REQUEST_VERSION} request")
            out = cls(**d)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not an analysis request: {exc}") from exc
        if not isinstance(out.customer_id, str) or not isinstance(out.as_of, int):
            raise ValueError("not an analysis request: bad customer_id or as_of")
        return out


def requests_for(result: BatchResult, touched: Iterable[str],
                 now: float | None = None) -> list[AnalysisRequest]:
    """One request per customer ``result`` changed (with its new version), and one with no
    version per customer in ``touched`` (the batch's) that it left unchanged and did not
    erase: in a re-read batch those may have lost their request to a crash."""
    at = time.time() if now is None else now
    out = [AnalysisRequest(cid, st.version, result.watermark, st.last_event_ts or None,
                           "purchase", at)
           for cid, st in sorted(result.states.items())]
    out += [AnalysisRequest(cid, None, result.watermark, None, "purchase", at)
            for cid in sorted(set(touched) - set(result.states) - result.erased)]
    return out


def delay_of(debounce_s: float) -> int:
    """The debounce window as SQS ``DelaySeconds`` (whole seconds, at most 900)."""
    return max(0, min(MAX_DELAY_S, round(debounce_s)))


class RequestQueue:
    """The requests' SQS queue (``queue``: its URL, or its name, looked up once)."""

    def __init__(self, sqs: Any, queue: str, *, delay_s: int, attempts: int = 6,
                 backoff_s: float = 0.2) -> None:
        self.sqs = sqs
        self.queue = queue
        self.delay_s = max(0, min(MAX_DELAY_S, delay_s))
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._url = queue if queue.startswith(("https://", "http://")) else None
        self.sent = 0

    async def url(self) -> str:
        if self._url is None:
            self._url = cast(str, (await self.sqs.get_queue_url(QueueName=self.queue))["QueueUrl"])
        return self._url

    async def send_result(self, result: BatchResult, touched: Iterable[str]) -> int:
        """What the applier calls once a batch's effects are written; how many were sent."""
        return await self.send(requests_for(result, touched))

    async def send_scheduled(self, states: Iterable[CustomerState], as_of_ts: int) -> int:
        """The scheduled re-analysis after a refit: one request per state, with its version
        (so a purchase since supersedes it), due at once."""
        at = time.time()
        return await self.send([AnalysisRequest(s.customer_id, s.version, as_of_ts,
                                                s.last_event_ts or None, "schedule", at)
                                for s in states], delay_s=0)

    async def send_now(self, customer_id: str, as_of_ts: int) -> AnalysisRequest:
        """An on-demand request (``caa analyze`` with a queue): whatever state is stored,
        due at once; the analyzer bypasses debounce and the analysis cache for it."""
        req = AnalysisRequest(customer_id, None, as_of_ts, None, "on_demand", time.time())
        await self.send([req], delay_s=0)
        return req

    async def send(self, requests: Sequence[AnalysisRequest], delay_s: int | None = None
                   ) -> int:
        """Send every request (retrying refused entries and errors with backoff), delayed by
        ``delay_s`` (default: the queue's debounce); raises
        :class:`~consumers.stores.dynamo.WriteFailed` when some still could not be sent."""
        url = await self.url()
        delay = self.delay_s if delay_s is None else max(0, min(MAX_DELAY_S, delay_s))
        chunks = [list(requests[i:i + SQS_BATCH]) for i in range(0, len(requests), SQS_BATCH)]
        await asyncio.gather(*(self._send_chunk(url, c, delay) for c in chunks))
        self.sent += len(requests)
        return len(requests)

    async def _send_chunk(self, url: str, chunk: list[AnalysisRequest], delay_s: int) -> None:
        todo = {str(i): r for i, r in enumerate(chunk)}
        backoff = Backoff(base=self.backoff_s, cap=5.0)
        last = ""
        for attempt in range(self.attempts):
            try:
                resp = await self.sqs.send_message_batch(QueueUrl=url, Entries=[
                    {"Id": i, "MessageBody": r.to_json(), "DelaySeconds": delay_s}
                    for i, r in todo.items()])
            except Exception as exc:  # noqa: BLE001 -- retried, then a transient failure
                last = f"{type(exc).__name__}: {exc}"
            else:
                failed = resp.get("Failed") or []
                for ok in resp.get("Successful") or []:
                    todo.pop(ok["Id"], None)
                if not todo:
                    return
                last = "; ".join(f"{f.get('Code')}: {f.get('Message')}" for f in failed[:3])
            await asyncio.sleep(backoff.delay(attempt))
        raise WriteFailed(f"{len(todo)} analysis request(s) not sent to {self.queue}: {last}")

    async def receive(self, n: int, wait_s: int) -> list[dict[str, Any]]:
        resp = await self.sqs.receive_message(
            QueueUrl=await self.url(), MaxNumberOfMessages=max(1, min(SQS_BATCH, n)),
            WaitTimeSeconds=wait_s, AttributeNames=["ApproximateReceiveCount", "SentTimestamp"])
        return cast(list[dict[str, Any]], resp.get("Messages") or [])

    async def delete(self, receipt: str) -> None:
        await self.sqs.delete_message(QueueUrl=await self.url(), ReceiptHandle=receipt)

    async def release(self, receipt: str) -> None:
        """Make a received message visible again now (best effort)."""
        # a failure is fine: it comes back after the visibility timeout anyway
        with contextlib.suppress(Exception):
            await self.sqs.change_message_visibility(QueueUrl=await self.url(),
                                                     ReceiptHandle=receipt, VisibilityTimeout=0)

    async def depth(self, in_flight: bool = True) -> int:
        """Messages in the queue: visible and delayed, and (``in_flight``) received by
        someone and neither deleted nor visible again yet."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"]
        if in_flight:
            names.append("ApproximateNumberOfMessagesNotVisible")
        attrs = (await self.sqs.get_queue_attributes(QueueUrl=await self.url(),
                                                     AttributeNames=names))["Attributes"]
        return sum(int(attrs.get(n, 0)) for n in names)


@dataclass
class RequestAnalyzer:
    """Runs requests through ``enricher``: as a local worker reading ``queue`` (:meth:`run`,
    :meth:`drain`) or as the Lambda's handler (:meth:`handle_event`)."""

    enricher: Enricher
    customers: CustomerStore
    predictions: PredictionStore
    queue: RequestQueue | None = None
    #: requests analysed at once (Bedrock's concurrency bound in the local process)
    concurrency: int = 4
    #: long polling: the longest one ReceiveMessage waits
    wait_s: int = 2
    #: the Lambda's own models (refreshed per invocation; the local worker shares the
    #: applier's, which refreshes them per batch)
    registry: ModelRegistry | None = None
    counts: Counter[str] = field(default_factory=Counter)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, body: str) -> Outcome:
        """One request: its outcome; raises when it failed (to be received again)."""
        req = AnalysisRequest.from_json(body)
        cid = req.customer_id
        states = await self.customers.load([cid])
        if cid not in states:
            return self._counted("gone")
        state = states[cid]
        if req.version is not None and state.version > req.version:
            return self._counted("superseded")
        stored = await self.predictions.get(cid)
        prediction = Prediction.model_validate(stored) if stored is not None else None
        e = self.enricher
        x = build_input(state, prediction, as_of_ts=req.as_of, key=e.key,
                        reference_order_value=e.reference_order_value(), rates=e.rates)
        waited = max(0.0, time.time() - req.enqueued_at)
        if not await e.run_request(cid, x, req.trigger, [time.monotonic() - waited]):
            return self._counted("stopped")
        return self._counted("analysed")

    def _counted(self, outcome: Outcome) -> Outcome:
        self.counts[outcome] += 1
        return outcome

    async def handle_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """An SQS event of Lambda's: the messages that failed or were cut short, as partial
        batch failures (Lambda deletes the others)."""
        records = event.get("Records") or []
        if self.registry is not None:  # a warm environment: refits and learning elsewhere
            await self.registry.refresh()
        sem = asyncio.Semaphore(self.concurrency)

        async def one(rec: dict[str, Any]) -> str | None:
            async with sem:
                try:
                    done = await self.handle(rec["body"]) != "stopped"
                except Exception:  # noqa: BLE001 -- the message comes back; counted
                    self.counts["failed"] += 1
                    done = False
                return None if done else str(rec["messageId"])

        failed = await asyncio.gather(*(one(r) for r in records))
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed if m is not None]}

    # -- the local worker -------------------------------------------------------------
    async def _one(self, message: dict[str, Any]) -> None:
        assert self.queue is not None
        try:
            outcome = await self.handle(message["Body"])
        except asyncio.CancelledError:  # cut short by a stop: back to the queue at once
            self.counts["stopped"] += 1
            await asyncio.shield(self.queue.release(message["ReceiptHandle"]))
            raise
        except Exception:  # noqa: BLE001 -- left to come back (then the DLQ); counted
            self.counts["failed"] += 1
            return
        if outcome == "stopped":
            await self.queue.release(message["ReceiptHandle"])
            return
        try:
            await self.queue.delete(message["ReceiptHandle"])
        except Exception:  # noqa: BLE001 -- received again later: superseded or a cache hit
            self.counts["delete_failed"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Receive (long polling) and analyse, at most :attr:`concurrency` at once, until
        ``stop``; then wait for the requests started (a stop of the enricher cuts them
        short: :meth:`Enricher.abandon_queued`)."""
        assert self.queue is not None
        stopped = asyncio.ensure_future(stop.wait())
        try:
            # a stop signal reaches the enricher first (closing): receiving on would only
            # hand messages back, each receive counting towards the dead-letter queue
            while not stop.is_set() and not self.enricher.closing:
                free = self.concurrency - len(self._tasks)
                if free <= 0:
                    await asyncio.wait([stopped, *self._tasks],
                                       return_when=asyncio.FIRST_COMPLETED)
                    continue
                receiving = asyncio.ensure_future(self.queue.receive(free, self.wait_s))
                await asyncio.wait([stopped, receiving], return_when=asyncio.FIRST_COMPLETED)
                # stopped while polling: the poll ends within wait_s (cancelling it could lose
                # what it received to the visibility timeout); what it got is released
                try:
                    messages = await receiving
                except Exception:  # noqa: BLE001 -- the queue is unreachable: try again
                    self.counts["receive_failed"] += 1
                    await asyncio.wait([stopped], timeout=1.0)
                    continue
                if stop.is_set() or self.enricher.closing:
                    await asyncio.gather(*(self.queue.release(m["ReceiptHandle"])
                                           for m in messages))
                    break
                for m in messages:
                    task = asyncio.create_task(self._one(m))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            stopped.cancel()
        if self._tasks and self.enricher.closing:  # a stop signal: calls in flight get a grace
            await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_S)
            for task in list(self._tasks):
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self, progress: Progress = NO_PROGRESS) -> None:
        """Analyse until nothing is visible or delayed in the queue and nothing is running
        here (a bounded run): delayed requests are waited for; requests that failed here, or
        that another reader holds, are left to come back (and to the dead-letter queue)."""
        assert self.queue is not None
        left = await self.queue.depth()
        if not left:
            return
        progress.phase("AI analyses", total=left)
        done = asyncio.Event()
        worker = asyncio.create_task(self.run(done))
        empty = 0  # readings in a row with nothing left (one could miss a receive answered)
        try:
            while True:
                await asyncio.sleep(0.5)
                now = await self.queue.depth(in_flight=False)
                progress.advance(max(0, left - now))
                left = min(left, now)
                empty = empty + 1 if now == 0 and not self._tasks else 0
                if empty == 2:
                    break
                if worker.done():
                    break
        finally:
            done.set()
            await worker

    def summary(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
