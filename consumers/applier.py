"""The effects half of every adapter: load states, run the core, write, learn.

Adapters (local poller, Lambda handler, KCL processor) translate their records
into :class:`StreamRecord` and call :meth:`BatchApplier.apply`; when it returns
the batch's effects are durable and the adapter may checkpoint. When it raises
(:class:`~consumers.stores.WriteFailed`), nothing may be checkpointed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from consumers.core import BatchResult, StreamRecord, decode_batch, process_batch
from consumers.registry import ModelRegistry
from consumers.stores import CustomerStore, DeadLetterStore, PredictionStore


@dataclass
class Totals:
    batches: int = 0
    applied: int = 0
    duplicate: int = 0
    rejected: int = 0
    predictions: int = 0
    customers: set[str] = field(default_factory=set)

    @property
    def records(self) -> int:
        return self.applied + self.duplicate + self.rejected


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BatchApplier:
    def __init__(
        self,
        customers: CustomerStore,
        predictions: PredictionStore,
        dead_letters: DeadLetterStore,
        registry: ModelRegistry,
        max_event_bytes: int,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.customers = customers
        self.predictions = predictions
        self.dead_letters = dead_letters
        self.registry = registry
        self.max_event_bytes = max_event_bytes
        self._clock = clock
        self.watermark = 0
        self.totals = Totals()

    async def apply(self, records: Sequence[StreamRecord]) -> BatchResult:
        decoded = decode_batch(records, self.max_event_bytes)
        ids = decoded.customer_ids
        states = await self.customers.load(ids) if ids else {}
        result = process_batch(
            decoded, states, self.registry.view(), now=self._clock(), watermark=self.watermark
        )
        await asyncio.gather(
            self.customers.save(list(result.states.values())),
            self.predictions.save(result.predictions),
            self.dead_letters.save(result.dead_letters),
        )
        await self.registry.learn(result.learn)
        self.watermark = max(self.watermark, result.watermark)
        t = self.totals
        t.batches += 1
        t.applied += result.counts["applied"]
        t.duplicate += result.counts["duplicate"]
        t.rejected += result.counts["rejected"]
        t.predictions += len(result.predictions)
        t.customers.update(ids)
        return result
