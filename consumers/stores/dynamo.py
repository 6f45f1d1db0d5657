"""One DynamoDB helper for every table: batch reads and writes with retries, conditional
puts, the error classes and the attribute codec.

All take an aiobotocore DynamoDB client. Every error is one of three classes
(:func:`classify`):

* **transient** -- throttling (:data:`THROTTLED`), a 5xx answer (``InternalServerError``,
  ``ServiceUnavailable``, ...), a timeout or a broken connection, and the errors that name
  the setup rather than an item (a missing table, refused credentials,
  :data:`HOLD_CODES`): retried with exponential backoff and full jitter
  (:mod:`consumers.retry`, from ``base_delay`` doubling to at most 2 s, ``max_attempts``
  calls); a failure that outlasts the retries raises :class:`WriteFailed`, so the caller
  does not checkpoint past effects that were not durably written (the shard is held).
* **permanent** -- any other 4xx, above all ``ValidationException`` ("Item size has
  exceeded the maximum allowed size", an invalid attribute value): retrying cannot fix it,
  so it is not retried. A BatchWriteItem answers it for the whole request when one item is
  bad, so :meth:`Dynamo.put_all` splits the chunk and puts its items one by one to find the
  bad ones, and returns them as :class:`Rejection` values (data, not an exception).
* **conflict** -- ``ConditionalCheckFailedException``: :meth:`Dynamo.put_if` reports it to
  its caller, which knows what the condition meant.

:meth:`Dynamo.batch_write` (kept for the stores that have no per-item answer) raises
:class:`WriteRejected`, a :class:`WriteFailed`, when an item is rejected permanently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from consumers.instrument.chaos import NO_CHAOS, Chaos
from consumers.progress import NO_PROGRESS, Progress
from consumers.retry import Backoff, retry_until_done_async

Item = dict[str, Any]


#: the longest backoff between two calls of a batch read or write, seconds
MAX_DELAY_S = 2.0

#: errors DynamoDB answers when a table or partition is over its capacity; retried here
#: (after botocore's own retries) like ``UnprocessedItems``
THROTTLED = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException",
                       "RequestLimitExceeded"})


#: 4xx codes about the setup (table, credentials), not about an item: retrying may fix them
#: once an operator has, and rejecting every item meanwhile would empty the stream into the
#: dead letters, so they are transient here (they hold the shard)
HOLD_CODES = frozenset({
    "ResourceNotFoundException", "AccessDeniedException", "UnrecognizedClientException",
    "InvalidSignatureException", "ExpiredTokenException", "MissingAuthenticationTokenException",
    "IncompleteSignatureException", "RequestExpired", "RequestTimeout",
    "RequestTimeoutException", "TransactionInProgressException", "TransactionConflictException",
    "LimitExceededException"})
#: the answer to a put whose condition did not hold
CONFLICT = "ConditionalCheckFailedException"

ErrorClass = Literal["transient", "permanent", "conflict"]


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def classify(exc: BaseException) -> ErrorClass:
    """The class of a DynamoDB error (see the module docstring).

    >>> err = lambda code, status: ClientError(
    ...     {"Error": {"Code": code, "Message": "m"},
    ...      "ResponseMetadata": {"HTTPStatusCode": status}}, "PutItem")
    >>> [classify(err(c, s)) for c, s in [("ThrottlingException", 400),
    ...  ("InternalServerError", 500), ("ValidationException", 400),
    ...  ("ConditionalCheckFailedException", 400), ("ResourceNotFoundException", 400)]]
    ['transient', 'transient', 'permanent', 'conflict', 'transient']
    """
    if not isinstance(exc, ClientError):
        return "transient"  # timeouts, broken connections (BotoCoreError), anything else
    code = error_code(exc)
    if code == CONFLICT:
        return "conflict"
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in THROTTLED or code in HOLD_CODES or status >= 500 or code in {
            "InternalServerError", "ServiceUnavailable", "InternalFailure"}:
        return "transient"
    return "permanent"


def _throttled(exc: ClientError) -> bool:
    return error_code(exc) in THROTTLED


class WriteFailed(RuntimeError):
    """Effects could not be written after every retry; do not checkpoint."""


class WriteRejected(WriteFailed):
    """:meth:`Dynamo.batch_write`: DynamoDB refused an item permanently (``rejections``)."""

    def __init__(self, table: str, rejections: Sequence[Rejection]) -> None:
        first = rejections[0]
        super().__init__(f"{len(rejections)} item(s) rejected by {table}: {first.reason}")
        self.rejections = list(rejections)


@dataclass(frozen=True)
class Rejection:
    """An item DynamoDB refused permanently: ``reason`` is ``<code>: <message>``."""

    item: Item
    code: str
    message: str

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"


def rejection(item: Item, exc: ClientError) -> Rejection:
    return Rejection(item, error_code(exc), str(exc.response.get("Error", {}).get("Message")
                                                 or exc))


PutAnswer = Literal["ok", "conflict"]


@dataclass(frozen=True)
class ConditionalPut:
    """One PutItem under a condition expression (``names``/``values``: its placeholders)."""

    item: Item
    condition: str
    names: dict[str, str] | None = None
    values: Item | None = None


def to_attr(value: Any) -> dict[str, Any]:
    """Plain JSON-like value -> DynamoDB AttributeValue."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, dict):
        return {"M": {k: to_attr(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_attr(v) for v in value]}
    raise TypeError(f"cannot store {type(value).__name__}")


def from_attr(av: dict[str, Any]) -> Any:
    (kind, v), = av.items()
    if kind == "N":
        return int(v) if v.lstrip("-").isdigit() else float(v)
    if kind == "M":
        return {k: from_attr(x) for k, x in v.items()}
    if kind == "L":
        return [from_attr(x) for x in v]
    if kind == "NULL":
        return None
    return v


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Dynamo:
    """Shared batch helpers over one aiobotocore client."""

    client: Any
    max_attempts: int = 8
    concurrency: int = 8
    base_delay: float = 0.05
    chaos: Chaos = NO_CHAOS
    #: throttling errors absorbed by the retries below
    throttled: int = 0
    #: other transient errors (5xx, timeouts, broken connections) absorbed by the retries
    transient: int = 0

    async def _unless_transient(self, call: Callable[..., Awaitable[Item]],
                                **kw: Any) -> Item | None:
        """``call(**kw)``, or None after a transient error (counted in :attr:`throttled` or
        :attr:`transient`); permanent errors and conflicts are raised."""
        try:
            return await call(**kw)
        except (ClientError, BotoCoreError) as exc:
            if classify(exc) != "transient":
                raise
            if isinstance(exc, ClientError) and _throttled(exc):
                self.throttled += 1
            else:
                self.transient += 1
            return None

    @property
    def backoff(self) -> Backoff:
        return Backoff(base=self.base_delay, cap=MAX_DELAY_S, attempts=self.max_attempts)

    async def _retried(self, what: str, call: Callable[..., Awaitable[Item]],
                       **kw: Any) -> Item:
        """One call retried on transient errors; :class:`WriteFailed` after the last attempt.
        Permanent errors and conflicts are raised at once (a ``ClientError``).

        The first call is made here, outside the retry machinery: it is one per state put
        (one per customer and batch), and building a tenacity retrier for each cost some
        6% of the local consumer's CPU (issue 17). Only after a transient error does the
        retrier take over, with that call counted as its first attempt: the calls, the
        delays between them and the error raised are the same as before."""
        first = await self._unless_transient(call, **kw)
        if first is not None:
            return first
        answers: list[Item] = []
        made_first = False

        async def step(left: bool) -> bool:
            nonlocal made_first
            if not made_first:  # the first attempt, made above, was transient
                made_first = True
                return left
            resp = await self._unless_transient(call, **kw)
            if resp is None:
                return left
            answers.append(resp)
            return False

        if await retry_until_done_async(self.backoff, step, True):
            raise WriteFailed(f"{what} still failing after {self.max_attempts} attempts")
        return answers[0]

    async def put_if(self, table: str, item: Item, condition: str,
                     names: dict[str, str] | None = None,
                     values: Item | None = None) -> PutAnswer | Rejection:
        """PutItem under ``condition``: "ok", "conflict" (the condition did not hold) or the
        :class:`Rejection` of a permanent error. Transient errors are retried;
        :class:`WriteFailed` when they outlast the retries. A put whose answer was lost and
        that is retried may answer "conflict" although it was written: the caller's
        reload then sees its own write."""
        kw: dict[str, Any] = {"TableName": table, "Item": item, "ConditionExpression": condition}
        if names:
            kw["ExpressionAttributeNames"] = names
        if values:
            kw["ExpressionAttributeValues"] = values
        try:
            await self._retried(f"PutItem on {table}", self.client.put_item, **kw)
        except ClientError as exc:
            kind = classify(exc)
            if kind == "conflict":
                return "conflict"
            if kind == "permanent":
                return rejection(item, exc)
            raise
        return "ok"

    async def put_each_if(self, table: str, puts: Sequence[ConditionalPut],
                          concurrency: int = 32) -> list[PutAnswer | Rejection]:
        """:meth:`put_if` for each put, at most ``concurrency`` at a time; the answers in
        order. :class:`WriteFailed` when one put's transient errors outlast its retries.
        The crash harness's ``mid_batch_write`` point is passed after every 25th put."""
        sem = asyncio.Semaphore(concurrency)
        done = 0

        async def one(p: ConditionalPut) -> PutAnswer | Rejection:
            nonlocal done
            async with sem:
                answer = await self.put_if(table, p.item, p.condition, p.names, p.values)
            done += 1
            if done % 25 == 0:  # the crash harness's point, once per 25 puts as per chunk
                self.chaos.point("mid_batch_write")
            return answer

        return list(await asyncio.gather(*(one(p) for p in puts)))

    async def put_all(self, table: str, items: Sequence[Item]) -> list[Rejection]:
        """BatchWriteItem the items (chunks of 25); the ones DynamoDB refused permanently,
        each with its reason (a chunk answered with a permanent error is put item by item to
        find them). :class:`WriteFailed` when transient errors outlast the retries."""
        return await self._batch(table, [{"PutRequest": {"Item": i}} for i in items])

    async def batch_write(self, table: str, items: Sequence[Item]) -> None:
        """:meth:`put_all` for callers without a per-item answer: :class:`WriteRejected`
        when an item was refused."""
        rejected = await self.put_all(table, items)
        if rejected:
            raise WriteRejected(table, rejected)

    async def batch_delete(self, table: str, keys: Sequence[Item]) -> None:
        rejected = await self._batch(table, [{"DeleteRequest": {"Key": k}} for k in keys])
        if rejected:
            raise WriteRejected(table, rejected)

    async def _singly(self, table: str, writes: Sequence[Item]) -> list[Rejection]:
        """Each PutRequest/DeleteRequest as its own PutItem/DeleteItem: the rejected ones."""
        out: list[Rejection] = []
        for w in writes:
            put = w.get("PutRequest")
            target = put["Item"] if put else w["DeleteRequest"]["Key"]
            try:
                if put:
                    await self._retried(f"PutItem on {table}", self.client.put_item,
                                        TableName=table, Item=target)
                else:
                    await self._retried(f"DeleteItem on {table}", self.client.delete_item,
                                        TableName=table, Key=target)
            except ClientError as exc:
                if classify(exc) != "permanent":
                    raise
                out.append(rejection(target, exc))
        return out

    async def _batch(self, table: str, writes: Sequence[Item]) -> list[Rejection]:
        sem = asyncio.Semaphore(self.concurrency)

        async def write(requests: dict[str, Any]) -> dict[str, Any]:
            resp = await self._unless_transient(self.client.batch_write_item,
                                                RequestItems=requests)
            if resp is None:
                return requests  # transient: the whole chunk is still to write
            self.chaos.point("mid_batch_write")
            return resp.get("UnprocessedItems") or {}

        async def one(chunk: Sequence[Item]) -> list[Rejection]:
            async with sem:
                try:
                    requests = await retry_until_done_async(self.backoff, write,
                                                            {table: list(chunk)})
                except ClientError as exc:
                    if classify(exc) != "permanent":
                        raise
                    return await self._singly(table, chunk)  # find the bad item(s)
            if not requests:
                return []
            left = sum(len(v) for v in requests.values())
            raise WriteFailed(f"{left} item(s) still unprocessed in {table} after "
                              f"{self.max_attempts} attempts")

        parts = await asyncio.gather(*(one(c) for c in _chunks(writes, 25)))
        return [r for p in parts for r in p]

    async def batch_get(self, table: str, key: str, ids: Iterable[str], **read: Any
                        ) -> list[Item]:
        """The items of ``ids`` that exist (strongly consistent; ``read``: more of the
        request's per-table arguments, such as a ``ProjectionExpression``)."""
        keys = [{key: {"S": i}} for i in sorted(ids)]
        out: list[Item] = []
        sem = asyncio.Semaphore(self.concurrency)

        async def read_some(request: dict[str, Any]) -> dict[str, Any]:
            resp = await self._unless_transient(self.client.batch_get_item,
                                                RequestItems=request)
            if resp is None:
                return request  # throttled: every key is still to read
            out.extend(resp["Responses"].get(table, []))
            return resp.get("UnprocessedKeys") or {}

        async def one(chunk: Sequence[Item]) -> None:
            async with sem:
                left = await retry_until_done_async(
                    self.backoff, read_some,
                    {table: {"Keys": list(chunk), "ConsistentRead": True, **read}})
            if not left:
                return
            raise WriteFailed(f"could not read {table} after {self.max_attempts} attempts")

        await asyncio.gather(*(one(c) for c in _chunks(keys, 100)))
        return out

    async def query(self, table: str, **kw: Any) -> list[Item]:
        """Every item a Query (``kw``: its arguments but the table) finds, page by page."""
        items: list[Item] = []
        args: dict[str, Any] = {"TableName": table, **kw}
        while True:
            resp = await self.client.query(**args)
            items.extend(resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return items
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def scan(self, table: str, segments: int = 4, progress: Progress = NO_PROGRESS,
                   **kw: Any) -> list[Item]:
        """Every item (``kw``: more Scan arguments), read in ``segments`` parallel parts;
        ``progress`` advances by the items of each page read."""
        async def part(seg: int) -> list[Item]:
            items: list[Item] = []
            args: dict[str, Any] = {"TableName": table, "Segment": seg,
                                    "TotalSegments": segments, **kw}
            while True:
                resp = await self.client.scan(**args)
                page = resp.get("Items", [])
                items.extend(page)
                progress.advance(len(page))
                if "LastEvaluatedKey" not in resp:
                    return items
                args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

        parts = await asyncio.gather(*(part(s) for s in range(segments)))
        return [i for p in parts for i in p]
