"""One DynamoDB helper for every table: batch reads and writes with retries, the
attribute codec.

All take an aiobotocore DynamoDB client. Batch reads and writes retry
``UnprocessedItems``/``UnprocessedKeys`` and throttling errors
with exponential backoff and full jitter (:mod:`consumers.retry`, from ``base_delay``
doubling to at most 2 s, ``max_attempts`` calls); a failure that outlasts the retries raises
:class:`WriteFailed`, so the caller does not checkpoint past effects that were
not durably written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

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


def _throttled(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in THROTTLED


class WriteFailed(RuntimeError):
    """Effects could not be written after every retry; do not checkpoint."""


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

    async def _unless_throttled(self, call: Callable[..., Awaitable[Item]],
                                **kw: Any) -> Item | None:
        """``call(**kw)``, or None when DynamoDB answered with a throttling error."""
        try:
            return await call(**kw)
        except ClientError as exc:
            if not _throttled(exc):
                raise
            self.throttled += 1
            return None

    @property
    def backoff(self) -> Backoff:
        return Backoff(base=self.base_delay, cap=MAX_DELAY_S, attempts=self.max_attempts)

    async def batch_write(self, table: str, items: Sequence[Item]) -> None:
        await self._batch(table, [{"PutRequest": {"Item": i}} for i in items])

    async def batch_delete(self, table: str, keys: Sequence[Item]) -> None:
        await self._batch(table, [{"DeleteRequest": {"Key": k}} for k in keys])

    async def _batch(self, table: str, writes: Sequence[Item]) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def write(requests: dict[str, Any]) -> dict[str, Any]:
            resp = await self._unless_throttled(self.client.batch_write_item,
                                                RequestItems=requests)
            if resp is None:
                return requests  # throttled: the whole chunk is still to write
            self.chaos.point("mid_batch_write")
            return resp.get("UnprocessedItems") or {}

        async def one(chunk: Sequence[Item]) -> None:
            async with sem:
                requests = await retry_until_done_async(self.backoff, write,
                                                        {table: list(chunk)})
            if not requests:
                return
            left = sum(len(v) for v in requests.values())
            raise WriteFailed(f"{left} item(s) still unprocessed in {table} after "
                              f"{self.max_attempts} attempts")

        await asyncio.gather(*(one(c) for c in _chunks(writes, 25)))

    async def batch_get(self, table: str, key: str, ids: Iterable[str]) -> list[Item]:
        keys = [{key: {"S": i}} for i in sorted(ids)]
        out: list[Item] = []
        sem = asyncio.Semaphore(self.concurrency)

        async def read(request: dict[str, Any]) -> dict[str, Any]:
            resp = await self._unless_throttled(self.client.batch_get_item,
                                                RequestItems=request)
            if resp is None:
                return request  # throttled: every key is still to read
            out.extend(resp["Responses"].get(table, []))
            return resp.get("UnprocessedKeys") or {}

        async def one(chunk: Sequence[Item]) -> None:
            async with sem:
                left = await retry_until_done_async(
                    self.backoff, read, {table: {"Keys": list(chunk), "ConsistentRead": True}})
            if not left:
                return
            raise WriteFailed(f"could not read {table} after {self.max_attempts} attempts")

        await asyncio.gather(*(one(c) for c in _chunks(keys, 100)))
        return out

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
