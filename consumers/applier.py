"""The effects half of every adapter: load states, run the core, write, learn.

Adapters (local poller, Lambda handler, KCL processor) translate their records
into :class:`StreamRecord` and call :meth:`BatchApplier.apply`; when it returns
the batch's effects are durable and the adapter may checkpoint. When it raises
(:class:`~consumers.stores.dynamo.WriteFailed`), nothing may be checkpointed.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from consumers.admission import FUTURE_TOLERANCE_S
from consumers.core import BatchResult, StreamRecord, decode_batch, process_batch
from consumers.hook import AnalysisHook
from consumers.registry import ModelRegistry
from consumers.stores.customers import CustomerStore
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.predictions import PredictionStore
from models.state import CustomerState


@dataclass
class Totals:
    batches: int = 0
    applied: int = 0
    duplicate: int = 0
    duplicate_order: int = 0
    rejected: int = 0
    predictions: int = 0

    @property
    def records(self) -> int:
        return self.applied + self.duplicate + self.duplicate_order + self.rejected


def _utcnow() -> datetime:
    return datetime.now(UTC)


class StateCache:
    """Write-through LRU of the states this worker wrote or read (``size`` 0: off).

    Only valid while this process is the single writer of the customers it
    caches, as the local poller is for the shards it owns for its whole life.
    Adapters whose batches may run in several processes in turn (Lambda, KCL
    after a lease handover) run without it.
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


class BatchApplier:
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
    ) -> None:
        self.customers = customers
        self.predictions = predictions
        self.dead_letters = dead_letters
        self.registry = registry
        self.max_event_bytes = max_event_bytes
        self.future_tolerance_s = future_tolerance_s
        self._clock = clock
        self.watermark = 0
        self.totals = Totals()
        self.cache = StateCache(cache_size)
        self.enricher = enricher

    async def apply(self, records: Sequence[StreamRecord]) -> BatchResult:
        now = self._clock()
        decoded = decode_batch(records, self.max_event_bytes, now=now,
                               future_tolerance_s=self.future_tolerance_s)
        ids = decoded.customer_ids
        states, missing = self.cache.get_many(ids)
        if missing:
            loaded = await self.customers.load(missing)
            self.cache.put_many(loaded.values())
            states.update(loaded)
        result = process_batch(
            decoded, states, self.registry.view(), now=now, watermark=self.watermark
        )
        predictions = result.predictions
        if self.enricher is not None:  # keep the latest AI analysis on the rewritten item
            predictions = await self.enricher.attach(predictions)
        await asyncio.gather(
            self.customers.save(list(result.states.values())),
            self.predictions.save(predictions),
            self.dead_letters.save(result.dead_letters),
        )
        if result.erased:  # after the saves: an erased customer re-created later is saved
            await asyncio.gather(self.customers.delete(result.erased),
                                 self.predictions.delete(result.erased))
            self.cache.forget(result.erased)
        self.cache.put_many(result.states.values())
        if self.enricher is not None:  # effects are durable: the AI analysis may follow
            await self.enricher.reconcile(predictions)
            self.enricher.observe(result)
        await self.registry.learn(result.learn)
        self.watermark = max(self.watermark, result.watermark)
        t = self.totals
        t.batches += 1
        t.applied += result.counts["applied"]
        t.duplicate += result.counts["duplicate"]
        t.duplicate_order += result.counts["duplicate_order"]
        t.rejected += result.counts["rejected"]
        t.predictions += len(result.predictions)
        return result
