"""Bedrock calls per 1,000 purchases and p95 freshness: our trigger policy against the naive one.

A discrete-event simulation in virtual time that runs the real policy code
(:class:`consumers.analysis.trigger.TriggerPolicy`, :func:`consumers.analysis.trigger.stale_reason`,
:func:`models.prompt.build_input` on real :class:`models.state.CustomerState`s)
over two streams:

* the synthetic burst-heavy grocery stream (bursts of 2-4 orders 5-50 s apart), and
* the CDNOW log replayed with compressed time (``--cdnow-day-s`` seconds per day,
  each day's orders spread evenly over it).

Calls take ``--latency-s`` seconds (Claude Haiku 4.5 answering a ~500-token tool call is a
few seconds) and share ``--concurrency`` slots and a token bucket of ``--tpm`` tokens per
minute, taken as the enricher takes them and squared up to the tokens used (4 characters a
token in, ``output_tokens`` out). Cache hits count as fresh when the cache decides. The naive
policy calls once per purchase, immediately. Freshness is, per purchase, the time from its
arrival to the end of the first analysis (or cache decision) that reflects it.

Run with ``make bench``; writes out/bench-analysis.json.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from consumers.analysis.tokenbucket import TokenBucket
from consumers.analysis.trigger import CacheRules, Signature, TriggerPolicy, stale_reason
from consumers.analysis.value_route import ROUTES, ValueCuts, cuts_of, route
from models.analysis import tool_spec
from models.events import PurchaseEvent
from models.learn.forecaster import Forecaster
from models.money import NO_RATES, Rates
from models.prediction import SegmentRef
from models.prompt import SYSTEM_PROMPT, AnalysisInput, build_input, render_user
from models.state import DAY, CustomerState
from producers.datasets.cdnow import load_events, time_ordered
from producers.datasets.synthetic import generate

KEY = b"bench"
MAX_TOKENS = 1024
_FIXED_CHARS = len(SYSTEM_PROMPT) + len(json.dumps(tool_spec()))


@dataclass
class Params:
    debounce_s: float = 60.0
    latency_s: float = 3.0
    concurrency: int = 4
    tpm: int = 100_000
    output_tokens: int = 600


def _q(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2) if xs else 0.0


class _Calls:
    """Concurrency slots and the token bucket: when a call wanted at ``t`` can start."""

    def __init__(self, p: Params) -> None:
        self.p = p
        self.slots = [0.0] * p.concurrency
        self.bucket = TokenBucket(p.tpm, 0.0)
        self.n = 0

    def run(self, t: float, x: AnalysisInput) -> float:
        """Start a call for ``x`` no earlier than ``t``; returns when it completes."""
        chars = _FIXED_CHARS + len(render_user(x))
        used = chars / 4 + self.p.output_tokens
        # as consumers.analysis.guard does: take half the worst case of two billable attempts
        # (input bounded at 2 characters a token + 600, maxTokens out), give back the rest
        bound_in = chars / 2 + 600
        take = (2 * bound_in + MAX_TOKENS + 300 + 2 * MAX_TOKENS) / 2
        start = max(t, heapq.heappop(self.slots))
        start += self.bucket.wait_s(take, start)
        self.bucket.try_take(take, start)
        self.bucket.give_back(take - used)
        end = start + self.p.latency_s
        heapq.heappush(self.slots, end)
        self.n += 1
        return end


def simulate(events: list[PurchaseEvent], arrival: Callable[[PurchaseEvent], float],
             p: Params, naive: bool) -> dict[str, float]:
    calls = _Calls(p)
    policy: TriggerPolicy[AnalysisInput] = TriggerPolicy(p.debounce_s)
    rules, version = CacheRules(), "haiku|p1"
    states: dict[str, CustomerState] = {}
    seen: dict[str, Signature] = {}
    fresh: list[float] = []
    hits = 0

    def release(until: float) -> None:
        nonlocal hits
        while (at := policy.next_due_at()) is not None and at <= until:
            for cid, pend in policy.due(at):
                sig = Signature.of(pend.features, version)
                if stale_reason(seen.get(cid), sig, rules) is None:
                    hits += 1
                    fresh.extend(at - a for a in pend.arrivals)
                    continue
                seen[cid] = sig
                done = calls.run(at, pend.features)
                fresh.extend(done - a for a in pend.arrivals)

    for e in events:
        t = arrival(e)
        release(t)
        state = states.setdefault(e.customer_id, CustomerState.new(e.customer_id))
        state.apply(e)
        x = build_input(state, None, as_of_ts=state.last_ts, key=KEY, reference_order_value=30.0)
        if naive:
            fresh.append(calls.run(t, x) - t)
        else:
            policy.purchase(e.customer_id, x, t)
    release(float("inf"))
    return {
        "purchases": len(events), "calls": calls.n,
        "calls_per_1000": round(1000 * calls.n / len(events), 1), "cache_hits": hits,
        "freshness_p50_s": _q(fresh, 0.5), "freshness_p95_s": _q(fresh, 0.95),
        "freshness_max_s": _q(fresh, 1.0),
    }


@dataclass
class RouteParams:
    """Value routing in virtual time (:mod:`consumers.analysis.value_route`): its shares,
    refits (the first after ``first_refit_days``, then every ``refit_days`` of arrival time)
    recomputing the cuts over the customers active within ``active_days`` (at most
    ``cut_sample`` of them, every k-th by id: a quantile estimate, to keep the benchmark
    quick; the refit uses all), and the daily batch: runs every ``batch_every_h`` hours from
    ``batch_at_h`` UTC, each job assumed to take ``batch_job_h`` hours (Bedrock gives no
    completion time). Runs with fewer than ``batch_min_records`` requests (Bedrock's minimum
    job size) are counted apart. ``daily`` False: no daily batch (the middle stays on
    demand)."""

    top_share: float = 0.2
    low_share: float = 0.4
    first_refit_days: float = 1.0
    refit_days: float = 7.0
    active_days: int = 30
    cut_sample: int = 1000
    batch_every_h: float = 12.0
    batch_at_h: float = 3.0
    batch_job_h: float = 6.0
    batch_min_records: int = 100
    daily: bool = True


class _Routed:
    """The state of :func:`simulate_routed`."""

    def __init__(self, forecaster: Forecaster, p: Params, rp: RouteParams, first: float,
                 rates: Rates) -> None:
        self.f, self.p, self.rp, self.rates = forecaster, p, rp, rates
        self.calls = _Calls(p)
        self.policy: TriggerPolicy[AnalysisInput] = TriggerPolicy(p.debounce_s)
        self.rules, self.version = CacheRules(), "haiku|p2"
        self.states: dict[str, CustomerState] = {}
        self.seen: dict[str, Signature] = {}
        self.fresh: dict[str, list[float]] = {r: [] for r in ROUTES}
        self.n: Counter[str] = Counter()
        self.waiting: dict[str, tuple[AnalysisInput, list[float]]] = {}
        self.seg, self.now = SegmentRef(id=0, name="all"), datetime.now(UTC)
        self.cuts: ValueCuts | None = None
        self.cut_log: list[dict[str, float]] = []
        self.first = first
        self.next_refit = first + rp.first_refit_days * DAY
        self.next_run = first // DAY * DAY + rp.batch_at_h * 3600
        while self.next_run <= first:
            self.next_run += rp.batch_every_h * 3600

    def _route(self, x: AnalysisInput, daily: bool) -> str:
        return route(x.p_alive, x.clv, self.cuts, daily=daily, purchase_days=x.purchase_days)

    def _cached(self, cid: str, x: AnalysisInput) -> bool:
        sig = Signature.of(x, self.version)
        if stale_reason(self.seen.get(cid), sig, self.rules) is None:
            self.n["cache_hits"] += 1
            return True
        self.seen[cid] = sig
        return False

    def purchase(self, e: PurchaseEvent, t: float) -> None:
        self.advance(t)
        state = self.states.setdefault(e.customer_id, CustomerState.new(e.customer_id))
        state.apply(e)
        pred = self.f.predict(state, self.seg, state.last_ts, self.now, rates=self.rates)
        x = build_input(state, pred, as_of_ts=state.last_ts, key=KEY, reference_order_value=30.0,
                        rates=self.rates)
        self.policy.purchase(e.customer_id, x, t)

    def released(self, at: float, cid: str, x: AnalysisInput, arrivals: list[float]) -> None:
        way = self._route(x, self.rp.daily)
        self.n[f"route_{way}"] += 1
        if way == "daily":
            old = self.waiting.get(cid)
            self.waiting[cid] = (x, (old[1] if old else []) + arrivals)
            return
        done = at
        if way == "on_demand" and not self._cached(cid, x):
            done = self.calls.run(at, x)
            self.n["on_demand"] += 1
        self.fresh[way].extend(done - a for a in arrivals)

    def batch_run(self, at: float) -> None:
        self.n["runs"] += 1
        sent = 0
        for cid, (x, arrivals) in sorted(self.waiting.items()):
            if self._route(x, True) == "statistical" or self._cached(cid, x):
                self.fresh["daily"].extend(at - a for a in arrivals)
                continue
            sent += 1
            self.fresh["daily"].extend(at + self.rp.batch_job_h * 3600 - a for a in arrivals)
        self.waiting.clear()
        self.n["batch"] += sent
        if 0 < sent < self.rp.batch_min_records:
            self.n["runs_below_minimum"] += 1
            self.n["batch_below_minimum"] += sent

    def refit(self, at: float) -> None:
        if not self.states:
            return
        as_of = max(s.last_ts for s in self.states.values())
        recent = as_of - self.rp.active_days * DAY
        active = sorted(cid for cid, s in self.states.items()
                        if s.last_ts >= recent and s.purchase_days > 1)
        step = max(1, math.ceil(len(active) / self.rp.cut_sample))
        # each one's CLV as of their own last purchase, as consumers.refit.route_cuts_doc
        clvs = [c for cid in active[::step]
                if (c := self.f.predict(self.states[cid], self.seg, self.states[cid].last_ts,
                                        self.now, rates=self.rates).clv)
                is not None]
        self.cuts = cuts_of(clvs, as_of=as_of, top_share=self.rp.top_share,
                            low_share=self.rp.low_share)
        self.n["refits"] += 1
        if self.cuts is not None:
            self.cut_log.append({"day": round((at - self.first) / DAY, 1),
                                 "active": len(active), "top_clv": round(self.cuts.top_clv, 2),
                                 "low_clv": round(self.cuts.low_clv, 2)})

    def advance(self, until: float) -> None:
        while True:
            due = self.policy.next_due_at()
            run = self.next_run if (self.rp.daily or self.waiting) else math.inf
            at = min(math.inf if due is None else due, self.next_refit, run)
            if at > until or at == math.inf:
                return
            if at == self.next_refit:
                self.refit(at)
                self.next_refit += self.rp.refit_days * DAY
            elif at == due:
                for cid, pend in self.policy.due(at):
                    self.released(at, cid, pend.features, pend.arrivals)
            else:
                self.batch_run(at)
                self.next_run += self.rp.batch_every_h * 3600


def simulate_routed(events: list[PurchaseEvent], arrival: Callable[[PurchaseEvent], float],
                    forecaster: Forecaster, p: Params, rp: RouteParams,
                    rates: Rates = NO_RATES) -> dict[str, Any]:
    """Our policy with value routing: the debounce and the cache as :func:`simulate`, each
    released customer routed by :func:`~consumers.analysis.value_route.route` on its fresh
    prediction (``forecaster``: the refit's models) against the cuts of the latest refit
    (:func:`~consumers.analysis.value_route.cuts_of` over the active repeat customers' CLV,
    each as of their own last purchase, as :func:`consumers.refit.route_cuts_doc`; none before the
    first: everyone on demand). Daily-routed customers
    wait for the next batch run, which routes them again and applies the cache. Money in
    ``rates``' reporting currency.

    Returns calls (``on_demand``; ``batch``, of which ``batch_below_minimum`` in runs
    smaller than Bedrock's minimum job), analyses by route and freshness per route: seconds
    from a purchase's arrival to the analysis (or cache decision) reflecting it."""
    sim = _Routed(forecaster, p, rp, arrival(events[0]) if events else 0.0, rates)
    for e in events:
        sim.purchase(e, arrival(e))
    sim.advance((arrival(events[-1]) if events else 0.0) + p.debounce_s + 1)
    if sim.waiting:  # the run after the stream ends, for those still waiting
        sim.advance(sim.next_run)
    n, purchases = sim.n, len(events)
    return {
        "purchases": purchases,
        "calls": {k: n[k] for k in ("on_demand", "batch", "batch_below_minimum")},
        "calls_per_1000": round(1000 * (n["on_demand"] + n["batch"]) / max(1, purchases), 1),
        "routes": {r: n[f"route_{r}"] for r in ROUTES},
        "cache_hits": n["cache_hits"], "refits": n["refits"], "batch_runs": n["runs"],
        "batch_runs_below_minimum": n["runs_below_minimum"], "cuts": sim.cut_log,
        "freshness": {r: {"purchases": len(v), "p50_s": _q(v, 0.5), "p95_s": _q(v, 0.95),
                          "max_s": _q(v, 1.0)} for r, v in sim.fresh.items()},
    }


def streams(args: argparse.Namespace) -> dict[str, tuple[list[PurchaseEvent],
                                                          Callable[[PurchaseEvent], float]]]:
    syn = generate(customers=args.customers, days=args.days, seed=7, burst_rate=0.6,
                   burst_gap_s=(5, 50), burst_orders=4)
    cdnow = time_ordered(load_events(limit=args.cdnow_limit))
    per_day: dict[int, list[PurchaseEvent]] = {}
    for e in cdnow:
        per_day.setdefault(int(e.occurred_at.timestamp()) // DAY, []).append(e)
    offset = {e.event_id: (day * args.cdnow_day_s + i * args.cdnow_day_s / len(day_events))
              for day, day_events in per_day.items() for i, e in enumerate(day_events)}
    return {
        "synthetic_burst": (syn, lambda e: e.occurred_at.timestamp()),
        f"cdnow_{args.cdnow_day_s:g}s_per_day": (cdnow, lambda e: offset[e.event_id]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--cdnow-limit", type=int)
    ap.add_argument("--cdnow-day-s", type=float, default=600.0)
    ap.add_argument("--debounce-s", type=float, default=60.0)
    ap.add_argument("--latency-s", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--tpm", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path("out/bench-analysis.json"))
    args = ap.parse_args()
    p = Params(args.debounce_s, args.latency_s, args.concurrency, args.tpm)
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{'stream':<24} {'policy':<8} {'purchases':>9} {'calls/1000':>10} "
          f"{'cache hits':>10} {'p50 s':>8} {'p95 s':>8} {'max s':>9} {'sim s':>6}")
    for name, (events, arrival) in streams(args).items():
        for policy in ("ours", "naive"):
            started = time.perf_counter()
            r = simulate(events, arrival, p, naive=policy == "naive")
            results.setdefault(name, {})[policy] = r
            print(f"{name:<24} {policy:<8} {r['purchases']:>9,} {r['calls_per_1000']:>10.1f} "
                  f"{r['cache_hits']:>10,} {r['freshness_p50_s']:>8.1f} "
                  f"{r['freshness_p95_s']:>8.1f} {r['freshness_max_s']:>9.1f} "
                  f"{time.perf_counter() - started:>6.1f}")
    aim = p.debounce_s + 5
    syn = results["synthetic_burst"]["ours"]
    met = syn["calls_per_1000"] <= 300 and syn["freshness_p95_s"] <= aim
    print(f"aim on synthetic: <= 300 calls/1000 and p95 <= {aim:g} s: "
          f"{syn['calls_per_1000']:.0f} calls/1000, p95 {syn['freshness_p95_s']:.1f} s -> "
          f"{'met' if met else 'MISSED'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"params": vars(p), "results": results}, indent=2))


if __name__ == "__main__":
    main()
