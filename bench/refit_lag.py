"""How long a refit stalls the consumer's event loop, before and after its CPU work moved
off the loop (pure: no emulator; issue 15, item 4).

What is measured. A probe task on the loop sleeps 10 ms in a loop and records how late
each wake-up is (``loop.time()`` drift) while one refit runs
(:func:`consumers.refit.refit`: the purchase model, the segments and every prediction
rewritten) over every customer of the full CDNOW log, with the models table and the
predictions in memory. "on the loop" is the refit as it was: the same functions called
inline (``asyncio.to_thread`` replaced by a direct call), so the loop waits for each fit;
"off the loop" is the refit as it is. Both purchase models (Pareto/NBD, BG/NBD).

A full (generation 2) collection of the cyclic garbage collector stops every thread,
whichever runs the refit, for a time in proportion to the heap (0.2-0.7 s with the full
log's 23,570 states and a refit's new objects in memory): off the loop, the largest lag is
that pause (the "gc pause" column: the longest one during the refit), not the fitting.

Run: ``python bench/refit_lag.py`` (BENCH_REFIT_EVENTS limits the events read).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

from consumers import refit as refit_module
from consumers.registry import ModelRegistry, RegistryConfig
from models.prediction import Prediction
from models.state import CustomerState
from producers.datasets.cdnow import load_events, time_ordered

TICK_S = 0.01


class Models:
    def __init__(self) -> None:
        self.docs: dict[str, tuple[int, dict[str, Any]]] = {}

    async def load(self, name: str) -> tuple[int, dict[str, Any]] | None:
        return self.docs.get(name)

    async def save(self, name: str, expected_version: int, body: dict[str, Any]) -> int:
        self.docs[name] = (expected_version + 1, body)
        return expected_version + 1

    async def put(self, name: str, body: dict[str, Any]) -> None:
        self.docs[name] = (0, body)


class Customers:
    def __init__(self, states: list[CustomerState]) -> None:
        self.states = states

    async def all(self, **_: Any) -> list[CustomerState]:
        return self.states


class Predictions:
    def __init__(self) -> None:
        self.saved = 0

    async def save(self, out: list[Prediction]) -> None:
        self.saved += len(out)
        await asyncio.sleep(0)


async def _inline(f: Callable[..., Any], *args: Any) -> Any:
    return f(*args)


async def measure(states: list[CustomerState], model: str, off_loop: bool) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    pauses: list[float] = []
    started_gc: list[float] = []
    done = asyncio.Event()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started_gc.append(time.perf_counter())
        elif started_gc:
            pauses.append(time.perf_counter() - started_gc.pop())

    async def probe() -> None:
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(TICK_S)
            lags.append(loop.time() - t0 - TICK_S)

    registry = ModelRegistry(Models(), RegistryConfig(  # type: ignore[arg-type]
        n_segments=5, segment_seed=1, segment_warmup=10, forecast_model=model))  # type: ignore[arg-type]
    gc.collect()
    gc.callbacks.append(on_gc)
    try:
        task = asyncio.create_task(probe())
        await asyncio.sleep(5 * TICK_S)
        lags.clear()
        patch = (contextlib.nullcontext() if off_loop
                 else mock.patch("asyncio.to_thread", _inline))
        t0 = time.perf_counter()
        with patch:
            await refit_module.refit(Customers(states), Predictions(),  # type: ignore[arg-type]
                                     registry, rewrite=True)
        seconds = time.perf_counter() - t0
        done.set()
        await task
    finally:
        gc.callbacks.remove(on_gc)
    lags.sort()
    return {"seconds": seconds, "max_ms": lags[-1] * 1000,
            "p99_ms": lags[int(0.99 * (len(lags) - 1))] * 1000,
            "median_ms": lags[len(lags) // 2] * 1000, "ticks": len(lags),
            "gc_pause_ms": max(pauses, default=0.0) * 1000}


def main() -> None:
    limit = int(os.environ.get("BENCH_REFIT_EVENTS", "0")) or None
    by_id: dict[str, CustomerState] = {}
    for e in time_ordered(load_events(limit=limit)):
        by_id.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    states = list(by_id.values())
    print(f"refit over {len(states):,} CDNOW customers, predictions rewritten; "
          f"event-loop lag of a {TICK_S * 1000:.0f} ms probe ({os.cpu_count()} CPUs)")
    print(f"{'model':<11} {'refit CPU work':<15} {'refit s':>7} {'max lag':>8} "
          f"{'p99':>6} {'median':>6} {'ticks':>5} {'gc pause':>8}")
    for model in ("pareto_nbd", "bgnbd"):
        for off_loop in (False, True):
            r = asyncio.run(measure(states, model, off_loop))
            print(f"{model:<11} {'off the loop' if off_loop else 'on the loop':<15} "
                  f"{r['seconds']:>7.2f} {r['max_ms']:>6.0f}ms {r['p99_ms']:>4.0f}ms "
                  f"{r['median_ms']:>4.0f}ms {r['ticks']:>5.0f} {r['gc_pause_ms']:>6.0f}ms")


if __name__ == "__main__":
    main()
