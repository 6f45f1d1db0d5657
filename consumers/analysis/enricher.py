"""AI analysis beside the stream: triggered, budgeted, rate limited, never blocking.

The applier writes the statistical prediction and only then calls
:meth:`Enricher.observe`, which files the customers whose state changed with
the :class:`~consumers.analysis.trigger.TriggerPolicy` and returns at once. The
enricher's own task releases customers when their debounce window closes, as
many as there are free slots (``bedrock_concurrency``), one analysis per
customer at a time. For each one, in order:

1. no consent (per ``consent_mode``) → statistical analysis, reason ``no_consent``;
2. value routing (:mod:`~consumers.analysis.value_route`; purchases and schedules, never
   on-demand requests): ``statistical`` → the statistical analysis, reason ``low_value`` (by
   design, not counted as a fallback; a scheduled re-analysis keeps one already there);
   ``daily`` → nothing now, the daily batch analyses the
   customer (counted ``route_daily``); ``on_demand`` → on;
3. the cached analysis still holds (:func:`~consumers.analysis.trigger.stale_reason`) → skip;
4. :class:`~consumers.analysis.guard.CallGuard`: circuit breaker, daily budget, token bucket
   → statistical with ``circuit_open``, ``budget_exhausted`` or ``rate_limited``;
5. Bedrock; a failure (after its own retries) → statistical with the failure as reason.

Each analysis is stored (latest, history, merged into the prediction item).
A write that fails is counted and the customer is analysed again on the next
trigger; the statistical prediction is already durable, so nothing is lost and
no shard waits.

A stop (:meth:`Enricher.abandon_queued`, on SIGTERM/SIGINT) starts nothing new and cancels
every Bedrock retry at once (the stop event reaches the analyzer's backoff); calls in flight
get at most :data:`STOP_GRACE_S` seconds to answer, then are cancelled. An analysis cut short
is not stored: its customer goes back into the queue, like every customer still waiting.
Without a durable queue (:mod:`consumers.analysis.requests`, where the applier sends
requests instead of calling :meth:`Enricher.observe` and :meth:`Enricher.run_request` runs
each) the queue lives in memory, so at exit they are counted and said on stderr (and in
``summary()["pending_at_stop"]``); each keeps its statistical prediction and is analysed on
its next purchase, or by the scheduled re-analysis when it is active.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from consumers.analysis.analyzer import AnalyzerResult, StatisticalAnalyzer
from consumers.analysis.guard import CallGuard, Refused
from consumers.analysis.trigger import (
    CacheRules,
    Pending,
    Signature,
    TriggerPolicy,
    stale_reason,
)
from consumers.analysis.value_route import NO_ROUTING, ROUTES, ValueRouter
from consumers.core import BatchResult
from consumers.instrument.metrics import Metrics
from consumers.progress import NO_PROGRESS, Progress
from consumers.stores.analyses import AnalysisStore
from consumers.stores.usage import simulated_note
from models.analysis import AnalysisRecord, TriggerKind
from models.money import NO_RATES, Rates
from models.prediction import Prediction
from models.prompt import PROMPT_VERSION, AnalysisInput, build_input
from models.state import CustomerState
from models.variant import NO_EXPERIMENT, VariantPlan

MAX_ERRORS_KEPT = 100

#: after a stop, the longest the enricher waits for Bedrock calls in flight (seconds) before
#: cancelling them. The rest of a shutdown (the poller's last batches, flushing counters,
#: releasing the lease, closing the clients) takes about 0.5 s, up to 2.5 s on a loaded
#: 2-core machine, so SIGTERM-to-exit stays under 5 s (issue 15), well inside a usual 30 s
#: grace period. A call cancelled may still be billed: its budget reservation is kept (see
#: consumers.analysis.guard).
STOP_GRACE_S = 1.5


#: the fallback reason of the A/B control variant's analyses
AB_CONTROL = "ab_control"
#: the fallback reason of an analysis value routing sent to the statistical analyzer
LOW_VALUE = "low_value"


class _Stopped(Exception):
    """A stop reached this analysis before it was stored."""


class Enricher:
    def __init__(
        self,
        *,
        guard: CallGuard,
        store: AnalysisStore,
        pseudonym_key: bytes,
        reference_order_value: Callable[[], float],
        debounce_s: float = 60.0,
        concurrency: int = 4,
        consent_mode: str = "opt_in",
        cache_rules: CacheRules | None = None,
        cache_size: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
        variants: VariantPlan = NO_EXPERIMENT,
        rates: Rates = NO_RATES,
        router: ValueRouter = NO_ROUTING,
    ) -> None:
        self.guard = guard
        #: value routing (consumers.analysis.value_route): who gets a call now
        self.router = router
        #: into the reporting currency of the prompts' money (the registry's rates)
        self.rates = rates
        self.variants = variants
        self.analyzer = guard.analyzer
        self.breaker = guard.breaker
        self.fallback = StatisticalAnalyzer()
        self.store = store
        self.key = pseudonym_key
        self.reference_order_value = reference_order_value
        self.policy: TriggerPolicy[AnalysisInput] = TriggerPolicy(debounce_s)
        self.concurrency = concurrency
        self.consent_mode = consent_mode
        self.rules = cache_rules or CacheRules()
        self.version = f"{self.analyzer.model}|p{PROMPT_VERSION}"
        self._clock = clock
        self._wall = wall
        self._latest: OrderedDict[str, AnalysisRecord | None] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[AnalysisRecord | None]] = set()
        self._finished = 0  # queued analyses that ended (stored, cache hit or error)
        self._wake = asyncio.Event()
        self._closing = False
        self._stop = asyncio.Event()  # set by a stop: reaches the analyzer's retries
        self._stop_deadline = 0.0  # after a stop: when calls in flight are cancelled
        self._cut = 0  # analyses cut short by a stop (their customers are queued again)
        self._said = False  # the stop's pending analyses were reported
        self.counts: Counter[str] = Counter()
        self._unflushed: Counter[str] = Counter()  # shared daily counters not yet added
        self._metric: Counter[str] = Counter()  # CloudWatch deltas not yet sent
        self._metric_cost = 0.0
        self.metrics = metrics or Metrics(None, {})
        self.freshness_s: list[float] = []  # per purchase: arrival -> analysis reflecting it
        self.errors: list[str] = []
        #: where answers came from when not from AWS (the local test server, say)
        self.endpoints: set[str] = set()

    # -- what the applier and the refit call -------------------------------------------
    def observe(self, result: BatchResult) -> None:
        """File the customers this (durably written) batch changed; never blocks or raises.
        Erased customers leave the queue (their queued input is of the erased state), also
        those a later event of the batch re-created (their new state is filed below)."""
        for cid in result.erasures:
            self.policy.cancel(cid)
            self._latest.pop(cid, None)
        if not result.states:
            return
        now = self._clock()
        by_id = {p.customer_id: p for p in result.predictions}
        ref = self.reference_order_value()
        for cid, state in result.states.items():
            try:
                x = build_input(state, by_id.get(cid), as_of_ts=result.watermark, key=self.key,
                                reference_order_value=ref, rates=self.rates)
            except Exception as exc:  # noqa: BLE001 -- counted: the stream must go on
                self._error("observe", cid, exc)
                continue
            self.policy.purchase(cid, x, now)
        self._wake.set()

    def schedule(self, states: Iterable[CustomerState], predictions: dict[str, Prediction],
                 as_of_ts: int) -> int:
        """Queue customers for a scheduled re-analysis (no debounce; the cache still applies)."""
        now, n, ref = self._clock(), 0, self.reference_order_value()
        for s in states:
            x = build_input(s, predictions.get(s.customer_id), as_of_ts=as_of_ts, key=self.key,
                            reference_order_value=ref, rates=self.rates)
            self.policy.schedule(s.customer_id, x, now)
            n += 1
        self._wake.set()
        return n

    async def attach(self, predictions: Sequence[Prediction], erased: Iterable[str] = ()
                     ) -> list[Prediction]:
        """Carry each customer's latest analysis into its new statistical prediction; none
        for the ``erased`` ones (an erasure of the batch: a prediction of theirs is of a
        customer re-created after it, and the analysis of the erased history must not
        reach it)."""
        for cid in erased:
            self._remember(cid, None)
        missing = [p.customer_id for p in predictions if p.customer_id not in self._latest]
        if missing:
            found = await self.store.latest(missing)
            for cid in missing:
                self._remember(cid, found.get(cid))
        out = []
        for p in predictions:
            rec = self._latest.get(p.customer_id)
            out.append(p if rec is None else p.model_copy(update={
                "analysis": rec.analysis, "analysis_at": rec.at, "analysis_model": rec.model,
                "source": rec.source, "fallback_reason": rec.fallback_reason,
            }))
        return out

    async def reconcile(self, written: Sequence[Prediction]) -> int:
        """Re-merge analyses that landed while these predictions were being written (the
        put replaced the item with the analysis it carried); returns how many."""
        stale = [rec for p in written
                 if (rec := self._latest.get(p.customer_id)) is not None
                 and rec.at != p.analysis_at]
        await asyncio.gather(*(self.store.merge(rec) for rec in stale))
        return len(stale)

    def _remember(self, cid: str, rec: AnalysisRecord | None) -> None:
        self._latest[cid] = rec
        self._latest.move_to_end(cid)
        while len(self._latest) > self._cache_size:
            self._latest.popitem(last=False)

    # -- running ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Release due customers until ``stop``; then wait for the analyses started."""
        while not stop.is_set():
            self._dispatch(self._clock())
            nxt = self.policy.next_due_at()
            timeout = 1.0 if nxt is None else min(1.0, max(0.005, nxt - self._clock()))
            await self._sleep(stop, timeout)
        await self.settle()

    async def _sleep(self, stop: asyncio.Event, timeout: float) -> None:
        self._wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()

    def abandon_queued(self) -> None:
        """On a stop signal: nothing new starts, Bedrock retries stop at once, and calls in
        flight get :data:`STOP_GRACE_S` seconds (:meth:`settle`); pending customers keep
        their statistical prediction and are analysed on their next trigger."""
        if not self._closing:
            self._closing = True
            self._stop_deadline = self._clock() + STOP_GRACE_S
            self._stop.set()
            self._wake.set()

    @property
    def closing(self) -> bool:
        """A stop signal came (:meth:`abandon_queued`): nothing new starts."""
        return self._closing

    @property
    def queued(self) -> int:
        """Customers waiting for an analysis, and analyses running."""
        return len(self.policy) + len(self._tasks)

    @property
    def done(self) -> int:
        """Queued analyses that ended so far (stored, found in the cache, or failed)."""
        return self._finished

    async def drain(self, progress: Progress = NO_PROGRESS) -> None:
        """Analyse everything pending now, debounce or not, and wait (end of a bounded run);
        ``progress`` hears the phase "AI analyses" out of those queued (when there are any)
        and counts them."""
        self.policy.expedite(self._clock())
        never = asyncio.Event()
        start = self._finished
        if self.queued:
            progress.phase("AI analyses", total=self.queued)
        while not self._closing and (len(self.policy) or self._tasks):
            self._dispatch(self._clock())
            await self._sleep(never, 0.5)
            progress.advance(self._finished - start)
            start = self._finished
        await self.settle()
        progress.advance(self._finished - start)

    async def settle(self) -> None:
        """Wait for the analyses running; after a stop, only until :data:`STOP_GRACE_S`
        after it: then they are cancelled (their customers queued again) and what is left
        in the queue is reported."""
        while running := [t for t in self._tasks if not t.done()]:
            if not self._closing:
                await asyncio.gather(*running)
                continue
            left = self._stop_deadline - self._clock()
            if left > 0:
                await asyncio.wait(running, timeout=left)
                continue
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        if self._closing and not self._said:
            self._said = True
            if len(self.policy):
                print(f"analysis: stopped with {len(self.policy)} customer(s) not analysed "
                      f"({self._cut} cut short in flight, the rest queued); the queue is in "
                      "memory: they keep their statistical prediction until their next "
                      "purchase or scheduled re-analysis", file=sys.stderr)

    def _dispatch(self, now: float) -> None:
        if self._closing:
            return
        free = self.concurrency - len(self._tasks)
        for cid, pending in self.policy.due(now, limit=max(0, free)):
            if cid in self._inflight:  # one analysis per customer at a time
                self.policy.defer(cid, pending, now + 0.5)
                continue
            self._inflight.add(cid)
            # the input was filed (built) at its latest arrival, or when it was scheduled
            filed = max([pending.opened_at, *pending.arrivals])
            read_at = self._wall() - timedelta(seconds=max(0.0, now - filed))
            task = asyncio.create_task(self._claimed(cid, pending.features, pending.trigger,
                                                     pending.arrivals, False, read_at))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[AnalysisRecord | None]) -> None:
        self._tasks.discard(task)
        self._finished += 1
        self._wake.set()  # a slot is free

    async def analyze_now(self, customer_id: str, x: AnalysisInput,
                          trigger: TriggerKind = "on_demand") -> AnalysisRecord | None:
        """Now: bypasses debounce, routing and cache (consent, budget and limits still hold).
        ``trigger`` is ``on_demand`` (``caa analyze``, the API) or ``schedule`` (a daily
        batch too small for a Bedrock job, which applied routing and the cache itself)."""
        while customer_id in self._inflight:
            await asyncio.sleep(0.05)
        self._inflight.add(customer_id)
        return await self._claimed(customer_id, x, trigger, [], True)

    async def run_request(self, customer_id: str, x: AnalysisInput, trigger: TriggerKind,
                          arrivals: list[float]) -> bool:
        """One durable request (:mod:`consumers.analysis.requests`), through the same path as
        a queued analysis (consent, A/B plan, cache, call guard, Bedrock, write): True when
        it is finished (stored, or a cache hit), False when a stop cut it short (the request
        is to come back). Raises when it could not be stored (counted as an error)."""
        while customer_id in self._inflight:
            await asyncio.sleep(0.05)
        if self._closing:
            return False
        self._inflight.add(customer_id)
        try:
            # on demand (``caa analyze`` through the queue): no cache, as analyze_now
            await self._analyze(customer_id, x, trigger, arrivals, trigger == "on_demand")
            return True
        except (_Stopped, asyncio.CancelledError) as exc:
            self._cut += 1
            self._count("stopped")
            if isinstance(exc, asyncio.CancelledError):
                raise
            return False
        except Exception as exc:
            self._error("analysis", customer_id, exc)
            raise
        finally:
            self._inflight.discard(customer_id)
            self._finished += 1

    async def _claimed(self, cid: str, x: AnalysisInput, trigger: TriggerKind,
                       arrivals: list[float], bypass: bool,
                       read_at: datetime | None = None) -> AnalysisRecord | None:
        """Analyse ``cid``, whose in-flight marker the caller set; errors become counts."""
        try:
            return await self._analyze(cid, x, trigger, arrivals, bypass, read_at)
        except _Stopped:
            self._requeue(cid, x, trigger, arrivals)
            return None
        except asyncio.CancelledError:
            if self._closing:  # cut short by a stop: not stored, queued again
                self._requeue(cid, x, trigger, arrivals)
            raise
        except Exception as exc:  # noqa: BLE001 -- kept as data: counted, shown in the summary
            self._error("analysis", cid, exc)
            return None
        finally:
            self._inflight.discard(cid)

    def _requeue(self, cid: str, x: AnalysisInput, trigger: TriggerKind,
                 arrivals: list[float]) -> None:
        """An analysis a stop cut short: counted, and its customer back in the queue (as an
        SQS message not deleted becomes visible again); an on-demand one is its caller's."""
        self._cut += 1
        self._count("stopped")
        if trigger != "on_demand":
            now = self._clock()
            self.policy.defer(cid, Pending(x, now, now, trigger, list(arrivals)), now)

    def _error(self, where: str, cid: str, exc: Exception) -> None:
        self._count("errors")
        self._count(f"errors_{where}")
        self.errors.append(f"{where} {cid}: {type(exc).__name__}: {exc}"[:300])
        del self.errors[:-MAX_ERRORS_KEPT]

    def _consented(self, x: AnalysisInput) -> bool:
        return x.consent is True if self.consent_mode == "opt_in" else x.consent is not False

    async def _previous(self, cid: str) -> AnalysisRecord | None:
        if cid not in self._latest:
            self._remember(cid, (await self.store.latest([cid])).get(cid))
        return self._latest.get(cid)

    async def _analyze(self, cid: str, x: AnalysisInput, trigger: TriggerKind,
                       arrivals: list[float], bypass: bool,
                       read_at: datetime | None = None) -> AnalysisRecord | None:
        # the analysis's ``input_at``: when ``x`` was read (queued: when it was filed);
        # otherwise it was read just before this call
        started = read_at or self._wall()
        signature = Signature.of(x, self.version)
        if not self._consented(x):
            return await self._finish(cid, x, started, trigger, arrivals, None, "no_consent", None)
        if self.variants.is_control(cid):  # A/B control: the statistical analysis, by design
            return await self._finish(cid, x, started, trigger, arrivals, None, AB_CONTROL, None)
        if not bypass and trigger != "on_demand" and self.router.enabled:
            way = await self.router.route(x.p_alive, x.clv, x.purchase_days)
            self._count(f"route_{way}", shared=True)
            if way == "statistical":
                prev = await self._previous(cid) if trigger == "schedule" else None
                if prev is not None and prev.fallback_reason == LOW_VALUE:
                    # nothing bought since its last statistical analysis: no rewrite per refit
                    self._count("cache_hits", shared=True)
                    return None
                return await self._finish(cid, x, started, trigger, arrivals, None, LOW_VALUE, None)
            if way == "daily":  # the daily batch analyses it (batch price, within its schedule)
                return None
        if not bypass:
            prev = await self._previous(cid)
            old = Signature.from_dict(prev.signature) if prev and prev.signature else None
            if stale_reason(old, signature, self.rules) is None:
                self._count("cache_hits", shared=True)
                self._fresh(arrivals)
                return None
        outcome = await self.guard.call(x, self._stop)
        if isinstance(outcome, Refused) and outcome.reason == "stopped":
            raise _Stopped
        if isinstance(outcome, Refused):
            return await self._finish(cid, x, started, trigger, arrivals, None, outcome.reason,
                                      None)
        self.counts["bedrock_calls"] += outcome.attempts
        self._metric.update({"bedrock_calls": outcome.attempts,
                             "input_tokens": outcome.input_tokens,
                             "output_tokens": outcome.output_tokens,
                             "failed_analyses": int(outcome.failure not in (None, "stopped"))})
        self._metric_cost += outcome.cost_usd
        if outcome.failure == "stopped":
            raise _Stopped
        if outcome.analysis is not None:
            return await self._finish(cid, x, started, trigger, arrivals, outcome, None,
                                      signature)
        return await self._finish(cid, x, started, trigger, arrivals, outcome, outcome.failure,
                                  None)

    async def _finish(self, cid: str, x: AnalysisInput, started: datetime, trigger: TriggerKind,
                      arrivals: list[float], result: AnalyzerResult | None, fallback: str | None,
                      signature: Signature | None) -> AnalysisRecord:
        """Store the analysis (Bedrock's, or the statistical one with the fallback reason)."""
        spent = result
        if result is None or result.analysis is None:
            result = await self.fallback.analyze(x)
        assert result.analysis is not None
        rec = AnalysisRecord(
            customer_id=cid, at=self._wall(), as_of=x.as_of, source=result.source,
            model=result.model, trigger=trigger, fallback_reason=fallback,
            input_tokens=spent.input_tokens if spent else 0,
            output_tokens=spent.output_tokens if spent else 0,
            cost_usd=spent.cost_usd if spent else 0.0,
            latency_ms=spent.latency_ms if spent else 0.0,
            attempts=spent.attempts if spent else 0,
            analysis=result.analysis,
            signature=signature.to_dict() if signature else None,
            endpoint=spent.endpoint if spent else None,
        )
        if rec.endpoint:
            self.endpoints.add(rec.endpoint)
        self._remember(cid, rec)  # before the writes: predictions written meanwhile carry it
        stored = await self.store.record(rec, input_at=started)
        if stored != "latest":  # a newer analysis, or an erasure, landed meanwhile: what
            # the store holds is the one predictions carry (and reconcile puts back)
            self._remember(cid, (await self.store.latest([cid])).get(cid))
            self._count(f"analyses_{stored}")
        self._count("analyses", shared=True)
        self._count(f"source_{rec.source}", shared=True)
        if fallback in (AB_CONTROL, LOW_VALUE):
            self._count(fallback, shared=True)  # not a fallback: by design
        elif fallback:
            self._count("fallbacks", shared=True)
            self._count(f"fallback_{fallback}", shared=True)
        self._fresh(arrivals)
        return rec

    def _fresh(self, arrivals: list[float]) -> None:
        now = self._clock()
        self.freshness_s.extend(now - a for a in arrivals)
        del self.freshness_s[:-100_000]

    def _count(self, name: str, shared: bool = False) -> None:
        self.counts[name] += 1
        if shared:
            self._unflushed[name] += 1

    async def flush_counters(self) -> bool:
        """Add cache hits, fallbacks and analyses to the day's shared counters and publish
        them with calls, tokens and cost as metrics; on failure keep them for next time."""
        deltas, self._unflushed = self._unflushed, Counter()
        metric, self._metric = self._metric, Counter()
        cost, self._metric_cost = self._metric_cost, 0.0
        try:
            await self.ledger_add(deltas)
        except Exception as exc:  # noqa: BLE001 -- retried at the next flush
            self._unflushed.update(deltas)
            self._metric.update(metric)
            self._metric_cost += cost
            self._error("flush", "-", exc)
            return False
        try:
            await self.metrics.put({**deltas, **metric, "cost_usd": cost})
        except Exception as exc:  # noqa: BLE001 -- metrics are best effort; counters landed
            self._error("metrics", "-", exc)
            return False
        return True

    async def ledger_add(self, deltas: Counter[str]) -> None:
        await self.guard.ledger.add(self._wall().date().isoformat(), dict(deltas))

    def summary(self) -> dict[str, object]:
        fresh = sorted(self.freshness_s)

        def q(p: float) -> float:
            return round(fresh[min(len(fresh) - 1, int(p * len(fresh)))], 2) if fresh else 0.0

        c = self.counts
        return {
            "model": self.analyzer.model, "analyses": c["analyses"],
            "bedrock_answers": c["source_bedrock"], "bedrock_calls": c["bedrock_calls"],
            "cache_hits": c["cache_hits"], "fallbacks": c["fallbacks"],
            "fallback_reasons": {k.removeprefix("fallback_"): v for k, v in sorted(c.items())
                                 if k.startswith("fallback_")},
            "routes": {r: c[f"route_{r}"] for r in ROUTES if c[f"route_{r}"]},
            "errors": c["errors"], "breaker_opened": self.breaker.opened,
            **({"pending_at_stop": len(self.policy), "cut_short_at_stop": self._cut}
               if self._closing else {}),
            "freshness_p50_s": q(0.5), "freshness_p95_s": q(0.95),
            **({"answered_by": sorted(self.endpoints), "note": simulated_note(self.endpoints)}
               if self.endpoints else {}),
        }
