"""The batch processor: the pure core every adapter (poller, Lambda, KCL) calls.

A list of stream records goes in with the current state of the customers they
touch; out comes a :class:`BatchResult`: one outcome per record (applied,
duplicate or rejected with its reason), the new customer states, one
prediction per touched customer, the dead letters, the feature vectors the
segment model should learn, and the checkpoint the batch allows. No I/O: the
adapter loads the states, writes the effects, and only then checkpoints.

>>> from datetime import datetime, timezone
>>> from models.learn.forecaster import Forecaster, DEFAULT_PRIOR
>>> from models.learn.segmentation import SegmentModel
>>> ok = (b'{"event_id":"e1","order_id":"o1","customer_id":"c1","occurred_at":'
...       b'"2024-01-01T00:00:00Z","currency":"EUR","items":[{"product_id":"p",'
...       b'"category":"k","quantity":1,"unit_price":"2.50"}],"total":"2.50"}')
>>> recs = [StreamRecord(ok, "1", "c1", "shard-0"), StreamRecord(b"\\xff", "2", "x", "shard-0"),
...         StreamRecord(ok, "3", "c1", "shard-0")]
>>> models = ModelView(SegmentModel(), 0, Forecaster(DEFAULT_PRIOR))
>>> now = datetime(2024, 1, 2, tzinfo=timezone.utc)
>>> r = process_batch(decode_batch(recs), {}, models, now=now)
>>> [o.status for o in r.outcomes], r.states["c1"].purchases, r.checkpoints
(['applied', 'rejected', 'duplicate'], 1, {'shard-0': '3'})
>>> r.dead_letters[0].reason
'not_utf8: invalid UTF-8 at byte 0'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from consumers.admission import EARLIEST_EVENT_TS, FUTURE_TOLERANCE_S, admit
from models.events import (
    MAX_EVENT_BYTES,
    ErasureEvent,
    EventRejected,
    PurchaseEvent,
    StreamEvent,
)
from models.features import rfm
from models.learn.forecaster import Forecaster
from models.learn.segmentation import SegmentModel
from models.money import NO_RATES, Rates
from models.order_book import ORDER_HORIZON
from models.prediction import Prediction, SegmentRef, shared
from models.state import CustomerState

Status = Literal["applied", "duplicate", "duplicate_order", "rejected"]
Position = tuple[str, str, int]  # (shard id, sequence number, sub-sequence number)


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One Kinesis record, as every adapter translates it."""

    data: bytes
    sequence_number: str
    partition_key: str
    shard_id: str
    stream: str = ""
    arrived_at: datetime | None = None  # ApproximateArrivalTimestamp
    #: a KPL aggregate's user records share its sequence number, numbered 0, 1, ... here
    sub_sequence_number: int = 0
    #: a user record of a KPL aggregate (the first one's sub-sequence number is 0 too)
    aggregated: bool = False

    @property
    def position(self) -> Position:
        """Unique in a batch, even one that mixes shards (sequence numbers are per shard) or
        holds the user records of a KPL aggregate (one sequence number, sub-sequence numbers)."""
        return self.shard_id, self.sequence_number, self.sub_sequence_number


@dataclass(frozen=True, slots=True)
class Rejected:
    record: StreamRecord
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    sequence_number: str
    shard_id: str
    status: Status
    reason: str = ""


@dataclass(slots=True)
class DecodedBatch:
    records: list[StreamRecord]
    events: dict[Position, StreamEvent]
    rejected: dict[Position, Rejected]

    @property
    def customer_ids(self) -> set[str]:
        return {e.customer_id for e in self.events.values()}


@dataclass(frozen=True, slots=True)
class ModelView:
    """The models a batch is scored with (read only inside the core)."""

    segmenter: SegmentModel
    segments_version: int
    forecaster: Forecaster
    #: into the reporting currency of monetary features and predictions
    rates: Rates = NO_RATES


