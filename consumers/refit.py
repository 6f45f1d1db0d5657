"""Periodic refit of the global models over the whole customer-state table.

The purchase model's population parameters (BG/NBD or Pareto/NBD, as
``CAA_FORECAST_MODEL`` chooses) are fitted by maximum likelihood on every
customer's (x, t_x, T) as of the stream clock (identical rows aggregated with
weights), and the segment model is refitted in batch on the same customers'
features. Optionally every prediction is rewritten with the new models, so a
customer who has not bought lately still gets an up-to-date recency, segment
and P(alive).

The CPU work (the maximum-likelihood fit, the k-means refit, the customers' segments and
the rewritten predictions) runs in a worker thread (:func:`asyncio.to_thread`), so a
refit inside a consumer never stalls its event loop: polling, applying and lease renewal
go on meanwhile. The thread only builds new objects from a snapshot taken on the loop;
the registry is swapped on the loop (:meth:`~consumers.registry.ModelRegistry.replace_forecast`,
:meth:`~consumers.registry.ModelRegistry.replace_segmenter`).

One refit at a time across every process and function sharing the tables: the **refit
lock** is a lease row in the checkpoints table (group :data:`REFIT_GROUP`; a conditional
put with owner and expiry, renewed while the refit runs, released at its end; the same
row and code as a consumer group's lease, :class:`~consumers.sources.lease.GroupLease`).
:func:`locked_refit` runs one refit under it; a refit that finds it held is skipped
(:class:`RefitSkipped`, with the holder), or first waits for it up to a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np

from consumers.analysis.value_route import ROUTE_CUTS, clv_percentiles
from consumers.hook import AnalysisHook, RequestSink
from consumers.progress import NO_PROGRESS, Progress
from consumers.registry import PARETO_NBD, ModelRegistry
from consumers.sources.lease import GroupBusy, GroupLease
from consumers.stores.analyses import AnalysisStore
from consumers.stores.checkpoints import CheckpointStore
from consumers.stores.customers import CustomerStore
from consumers.stores.predictions import PredictionStore
from models.features import bgnbd_inputs, gamma_gamma_inputs, rfm
from models.learn import bgnbd, gamma_gamma, pareto_nbd
from models.learn.forecaster import Forecaster, ForecastParams, model_name
from models.learn.pareto_nbd import ParetoNbdParams
from models.learn.segmentation import SegmentModel
from models.money import NO_RATES, Rates
from models.prediction import Prediction, SegmentRef
from models.state import DAY, CustomerState

if TYPE_CHECKING:
    from consumers.core import BatchResult

SIZES = "segment-sizes"
#: customers who bought within this many days make value routing's CLV cuts (without an
#: active window of the scheduled re-analysis)
ROUTE_ACTIVE_DAYS = 30
#: the checkpoints-table group whose lease row is the refit lock
REFIT_GROUP = "refit"
#: how long the refit lock outlives its last renewal (it is renewed every third of it): a
#: refit killed mid-way (a Lambda timeout, a crash) holds it no longer than this
REFIT_LOCK_TTL_S = 120.0
#: predictions computed, merged with their analyses and written per step of a rewrite
REWRITE_CHUNK = 2000


@dataclass(frozen=True)
class RefitReport:
    customers: int
    purchases: int
    #: the customers' spend per ISO currency, in minor units (never summed across currencies)
    spend_minor: dict[str, int]
    segment_sizes: dict[str, int]
    as_of: datetime
    params: ForecastParams
    forecast_version: int
    segments_version: int
    predictions_rewritten: int
    seconds: float
    #: the exchange rates the refit ran with (the registry's): :attr:`spend` is converted
    rates: Rates = NO_RATES
    #: the Gamma-Gamma spend model fitted beside the purchase model (None: too few repeat
    #: customers) and its figures (:func:`fit_spend_model`)
    value_params: gamma_gamma.GammaGammaParams | None = None
    value_fit: dict[str, float] | None = None
    reason: str = "schedule"

    @property
    def forecast_model(self) -> str:
        return model_name(self.params)

    @property
    def currency(self) -> str:
        """The reporting currency :attr:`spend` is in."""
        return self.rates.reporting

    @property
    def spend(self) -> float:
        """The spend in the reporting currency (major units), without :attr:`unconverted`."""
        return self.rates.convert(self.spend_minor)[0]

    @property
    def unconverted(self) -> tuple[str, ...]:
        """The currencies left out of :attr:`spend` for want of a rate."""
        return self.rates.convert(self.spend_minor)[1]


def spend_by_currency(states: Iterable[CustomerState]) -> dict[str, int]:
    """The states' spend per currency, in minor units (sorted by code)."""
    total: Counter[str] = Counter()
    for s in states:
        total.update(s.spend_minor)
    return dict(sorted(total.items()))


