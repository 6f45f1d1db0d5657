"""Enhanced fan-out (EFO): the local poller reading shards by SubscribeToShard.

The same poller (shard discovery, parents before children, the one apply-then-checkpoint
path, holding a shard whose effects cannot be written, the stop signal); only the read
differs. At start the stream consumer is registered, or the existing one reused, and
awaited until ACTIVE. Each shard is then subscribed from our own checkpoint
(AFTER_SEQUENCE_NUMBER, else TRIM_HORIZON); every ``SubscribeToShardEvent`` goes through
:meth:`Poller.apply_batch` in chunks of at most ``limit`` records, and only after that is
its ``ContinuationSequenceNumber`` where a renewed subscription starts. AWS ends a
subscription after 5 minutes: we renew it after ``renew_after_s`` (and at once when the
service ends it first). A subscription refused with ResourceInUseException (AWS: within
5 s of the previous one; kinesis-mock: until it notices the previous connection is gone,
about 3 s) is retried with backoff (:mod:`consumers.retry`: equal jitter, half to all of
1 s, doubling per refusal in a row, at most 5 s).

A shard is finished when an event carries ``ChildShards`` or no continuation (AWS). The
kinesis-mock release we test on (``kinesis-local`` 0.6.2) never sends either: its events
always have ``ChildShards: null`` and a continuation. So when a shard that ListShards
reports closed (or, with ``until_idle``, any shard about to go idle) is caught up, one
GetRecords after the checkpoint settles it: no records and no ``NextShardIterator`` means
ended, exactly the polling poller's rule. Against AWS this is a redundant early check.

kinesis-mock also omits the ``initial-response`` event that opens an AWS event stream:
its first message is a ``SubscribeToShardEvent`` (or an exception), sent about a second
after the request over HTTP/1.1 chunked transfer. botocore's parser takes the first
message as the initial response and, as it is not one, raises ``ResponseParserError:
First event was not of type initial-response`` (and that first event would be consumed
and lost). :func:`tolerate_missing_initial_response` (a ``before-parse`` hook on this
one operation) puts an empty initial response in front when, and only when, the first
complete message is something else; a stream that starts with one (AWS) passes through
byte for byte.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import struct
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from botocore.eventstream import EventStreamHeaderParser
from botocore.exceptions import BotoCoreError, ClientError

from consumers.retry import Backoff, Jitter, pause
from consumers.sources.hold import log_due
from consumers.sources.poller import Poller, Progress, Shard

#: subscription errors worth another try: a subscription still held (ours, just closed),
#: the per-shard subscribe rate, and transient service faults
RETRYABLE = frozenset({"ResourceInUseException", "LimitExceededException",
                       "InternalFailureException", "KMSThrottlingException"})
#: a subscription's connection failing (a parse error is not among them: it would recur)
_BROKEN = (aiohttp.ClientError, TimeoutError, BotoCoreError)
#: re-subscribing after a refusal: half to all of 1 s, doubling per refusal in a row, at most
#: 5 s
RESUBSCRIBE_BACKOFF = Backoff(base=0.5, cap=5.0, jitter=Jitter.EQUAL)
#: polling the stream consumer until ACTIVE: 0.1 s, doubling, at most 2 s
CONSUMER_POLL = Backoff(base=0.1, cap=2.0, jitter=Jitter.NONE)


def _message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message (string headers only), with both CRCs."""
    head = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        head += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    prelude = struct.pack(">II", 16 + len(head) + len(payload), len(head))
    body = prelude + struct.pack(">I", binascii.crc32(prelude)) + head + payload
    return body + struct.pack(">I", binascii.crc32(body))


INITIAL_RESPONSE = _message({":message-type": "event", ":event-type": "initial-response",
                             ":content-type": "application/json"}, b"{}")


