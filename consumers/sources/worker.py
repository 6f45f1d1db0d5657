"""A consumer worker: the local poller (polling or enhanced fan-out) around one applier,
with its consumer group's lease, the periodic refit and, with AI analysis, the enricher's
background work. ``caa.wiring.worker`` builds it from settings; here it takes plain objects.

The lease is checked before every batch's writes and checkpoint
(:meth:`~consumers.sources.lease.GroupLease.ensure`); when it is lost (renewal refused:
another worker holds the group, e.g. after this process was paused past the lease) every
shard stops, one line ``caa: consumer stopped: lost the lease ...`` is printed and
:meth:`Worker.run` exits the process with status 1 (``SystemExit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from consumers.analysis.enricher import Enricher
from consumers.analysis.requests import RequestAnalyzer
from consumers.applier import BatchApplier
from consumers.core import BatchResult
from consumers.instrument.chaos import NO_CHAOS, Chaos
from consumers.instrument.metrics import Metrics
from consumers.progress import NO_PROGRESS, Progress
from consumers.refit import (
    FINAL_REFIT,
    REFIT_LOCK_TTL_S,
    RefitReport,
    RefitSkipped,
    locked_refit,
    refit,
    refit_lock,
)
from consumers.sources.fanout import FanoutPoller
from consumers.sources.lease import GroupLease, LeaseLost
from consumers.sources.poller import Poller
from consumers.stores.checkpoints import CheckpointStore
from models.learn.drift import DriftMonitor
from models.learn.segmentation import SegmentModel


def pseudonym_key(configured: str | None, state_dir: Path) -> bytes:
    """The configured HMAC key, or a random one kept (0600) in ``state_dir``.

    The file is written whole under a temporary name and linked into place, so
    concurrent first starts agree on one key and never read a partial file.
    """
    if configured is not None:
        return configured.encode()
    path = state_dir / "pseudonym.key"
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


@dataclass(frozen=True)
class WorkerConfig:
    """How the worker reads its stream, and how often it refits and flushes."""

    stream_name: str
    consumer_group: str
    #: the group's checkpoints and its lease live here
    checkpoints_table: str
    read_mode: Literal["polling", "fanout"]
    #: fanout: the registered stream consumer, and how long a subscription is kept
    efo_consumer: str
    efo_renewal_s: float
    get_records_limit: int
    poll_interval_s: float
    idle_polls: int
    #: seconds between background refits (0: none)
    refit_interval_s: float
    #: a periodic refit queues customers who bought within this many days for analysis
    analysis_active_days: int
    usage_flush_s: float


class Worker:
    """``applier`` applies the batches; ``enricher`` is the one it was built with (None:
    no AI analysis); ``chaos`` the one its stores were built with (the crash harness)."""

    def __init__(self, config: WorkerConfig, applier: BatchApplier, kinesis: Any, *,
                 enricher: Enricher | None = None,
                 on_batch: Callable[[str, BatchResult], None] | None = None,
                 cloudwatch: Any = None, chaos: Chaos = NO_CHAOS,
                 requests: RequestAnalyzer | None = None) -> None:
        s = config
        #: durable analysis requests (SQS): read and analysed beside the consuming
        self.requests = requests
        self.config = s
        self.applier = applier
        self.customers = applier.customers
        self.predictions = applier.predictions
        self.dead_letters = applier.dead_letters
        self.registry = applier.registry
        self.enricher = enricher
        db = self.customers.db
        self.checkpoints = CheckpointStore(db, s.checkpoints_table, s.consumer_group,
                                           stream=s.stream_name)
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
        self.lease = GroupLease(db, s.checkpoints_table, s.consumer_group,
                                owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
        self.applier.before_write = self.lease.ensure
        self.poller.guard = self.lease.ensure
        #: one refit at a time across every process and function (consumers.refit)
        self.refit_lock = refit_lock(self.checkpoints, self.lease.owner)
        self.refits_skipped: list[RefitSkipped] = []

    async def _renew(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.lease.ttl_s / 3)
            except TimeoutError:
                try:
                    await self.lease.renew(time.time())
                except LeaseLost:
                    return  # the next write's check stops the shards

    async def _refit(self, rewrite: bool, schedule: bool = True,
                     progress: Progress = NO_PROGRESS, wait_s: float = 0.0,
                     reason: str | None = None) -> RefitReport | None:
        """Refit under the refit lock (held elsewhere: wait up to ``wait_s``, then skip, saying
        so on stderr); a periodic refit also queues active customers for a scheduled
        analysis."""
        try:
            outcome = await locked_refit(self.refit_lock, lambda: refit(
                self.customers, self.predictions, self.registry, rewrite=rewrite,
                enricher=self.enricher,
                active_days=self.config.analysis_active_days if schedule else 0,
                requests=self.requests.queue if self.requests is not None else None,
                reason=reason or ("schedule" if schedule else FINAL_REFIT),
                progress=progress), wait_s=wait_s)
        except LeaseLost as exc:
            outcome = RefitSkipped("", f"refit abandoned: {exc}")
        if isinstance(outcome, RefitSkipped):
            self.refits_skipped.append(outcome)
            print(f"caa: refit skipped: {outcome.reason}", file=sys.stderr)
            return None
        return outcome

    async def _refit_periodically(self, stop: asyncio.Event) -> None:
        """Refit the global models every ``refit_interval_s`` (0: never on a schedule), and
        at once when the applier sees drift, without blocking any shard."""
        interval = self.config.refit_interval_s or None
        drift = self.applier.drift_seen
        while not stop.is_set():
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(drift.wait())]
            try:
                await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if stop.is_set():
                return
            reason = self.applier.drift_reason if drift.is_set() else None
            if reason is None and interval is None:
                continue
            drift.clear()
            await self._refit(rewrite=self.enricher is not None, reason=reason or "schedule")
            if self.applier.drift is not None:  # the signal's level moves with new centres
                old = self.applier.drift
                self.applier.drift = DriftMonitor(old.signal, delta=old.delta,
                                                  trigger=old.trigger)

    async def _abandon_on_stop(self, stop: asyncio.Event, quiet: asyncio.Event) -> None:
        """A stop signal reaches the enricher at once (its Bedrock retries end, calls in
        flight get their grace), not only once the shards have wound down."""
        assert self.enricher is not None
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(quiet.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if stop.is_set():
            self.enricher.abandon_queued()

    async def _flush_usage(self, stop: asyncio.Event) -> None:
        """Flush the enricher's counters now and then (a failed flush keeps them for the
        next one; it never ends this loop)."""
        assert self.enricher is not None
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.config.usage_flush_s)
            except TimeoutError:
                await self.enricher.flush_counters()

    async def run(self, until_idle: bool = False, stop: asyncio.Event | None = None,
                  final_refit: bool = True,
                  progress: Progress = NO_PROGRESS) -> RefitReport | None:
        """Consume until stopped (or idle); then drain the AI analyses and refit. The
        caller shows the consuming itself (``on_batch``); ``progress`` hears the phases
        after it: waiting for the background tasks, the AI analyses (counted), the final
        refit's phases (:func:`~consumers.refit.refit`)."""
        await self.lease.acquire(time.time())
        await self.registry.load()
        stop = stop or asyncio.Event()
        quiet = asyncio.Event()  # set when consumption ends: background tasks wind down
        background = [asyncio.create_task(self._refit_periodically(quiet)),
                      asyncio.create_task(self._renew(quiet))]
        if self.enricher is not None:
            background += [asyncio.create_task(self.enricher.run(quiet)),
                           asyncio.create_task(self._flush_usage(quiet)),
                           asyncio.create_task(self._abandon_on_stop(stop, quiet))]
        if self.requests is not None:
            background.append(asyncio.create_task(self.requests.run(quiet)))
        started = time.perf_counter()
        report = None
        try:
            try:
                await self.poller.run(until_idle=until_idle, stop=stop)
            except LeaseLost as exc:
                quiet.set()
                raise SystemExit(f"caa: consumer stopped: {exc}") from exc
            self.consume_seconds = time.perf_counter() - started
            if stop.is_set() and self.enricher is not None:
                self.enricher.abandon_queued()
            quiet.set()
            progress.phase("winding down")  # the consuming phase is over
            await asyncio.gather(*background)
            if self.enricher is not None and until_idle:
                if self.requests is not None:
                    await self.requests.drain(progress)
                await self.enricher.drain(progress)
            if final_refit and self.applier.totals.records and not stop.is_set():
                report = await self._refit(rewrite=True, schedule=False, progress=progress,
                                           wait_s=REFIT_LOCK_TTL_S)
            if self.enricher is not None:
                if until_idle:  # a stop signal does not wait for pending analyses
                    await self.enricher.drain(progress)
                await self.enricher.flush_counters()
        finally:
            self.consume_seconds = self.consume_seconds or time.perf_counter() - started
            for task in background:
                task.cancel()
            await self.lease.release()
        return report