@dataclass(slots=True)
class BatchResult:
    outcomes: list[RecordOutcome]
    states: dict[str, CustomerState]  # changed states only, version already bumped
    predictions: list[Prediction]
    dead_letters: list[Rejected]
    learn: list[dict[str, float]]
    watermark: int
    checkpoints: dict[str, str]  # shard id -> highest sequence number handled
    counts: dict[str, int] = field(default_factory=dict)
    #: customers an erasure event forgot (and nothing re-created in this batch): their
    #: state and prediction are to be deleted
    erased: set[str] = field(default_factory=set)
    #: customers left without a purchase that counts (all cancelled, or erased and then only
    #: a consent or follow-up): their prediction is to be deleted, their state kept
    retired: set[str] = field(default_factory=set)
    #: every customer an erasure event of the batch forgot, re-created after it or not, with
    #: the erasure's stream and position (the last one's): what was derived from the history
    #: before it (analyses, dead letters) is to go as well
    erasures: dict[str, tuple[str, Position]] = field(default_factory=dict)

    @property
    def failures(self) -> list[RecordOutcome]:
        return [o for o in self.outcomes if o.status == "rejected"]


def arrival(rec: StreamRecord) -> float | None:
    """When the record reached the stream (epoch seconds), None when the adapter did not say."""
    return rec.arrived_at.timestamp() if rec.arrived_at is not None else None


def decode_batch(
    records: Sequence[StreamRecord], max_bytes: int = MAX_EVENT_BYTES, *,
    now: datetime | None = None, future_tolerance_s: float = FUTURE_TOLERANCE_S,
    earliest_ts: float = EARLIEST_EVENT_TS,
) -> DecodedBatch:
    """Every check of :func:`consumers.admission.admit` per record; ``now`` (the wall clock
    when None) stands in for an unknown arrival time."""
    now_ts = (now or datetime.now(UTC)).timestamp()
    events: dict[Position, StreamEvent] = {}
    rejected: dict[Position, Rejected] = {}
    for rec in records:
        try:
            events[rec.position] = admit(
                rec.data, rec.partition_key, arrival_ts=arrival(rec), now_ts=now_ts,
                max_bytes=max_bytes, future_tolerance_s=future_tolerance_s,
                earliest_ts=earliest_ts)
        except EventRejected as exc:
            rejected[rec.position] = Rejected(rec, exc.kind, str(exc))
    return DecodedBatch(list(records), events, rejected)


def _ceiling(records: Sequence[StreamRecord], now: datetime) -> int:
    """The latest arrival time of the batch (``now`` when none is known): the watermark
    never runs ahead of it."""
    known = [t for t in map(arrival, records) if t is not None]
    return int(max(known) if known else now.timestamp())


#: why the state refused an event it decoded (the record goes to the dead letters)
_REFUSED = {
    "beyond_horizon": "the event is dated before this customer's de-duplication horizon "
                      f"(the latest {ORDER_HORIZON} orders are kept one by one), so it cannot "
                      "be told from one applied long ago: most likely a redelivery or replay "
                      "of an old event, never counted twice; or, dated in the second of the "
                      f"newest orders, more than {2 * ORDER_HORIZON} orders in one second (the "
                      "horizon then moves past that second)",
    "currency_mismatch": "the refund's or cancellation's currency is not its order's "
                         "currency (or that of a follow-up of the order seen before it)",
    "event_id_reused": "an event with this event_id and another occurred_at (or, for a "
                       "purchase, another order, currency or total) was applied before: "
                       "event ids must be unique (a redelivery carries the same event); "
                       "this one is not applied",
}


#: why an applied purchase is a dead letter too (the state's ``applied_refund_dropped``)
_REFUND_DROPPED = ("this purchase was applied, but refunds of its order received before it "
                   "were in another currency than the purchase's and no longer count (an "
                   "order's money is in one currency: such a refund received after its "
                   "purchase is refused the same way)")


