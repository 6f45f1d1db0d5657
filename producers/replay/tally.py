"""What a replay read, what was wrong with it, and what the target made of it.

Every record is checked once with the consumer's own decoder (:func:`check`); the
:class:`ReplayReport` counts valid records by type (:func:`event_type`: purchase, refund,
cancellation, consent, erasure) and invalid ones by reason, keeps
the first few examples of each reason, the customers and the event-time range. Its
counts are committed with the job's cursor (``tallies``), so a resumed job reports the
whole job exactly, never a record twice.

>>> from producers.replay.sources import SourceRecord
>>> r = ReplayReport()
>>> for data in (b'{"broken', b'{"schema_version": 1}'):
...     r.add(check(SourceRecord("f.jsonl", "0", 1, data, ""), 1024))
>>> r.records, r.valid, dict(r.invalid)
(2, 0, {'not_json': 1, 'schema': 1})
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC
from typing import Any

from consumers.admission import EARLIEST_EVENT_TS, FUTURE_TOLERANCE_S, admit
from models.events import (
    ConsentEvent,
    ErasureEvent,
    EventRejected,
    PurchaseEvent,
    RefundEvent,
    StreamEvent,
)
from producers.replay.sources import SourceRecord

EXAMPLES_PER_KIND = 3
MAX_EXAMPLES = 20


@dataclass(frozen=True, slots=True)
class Checked:
    """A record with its verdict: the event, or the kind and reason it is invalid."""

    record: SourceRecord
    event: StreamEvent | None
    kind: str = ""
    reason: str = ""


def check(record: SourceRecord, max_bytes: int, now_ts: float | None = None,
          future_tolerance_s: float = FUTURE_TOLERANCE_S,
          earliest_ts: float = EARLIEST_EVENT_TS) -> Checked:
    """The consumer's verdict on a record (:func:`consumers.admission.admit`: its decoder,
    its partition-key rule, and the event time against ``now_ts``, the wall clock when None:
    a replayed record arrives now, so an event dated after that is a ``future_event`` in
    the dry run as in the consumer)."""
    if record.problem is not None:
        return Checked(record, None, *record.problem)
    try:
        event = admit(record.data, record.key, arrival_ts=None,
                      now_ts=time.time() if now_ts is None else now_ts, max_bytes=max_bytes,
                      future_tolerance_s=future_tolerance_s, earliest_ts=earliest_ts)
    except EventRejected as exc:
        return Checked(record, None, exc.kind, str(exc))
    return Checked(record, event)


def event_type(event: StreamEvent) -> str:
    """The report's name for an event's type (purchases have no ``type`` on the wire).

    >>> from producers.datasets.synthetic import generate_stream
    >>> sorted({event_type(e) for e in generate_stream(customers=30, days=60, seed=1)})
    ['cancellation', 'purchase', 'refund']
    """
    if isinstance(event, PurchaseEvent):
        return "purchase"
    if isinstance(event, ConsentEvent):
        return "consent"
    if isinstance(event, ErasureEvent):
        return "erasure"
    if isinstance(event, RefundEvent):
        return "refund"
    return "cancellation"


@dataclass(frozen=True)
class Example:
    where: str
    kind: str
    reason: str
    sample: str


@dataclass
class ReplayReport:
    records: int = 0
    valid: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    types: Counter[str] = field(default_factory=Counter)
    examples: list[Example] = field(default_factory=list)
    first_at: str | None = None  # event time (occurred_at), ISO 8601
    last_at: str | None = None
    # what the target did: the stream acknowledged (published); the applier applied,
    # found already applied (duplicates; an order already placed under another event id:
    # duplicate orders), dead-lettered
    published: int = 0
    applied: int = 0
    duplicates: int = 0
    duplicate_orders: int = 0
    dead_lettered: int = 0
    throttled: int = 0
    runs: int = 0
    #: customers seen by this run (not kept across runs: a resumed job counts its own)
    customers: set[str] = field(default_factory=set)

    def add(self, c: Checked) -> None:
        self.records += 1
        if c.event is None:
            self.invalid[c.kind] += 1
            shown = sum(1 for e in self.examples if e.kind == c.kind)
            if shown < EXAMPLES_PER_KIND and len(self.examples) < MAX_EXAMPLES:
                sample = c.record.data[:80].decode("utf-8", "replace")
                self.examples.append(Example(c.record.where, c.kind, c.reason[:300], sample))
            return
        self.valid += 1
        e = c.event
        self.types[event_type(e)] += 1
        self.customers.add(e.customer_id)
        at = e.occurred_at.astimezone(UTC).isoformat()
        if self.first_at is None or at < self.first_at:
            self.first_at = at
        if self.last_at is None or at > self.last_at:
            self.last_at = at

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    def tallies(self) -> dict[str, Any]:
        """Everything but this run's customer set, as plain JSON (committed with the cursor)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "customers"}
        d["invalid"], d["types"] = dict(self.invalid), dict(self.types)
        d["examples"] = [asdict(e) for e in self.examples]
        return d

    @classmethod
    def from_tallies(cls, d: dict[str, Any]) -> ReplayReport:
        d = dict(d)
        return cls(**{**d, "invalid": Counter(d.get("invalid", {})),
                      "types": Counter(d.get("types", {})),
                      "examples": [Example(**e) for e in d.get("examples", [])]})

    def as_dict(self) -> dict[str, Any]:
        out = self.tallies()
        out["invalid_total"] = self.invalid_total
        out["customers"] = len(self.customers)
        return out
