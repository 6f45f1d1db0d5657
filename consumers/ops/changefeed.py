"""Tail the prediction change feed: the predictions table's DynamoDB stream.

:class:`ChangeFeed` reads every shard of the stream with DescribeStream, GetShardIterator
and GetRecords (an aiobotocore ``dynamodbstreams`` client), parents before children: a
closed shard's children start only once it is read to its end, so one customer's changes
come in the order they were written. :func:`decode_record` turns each record into a
:class:`~models.change.PredictionChange`; a record that is not a prediction change
becomes a :class:`FeedProblem`, as does a stretch of records lost to the stream's 24-hour
retention (failures are data: the feed goes on). ``changes(notable=True)`` keeps only the
updates worth acting on: a segment or churn band change, or a CLV move beyond the threshold
documented in :mod:`models.change`.

>>> from consumers.stores.predictions import prediction_key
>>> rec = {"eventID": "ev1", "eventName": "REMOVE", "dynamodb": {
...     "Keys": prediction_key("c1"), "SequenceNumber": "42",
...     "ApproximateCreationDateTime": datetime(2024, 6, 1, tzinfo=UTC),
...     "OldImage": prediction_key("c1")}}
>>> decode_record(rec).reason.split(":")[0]
'not a prediction change'
>>> customer_of(rec)
'c1'
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError

from consumers.stores.predictions import customer_of_key, prediction_from_item
from models.change import PredictionChange, change_of

StartAt = Literal["trim_horizon", "latest"]


@dataclass(frozen=True, slots=True)
class FeedProblem:
    """A record the feed could not turn into a change, or records it could not read."""

    sequence: str
    customer_id: str | None
    reason: str


FeedItem = PredictionChange | FeedProblem


def customer_of(record: Mapping[str, Any]) -> str | None:
    keys = record.get("dynamodb", {}).get("Keys", {})
    return customer_of_key(keys) if isinstance(keys, Mapping) else None


def decode_record(record: Mapping[str, Any]) -> FeedItem:
    """One DynamoDB Streams record, as the ``dynamodbstreams`` client returns it."""
    d = record.get("dynamodb", {})
    seq, cid = str(d.get("SequenceNumber", "")), customer_of(record)
    try:
        if cid is None:
            raise KeyError("no customer_id key")
        at = d.get("ApproximateCreationDateTime")
        if not isinstance(at, datetime):
            at = datetime.fromtimestamp(float(at), UTC) if at is not None else datetime.now(UTC)
        old, new = d.get("OldImage"), d.get("NewImage")
        return change_of(
            cid, prediction_from_item(old) if old else None,
            prediction_from_item(new) if new else None,
            sequence=seq, at=at, event_id=str(record.get("eventID", "")))
    except (KeyError, ValueError, TypeError) as exc:  # pydantic's ValidationError included
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return FeedProblem(seq, cid, f"not a prediction change: {type(exc).__name__}: {why}"[:300])


async def stream_arn(dynamodb: Any, table: str) -> str | None:
    """The table's current stream, or None when it has none (run ``caa setup``)."""
    resp = await dynamodb.describe_table(TableName=table)
    arn = resp["Table"].get("LatestStreamArn")
    enabled = resp["Table"].get("StreamSpecification", {}).get("StreamEnabled")
    return str(arn) if arn and enabled else None


