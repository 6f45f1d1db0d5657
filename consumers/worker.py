"""A consumer worker: the stores, models, applier and poller wired from settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from caa.settings import Settings
from consumers.applier import BatchApplier
from consumers.core import BatchResult
from consumers.poller import Poller
from consumers.refit import RefitReport, refit
from consumers.registry import ModelRegistry
from consumers.stores import (
    CheckpointStore,
    CustomerStore,
    DeadLetterStore,
    Dynamo,
    ModelStore,
    PredictionStore,
)


class Worker:
    def __init__(self, settings: Settings, kinesis: Any, dynamodb: Any,
                 on_batch: Callable[[str, BatchResult], None] | None = None) -> None:
        s = settings
        self.settings = s
        db = Dynamo(dynamodb, max_attempts=s.max_write_attempts, concurrency=s.write_concurrency)
        self.customers = CustomerStore(db, s.table("customers"))
        self.predictions = PredictionStore(db, s.table("predictions"))
        self.dead_letters = DeadLetterStore(db, s.table("dead-letters"))
        self.checkpoints = CheckpointStore(db, s.table("checkpoints"), s.consumer_group)
        self.registry = ModelRegistry(ModelStore(db, s.table("models")), s)
        self.applier = BatchApplier(self.customers, self.predictions, self.dead_letters,
                                    self.registry, s.max_event_bytes)
        self.poller = Poller(
            kinesis, s.stream_name, self.checkpoints, self.applier,
            limit=s.get_records_limit, poll_interval=s.poll_interval_s,
            idle_polls=s.idle_polls, on_batch=on_batch, after_batch=self._maybe_refit,
        )
        self._refit_lock = asyncio.Lock()
        self._applied_at_refit = 0

    async def _maybe_refit(self) -> None:
        every = self.settings.refit_every_events
        applied = self.applier.totals.applied
        if not every or applied - self._applied_at_refit < every or self._refit_lock.locked():
            return
        async with self._refit_lock:
            self._applied_at_refit = applied
            await refit(self.customers, self.predictions, self.registry, rewrite=False)

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None,
                  final_refit: bool = True) -> RefitReport | None:
        await self.registry.load()
        await self.poller.run(until_idle=until_idle, stop=stop)
        if final_refit and self.applier.totals.records:
            return await refit(self.customers, self.predictions, self.registry, rewrite=True)
        return None