class _WithInitialResponse:
    """An aiohttp event-stream body that yields an empty initial response first if the
    server's first complete message is not one; everything else passes through."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    @property
    def content(self) -> _WithInitialResponse:  # EventStream reads raw.content.iter_chunks()
        return self

    async def iter_chunks(self) -> AsyncIterator[tuple[bytes, bool]]:
        chunks = self._raw.content.iter_chunks()
        head = b""
        async for chunk, _end in chunks:
            head += chunk
            if len(head) >= 4 and len(head) >= struct.unpack(">I", head[:4])[0]:
                break
        else:  # ended before one whole message: leave it to botocore
            if head:
                yield head, True
            return
        headers_len = struct.unpack(">I", head[4:8])[0]  # after the total length
        headers = EventStreamHeaderParser().parse(head[12:12 + headers_len])  # after prelude CRC
        if headers.get(":event-type") != "initial-response":
            yield INITIAL_RESPONSE, True
        yield head, True
        async for item in chunks:
            yield item

    def close(self) -> None:
        self._raw.close()


def tolerate_missing_initial_response(response_dict: dict[str, Any], **_: Any) -> None:
    """``before-parse.kinesis.SubscribeToShard`` hook (see the module docstring)."""
    body = response_dict.get("body")
    if response_dict.get("status_code") == 200 and hasattr(getattr(body, "content", None),
                                                           "iter_chunks"):
        response_dict["body"] = _WithInitialResponse(body)


@dataclass
class _ShardRead:
    """A shard being read by subscriptions: its progress, where the next subscription
    starts (AFTER_SEQUENCE_NUMBER; None: TRIM_HORIZON), caught-up events in a row and
    refused subscriptions in a row."""

    p: Progress
    position: str | None
    idle: int = 0
    attempt: int = 0


async def _next(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


class FanoutPoller(Poller):
    """The poller, reading by enhanced fan-out; see the module docstring."""

    def __init__(self, kinesis: Any, stream_name: str, *args: Any, consumer_name: str,
                 renew_after_s: float = 270.0, consumer_timeout_s: float = 120.0,
                 **kwargs: Any) -> None:
        super().__init__(kinesis, stream_name, *args, **kwargs)
        self.consumer_name = consumer_name
        self.renew_after_s = renew_after_s
        self.consumer_timeout_s = consumer_timeout_s
        self.consumer_arn: str | None = None
        self.closed_shards: set[str] = set()
        self.subscriptions = 0  # SubscribeToShard calls answered with a stream
        self.renewals = 0  # subscriptions we ended after renew_after_s
        self.service_ended = 0  # subscriptions the service ended (AWS: at 5 minutes)
        self.refused = 0  # subscriptions refused or broken, then retried
        self.ended_by_event = 0  # shards ended by ChildShards / a null continuation
        self.ended_by_check = 0  # shards ended by the GetRecords check
        kinesis.meta.events.register("before-parse.kinesis.SubscribeToShard",
                                     tolerate_missing_initial_response,
                                     unique_id="caa-efo-initial-response")

    async def ensure_consumer(self) -> str:
        """Register the stream consumer, or reuse the one of that name; wait until ACTIVE."""
        k = self.kinesis
        summary = await k.describe_stream_summary(StreamName=self.stream_name)
        stream_arn = summary["StreamDescriptionSummary"]["StreamARN"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.consumer_timeout_s
        polls = 0
        while True:
            try:
                desc = (await k.describe_stream_consumer(
                    StreamARN=stream_arn, ConsumerName=self.consumer_name))["ConsumerDescription"]
                status = desc["ConsumerStatus"]
            except k.exceptions.ResourceNotFoundException:
                status = "absent"
                with contextlib.suppress(k.exceptions.ResourceInUseException):  # a race: reuse
                    await k.register_stream_consumer(StreamARN=stream_arn,
                                                     ConsumerName=self.consumer_name)
            if status == "ACTIVE":
                self.consumer_arn = str(desc["ConsumerARN"])
                return self.consumer_arn
            if loop.time() > deadline:
                raise TimeoutError(f"stream consumer {self.consumer_name} still {status} "
                                   f"after {self.consumer_timeout_s} s")
            await CONSUMER_POLL.sleep(polls)  # CREATING, or DELETING before we register again
            polls += 1

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None) -> None:
        await self.ensure_consumer()
        await super().run(until_idle=until_idle, stop=stop)

    async def list_shards(self) -> list[Shard]:
        shards = await super().list_shards()
        self.closed_shards = {s.shard_id for s in shards if s.closed}
        return shards

    async def _subscribe(self, shard_id: str, position: str | None) -> Any:
        start = ({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": position} if position
                 else {"Type": "TRIM_HORIZON"})
        resp = await self.kinesis.subscribe_to_shard(
            ConsumerARN=self.consumer_arn, ShardId=shard_id, StartingPosition=start)
        return resp["EventStream"]

    async def _drained(self, p: Progress) -> bool:
        """One GetRecords after the checkpoint: True when the shard is closed and read."""
        try:
            resp = await self.kinesis.get_records(
                ShardIterator=await self._iterator(p.shard_id, p.after), Limit=1)
        except ClientError:  # throttled or expired: ask again on a later event
            return False
        return not resp.get("Records") and not resp.get("NextShardIterator")

    async def _refused(self, st: _ShardRead, exc: Exception, stop: asyncio.Event) -> None:
        """A subscription refused or broken: re-raise what retrying cannot fix; else log
        (first, then every tenth time) and back off."""
        if isinstance(exc, ClientError) and \
                exc.response.get("Error", {}).get("Code") not in RETRYABLE:
            raise exc
        self.refused += 1
        st.attempt += 1
        delay = RESUBSCRIBE_BACKOFF.delay(st.attempt)
        if log_due(st.attempt):
            print(f"shard {st.p.shard_id}: subscription refused or broken ({st.attempt} "
                  f"time(s)): {exc}; retrying in {delay:.1f} s", file=sys.stderr, flush=True)
        await pause(delay, stop)

    async def _event(self, events: AsyncIterator[dict[str, Any]], timeout: float,
                     stop: asyncio.Event) -> tuple[str, dict[str, Any] | None]:
        """The next event: ("event", e), ("ended", None) when the service ended the
        subscription, ("renew", None) after ``timeout`` or ("stop", None)."""
        nxt = asyncio.ensure_future(_next(events))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({nxt, stopping}, timeout=max(0.0, timeout),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if nxt.done():
            event = nxt.result()
            return ("ended", None) if event is None else ("event", event)
        nxt.cancel()
        with contextlib.suppress(asyncio.CancelledError, *_BROKEN):
            await nxt
        return ("stop", None) if stop.is_set() else ("renew", None)

    async def _on_event(self, st: _ShardRead, e: dict[str, Any], until_idle: bool,
                        stop: asyncio.Event) -> str | None:
        """Apply one SubscribeToShardEvent; "ended", "idle", "held" (re-subscribe after
        the checkpoint) or None (read on)."""
        p = st.p
        raw: list[dict[str, Any]] = e.get("Records", [])
        closed = bool(e.get("ChildShards")) or not e.get("ContinuationSequenceNumber")
        chunks = [raw[i:i + self.limit] for i in range(0, len(raw), self.limit)] or [[]]
        for i, chunk in enumerate(chunks):
            if not await self.apply_batch(p, chunk, closed and i == len(chunks) - 1, stop):
                st.position = p.after
                return "held"
        if closed:
            self.ended_by_event += 1
            return "ended"
        st.position = e["ContinuationSequenceNumber"]  # every record before it is applied
        if raw:
            st.idle = 0
            return None
        if e.get("MillisBehindLatest", 0) == 0:
            st.idle += 1
        going_idle = until_idle and st.idle >= self.idle_polls
        if (going_idle or (st.idle and p.shard_id in self.closed_shards)) and \
                await self._drained(p):
            await self.apply_batch(p, [], True, stop)
            self.ended_by_check += 1
            return "ended"
        return "idle" if going_idle else None

    async def _read(self, st: _ShardRead, stream: Any, until_idle: bool,
                    stop: asyncio.Event) -> str | None:
        """Read one subscription until it is due for renewal, ends, or the shard is done;
        returns "ended", "idle", "stopped" or None (subscribe again from ``st.position``)."""
        events = stream.__aiter__()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.renew_after_s
        while True:
            kind, event = await self._event(events, deadline - loop.time(), stop)
            if kind == "stop":
                return "stopped"
            if kind == "renew":
                self.renewals += 1
                return None
            if event is None:
                self.service_ended += 1
                return None
            st.attempt = 0
            outcome = await self._on_event(st, event["SubscribeToShardEvent"], until_idle, stop)
            if outcome == "held":
                return None
            if outcome:
                return outcome

    async def consume_shard(
        self, shard_id: str, after: str | None, until_idle: bool, stop: asyncio.Event
    ) -> str:
        """Consume one shard by subscriptions; returns "ended", "idle" or "stopped"."""
        st = _ShardRead(Progress(shard_id, after), after)
        while not stop.is_set():
            try:
                stream = await self._subscribe(shard_id, st.position)
            except (ClientError, *_BROKEN) as exc:
                await self._refused(st, exc, stop)
                continue
            self.subscriptions += 1
            try:
                outcome = await self._read(st, stream, until_idle, stop)
            except (ClientError, *_BROKEN) as exc:  # e.g. an exception event in the stream
                await self._refused(st, exc, stop)
                continue
            finally:
                stream.close()
            if outcome:
                return outcome
        return "stopped"