class ChangeFeed:
    """The records of one DynamoDB stream, across its shards and their children."""

    def __init__(self, client: Any, arn: str, *, start: StartAt = "trim_horizon",
                 limit: int = 1000, poll_interval_s: float = 0.25, idle_polls: int = 3) -> None:
        self.client = client
        self.arn = arn
        self.start = start
        self.limit = limit
        self.poll_interval_s = poll_interval_s
        self.idle_polls = idle_polls
        self._shards: dict[str, dict[str, Any]] = {}
        self._iterators: dict[str, str] = {}  # shard -> next iterator, shards being read
        self._last: dict[str, str] = {}  # shard -> last sequence number read
        self._done: set[str] = set()
        self._opened = False
        self.problems: list[FeedProblem] = []  # gaps found while reading (also yielded)

    async def _describe(self) -> None:
        args: dict[str, Any] = {"StreamArn": self.arn}
        while True:
            desc = (await self.client.describe_stream(**args))["StreamDescription"]
            for shard in desc.get("Shards", []):
                self._shards[shard["ShardId"]] = shard
            last = desc.get("LastEvaluatedShardId")
            if not last:
                return
            args["ExclusiveStartShardId"] = last

    async def _iterator(self, shard_id: str, kind: str, after: str | None = None) -> str:
        kw: dict[str, Any] = {"StreamArn": self.arn, "ShardId": shard_id,
                              "ShardIteratorType": kind}
        if after is not None:
            kw["SequenceNumber"] = after
        return str((await self.client.get_shard_iterator(**kw))["ShardIterator"])

    async def _start_ready(self) -> None:
        """Start, from their beginning, the shards whose parent is read to its end (or long
        gone): at the start with ``trim_horizon``, and every child born while reading."""
        for sid, shard in sorted(self._shards.items()):
            parent = shard.get("ParentShardId")
            if (sid in self._iterators or sid in self._done
                    or (parent in self._shards and parent not in self._done)):
                continue
            self._iterators[sid] = await self._iterator(sid, "TRIM_HORIZON")

    async def open(self) -> None:
        """Find the shards and take the starting iterators (``latest``: from now on, on the
        open shards; the closed ones are history)."""
        await self._describe()
        if self.start == "latest":
            for sid, shard in sorted(self._shards.items()):
                if "EndingSequenceNumber" in shard.get("SequenceNumberRange", {}):
                    self._done.add(sid)
                else:
                    self._iterators[sid] = await self._iterator(sid, "LATEST")
        else:
            await self._start_ready()
        self._opened = True

    async def _read(self, sid: str) -> list[dict[str, Any]]:
        """One GetRecords on a shard; a closed shard read to its end is finished."""
        try:
            resp = await self.client.get_records(ShardIterator=self._iterators[sid],
                                                 Limit=self.limit)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            last = self._last.get(sid)
            if code == "ExpiredIteratorException":
                self._iterators[sid] = await (
                    self._iterator(sid, "AFTER_SEQUENCE_NUMBER", last) if last
                    else self._iterator(sid, "TRIM_HORIZON"))
                return []
            if code == "TrimmedDataAccessException":
                self.problems.append(FeedProblem(last or "", None, f"records of {sid} after "
                                                 f"{last or 'its start'} expired unread"))
                self._iterators[sid] = await self._iterator(sid, "TRIM_HORIZON")
                return []
            if code == "ResourceNotFoundException":  # the shard itself expired
                self.problems.append(FeedProblem(last or "", None, f"shard {sid} expired"))
                del self._iterators[sid]
                self._done.add(sid)
                return []
            raise
        records: list[dict[str, Any]] = resp.get("Records", [])
        if records:
            self._last[sid] = str(records[-1]["dynamodb"]["SequenceNumber"])
        nxt = resp.get("NextShardIterator")
        if nxt:
            self._iterators[sid] = str(nxt)
        else:
            del self._iterators[sid]
            self._done.add(sid)
            await self._describe()  # its children, if it was split
            await self._start_ready()
        return records

    async def records(self, *, follow: bool = False, stop: asyncio.Event | None = None,
                      ) -> AsyncIterator[dict[str, Any] | FeedProblem]:
        """Raw records (and gaps) until caught up for ``idle_polls`` polls in a row, or, with
        ``follow``, until ``stop`` is set."""
        if not self._opened:
            await self.open()
        stop = stop or asyncio.Event()
        idle = 0
        while not stop.is_set() and (self._iterators or follow):
            got = 0
            for sid in sorted(self._iterators):
                for rec in await self._read(sid):
                    got += 1
                    yield rec
                while self.problems:
                    yield self.problems.pop(0)
            idle = 0 if got else idle + 1
            if not follow and idle >= self.idle_polls:
                return
            if not got:
                if not self._iterators:  # every shard ended: a new stream label is needed
                    await self._describe()
                    await self._start_ready()
                await self._wait(stop)

    async def _wait(self, stop: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([waiter], timeout=self.poll_interval_s)
        finally:
            waiter.cancel()

    async def changes(self, *, follow: bool = False, stop: asyncio.Event | None = None,
                      customer_id: str | None = None, notable: bool = False,
                      ) -> AsyncIterator[FeedItem]:
        """:class:`PredictionChange` events (and problems), optionally of one customer;
        ``notable``: only the changes with a non-empty ``notable`` list."""
        async for rec in self.records(follow=follow, stop=stop):
            if isinstance(rec, FeedProblem):
                yield rec
            elif customer_id is None or customer_of(rec) == customer_id:
                item = decode_record(rec)
                if not notable or isinstance(item, FeedProblem) or item.notable:
                    yield item