#: the kinds of dead letter the customer's state refused (the record decodes): putting one
#: back on the stream cannot change the answer (the state refuses it again)
STATE_REFUSED = frozenset(_REFUSED)


@dataclass(slots=True)
class _Fold:
    """The records of a batch folded into working copies of the states."""

    working: dict[str, CustomerState] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    erased: set[str] = field(default_factory=set)
    #: the position of each customer's (last) erasure in the batch
    erasures: dict[str, tuple[str, Position]] = field(default_factory=dict)
    bought: set[str] = field(default_factory=set)
    outcomes: list[RecordOutcome] = field(default_factory=list)
    checkpoints: dict[str, str] = field(default_factory=dict)
    refused: list[Rejected] = field(default_factory=list)
    #: customers whose events raised: all their records of the batch are dead letters
    failed: dict[str, str] = field(default_factory=dict)
    #: the outcome indexes and records of each customer's events
    seen: dict[str, list[tuple[int, StreamRecord]]] = field(default_factory=dict)

    def state(self, cid: str, states: Mapping[str, CustomerState]) -> CustomerState:
        state = self.working.get(cid)
        if state is None:
            known = states.get(cid)
            state = self.working[cid] = known.clone() if known else CustomerState.new(cid)
        return state

    def apply(self, event: StreamEvent, states: Mapping[str, CustomerState],
              rec: StreamRecord) -> str:
        cid = event.customer_id
        if isinstance(event, ErasureEvent):
            self.working[cid] = CustomerState.new(cid)
            self.erased.add(cid)
            self.erasures[cid] = (rec.stream, rec.position)
            self.changed.discard(cid)
            self.bought.discard(cid)
            return "applied"
        status = self.state(cid, states).apply(event)
        if status == "applied_refund_dropped":  # applied; the dropped refund is a letter
            self.refused.append(Rejected(rec, "currency_mismatch",
                                         f"currency_mismatch: {_REFUND_DROPPED}"))
        elif status != "applied":
            return status
        if isinstance(event, PurchaseEvent):
            self.bought.add(cid)
        self.changed.add(cid)
        return "applied"

    def fail(self, cid: str, exc: BaseException) -> None:
        """An exception while handling one of ``cid``'s events: the customer's effect is
        left out of the batch and every record of theirs becomes a dead letter."""
        self.failed.setdefault(cid, f"internal_error: {type(exc).__name__}: {exc}"[:500])
        self.working.pop(cid, None)
        self.changed.discard(cid)
        self.bought.discard(cid)
        self.erased.discard(cid)
        self.erasures.pop(cid, None)


def _fold(batch: DecodedBatch, states: Mapping[str, CustomerState]) -> _Fold:
    f = _Fold()
    for rec in batch.records:
        seq = rec.sequence_number
        prev = f.checkpoints.get(rec.shard_id)
        if prev is None or int(seq) > int(prev):
            f.checkpoints[rec.shard_id] = seq
        bad = batch.rejected.get(rec.position)
        if bad is not None:
            f.outcomes.append(RecordOutcome(seq, rec.shard_id, "rejected", bad.reason))
            continue
        event = batch.events[rec.position]
        cid = event.customer_id
        f.seen.setdefault(cid, []).append((len(f.outcomes), rec))
        if cid in f.failed:
            f.outcomes.append(RecordOutcome(seq, rec.shard_id, "rejected", f.failed[cid]))
            continue
        try:
            status = f.apply(event, states, rec)
        except Exception as exc:  # noqa: BLE001 - any defect is this customer's dead letter
            f.fail(cid, exc)
            f.outcomes.append(RecordOutcome(seq, rec.shard_id, "rejected", f.failed[cid]))
            continue
        if status in _REFUSED:
            reason = f"{status}: {_REFUSED[status]}"
            f.refused.append(Rejected(rec, status, reason))
            f.outcomes.append(RecordOutcome(seq, rec.shard_id, "rejected", reason))
            continue
        f.outcomes.append(RecordOutcome(seq, rec.shard_id, status))  # type: ignore[arg-type]
    return f


