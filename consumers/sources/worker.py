"""A consumer worker: the stores, models, applier, enricher and poller wired from settings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from caa.settings import Settings
from consumers.analysis.analyzer import PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from consumers.analysis.breaker import CircuitBreaker
from consumers.analysis.enricher import Enricher
from consumers.analysis.guard import CallGuard
from consumers.analysis.trigger import CacheRules
from consumers.applier import BatchApplier
from consumers.core import BatchResult
from consumers.instrument.chaos import Chaos
from consumers.instrument.metrics import Metrics
from consumers.refit import RefitReport, refit
from consumers.registry import ModelRegistry
from consumers.sources.fanout import FanoutPoller
from consumers.sources.lease import GroupLease
from consumers.sources.poller import Poller
from consumers.stores.analyses import AnalysisStore
from consumers.stores.checkpoints import CheckpointStore
from consumers.stores.customers import CustomerStore
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Dynamo
from consumers.stores.model_snapshots import ModelStore
from consumers.stores.predictions import PredictionStore
from consumers.stores.usage import UsageLedger
from models.learn.segmentation import SegmentModel


def pseudonym_key(settings: Settings) -> bytes:
    """The configured HMAC key, or a random one kept (0600) in the state directory.

    The file is written whole under a temporary name and linked into place, so
    concurrent first starts agree on one key and never read a partial file.
    """
    if settings.pseudonym_key is not None:
        return settings.pseudonym_key.get_secret_value().encode()
    path = settings.state_dir / "pseudonym.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".pseudonym.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        with contextlib.suppress(FileExistsError):  # another process was first: use theirs
            os.link(tmp, path)
        tmp.unlink()
    key = path.read_text().strip().encode()
    if len(key) < 32:
        raise ValueError(f"{path} holds a pseudonym key shorter than 32 characters")
    return key


def reference_order_value(model: SegmentModel) -> float:
    """The population's typical order value: segment centres weighted by their sizes."""
    rows = [(int(str(d["count"])), d["centre"]) for d in model.describe()]
    total = sum(n for n, _ in rows)
    if not total:
        return 0.0
    return sum(n * float(c["monetary"]) for n, c in rows if isinstance(c, dict)) / total


def build_enricher(settings: Settings, db: Dynamo, bedrock: Any,
                   registry: ModelRegistry, cloudwatch: Any = None) -> Enricher:
    s = settings
    prices = PriceTable.parse(s.bedrock_prices)
    analyzer = BedrockAnalyzer(
        bedrock, s.bedrock_model_id, max_tokens=s.bedrock_max_tokens, prices=prices,
        deadline_s=s.bedrock_deadline_s, backoff_base_s=s.bedrock_backoff_base_s,
    )
    guard = CallGuard(
        analyzer, UsageLedger(db, s.table("usage")), prices,
        daily_budget_usd=s.daily_budget_usd, tokens_per_minute=s.bedrock_tpm,
        rate_wait_max_s=s.rate_wait_max_s,
        breaker=CircuitBreaker(s.breaker_failures, s.breaker_reset_s),
    )
    return Enricher(
        guard=guard,
        store=AnalysisStore(db, s.table("analyses"), s.table("analysis-history"),
                            s.table("predictions"), s.history_ttl_days),
        pseudonym_key=pseudonym_key(s),
        reference_order_value=lambda: reference_order_value(registry.segmenter),
        debounce_s=s.analysis_debounce_s,
        concurrency=s.bedrock_concurrency,
        consent_mode=s.consent_mode,
        cache_rules=CacheRules(s.analysis_min_change, s.analysis_max_age_days),
        metrics=Metrics(cloudwatch, {"Stream": s.stream_name, "Model": s.bedrock_model_id}),
        variants=registry.variants,
    )


def build_applier(settings: Settings, dynamodb: Any, *, cache_size: int,
                  bedrock: Any = None, cloudwatch: Any = None,
                  chaos: Chaos | None = None) -> BatchApplier:
    """The stores, models and (with ``CAA_ANALYZER=bedrock`` and a client) the enricher
    every adapter shares, around one :class:`BatchApplier`."""
    s = settings
    db = Dynamo(dynamodb, max_attempts=s.max_write_attempts, concurrency=s.write_concurrency,
                chaos=chaos or Chaos.parse(s.chaos_points, s.chaos_probability))
    registry = ModelRegistry(ModelStore(db, s.table("models")), s)
    enricher = (build_enricher(s, db, bedrock, registry, cloudwatch)
                if s.analyzer == "bedrock" and bedrock is not None else None)
    return BatchApplier(CustomerStore(db, s.table("customers")),
                        PredictionStore(db, s.table("predictions")),
                        DeadLetterStore(db, s.table("dead-letters")),
                        registry, s.max_event_bytes, cache_size=cache_size, enricher=enricher)


