"""Dead-letter redrive: send poison records back through the stream once they are fixed.

The consumer dead-letters what it cannot decode (``models.events.decode_event``)
with the raw payload, its stream position and the reason. After a fix (a reader
that knows a new schema version, a raised ``CAA_MAX_EVENT_BYTES``), ``caa dlq
redrive`` re-checks every open dead letter with every check the consumer makes
(``consumers.admission.admit``: the decoder, partition key = customer id, and the event
time against the letter's stored arrival time, or now when the letter has none):

- one that now decodes is put back on the stream under its original partition
  key, so it reaches its customer's single writer like any other event, and is
  marked ``redriven`` with the position it was re-sent to;
- one still rejected stays ``open``, with the reason of this check;
- one the customer's state refused (``beyond_horizon``, ``event_id_reused``,
  ``currency_mismatch``: it decodes, but the state would refuse it again) is not put back:
  it stays ``open``, counted in ``kept``;
- one of another Kinesis stream that exists (a dead-letters table shared by several) is
  left alone, counted in ``other_streams``: a redrive configured for that stream puts it
  back there. A letter of no stream that exists (a ``caa replay`` straight from a file,
  named ``replay`` or by its source; a stream deleted since) is this stream's to redrive.

Counting once does not depend on this module: a redrive interrupted between the
put and the mark re-sends the record next time, and the consumer's per-customer
event-id digests apply it once.

>>> r = RedriveReport(checked=3, redriven=1, still_rejected={"not_json": 2})
>>> r.as_dict()["still_rejected"]
{'not_json': 2}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError, ParamValidationError

from consumers.admission import EARLIEST_EVENT_TS, FUTURE_TOLERANCE_S, admit
from consumers.core import STATE_REFUSED
from consumers.retry import Backoff, retry_until_done_async
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Dynamo, error_code
from models.events import EventRejected
from models.kpl import valid_user_records

#: PutRecords limits: 500 records and 5 MiB a call (we stay under 4 MiB)
_MAX_RECORDS, _MAX_BYTES = 500, 4 * 1024 * 1024


class RedriveFailed(RuntimeError):
    """Some records could not be put back on the stream; they stay open."""


@dataclass
class RedriveReport:
    checked: int = 0
    redriven: int = 0
    still_rejected: dict[str, int] = field(default_factory=dict)
    #: refused by the customer's state (by kind): not put back, they would be refused again
    kept: dict[str, int] = field(default_factory=dict)
    #: open letters of other streams, left alone (not checked)
    other_streams: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _chunks(entries: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = [[]]
    size = 0
    for e in entries:
        n = len(e["Data"]) + len(e["PartitionKey"])
        if out[-1] and (len(out[-1]) == _MAX_RECORDS or size + n > _MAX_BYTES):
            out.append([])
            size = 0
        out[-1].append(e)
        size += n
    return [c for c in out if c]


async def _put(kinesis: Any, stream: str, letters: list[dict[str, Any]],
               attempts: int = 6) -> dict[str, str]:
    """Put each letter's payload back, as plain records (a KPL aggregate's user records one
    by one); {dead-letter id: "shard/sequence number" (comma-separated for an aggregate)}.

    Entries PutRecords refuses are sent again after a backoff with full jitter (0.1 s
    doubling to at most 2 s), ``attempts`` calls in all."""
    sent: dict[str, list[str]] = {}

    async def put(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resp = await kinesis.put_records(StreamName=stream, Records=[
            {"Data": e["Data"], "PartitionKey": e["PartitionKey"]} for e in pending])
        retry = []
        for e, r in zip(pending, resp["Records"], strict=True):
            if "ErrorCode" in r:
                retry.append(e)
            else:
                sent.setdefault(e["_id"], []).append(f"{r['ShardId']}/{r['SequenceNumber']}")
        return retry

    backoff = Backoff(base=0.1, cap=2.0, attempts=attempts)
    for chunk in _chunks([{"Data": data, "PartitionKey": key, "_id": d["id"]}
                          for d in letters for key, data in user_records(d)]):
        pending = await retry_until_done_async(backoff, put, chunk)
        if pending:
            raise RedriveFailed(f"{len(pending)} record(s) not accepted by {stream} after "
                                f"{attempts} attempts; they stay open")
    return {lid: ",".join(positions) for lid, positions in sent.items()}


def user_records(letter: dict[str, Any]) -> list[tuple[str, bytes]]:
    """(partition key, payload) to re-check and put back: the letter's own, or, for a whole
    KPL aggregate dead-lettered before the consumers de-aggregated, its user records (a
    letter of one user record holds that record's payload and key: a plain record).

    A ``bad_aggregate`` letter is re-checked whole, as the consumer judged it: since the
    consumers de-aggregate, a valid aggregate gets such a letter only as a user record of
    another aggregate (nested), which the consumer refuses; de-aggregating it here would
    put back records the consumer never accepts from the stream in that form (letters
    written before the consumers de-aggregated have the decoder's kinds, ``not_utf8`` or
    ``not_json``).

    >>> user_records({"payload": b"{}", "partition_key": "c1"})
    [('c1', b'{}')]
    """
    payload, key = bytes(letter["payload"]), str(letter.get("partition_key", ""))
    if letter.get("kind") == "bad_aggregate":
        return [(key, payload)]
    users = valid_user_records(payload)  # None: corrupt, re-checked whole and refused again
    if users is None:
        return [(key, payload)]
    return [(u.partition_key, u.data) for u in users]


async def _is_stream(kinesis: Any, name: str) -> bool:
    """Is ``name`` a Kinesis stream of this account and region (another consumer's)?"""
    try:
        await kinesis.describe_stream_summary(StreamName=name)
    except ParamValidationError:  # longer than a stream name can be: a replayed file's path
        return False
    except ClientError as exc:
        if error_code(exc) in ("ResourceNotFoundException", "ValidationException",
                               "InvalidArgumentException"):
            return False  # none, or no stream name at all (a replayed file's path)
        raise
    return True


async def open_letters(db: Dynamo, table: str) -> list[dict[str, Any]]:
    return await DeadLetterStore(db, table).open()


async def redrive(db: Dynamo, table: str, kinesis: Any, stream: str, max_event_bytes: int,
                  dry_run: bool = False,
                  future_tolerance_s: float = FUTURE_TOLERANCE_S,
                  earliest_ts: float = EARLIEST_EVENT_TS) -> RedriveReport:
    """Re-check the open dead letters of ``stream`` (module docstring) and put back the
    ones that now pass every check; what was done."""
    mine, others = [], 0
    letters = await open_letters(db, table)
    home = {str(d["id"]): str(d.get("stream") or stream) for d in letters}
    elsewhere = {name for name in set(home.values()) - {stream}
                 if await _is_stream(kinesis, name)}
    for d in letters:
        if home[str(d["id"])] in elsewhere:
            others += 1
        else:
            mine.append(d)
    kept = Counter(str(d["kind"]) for d in mine if d.get("kind") in STATE_REFUSED)
    letters = [d for d in mine if d.get("kind") not in STATE_REFUSED]
    report = RedriveReport(checked=len(letters), kept=dict(kept), other_streams=others,
                           dry_run=dry_run)
    fixed: list[dict[str, Any]] = []
    still: dict[str, EventRejected] = {}
    now_ts = datetime.now(UTC).timestamp()
    for d in letters:
        arrived = d.get("arrival_ts")
        try:
            for key, data in user_records(d):  # a whole KPL aggregate: each of its records
                admit(data, key,
                      arrival_ts=float(arrived) if arrived is not None else None,
                      now_ts=now_ts, max_bytes=max_event_bytes,
                      future_tolerance_s=future_tolerance_s, earliest_ts=earliest_ts)
            fixed.append(d)
        except EventRejected as exc:
            still[d["id"]] = exc
    report.still_rejected = dict(Counter(e.kind for e in still.values()))
    if dry_run:
        report.redriven = len(fixed)
        return report
    now = _now()
    letters_store = DeadLetterStore(db, table)
    for lid, why in still.items():
        await letters_store.mark_rejected(lid, why.kind, str(why), now)
    sent = await _put(kinesis, stream, fixed) if fixed else {}
    for lid, position in sent.items():
        await letters_store.mark_redriven(lid, position, now)
    report.redriven = len(sent)
    return report
