"""A refit inside a consumer never stalls its event loop (issue 15, item 4): the fits run in
a worker thread and the registry is swapped on the loop, so a heartbeat task keeps ticking
while the purchase model and the segments are refitted and the predictions rewritten."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from consumers import refit as refit_module
from consumers.refit import fit_purchase_model, histories, refit
from consumers.registry import ModelRegistry, RegistryConfig
from models.learn import pareto_nbd
from models.prediction import Prediction
from models.state import CustomerState
from producers.datasets.cdnow import load_events
from tests.unit.consumers.test_refit_money import Customers, Models

#: the heartbeat's period and the most it may be late while a refit runs. The thread hands
#: the GIL back every 5 ms; on a 2-core box at load 3.5 the worst tick was 70 ms late (an
#: idle box: under 10 ms), where the same refit on the loop stalled it for 0.3-0.5 s. With
#: a benchmark and another test run beside it (load about 4 besides the test's own), ticks
#: were up to 283 ms late (2026-12-03): the limit allows for that, and the fits' threads are
#: checked as well (``off_loop``), which no load changes
TICK_S = 0.01
MAX_LAG_S = 0.35


class Predictions:
    def __init__(self) -> None:
        self.saved: list[Prediction] = []

    async def save(self, out: list[Prediction]) -> None:
        self.saved += out
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def states() -> list[CustomerState]:
    """The first CDNOW customers (some 6,000): a refit of a second or more on one core."""
    by_id: dict[str, CustomerState] = {}
    for e in load_events(limit=20_000):
        by_id.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    return list(by_id.values())


async def lag_during(work: Callable[[], Awaitable[Any]]) -> tuple[Any, list[float], float]:
    """Run ``work`` beside a heartbeat sleeping ``TICK_S``: its result, how late each tick
    was, and the seconds it took. The process's objects are frozen out of the cyclic
    garbage collector meanwhile: a full collection stops every thread (it is no part of
    the refit), and on a test process's heap it would measure the heap, not the design."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            t0 = loop.time()
            await asyncio.sleep(TICK_S)
            lags.append(loop.time() - t0 - TICK_S)

    gc.collect()
    gc.freeze()
    try:
        beat = asyncio.create_task(heartbeat())
        await asyncio.sleep(2 * TICK_S)
        started = time.perf_counter()
        result = await work()
        seconds = time.perf_counter() - started
        done.set()
        await beat
    finally:
        gc.unfreeze()
    return result, lags, seconds


def test_the_event_loop_keeps_ticking_during_a_refit(
        states: list[CustomerState], monkeypatch: pytest.MonkeyPatch) -> None:
    registry = ModelRegistry(Models(), RegistryConfig(  # type: ignore[arg-type]
        n_segments=5, segment_seed=1, segment_warmup=10, forecast_model="pareto_nbd"))
    predictions = Predictions()
    on_loop: list[str] = []  # the fits that ran on the event loop's thread (none may)
    for name in ("histories", "fit_purchase_model", "fit_spend_model"):
        fit = getattr(refit_module, name)

        def off_loop(*args: Any, _fit: Any = fit, _name: str = name) -> Any:
            if threading.current_thread() is threading.main_thread():
                on_loop.append(_name)
            return _fit(*args)

        monkeypatch.setattr(refit_module, name, off_loop)
    report, lags, seconds = asyncio.run(lag_during(lambda: refit(
        Customers(states), predictions, registry, rewrite=True)))  # type: ignore[arg-type]
    assert on_loop == []
    assert report is not None and report.customers == len(states)
    assert registry.pareto_nbd_version == 1 and registry.segments_version == 1
    assert len(predictions.saved) == len(states)
    lags.sort()
    print(f"\nrefit of {len(states):,} customers off the loop: {seconds:.2f} s, "
          f"{len(lags)} heartbeats, lag median {lags[len(lags) // 2] * 1000:.0f} ms, "
          f"max {lags[-1] * 1000:.0f} ms")
    assert max(lags) < MAX_LAG_S
    # it kept ticking throughout, not just before and after
    assert len(lags) >= seconds / (TICK_S + MAX_LAG_S)


def test_the_same_fit_on_the_loop_would_stall_it(states: list[CustomerState]) -> None:
    """The probe's control: what the refit did before, the fit run on the loop itself."""
    as_of = max(s.last_ts for s in states)

    async def inline() -> None:
        fit_purchase_model(histories(states, as_of), pareto_nbd.DEFAULT_PRIOR)

    _, lags, seconds = asyncio.run(lag_during(inline))
    print(f"\nthe Pareto/NBD fit on the loop: {seconds:.2f} s, max lag "
          f"{max(lags) * 1000:.0f} ms")
    assert max(lags) >= 0.5 * seconds