class Worker:
    def __init__(self, settings: Settings, kinesis: Any, dynamodb: Any,
                 on_batch: Callable[[str, BatchResult], None] | None = None,
                 bedrock: Any = None, cloudwatch: Any = None) -> None:
        s = settings
        self.settings = s
        chaos = Chaos.parse(s.chaos_points, s.chaos_probability)
        self.applier = build_applier(s, dynamodb, cache_size=s.state_cache_size,
                                     bedrock=bedrock, cloudwatch=cloudwatch, chaos=chaos)
        self.customers = self.applier.customers
        self.predictions = self.applier.predictions
        self.dead_letters = self.applier.dead_letters
        self.registry = self.applier.registry
        self.enricher = self.applier.enricher
        db = self.customers.db
        self.checkpoints = CheckpointStore(db, s.table("checkpoints"), s.consumer_group)
        common: dict[str, Any] = {
            "limit": s.get_records_limit, "poll_interval": s.poll_interval_s,
            "idle_polls": s.idle_polls, "on_batch": on_batch, "chaos": chaos,
            "metrics": Metrics(cloudwatch, {"Stream": s.stream_name}),
        }
        self.poller: Poller = (
            FanoutPoller(kinesis, s.stream_name, self.checkpoints, self.applier,
                         consumer_name=s.efo_consumer, renew_after_s=s.efo_renewal_s, **common)
            if s.read_mode == "fanout"
            else Poller(kinesis, s.stream_name, self.checkpoints, self.applier, **common))
        self.consume_seconds = 0.0
        self.lease = GroupLease(db, s.table("checkpoints"), s.consumer_group,
                                owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    async def _renew(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.lease.ttl_s / 3)
            except TimeoutError:
                await self.lease.acquire(time.time())

    async def _refit(self, rewrite: bool, schedule: bool = True) -> RefitReport | None:
        """Refit; a periodic refit also queues active customers for a scheduled analysis."""
        return await refit(self.customers, self.predictions, self.registry, rewrite=rewrite,
                           enricher=self.enricher,
                           active_days=self.settings.analysis_active_days if schedule else 0)

    async def _refit_periodically(self, stop: asyncio.Event) -> None:
        """Refit the global models every ``refit_interval_s`` without blocking any shard."""
        interval = self.settings.refit_interval_s
        while interval and not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                await self._refit(rewrite=self.enricher is not None)

    async def _flush_usage(self, stop: asyncio.Event) -> None:
        """Flush the enricher's counters now and then (a failed flush keeps them for the
        next one; it never ends this loop)."""
        assert self.enricher is not None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.settings.usage_flush_s)
            except TimeoutError:
                await self.enricher.flush_counters()

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None,
                  final_refit: bool = True) -> RefitReport | None:
        await self.lease.acquire(time.time())
        await self.registry.load()
        stop = stop or asyncio.Event()
        quiet = asyncio.Event()  # set when consumption ends: background tasks wind down
        background = [asyncio.create_task(self._refit_periodically(quiet)),
                      asyncio.create_task(self._renew(quiet))]
        if self.enricher is not None:
            background += [asyncio.create_task(self.enricher.run(quiet)),
                           asyncio.create_task(self._flush_usage(quiet))]
        started = time.perf_counter()
        report = None
        try:
            await self.poller.run(until_idle=until_idle, stop=stop)
            self.consume_seconds = time.perf_counter() - started
            if stop.is_set() and self.enricher is not None:
                self.enricher.abandon_queued()
            quiet.set()
            await asyncio.gather(*background)
            if self.enricher is not None and until_idle:
                await self.enricher.drain()
            if final_refit and self.applier.totals.records and not stop.is_set():
                report = await self._refit(rewrite=True, schedule=False)
            if self.enricher is not None:
                if until_idle:  # a stop signal does not wait for pending analyses
                    await self.enricher.drain()
                await self.enricher.flush_counters()
        finally:
            self.consume_seconds = self.consume_seconds or time.perf_counter() - started
            for task in background:
                task.cancel()
            await self.lease.release()
        return report
