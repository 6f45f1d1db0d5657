"""A consumer worker: the stores, models, applier and poller wired from settings."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
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
    GroupLease,
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
                                    self.registry, s.max_event_bytes,
                                    cache_size=s.state_cache_size)
        self.poller = Poller(
            kinesis, s.stream_name, self.checkpoints, self.applier,
            limit=s.get_records_limit, poll_interval=s.poll_interval_s,
            idle_polls=s.idle_polls, on_batch=on_batch,
        )
        self.consume_seconds = 0.0
        self.lease = GroupLease(db, s.table("checkpoints"), s.consumer_group,
                                owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    async def _renew(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.lease.ttl_s / 3)
            except TimeoutError:
                await self.lease.acquire(time.time())
        self._applied_at_refit = 0

    async def _refit_periodically(self, stop: asyncio.Event) -> None:
        """Refit the global models every ``refit_interval_s`` without blocking any shard."""
        interval = self.settings.refit_interval_s
        while interval and not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                await refit(self.customers, self.predictions, self.registry, rewrite=False)

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None,
                  final_refit: bool = True) -> RefitReport | None:
        await self.lease.acquire(time.time())
        await self.registry.load()
        stop = stop or asyncio.Event()
        background = [asyncio.create_task(self._refit_periodically(stop)),
                      asyncio.create_task(self._renew(stop))]
        started = time.perf_counter()
        try:
            await self.poller.run(until_idle=until_idle, stop=stop)
        finally:
            self.consume_seconds = time.perf_counter() - started
            for task in background:
                task.cancel()
            await self.lease.release()
        if final_refit and self.applier.totals.records:
            return await refit(self.customers, self.predictions, self.registry, rewrite=True)
        return None