def _fail_customers(f: _Fold) -> list[Rejected]:
    """Every record of the failed customers, as dead letters; their outcomes rejected."""
    lettered = {r.record.position for r in f.refused}
    letters = []
    for cid, reason in f.failed.items():
        for index, rec in f.seen.get(cid, []):
            if rec.position in lettered:
                continue
            o = f.outcomes[index]
            f.outcomes[index] = RecordOutcome(o.sequence_number, o.shard_id, "rejected", reason)
            letters.append(Rejected(rec, "internal_error", reason))
    return letters


def process_batch(
    batch: DecodedBatch,
    states: Mapping[str, CustomerState],
    models: ModelView,
    *,
    now: datetime,
    watermark: int = 0,
) -> BatchResult:
    """Apply a decoded batch to copies of ``states``; the inputs are not modified.

    Purchases, refunds and cancellations apply through :meth:`CustomerState.apply`; an
    event the state refuses (``beyond_horizon``, ``currency_mismatch``) is a dead letter,
    and so is every record of a customer whose events or prediction raised anything
    (``internal_error``: that customer's effect is left out, the batch goes on).
    Consent events change only the consent (a customer not seen yet gets a state with no
    purchases and no prediction); an erasure event starts the customer afresh, so what
    follows it on the shard makes a new customer and what came before is gone. The
    watermark (the forecasts' "now") is the latest purchase time, never ahead of the batch's
    latest arrival time (``now`` when unknown); ``decode_batch`` already refused events
    dated after their arrival, so one bad clock cannot age every customer. A customer whose
    last purchase is dated after the watermark (within the future tolerance) is predicted
    as of that purchase, so no prediction's ``last_event`` is after its ``as_of``.
    """
    f = _fold(batch, states)
    watermark = min(max([watermark, *(s.last_ts for s in f.working.values())]),
                    _ceiling(batch.records, now))
    names = models.segmenter.segment_names()
    learn: list[dict[str, float]] = []
    predictions: list[Prediction] = []
    for cid in sorted(f.working):
        state = f.working[cid]
        try:
            if cid in f.changed:
                state.version += 1
                state.bound()
            if not state.purchases:  # consent only, erased or all cancelled: no prediction
                continue
            features = rfm(state, watermark, models.rates)
            seg = models.segmenter.predict_one(features)
            # never as of a time before the customer's own last purchase (one dated within
            # the future tolerance after the batch's latest arrival)
            prediction = models.forecaster.predict(
                state, shared(SegmentRef, seg, names.get(seg, f"segment {seg}")),
                max(watermark, state.last_event_ts), now, models.segments_version,
                rates=models.rates)
        except Exception as exc:  # noqa: BLE001 - any defect is this customer's dead letter
            f.fail(cid, exc)
            continue
        if cid in f.bought:
            learn.append(features)
        predictions.append(prediction)
    outcomes = f.outcomes
    retired = {cid for cid in f.changed - f.failed.keys() if not f.working[cid].purchases
               and (cid in f.erased or (states.get(cid) is not None
                                        and states[cid].purchases > 0))}
    dead_letters = [*batch.rejected.values(), *f.refused, *_fail_customers(f)]
    counts = {"applied": 0, "duplicate": 0, "duplicate_order": 0, "rejected": 0}
    for o in outcomes:
        counts[o.status] += 1
    return BatchResult(
        outcomes=outcomes,
        states={cid: f.working[cid] for cid in sorted(f.changed)},
        predictions=[p for p in predictions if p.customer_id not in f.failed],
        dead_letters=dead_letters,
        learn=learn,
        watermark=watermark,
        checkpoints=f.checkpoints,
        counts=counts,
        erased=f.erased - f.changed,
        retired=retired,
        erasures=f.erasures,
    )