def route_cuts_doc(forecaster: Forecaster, active: Sequence[CustomerState], as_of: int,
                   rates: Rates = NO_RATES) -> dict[str, object] | None:
    """Value routing's CLV percentiles (:func:`consumers.analysis.value_route.clv_percentiles`)
    over the ``active`` customers (the refit passes those who bought within the active window
    and on more than one day: a single purchase day is routed on its own rule, and all such
    customers share one CLV), each one's CLV **as of their own last purchase**: the moment a
    buyer is routed at, so a buyer is compared like for like (as of the refit, the CLV of
    someone who bought weeks ago has decayed, and every fresh buyer would look top-value)."""
    now = datetime.now(UTC)
    anyone = SegmentRef(id=0, name="")
    clvs = [c for s in active
            if (c := forecaster.predict(s, anyone, s.last_ts, now, rates=rates).clv)
            is not None]
    return clv_percentiles(clvs, as_of=as_of)


async def rewrite_predictions(
    states: Sequence[CustomerState], segments: Sequence[int], names: dict[int, str],
    forecaster: Forecaster, segments_version: int, as_of: int, predictions: PredictionStore,
    enricher: AnalysisHook | None = None, progress: Progress = NO_PROGRESS,
    rates: Rates = NO_RATES,
) -> list[Prediction]:
    """Write one prediction per state with these models as of ``as_of`` (keeping each
    customer's latest AI analysis; money in ``rates``' reporting currency),
    ``REWRITE_CHUNK`` customers at a time (the progress phase "rewriting predictions"
    counts them); the refit and the daily batch (consumers.analysis.daily.job) share it."""
    now = datetime.now(UTC)
    progress.phase("rewriting predictions", total=len(states))
    written: list[Prediction] = []

    def predict(i: int) -> list[Prediction]:
        return [
            forecaster.predict(s, SegmentRef(id=seg, name=names.get(seg, f"segment {seg}")),
                               as_of, now, segments_version, rates=rates)
            for s, seg in zip(states[i:i + REWRITE_CHUNK], segments[i:i + REWRITE_CHUNK],
                              strict=True)
        ]

    for i in range(0, len(states), REWRITE_CHUNK):
        out = await asyncio.to_thread(predict, i)  # off the event loop
        if enricher is not None:
            out = await enricher.attach(out)
        await predictions.save(out)
        if enricher is not None:
            await enricher.reconcile(out)
        written += out
        progress.advance(len(out))
    return written


def histories(states: Sequence[CustomerState], as_of: int) -> Counter[tuple[int, float, float]]:
    """Each distinct (x, t_x, T) as of ``as_of`` with the number of customers who have it."""
    return Counter(bgnbd_inputs(s, as_of) for s in states)


def fit_purchase_model(rows: Counter[tuple[int, float, float]],
                       initial: ForecastParams) -> ForecastParams:
    """Fit the model ``initial`` belongs to (starting there) on the weighted histories;
    pure CPU work, no shared state: :func:`refit` runs it in a thread."""
    keys = list(rows)
    arr = np.array(keys, dtype=float)
    weights = np.array([rows[k] for k in keys], dtype=float)
    if isinstance(initial, ParetoNbdParams):
        return pareto_nbd.fit(arr[:, 0], arr[:, 1], arr[:, 2], weights=weights,
                              initial=initial)
    return bgnbd.fit(arr[:, 0], arr[:, 1], arr[:, 2], weights=weights, initial=initial)


def fit_spend_model(states: Sequence[CustomerState], rates: Rates
                    ) -> tuple[gamma_gamma.GammaGammaParams | None, dict[str, float]]:
    """The Gamma-Gamma spend model fitted on the customers with a repeat purchase and a
    positive mean repeat value (reporting currency, net of refunds), and its figures:
    customers, log-likelihood, and the monetary-frequency correlation the model assumes
    away (Fader, Hardie & Lee 2005). None with too few such customers. Pure CPU work."""
    pairs = [gamma_gamma_inputs(s, rates) for s in states]
    x = np.array([p[0] for p in pairs if p[0] > 0 and p[1] > 0], dtype=float)
    m = np.array([p[1] for p in pairs if p[0] > 0 and p[1] > 0], dtype=float)
    if len(x) < gamma_gamma.MIN_CUSTOMERS:
        return None, {"customers": float(len(x))}
    params = gamma_gamma.fit(x, m)
    figures = {"customers": float(len(x)),
               "log_likelihood": round(gamma_gamma.log_likelihood(params, x, m), 4)}
    if len(set(x.tolist())) > 1 and len(set(m.tolist())) > 1:
        figures["monetary_frequency_correlation"] = round(
            gamma_gamma.monetary_frequency_correlation(x, m), 4)
    return params, figures


