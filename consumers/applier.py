"""The effects half of every adapter: load states, run the core, write, learn.

Adapters (local poller, Lambda handler, KCL processor) translate their records
into :class:`StreamRecord` and call :meth:`BatchApplier.apply`; when it returns
the batch's effects are durable and the adapter may checkpoint. When it raises
(:class:`~consumers.stores.dynamo.WriteFailed`: transient errors outlasting the retries, or
a customer still conflicting after :data:`MAX_CONFLICT_ROUNDS`), nothing may be
checkpointed.

Several writers of one customer (explicit hash keys, a Lambda parallelization factor above
1, a lease handover, a zombie) are safe: each state put is conditional on the version read
(:meth:`~consumers.stores.customers.CustomerStore.save_if`). A customer whose put conflicts
is reloaded (consistent read) and the whole batch is run through the pure core again on the
new states; only the conflicting customers are written again (the others' states come out
the same: the core is deterministic per customer, and the event-id digests make the
re-applied events of the reloaded state duplicates). The outcomes, predictions and learn
vectors returned are the last run's, so they match what was written.

A customer whose state or prediction DynamoDB refuses permanently (too large, invalid)
does not hold the shard: every record of that customer in the batch becomes a dead letter,
kind ``write_rejected``, reason ``write_rejected: <code>: <DynamoDB message>``, outcome
``rejected``, and the batch goes on (it may be checkpointed). A refused state leaves the
customer as stored (its events are in the dead letters, for a redrive once fixed); a
refused prediction leaves the state written (a redrive of the letters counts them once).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from consumers.admission import EARLIEST_EVENT_TS, FUTURE_TOLERANCE_S
from consumers.core import (
    BatchResult,
    DecodedBatch,
    RecordOutcome,
    Rejected,
    StreamRecord,
    decode_batch,
    process_batch,
)
from consumers.gc_policy import DEFAULT as GC_POLICY
from consumers.gc_policy import GcPolicy
from consumers.hook import AnalysisHook, RequestSink
from consumers.registry import ModelRegistry
from consumers.stores.analyses import AnalysisStore
from consumers.stores.customers import CustomerStore
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Rejection, WriteFailed
from consumers.stores.predictions import PredictionStore, prediction_to_item
from models.learn.drift import DriftMonitor, distant_flags
from models.prediction import Prediction
from models.state import CustomerState


@dataclass
class Totals:
    batches: int = 0
    applied: int = 0
    duplicate: int = 0
    duplicate_order: int = 0
    rejected: int = 0
    predictions: int = 0
    #: conditional state puts that found another writer's version (reloaded, re-applied)
    conflicts: int = 0
    #: records dead-lettered because DynamoDB refused their customer's state or prediction
    write_rejected: int = 0
    #: customers erased by erasure events, and the dead letters those erasures deleted
    erasures: int = 0
    dead_letters_erased: int = 0

    @property
    def records(self) -> int:
        return self.applied + self.duplicate + self.duplicate_order + self.rejected


def _utcnow() -> datetime:
    return datetime.now(UTC)


class StateCache:
    """Write-through LRU of the states this worker wrote or read (``size`` 0: off).

    Safe with several writers: a cached state is only ever the base of a conditional put
    (its version is the condition), so a stale entry costs one conflict, after which the
    applier evicts it and caches the state reloaded by a consistent read. The local poller
    keeps it on (``CAA_STATE_CACHE_SIZE``); Lambda and the KCL processor run without it,
    since their next batch of a shard may run in another process and would mostly miss.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, CustomerState] = OrderedDict()
        self.hits = self.misses = 0

    def get_many(self, ids: Iterable[str]) -> tuple[dict[str, CustomerState], set[str]]:
        found: dict[str, CustomerState] = {}
        missing: set[str] = set()
        for cid in ids:
            state = self._items.get(cid)
            if state is None:
                missing.add(cid)
            else:
                self._items.move_to_end(cid)
                found[cid] = state
        self.hits += len(found)
        self.misses += len(missing)
        return found, missing

    def forget(self, ids: Iterable[str]) -> None:
        for cid in ids:
            self._items.pop(cid, None)

    def put_many(self, states: Iterable[CustomerState]) -> None:
        if not self.size:
            return
        for s in states:
            self._items[s.customer_id] = s
            self._items.move_to_end(s.customer_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


#: reload-and-re-apply rounds for customers whose conditional put conflicted; then the
#: batch fails as a transient failure (WriteFailed: not checkpointed, retried later)
MAX_CONFLICT_ROUNDS = 8
#: the kind of the dead letters of a customer whose write DynamoDB refused
WRITE_REJECTED = "write_rejected"


def reject_customers(decoded: DecodedBatch, reasons: dict[str, str]) -> DecodedBatch:
    """``decoded`` with every event of the customers in ``reasons`` (customer id ->
    reason) turned into a rejection of kind ``write_rejected``: the core then gives their
    records the outcome ``rejected`` and makes them dead letters."""
    by_position = {r.position: r for r in decoded.records}
    events = dict(decoded.events)
    rejected = dict(decoded.rejected)
    for pos, event in decoded.events.items():
        why = reasons.get(event.customer_id)
        if why is not None:
            del events[pos]
            rejected[pos] = Rejected(by_position[pos], WRITE_REJECTED, f"{WRITE_REJECTED}: {why}")
    return DecodedBatch(decoded.records, events, rejected)


def _reject_after(result: BatchResult, decoded: DecodedBatch,
                  reasons: dict[str, str]) -> list[Rejected]:
    """Turn, in ``result``, the records of the customers in ``reasons`` into rejected
    outcomes (their state is already written: used for a refused prediction); the dead
    letters to write for them."""
    letters: list[Rejected] = []
    outcomes: list[RecordOutcome] = []
    for rec, outcome in zip(decoded.records, result.outcomes, strict=True):
        event = decoded.events.get(rec.position)
        why = reasons.get(event.customer_id) if event is not None else None
        if why is None:
            outcomes.append(outcome)
            continue
        letters.append(Rejected(rec, WRITE_REJECTED, f"{WRITE_REJECTED}: {why}"))
        outcomes.append(RecordOutcome(outcome.sequence_number, outcome.shard_id, "rejected",
                                      letters[-1].reason))
        result.counts[outcome.status] -= 1
        result.counts["rejected"] += 1
    result.outcomes = outcomes
    result.dead_letters = [*result.dead_letters, *letters]
    result.predictions = [p for p in result.predictions if p.customer_id not in reasons]
    return letters


class BatchApplier:
    """Applies batches (:meth:`apply`). ``before_write``, when set, is awaited before the
    first write of every batch; the local worker sets it to its lease check, which raises
    when this process no longer holds its consumer group."""

    def __init__(
        self,
        customers: CustomerStore,
        predictions: PredictionStore,
        dead_letters: DeadLetterStore,
        registry: ModelRegistry,
        max_event_bytes: int,
        clock: Callable[[], datetime] = _utcnow,
        cache_size: int = 0,
        enricher: AnalysisHook | None = None,
        future_tolerance_s: float = FUTURE_TOLERANCE_S,
        earliest_ts: float = EARLIEST_EVENT_TS,
    ) -> None:
        self.customers = customers
        self.predictions = predictions
        self.dead_letters = dead_letters
        self.registry = registry
        self.max_event_bytes = max_event_bytes
        self.future_tolerance_s = future_tolerance_s
        self.earliest_ts = earliest_ts
        self._clock = clock
        self.watermark = 0
        self.totals = Totals()
        self.cache = StateCache(cache_size)
        self.enricher = enricher
        self.before_write: Callable[[], Awaitable[None]] | None = None
        #: durable analysis requests (SQS): sent once a batch's effects are written, before
        #: its checkpoint, in place of the enricher's in-memory queue (``observe``)
        self.requests: RequestSink | None = None
        #: the analyses an erasure event from the stream deletes (a tombstone stays:
        #: consumers.stores.analyses); None: the consumer leaves them (``caa erase`` itself
        #: deletes them)
        self.analyses: AnalysisStore | None = None
        #: drift detection on whether each customer of a batch is far from every segment
        #: centre (scored before the model learns the batch)
        #: (models.learn.drift): a detection sets :attr:`drift_seen` (the local worker
        #: refits at once) and calls ``on_drift`` with the reason (the functions' appliers:
        #: a refit request for the scheduled refit check)
        self.drift: DriftMonitor | None = None
        self.drift_reason: str | None = None
        self.drift_seen = asyncio.Event()
        self.on_drift: Callable[[str], Awaitable[None]] | None = None
        #: run after each applied batch (None: CPython's own collections): freezes what
        #: survived the batch, so full collections stop re-walking the cached states
        self.gc_policy: GcPolicy | None = GC_POLICY

    async def _load(self, ids: Iterable[str]) -> dict[str, CustomerState]:
        states, missing = self.cache.get_many(ids)
        if missing:
            loaded = await self.customers.load(missing)
            self.cache.put_many(loaded.values())
            states.update(loaded)
        return states

    async def _write_states(self, decoded: DecodedBatch, now: datetime
                            ) -> tuple[BatchResult, DecodedBatch]:
        """Run the core and write its states conditionally until no customer conflicts:
        the last run's result and the batch it ran on (with refused customers' events
        turned into rejections)."""
        states = await self._load(decoded.customer_ids)
        read: dict[str, int | None] = {c: states[c].version if c in states else None
                                       for c in decoded.customer_ids}
        pending: set[str] | None = None  # None: every changed state
        models = self.registry.view()
        for _ in range(MAX_CONFLICT_ROUNDS):
            result = process_batch(decoded, states, models, now=now, watermark=self.watermark)
            todo = [st for cid, st in result.states.items() if pending is None or cid in pending]
            if not todo:
                return result, decoded
            answers = await self.customers.save_if(todo, read)
            self.cache.put_many(st for st in todo if answers[st.customer_id] == "ok")
            refused = {c: a.reason for c, a in answers.items() if isinstance(a, Rejection)}
            conflicts = {c for c, a in answers.items() if a == "conflict"}
            if refused:
                self.cache.forget(refused)
                decoded = reject_customers(decoded, refused)
            if not conflicts:
                if refused:  # the result must not hold their states, predictions, vectors
                    result = process_batch(decoded, states, models, now=now,
                                           watermark=self.watermark)
                return result, decoded
            self.totals.conflicts += len(conflicts)
            self.cache.forget(conflicts)
            fresh = await self.customers.load(conflicts)
            self.cache.put_many(fresh.values())
            for cid in conflicts:
                if cid in fresh:
                    states[cid] = fresh[cid]
                else:  # deleted (erased) since the read
                    states.pop(cid, None)
                read[cid] = fresh[cid].version if cid in fresh else None
            pending = conflicts
        raise WriteFailed(f"{len(pending or ())} customer(s) still conflicting after "
                          f"{MAX_CONFLICT_ROUNDS} reloads: another writer keeps winning")

    async def _write_predictions(self, result: BatchResult, decoded: DecodedBatch
                                 ) -> list[Prediction]:
        """Write the predictions and dead letters; the predictions written (with the AI
        analysis attached, when there is an enricher)."""
        predictions = result.predictions
        if self.enricher is not None:  # keep the latest AI analysis on the rewritten item
            predictions = await self.enricher.attach(predictions, result.erasures)
        store = self.predictions
        refused, _ = await asyncio.gather(
            store.db.put_all(store.table, [prediction_to_item(p) for p in predictions]),
            self.dead_letters.save(result.dead_letters),
        )
        if not refused:
            return predictions
        reasons = {r.item["customer_id"]["S"]: r.reason for r in refused}
        await self.dead_letters.save(_reject_after(result, decoded, reasons))
        return [p for p in predictions if p.customer_id not in reasons]

    async def _watch_drift(self, flags: list[float], at: int) -> None:
        assert self.drift is not None
        check = self.drift.update_many(flags, at=at)
        if check.refit:
            self.drift_reason = check.reason
            self.drift_seen.set()
            if self.on_drift is not None:  # raises: the batch is read again (no double count)
                await self.on_drift(check.reason)

    async def apply(self, records: Sequence[StreamRecord]) -> BatchResult:
        """Apply one batch; returns when its effects are durable. Raises
        :class:`~consumers.stores.dynamo.WriteFailed` (transient errors, endless
        conflicts), or whatever ``before_write`` raises, with nothing to checkpoint."""
        now = self._clock()
        await self.registry.refresh()  # a refit elsewhere, other workers' learning
        decoded = decode_batch(records, self.max_event_bytes, now=now,
                               future_tolerance_s=self.future_tolerance_s,
                               earliest_ts=self.earliest_ts)
        if self.before_write is not None:
            await self.before_write()
        # the stream's time as the models' snapshot knows it (a restart, a cold start, other
        # workers): one batch of late, old purchases must not be forecast as of its own time
        self.watermark = max(self.watermark, self.registry.watermark)
        result, decoded = await self._write_states(decoded, now)
        erasures = sorted(result.erasures.items())
        if erasures and self.analyses is not None:
            # an erasure on the stream (re-created in the batch or not): the analyses (derived
            # from the erased history) go, before the predictions are written: from here on
            # an analysis of that history landing (one in flight) is refused by the tombstone
            analyses = self.analyses
            await asyncio.gather(*(analyses.erase(cid, now) for cid, _ in erasures))
        written = await self._write_predictions(result, decoded)
        if result.erased or result.retired:  # after the saves: a re-created customer is saved
            await asyncio.gather(self.customers.delete(result.erased),
                                 self.predictions.delete(result.erased | result.retired))
            self.cache.forget(result.erased)
        if erasures:  # once written (this batch's too): the dead letters of the customer's
            # records before the erasure, with their raw payloads (those a consumer lagging
            # behind ``caa erase`` writes after the command deleted the ones it found, too)
            letters = self.dead_letters
            deleted = await asyncio.gather(*(letters.erase(cid, at) for cid, at in erasures))
            self.totals.erasures += len(erasures)
            self.totals.dead_letters_erased += sum(deleted)
        if self.enricher is not None:  # effects are durable: the AI analysis may follow
            await self.enricher.reconcile(  # not an erased history's analysis, even in flight
                [p for p in written if p.customer_id not in result.erasures])
        # learnt before the analyses are asked for: their prompts' reference order value
        # comes from the segment model as it stands with this batch
        # prequential: the batch is scored by the segment model before it learns it
        flags = (distant_flags(self.registry.segmenter, result.learn)
                 if self.drift is not None and result.learn and self.registry.segmenter.is_ready
                 else None)
        await self.registry.learn(result.learn, result.watermark)
        if flags:
            await self._watch_drift(flags, result.watermark)
        if self.requests is not None:  # raises WriteFailed: not checkpointed, read again
            await self.requests.send_result(result, decoded.customer_ids)
        elif self.enricher is not None:
            self.enricher.observe(result)
        self.watermark = max(self.watermark, result.watermark)
        t = self.totals
        t.batches += 1
        t.applied += result.counts["applied"]
        t.duplicate += result.counts["duplicate"]
        t.duplicate_order += result.counts["duplicate_order"]
        t.rejected += result.counts["rejected"]
        t.write_rejected += sum(d.kind == WRITE_REJECTED for d in result.dead_letters)
        t.predictions += len(result.predictions)
        if self.gc_policy is not None:  # issue 17: see consumers.gc_policy
            self.gc_policy.after_batch()
        return result
