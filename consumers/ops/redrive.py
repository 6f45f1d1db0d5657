"""Dead-letter redrive: send poison records back through the stream once they are fixed.

The consumer dead-letters what it cannot decode (``models.events.decode_event``)
with the raw payload, its stream position and the reason. After a fix (a reader
that knows a new schema version, a raised ``CAA_MAX_EVENT_BYTES``), ``caa dlq
redrive`` re-checks every open dead letter with the current decoder:

- one that now decodes is put back on the stream under its original partition
  key, so it reaches its customer's single writer like any other event, and is
  marked ``redriven`` with the position it was re-sent to;
- one still rejected stays ``open``, with the reason of this check.

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

from consumers.retry import Backoff, retry_until_done_async
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Dynamo
from models.events import EventRejected, decode_event

#: PutRecords limits: 500 records and 5 MiB a call (we stay under 4 MiB)
_MAX_RECORDS, _MAX_BYTES = 500, 4 * 1024 * 1024


class RedriveFailed(RuntimeError):
    """Some records could not be put back on the stream; they stay open."""


@dataclass
class RedriveReport:
    checked: int = 0
    redriven: int = 0
    still_rejected: dict[str, int] = field(default_factory=dict)
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
    """Put each letter's payload back; {dead-letter id: "shard/sequence number"}.

    Entries PutRecords refuses are sent again after a backoff with full jitter (0.1 s
    doubling to at most 2 s), ``attempts`` calls in all."""
    sent: dict[str, str] = {}

    async def put(pending: list[dict[str, Any]]) -> list[dict[str, Any]]:
        resp = await kinesis.put_records(StreamName=stream, Records=[
            {"Data": e["Data"], "PartitionKey": e["PartitionKey"]} for e in pending])
        retry = []
        for e, r in zip(pending, resp["Records"], strict=True):
            if "ErrorCode" in r:
                retry.append(e)
            else:
                sent[e["_id"]] = f"{r['ShardId']}/{r['SequenceNumber']}"
        return retry

    backoff = Backoff(base=0.1, cap=2.0, attempts=attempts)
    for chunk in _chunks([{"Data": d["payload"], "PartitionKey": d["partition_key"],
                           "_id": d["id"]} for d in letters]):
        pending = await retry_until_done_async(backoff, put, chunk)
        if pending:
            raise RedriveFailed(f"{len(pending)} record(s) not accepted by {stream} after "
                                f"{attempts} attempts; they stay open")
    return sent


async def open_letters(db: Dynamo, table: str) -> list[dict[str, Any]]:
    return await DeadLetterStore(db, table).open()


async def redrive(db: Dynamo, table: str, kinesis: Any, stream: str, max_event_bytes: int,
                  dry_run: bool = False) -> RedriveReport:
    letters = await open_letters(db, table)
    report = RedriveReport(checked=len(letters), dry_run=dry_run)
    fixed: list[dict[str, Any]] = []
    still: dict[str, EventRejected] = {}
    for d in letters:
        try:
            decode_event(d["payload"], max_event_bytes)
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