def fit_segments(states: Sequence[CustomerState], as_of: int, rates: Rates,
                 snapshot: dict[str, object]) -> tuple[list[CustomerState], SegmentModel, bool,
                                                     list[int]]:
    """Refit a segment model rebuilt from ``snapshot`` on the states' features: the states
    by customer id, the model, whether it was refitted (too few customers: it is the
    snapshot, kept) and each state's segment. Pure CPU work on new objects: :func:`refit`
    runs it in a thread."""
    ordered = sorted(states, key=lambda s: s.customer_id)
    features = [rfm(s, as_of, rates) for s in ordered]
    model = SegmentModel.from_dict(snapshot)
    refitted = len(features) >= model.n_clusters  # too few customers: keep the streaming one
    if refitted:
        model.refit(features)
    return ordered, model, refitted, [model.predict_one(x) for x in features]


async def refit(
    customers: CustomerStore,
    predictions: PredictionStore,
    registry: ModelRegistry,
    *,
    rewrite: bool = True,
    as_of_ts: int | None = None,
    enricher: AnalysisHook | None = None,
    active_days: int = 0,
    requests: RequestSink | None = None,
    reason: str = "schedule",
    progress: Progress = NO_PROGRESS,
) -> RefitReport | None:
    """Refit both models; with ``rewrite`` rewrite every prediction (keeping each one's
    latest AI analysis) and queue customers active within ``active_days`` for their
    scheduled re-analysis: as durable requests on ``requests`` (the analysis queue) when
    given, else in the ``enricher``'s own queue. ``reason`` (``schedule``, ``final``,
    ``drift: ...``) is kept with the models and carried by every prediction.
    ``progress`` hears the phases:
    reading customer states (counted), fitting the purchase model, fitting the segments,
    rewriting predictions (counted, out of the customers)."""
    started = time.perf_counter()
    progress.phase("refit: reading customer states")
    states = [s for s in await customers.all(progress=progress)
              if s.purchases]  # not consent-only states
    if not states:
        return None
    # the latest purchase, yet never ahead of the wall clock (so never ahead of the latest
    # arrival either): a state written before future events were refused cannot move it
    as_of = as_of_ts if as_of_ts is not None else min(max(s.last_ts for s in states),
                                                       int(time.time()))
    rows = await asyncio.to_thread(histories, states, as_of)
    progress.phase(f"refit: fitting the purchase model ({len(rows):,} distinct histories)")
    # the starting point is read on the loop; the fit builds new parameters in a thread
    initial = registry.pareto_nbd if registry.forecast_model == PARETO_NBD else registry.bgnbd
    params = await asyncio.to_thread(fit_purchase_model, rows, initial)
    progress.phase("refit: fitting the spend model (Gamma-Gamma)")
    value, value_fit = await asyncio.to_thread(fit_spend_model, states, registry.rates)
    meta: dict[str, object] = {"customers": len(states), "as_of": as_of,
                               "fitted_at": time.time(), "refit_reason": reason,
                               "value_fit": value_fit}
    if value is not None:
        meta["value_params"] = value.to_dict()
    version = await registry.replace_forecast(params, meta)
    progress.phase(f"refit: fitting the segments ({len(states):,} customers)")
    # a copy of the live model, taken on the loop (the applier learns into the live one)
    snapshot = registry.segmenter.to_dict()
    ordered, model, refitted, segments = await asyncio.to_thread(
        fit_segments, states, as_of, registry.rates, snapshot)
    if refitted:
        await registry.replace_segmenter(model)
    names = model.segment_names()
    sizes = Counter(names.get(s, f"segment {s}") for s in segments)
    # by name (centres too alike to tell apart share one) and by centre id
    await registry.store.put(SIZES, {"version": registry.segments_version, "as_of": as_of,
                                     "sizes": dict(sizes.most_common()),
                                     "sizes_by_id": {str(k): v for k, v in
                                                     sorted(Counter(segments).items())}})
    written = 0
    if rewrite:
        forecaster = registry.forecaster(params, version)
        out = await rewrite_predictions(ordered, segments, names, forecaster,
            registry.segments_version, as_of, predictions,
            enricher, progress, registry.rates)
        written = len(out)
        # value routing's CLV cuts (consumers.analysis.value_route), before any re-analysis
        recent = as_of - (active_days or ROUTE_ACTIVE_DAYS) * DAY
        doc = await asyncio.to_thread(
            route_cuts_doc, forecaster,
            [s for s in ordered if s.last_ts >= recent and s.purchase_days > 1], as_of,
            registry.rates)
        if doc is not None:
            await registry.store.put(ROUTE_CUTS, doc)
        if active_days and (requests is not None or enricher is not None):
            since = as_of - active_days * DAY
            active = [s for s in ordered if s.last_ts >= since]
            if requests is not None:  # after the rewrite: the analyzer reads these
                await requests.send_scheduled(active, as_of)
            elif enricher is not None:
                enricher.schedule(active, {p.customer_id: p for p in out}, as_of)
    return RefitReport(
        len(states), sum(s.purchases for s in states), spend_by_currency(states),
        dict(sizes.most_common()), datetime.fromtimestamp(as_of, UTC), params,
        version, registry.segments_version, written,
        time.perf_counter() - started, registry.rates, value, value_fit, reason,
    )


