"""What a record must pass to become an event: every check the consumer makes, in one place.

The consumer (``consumers.core.decode_batch``) and the dead-letter redrive
(``consumers.ops.redrive``) call :func:`admit`, so a redriven letter is judged exactly
as the consumer will judge it. In order:

1. the decoder (``models.events.decode_event``): size, UTF-8, JSON, version, schema;
2. the partition key must be the event's customer id (per-customer order);
3. the event time must be trustworthy, since the latest one becomes everybody's "now"
   (the watermark the forecasts are made as of):

   - ``time_out_of_range``: ``occurred_at`` not representable in UTC (e.g.
     ``0001-01-01T00:00:00+14:00`` is UTC year 0) or before the earliest event time
     (settings: ``CAA_EARLIEST_EVENT_TIME``, default :data:`EARLIEST_EVENT_TS`,
     1990-01-01T00:00:00Z: a producer whose clock was reset dates its events at the epoch,
     1970-01-01, or just after it, which would make every such customer decades old);
     the upper end of the range is the next rule;
   - ``future_event``: ``occurred_at`` more than ``future_tolerance_s`` (settings:
     ``CAA_FUTURE_TOLERANCE_S``, default 300 s) after the record's arrival time in
     Kinesis, or after the batch's clock when the arrival time is unknown.

   Late events are fine: a backfill of 1997 data arriving today is accepted.

>>> from datetime import UTC, datetime
>>> ok = (b'{"event_id":"e1","order_id":"o1","customer_id":"c1","occurred_at":'
...       b'"2100-01-01T00:00:00Z","currency":"EUR","items":[{"product_id":"p",'
...       b'"category":"k","quantity":1,"unit_price":"2.50"}],"total":"2.50"}')
>>> admit(ok, "c1", arrival_ts=None,
...       now_ts=datetime(2024, 1, 1, tzinfo=UTC).timestamp())  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
models.events.EventRejected: future_event: occurred_at 2100-01-01T00:00:00+00:00 is ... s after ...
>>> admit(ok.replace(b"2100-01-01T00:00:00Z", b"0001-01-01T00:00:00+14:00"), "c1",
...       arrival_ts=None, now_ts=0.0)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
models.events.EventRejected: time_out_of_range: occurred_at 0001-01-01T00:00:00+14:00 is not ...
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from models.events import MAX_EVENT_BYTES, EventRejected, StreamEvent, decode_event

#: Default for ``CAA_EARLIEST_EVENT_TIME`` (epoch seconds): 1990-01-01T00:00:00Z, before any
#: online order; events dated earlier are ``time_out_of_range`` (an unset or reset clock)
EARLIEST_EVENT_TS = 631_152_000
#: Default for ``CAA_FUTURE_TOLERANCE_S``: how far (seconds) an event may be dated after
#: its arrival in the stream (clock skew between the producer and Kinesis).
FUTURE_TOLERANCE_S = 300.0


@dataclass(frozen=True, slots=True)
class TimeRule:
    """When an event may be dated: from ``earliest_ts`` (epoch seconds) to
    ``future_tolerance_s`` seconds after its arrival (``CAA_EARLIEST_EVENT_TIME``,
    ``CAA_FUTURE_TOLERANCE_S``), for callers that pass both along (replay)."""

    earliest_ts: float = EARLIEST_EVENT_TS
    future_tolerance_s: float = FUTURE_TOLERANCE_S


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def event_ts(event: StreamEvent, earliest_ts: float = EARLIEST_EVENT_TS) -> int:
    """``occurred_at`` in epoch seconds, or :class:`EventRejected` (``time_out_of_range``:
    not representable, or before ``earliest_ts``)."""
    try:
        ts = event.occurred_at.timestamp()
    except (ValueError, OverflowError, OSError):
        ts = None
    if ts is None or ts < earliest_ts:
        raise EventRejected(
            "time_out_of_range",
            f"occurred_at {event.occurred_at.isoformat()} is not between "
            f"{_iso(earliest_ts)} (CAA_EARLIEST_EVENT_TIME) and the record's arrival time "
            "(in UTC): a producer clock that was never set dates events at the epoch")
    return int(ts)


def check_time(event: StreamEvent, arrival_ts: float, future_tolerance_s: float,
               earliest_ts: float = EARLIEST_EVENT_TS) -> None:
    """Raise :class:`EventRejected` unless the event time is in range (from ``earliest_ts``)
    and not ahead of ``arrival_ts`` by more than the tolerance."""
    ts = event_ts(event, earliest_ts)
    if ts > arrival_ts + future_tolerance_s:
        raise EventRejected(
            "future_event",
            f"occurred_at {event.occurred_at.isoformat()} is {ts - int(arrival_ts)} s after "
            f"the record arrived ({_iso(arrival_ts)}); at most {future_tolerance_s:g} s "
            f"are tolerated")


def admit(data: bytes, partition_key: str, *, arrival_ts: float | None, now_ts: float,
          max_bytes: int = MAX_EVENT_BYTES,
          future_tolerance_s: float = FUTURE_TOLERANCE_S,
          earliest_ts: float = EARLIEST_EVENT_TS) -> StreamEvent:
    """The event a record carries, or :class:`EventRejected` with the first check it fails.

    ``arrival_ts`` is the record's arrival in the stream (epoch seconds; None when
    unknown, then ``now_ts`` stands in). No record can make it raise anything else: an
    unexpected error of the decoder on one record is that record's ``decoder_error``."""
    try:
        event = decode_event(data, max_bytes)
    except EventRejected:
        raise
    except Exception as exc:  # one bad record must never stop its shard
        raise EventRejected("decoder_error",
                            f"{type(exc).__name__} while decoding: {exc}"[:500]) from exc
    if partition_key and partition_key != event.customer_id:
        raise EventRejected(
            "partition_key",
            f"{partition_key!r} is not the event's customer_id {event.customer_id!r} "
            f"(per-customer order would not hold)")
    check_time(event, now_ts if arrival_ts is None else arrival_ts, future_tolerance_s,
               earliest_ts)
    return event
