"""AI analysis beside the stream: triggered, budgeted, rate limited, never blocking.

The applier writes the statistical prediction and only then calls
:meth:`Enricher.observe`, which files the customers whose state changed with
the :class:`~consumers.trigger.TriggerPolicy` and returns at once. The
enricher's own task releases customers when their debounce window closes and
runs at most ``bedrock_concurrency`` analyses at a time. For each one, in order:

1. no consent (per ``consent_mode``) → statistical analysis, reason ``no_consent``;
2. the cached analysis still holds (:func:`~consumers.trigger.stale_reason`) → skip;
3. the circuit breaker is open → statistical, ``circuit_open``;
4. the day's budget cannot cover the worst case → statistical, ``budget_exhausted``;
5. the token bucket cannot serve it within ``rate_wait_max_s`` → statistical, ``rate_limited``;
6. Bedrock; a failure (after its own retries) → statistical with the failure as reason.

Each analysis is stored (latest, history, merged into the prediction item).
A write that fails is retried on the customer's next trigger; the statistical
prediction is already durable, so nothing is lost and no shard waits.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from consumers.analysis_store import AnalysisStore
from consumers.analyzer import Analyzer, AnalyzerResult, PriceTable, StatisticalAnalyzer
from consumers.breaker import CircuitBreaker
from consumers.core import BatchResult
from consumers.metrics import Metrics
from consumers.tokenbucket import TokenBucket
from consumers.trigger import CacheRules, Pending, Signature, TriggerPolicy, stale_reason
from consumers.usage import UsageLedger
from models.analysis import AnalysisRecord, TriggerKind, tool_spec
from models.prediction import Prediction
from models.prompt import PROMPT_VERSION, SYSTEM_PROMPT, AnalysisInput, build_input, render_user
from models.state import CustomerState

_TOOL_CHARS = len(json.dumps(tool_spec()))


class Enricher:
    def __init__(
        self,
        *,
        analyzer: Analyzer,
        store: AnalysisStore,
        ledger: UsageLedger,
        prices: PriceTable,
        pseudonym_key: bytes,
        reference_order_value: Callable[[], float],
        debounce_s: float = 60.0,
        concurrency: int = 4,
        max_tokens: int = 1024,
        daily_budget_usd: float = 10.0,
        tokens_per_minute: int = 100_000,
        rate_wait_max_s: float = 30.0,
        consent_mode: str = "opt_in",
        cache_rules: CacheRules | None = None,
        breaker: CircuitBreaker | None = None,
        cache_size: int = 200_000,
        chars_per_token: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: Metrics | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.fallback = StatisticalAnalyzer()
        self.store = store
        self.ledger = ledger
        self.prices = prices
        self.key = pseudonym_key
        self.reference_order_value = reference_order_value
        self.policy: TriggerPolicy[AnalysisInput] = TriggerPolicy(debounce_s)
        self.max_tokens = max_tokens
        self.budget = daily_budget_usd
        self.rate_wait_max_s = rate_wait_max_s
        self.consent_mode = consent_mode
        self.rules = cache_rules or CacheRules()
        self.breaker = breaker or CircuitBreaker()
        self.chars_per_token = chars_per_token
        self.version = f"{analyzer.model}|p{PROMPT_VERSION}"
        self._clock = clock
        self._wall = wall
        self.bucket = TokenBucket(tokens_per_minute, clock())
        self._sem = asyncio.Semaphore(concurrency)
        self._latest: OrderedDict[str, AnalysisRecord | None] = OrderedDict()
        self._cache_size = cache_size
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[AnalysisRecord | None]] = set()
        self._wake = asyncio.Event()
        self._closing = False
        self.counts: Counter[str] = Counter()
        self._unflushed: Counter[str] = Counter()
        self._metric: Counter[str] = Counter()  # deltas for CloudWatch since the last flush
        self.metrics = metrics or Metrics(None, {})
        self._metric_cost = 0.0
        self.freshness_s: list[float] = []  # per purchase: arrival -> analysis reflecting it
        self.errors: list[str] = []

    # -- what the applier calls ------------------------------------------------------
    def observe(self, result: BatchResult) -> None:
        """File the customers this (durably written) batch changed; never blocks."""
        if not result.states:
            return
        now = self._clock()
        by_id = {p.customer_id: p for p in result.predictions}
        ref = self.reference_order_value()
        for cid, state in result.states.items():
            x = build_input(state, by_id.get(cid), as_of_ts=result.watermark, key=self.key,
                            reference_order_value=ref)
            self.policy.purchase(cid, x, now)
        self._wake.set()

    def schedule(self, states: Iterable[CustomerState], predictions: dict[str, Prediction],
                 as_of_ts: int) -> int:
        """Queue customers for a scheduled re-analysis (no debounce; the cache still applies)."""
        now, n, ref = self._clock(), 0, self.reference_order_value()
        for s in states:
            x = build_input(s, predictions.get(s.customer_id), as_of_ts=as_of_ts, key=self.key,
                            reference_order_value=ref)
            self.policy.schedule(s.customer_id, x, now)
            n += 1
        self._wake.set()
        return n

    async def attach(self, predictions: Sequence[Prediction]) -> list[Prediction]:
        """Carry each customer's latest analysis into its new statistical prediction."""
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

    def _remember(self, cid: str, rec: AnalysisRecord | None) -> None:
        self._latest[cid] = rec
        self._latest.move_to_end(cid)
        while len(self._latest) > self._cache_size:
            self._latest.popitem(last=False)

    # -- running ---------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Release due customers until ``stop``; then wait for the calls in flight."""
        while not stop.is_set():
            self._dispatch(self.policy.due(self._clock()))
            nxt = self.policy.next_due_at()
            timeout = 1.0 if nxt is None else min(1.0, max(0.005, nxt - self._clock()))
            self._wake.clear()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        await self.settle()

    def abandon_queued(self) -> None:
        """On a stop signal: analyses waiting for a slot are dropped (their customers keep
        the statistical prediction and are analysed again on their next trigger); the calls
        in flight finish."""
        self._closing = True

    async def drain(self) -> None:
        """Analyse everything pending now, debounce or not, and wait for it (end of a run)."""
        self._dispatch(self.policy.flush())
        await self.settle()

    async def settle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    def _dispatch(self, due: list[tuple[str, Pending[AnalysisInput]]]) -> None:
        for cid, pending in due:
            if cid in self._inflight:  # one analysis per customer at a time
                self.policy.defer(cid, pending, self._clock() + 0.5)
                continue
            self._inflight.add(cid)
            task = asyncio.create_task(self._guarded(cid, pending.features, pending.trigger,
                                                     pending.arrivals, False))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def analyze_now(self, customer_id: str, x: AnalysisInput) -> AnalysisRecord | None:
        """On demand: bypasses debounce and cache (consent, budget and limits still hold)."""
        return await self._guarded(customer_id, x, "on_demand", [], True)

    async def _guarded(self, cid: str, x: AnalysisInput, trigger: TriggerKind,
                       arrivals: list[float], bypass: bool) -> AnalysisRecord | None:
        try:
            async with self._sem:
                if self._closing:
                    self._count("dropped_at_stop")
                    return None
                return await self._analyze(cid, x, trigger, arrivals, bypass)
        except Exception as exc:  # noqa: BLE001 -- kept as data: counted, shown in the summary
            self._count("store_errors")
            self.errors.append(f"{cid}: {type(exc).__name__}: {exc}"[:300])
            return None
        finally:
            self._inflight.discard(cid)

    def _consented(self, x: AnalysisInput) -> bool:
        return x.consent is True if self.consent_mode == "opt_in" else x.consent is not False

    async def _previous(self, cid: str) -> AnalysisRecord | None:
        if cid not in self._latest:
            self._remember(cid, (await self.store.latest([cid])).get(cid))
        return self._latest.get(cid)

    def estimate_input_tokens(self, x: AnalysisInput) -> int:
        chars = len(SYSTEM_PROMPT) + len(render_user(x)) + _TOOL_CHARS
        return int(chars / self.chars_per_token) + 600  # + the tool-use system preamble

    async def _analyze(self, cid: str, x: AnalysisInput, trigger: TriggerKind,
                       arrivals: list[float], bypass: bool) -> AnalysisRecord | None:
        signature = Signature.of(x, self.version)
        if not self._consented(x):
            return await self._finish(cid, x, trigger, arrivals, None, "no_consent", None)
        if not bypass:
            prev = await self._previous(cid)
            old = Signature.from_dict(prev.signature) if prev and prev.signature else None
            if stale_reason(old, signature, self.rules) is None:
                self._count("cache_hits", shared=True)
                self._fresh(arrivals)
                return None
        if not self.breaker.allow(self._clock()):
            return await self._finish(cid, x, trigger, arrivals, None, "circuit_open", None)
        day = self._wall().date().isoformat()
        est_in = self.estimate_input_tokens(x)
        reserve = self.prices.cost(self.analyzer.model, est_in, self.max_tokens)
        if not await self.ledger.reserve(day, reserve, self.budget):
            return await self._finish(cid, x, trigger, arrivals, None, "budget_exhausted", None)
        want = est_in + self.max_tokens
        wait = self.bucket.wait_s(want, self._clock())
        if wait > self.rate_wait_max_s:
            await self.ledger.release(day, reserve)
            return await self._finish(cid, x, trigger, arrivals, None, "rate_limited", None)
        while not self.bucket.try_take(want, self._clock()):
            await asyncio.sleep(max(0.01, self.bucket.wait_s(want, self._clock())))
        result = await self.analyzer.analyze(x)
        self.bucket.give_back(want - result.input_tokens - result.output_tokens)
        await self.ledger.settle(day, reserve, result.cost_usd, {
            "calls": result.attempts, "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens, "failed_calls": int(result.failure is not None),
        })
        self.counts["bedrock_calls"] += result.attempts
        self._metric.update({"bedrock_calls": result.attempts,
                             "input_tokens": result.input_tokens,
                             "output_tokens": result.output_tokens,
                             "failed_analyses": int(result.failure is not None)})
        self._metric_cost += result.cost_usd
        if result.analysis is not None:
            self.breaker.record_success(self._clock())
            return await self._finish(cid, x, trigger, arrivals, result, None, signature)
        if result.failure != "invalid_answer":
            self.breaker.record_failure(self._clock())
        return await self._finish(cid, x, trigger, arrivals, result, result.failure, None)

    async def _finish(self, cid: str, x: AnalysisInput, trigger: TriggerKind,
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
        )
        await self.store.record(rec)
        self._remember(cid, rec)
        self._count("analyses", shared=True)
        self._count(f"source_{rec.source}", shared=True)
        if fallback:
            self._count("fallbacks", shared=True)
            self._count(f"fallback_{fallback}", shared=True)
        self._fresh(arrivals)
        return rec

    def _fresh(self, arrivals: list[float]) -> None:
        now = self._clock()
        self.freshness_s.extend(now - a for a in arrivals)
        if len(self.freshness_s) > 100_000:
            del self.freshness_s[: len(self.freshness_s) - 100_000]

    def _count(self, name: str, shared: bool = False) -> None:
        self.counts[name] += 1
        if shared:
            self._unflushed[name] += 1

    async def flush_counters(self) -> None:
        """Add cache hits, fallbacks and analyses to the day's shared counters, and publish
        them with the calls, tokens and cost as metrics."""
        deltas, self._unflushed = dict(self._unflushed), Counter()
        metric: dict[str, float] = {**deltas, **self._metric}
        self._metric = Counter()
        metric["cost_usd"], self._metric_cost = self._metric_cost, 0.0
        await self.ledger.add(self._wall().date().isoformat(), deltas)
        await self.metrics.put(metric)

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
            "store_errors": c["store_errors"], "breaker_opened": self.breaker.opened,
            "freshness_p50_s": q(0.5), "freshness_p95_s": q(0.95),
        }
