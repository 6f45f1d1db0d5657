"""Periodic refit of the global models over the whole customer-state table.

The purchase model's population parameters (BG/NBD or Pareto/NBD, as
``CAA_FORECAST_MODEL`` chooses) are fitted by maximum likelihood on every
customer's (x, t_x, T) as of the stream clock (identical rows aggregated with
weights), and the segment model is refitted in batch on the same customers'
features. Optionally every prediction is rewritten with the new models, so a
customer who has not bought lately still gets an up-to-date recency, segment
and P(alive).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from consumers.hook import AnalysisHook
from consumers.progress import NO_PROGRESS, Progress
from consumers.registry import PARETO_NBD, ModelRegistry
from consumers.stores.customers import CustomerStore
from consumers.stores.predictions import PredictionStore
from models.features import bgnbd_inputs, rfm
from models.learn import bgnbd, pareto_nbd
from models.learn.forecaster import Forecaster, ForecastParams, model_name
from models.learn.segmentation import SegmentModel
from models.money import NO_RATES, Rates
from models.prediction import Prediction, SegmentRef
from models.state import DAY, CustomerState

SIZES = "segment-sizes"
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
    for i in range(0, len(states), REWRITE_CHUNK):
        out = [
            forecaster.predict(s, SegmentRef(id=seg, name=names.get(seg, f"segment {seg}")),
                               as_of, now, segments_version, rates=rates)
            for s, seg in zip(states[i:i + REWRITE_CHUNK], segments[i:i + REWRITE_CHUNK],
                              strict=True)
        ]
        if enricher is not None:
            out = await enricher.attach(out)
        await predictions.save(out)
        if enricher is not None:
            await enricher.reconcile(out)
        written += out
        progress.advance(len(out))
    return written


async def refit(
    customers: CustomerStore,
    predictions: PredictionStore,
    registry: ModelRegistry,
    *,
    rewrite: bool = True,
    as_of_ts: int | None = None,
    enricher: AnalysisHook | None = None,
    active_days: int = 0,
    progress: Progress = NO_PROGRESS,
) -> RefitReport | None:
    """Refit both models; with ``rewrite`` rewrite every prediction (keeping each one's
    latest AI analysis) and, with an ``enricher``, queue customers active within
    ``active_days`` for their scheduled re-analysis. ``progress`` hears the phases:
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
    rows = Counter(bgnbd_inputs(s, as_of) for s in states)
    keys = list(rows)
    arr = np.array(keys, dtype=float)
    weights = np.array([rows[k] for k in keys], dtype=float)
    params: ForecastParams
    progress.phase(f"refit: fitting the purchase model ({len(keys):,} distinct histories)")
    if registry.forecast_model == PARETO_NBD:
        params = pareto_nbd.fit(arr[:, 0], arr[:, 1], arr[:, 2], weights=weights,
                                initial=registry.pareto_nbd)
    else:
        params = bgnbd.fit(arr[:, 0], arr[:, 1], arr[:, 2], weights=weights,
                           initial=registry.bgnbd)
    version = await registry.replace_forecast(
        params, {"customers": len(states), "as_of": as_of, "fitted_at": time.time()}
    )
    progress.phase(f"refit: fitting the segments ({len(states):,} customers)")
    ordered = sorted(states, key=lambda s: s.customer_id)
    features = [rfm(s, as_of, registry.rates) for s in ordered]
    model = SegmentModel.from_dict(registry.segmenter.to_dict())
    if len(features) >= model.n_clusters:  # too few customers: keep the streaming model
        model.refit(features)
        await registry.replace_segmenter(model)
    names = model.segment_names()
    segments = [model.predict_one(x) for x in features]
    sizes = Counter(names.get(s, f"segment {s}") for s in segments)
    await registry.store.put(SIZES, {"version": registry.segments_version, "as_of": as_of,
                                     "sizes": dict(sizes.most_common())})
    written = 0
    if rewrite:
        out = await rewrite_predictions(ordered, segments, names, Forecaster(
            params, version, variants=registry.variants),
            registry.segments_version, as_of, predictions,
            enricher, progress, registry.rates)
        written = len(out)
        if enricher is not None and active_days:
            since = as_of - active_days * DAY
            active = [s for s in ordered if s.last_ts >= since]
            by_id = {p.customer_id: p for p in out}
            enricher.schedule(active, by_id, as_of)
    return RefitReport(
        len(states), sum(s.purchases for s in states), spend_by_currency(states),
        dict(sizes.most_common()), datetime.fromtimestamp(as_of, UTC), params,
        version, registry.segments_version, written,
        time.perf_counter() - started, registry.rates,
    )