#: the reason of the refit a bounded run ends with (``caa consume --until-idle``, a direct
#: backfill), the same on both so that they give the same predictions
FINAL_REFIT = "final: the run ended"


@dataclass(frozen=True)
class RefitSkipped:
    """A refit that did not run because another held the refit lock."""

    #: the lock's holder (``owner`` of the lease row), as read when the refit gave up
    holder: str
    reason: str


def refit_lock(lock_rows: CheckpointStore, owner: str,
               ttl_s: float = REFIT_LOCK_TTL_S) -> GroupLease:
    """The refit lock in the checkpoints table ``lock_rows`` was opened on (any group: the
    lock is the :data:`REFIT_GROUP` group's lease row), held as ``owner``."""
    return GroupLease(lock_rows.db, lock_rows.table, REFIT_GROUP, owner, ttl_s=ttl_s)


async def locked_refit(lock: GroupLease, run: Callable[[], Awaitable[RefitReport | None]], *,
                       wait_s: float = 0.0, poll_s: float = 1.0,
                       ) -> RefitReport | RefitSkipped | None:
    """``run()`` (one refit) holding ``lock``: taken first (waiting up to ``wait_s`` while
    another holds it, then :class:`RefitSkipped`), renewed every third of its TTL while the
    refit runs, released at the end, whatever the end. When a renewal finds the lock taken
    (this process was paused past its expiry and another refit took it) the refit is
    cancelled and :class:`~consumers.sources.lease.LeaseLost` raised."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await lock.acquire(time.time())
            break
        except GroupBusy:
            if time.monotonic() + poll_s > deadline:
                held = await CheckpointStore(lock.db, lock.table, lock.group).lease()
                holder = held.owner if held else "nobody (it was just released)"
                return RefitSkipped(holder, f"another refit holds the refit lock ({holder}, "
                                            f"until it ends or {lock.ttl_s:.0f} s after its "
                                            "last renewal); this one is skipped")
            await asyncio.sleep(poll_s)
    task = asyncio.ensure_future(run())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=lock.ttl_s / 3)
            if done:
                return task.result()
            await lock.renew(time.time())  # LeaseLost: the refit is cancelled below
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await lock.release()


class KeptAnalyses:
    """The analysis hook of a refit run without an analyzer (the scheduled refit function):
    each rewritten prediction keeps its customer's latest analysis, read from the analyses
    table, and one that landed while the chunk was written is merged back into it; nothing
    is analysed, observed or queued."""

    def __init__(self, store: AnalysisStore) -> None:
        self.store = store

    async def attach(self, predictions: Sequence[Prediction], erased: Iterable[str] = ()
                     ) -> list[Prediction]:
        # ``erased`` needs nothing here: read from the store, whose tombstone (written before
        # the predictions of an erasure's batch) already hides an erased history's analysis
        found = await self.store.latest([p.customer_id for p in predictions])
        return [p if (rec := found.get(p.customer_id)) is None else p.model_copy(update={
            "analysis": rec.analysis, "analysis_at": rec.at, "analysis_model": rec.model,
            "source": rec.source, "fallback_reason": rec.fallback_reason,
        }) for p in predictions]

    async def reconcile(self, written: Sequence[Prediction]) -> int:
        found = await self.store.latest([p.customer_id for p in written])
        stale = [rec for p in written
                 if (rec := found.get(p.customer_id)) is not None and rec.at != p.analysis_at]
        await asyncio.gather(*(self.store.merge(rec) for rec in stale))
        return len(stale)

    def observe(self, result: BatchResult) -> None:
        return None

    def schedule(self, states: Iterable[CustomerState], predictions: dict[str, Prediction],
                 as_of_ts: int) -> int:
        return 0
