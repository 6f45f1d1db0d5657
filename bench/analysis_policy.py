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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from consumers.analysis.tokenbucket import TokenBucket
from consumers.analysis.trigger import CacheRules, Signature, TriggerPolicy, stale_reason
from models.analysis import tool_spec
from models.events import PurchaseEvent
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
