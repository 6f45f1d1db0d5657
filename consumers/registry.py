"""The global models every worker shares: the segment model and the purchase model's
parameters (BG/NBD or Pareto/NBD, ``CAA_FORECAST_MODEL``; each under its own name).

Each is one versioned JSON snapshot in the models table. The segment model's snapshot also
carries the **watermark** (epoch seconds: the latest purchase time any worker has applied,
:attr:`ModelRegistry.watermark`), so a worker that starts (a restart, a Lambda cold start)
forecasts as of the stream's time, not as of its first batch's purchases. A worker scores with
its local copy, and after a batch's effects are written it learns the batch's
feature vectors and saves the snapshot with a compare-and-set on the version;
when another worker got there first it reloads the newest snapshot, re-applies
the same vectors, and tries again. So every worker's updates land exactly once
in one global model, whatever the number of workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from consumers.core import ModelView
from consumers.stores.model_snapshots import Conflict, ModelStore
from models.learn import pareto_nbd
from models.learn.bgnbd import DEFAULT_PRIOR, BgNbdParams
from models.learn.forecaster import Forecaster, ForecastParams, model_name
from models.learn.gamma_gamma import GammaGammaParams
from models.learn.outlook import DEFAULT_OUTLOOK, OutlookConfig
from models.learn.pareto_nbd import ParetoNbdParams
from models.learn.segmentation import SegmentModel
from models.money import NO_RATES, Rates
from models.variant import NO_EXPERIMENT, VariantPlan

SEGMENTS = "segments"
#: the companion document asking the scheduled refit to run now (a worker saw drift)
REFIT_REQUEST = "refit_request"
BGNBD = "bgnbd"
PARETO_NBD = "pareto_nbd"


@dataclass(frozen=True)
class RegistryConfig:
    """How fresh models are made, which purchase model scores, and the A/B variants."""

    n_segments: int
    segment_seed: int
    segment_warmup: int
    forecast_model: Literal["bgnbd", "pareto_nbd"]
    variants: VariantPlan = NO_EXPERIMENT
    outlook: OutlookConfig = DEFAULT_OUTLOOK
    #: a long-lived reader (a warm Lambda environment, a KCL host) reloads the models when
    #: its copy is older than this (seconds; 0: before every batch): refits and other
    #: workers' learning reach it
    refresh_s: float = 60.0


class ModelRegistry:
    def __init__(self, store: ModelStore, config: RegistryConfig,
                 max_conflicts: int = 20, rates: Rates = NO_RATES) -> None:
        self.store = store
        #: the exchange rates into the reporting currency the models' view carries (the
        #: operator's, read once at the edge; they do not change while the process runs)
        self.rates = rates
        self._config = config
        self._max_conflicts = max_conflicts
        self._lock = asyncio.Lock()
        self.segmenter = self._fresh_segmenter()
        self.segments_version = 0
        self.bgnbd = DEFAULT_PRIOR
        self.bgnbd_version = 0
        self.pareto_nbd = pareto_nbd.DEFAULT_PRIOR
        self.pareto_nbd_version = 0
        self.forecast_model = config.forecast_model
        #: per purchase model: the Gamma-Gamma spend model fitted with it, and why it was
        #: last refitted (both kept in that model's snapshot)
        self.value_params: dict[str, GammaGammaParams] = {}
        self.refit_reasons: dict[str, str] = {}
        self.conflicts = 0
        #: the latest purchase time (epoch seconds) applied by any worker, as of the last
        #: load or learn: the floor of the next batch's watermark (0: none yet)
        self.watermark = 0
        self.variants = config.variants
        self._loaded_at: float | None = None  # time.monotonic() of the last load

    def _fresh_segmenter(self) -> SegmentModel:
        s = self._config
        return SegmentModel(n_clusters=s.n_segments, seed=s.segment_seed, warmup=s.segment_warmup)

    @property
    def forecast(self) -> tuple[ForecastParams, int]:
        """The chosen purchase model's parameters and their version (0: not fitted yet)."""
        if self.forecast_model == PARETO_NBD:
            return self.pareto_nbd, self.pareto_nbd_version
        return self.bgnbd, self.bgnbd_version

    def forecaster(self, params: ForecastParams | None = None, version: int | None = None
                   ) -> Forecaster:
        """The forecaster of the chosen model (or of ``params``), with its spend model,
        the outlook settings and the reason of its last refit."""
        if params is None:
            params, version = self.forecast
        name = model_name(params)
        return Forecaster(params, version or 0, variants=self.variants,
                          value_params=self.value_params.get(name),
                          outlook=self._config.outlook, refit_reason=self.refit_reasons.get(name))

    def view(self) -> ModelView:
        return ModelView(self.segmenter, self.segments_version, self.forecaster(),
                         rates=self.rates)

    def _keep(self, name: str, body: dict[str, Any]) -> None:
        value = body.get("value_params")
        if isinstance(value, dict):
            self.value_params[name] = GammaGammaParams.from_dict(value)
        if isinstance(body.get("refit_reason"), str):
            self.refit_reasons[name] = body["refit_reason"]

    async def refresh(self) -> bool:
        """:meth:`load` again when the last load is older than the configured
        ``refresh_s`` (or never happened); whether it did."""
        if (self._loaded_at is not None
                and time.monotonic() - self._loaded_at < self._config.refresh_s):
            return False
        async with self._lock:  # not while a learn or replace is under way
            await self._load()
        return True

    async def load(self) -> None:
        """Read every model's latest snapshot (those not stored keep their priors)."""
        async with self._lock:
            await self._load()

    async def _load(self) -> None:
        self._loaded_at = time.monotonic()
        seg = await self.store.load(SEGMENTS)
        if seg is not None:
            self.segments_version, body = seg
            self.segmenter = SegmentModel.from_dict(body)
            self._see_watermark(body)
        bg = await self.store.load(BGNBD)
        if bg is not None:
            self.bgnbd_version, body = bg
            self.bgnbd = BgNbdParams.from_dict(body["params"])
            self._keep(BGNBD, body)
        pn = await self.store.load(PARETO_NBD)
        if pn is not None:
            self.pareto_nbd_version, body = pn
            self.pareto_nbd = ParetoNbdParams.from_dict(body["params"])
            self._keep(PARETO_NBD, body)

    def _see_watermark(self, body: dict[str, Any]) -> None:
        at = body.get("watermark")
        if isinstance(at, int | float) and not isinstance(at, bool):
            self.watermark = max(self.watermark, int(at))

    def _segments_body(self, model: SegmentModel) -> dict[str, Any]:
        return {**model.to_dict(), "watermark": self.watermark}

    async def learn(self, vectors: Sequence[dict[str, float]], watermark: int = 0) -> None:
        """Learn ``vectors`` into the global segment model, and raise the stored watermark
        to ``watermark`` (epoch seconds) with it (compare-and-set, retried)."""
        if not vectors:
            return
        async with self._lock:
            for _ in range(self._max_conflicts):
                for x in vectors:
                    self.segmenter.learn_one(x)
                self.watermark = max(self.watermark, watermark)
                try:
                    self.segments_version = await self.store.save(
                        SEGMENTS, self.segments_version, self._segments_body(self.segmenter)
                    )
                    return
                except Conflict:
                    self.conflicts += 1
                    latest = await self.store.load(SEGMENTS)
                    if latest is None:  # deleted under us: start again from scratch
                        self.segments_version, self.segmenter = 0, self._fresh_segmenter()
                    else:
                        self.segments_version = latest[0]
                        self.segmenter = SegmentModel.from_dict(latest[1])
                        self._see_watermark(latest[1])
            raise Conflict(f"segment model still contended after {self._max_conflicts} tries")

    async def replace_segmenter(self, model: SegmentModel) -> None:
        """Install a refitted model as the next version (reloading on conflict)."""
        async with self._lock:
            while True:
                try:
                    self.segments_version = await self.store.save(
                        SEGMENTS, self.segments_version, self._segments_body(model)
                    )
                    self.segmenter = model
                    return
                except Conflict:
                    latest = await self.store.load(SEGMENTS)
                    self.segments_version = latest[0] if latest else 0
                    if latest is not None:
                        self._see_watermark(latest[1])

    async def request_refit(self, reason: str, at: float) -> None:
        """Ask the next scheduled refit check (caa.entry.refit_lambda, ``when_due``) to refit
        now, saying why; a later request replaces an earlier one."""
        await self.store.put(REFIT_REQUEST, {"reason": reason, "at": at})

    async def refit_requested(self) -> dict[str, Any] | None:
        """The pending refit request, if any (``reason``, ``at``: epoch seconds)."""
        found = await self.store.load(REFIT_REQUEST)
        return found[1] if found else None

    async def last_fitted_at(self) -> float | None:
        """When the chosen purchase model was last refitted (epoch seconds), if ever."""
        found = await self.store.load(model_name(self.forecast[0]))
        at = found[1].get("fitted_at") if found else None
        return float(at) if isinstance(at, int | float) else None

    async def replace_bgnbd(self, params: BgNbdParams, meta: dict[str, Any]) -> None:
        await self.replace_forecast(params, meta)

    async def replace_forecast(self, params: ForecastParams, meta: dict[str, Any]) -> int:
        """Install refitted purchase-model parameters as the next version of their model's
        snapshot (reloading the version on conflict); returns that version."""
        name = model_name(params)
        async with self._lock:
            version = self.pareto_nbd_version if name == PARETO_NBD else self.bgnbd_version
            while True:
                try:
                    version = await self.store.save(
                        name, version, {"params": params.to_dict(), **meta}
                    )
                    break
                except Conflict:
                    latest = await self.store.load(name)
                    version = latest[0] if latest else 0
            self.value_params.pop(name, None)
            self.refit_reasons.pop(name, None)
            self._keep(name, meta)
            if isinstance(params, ParetoNbdParams):
                self.pareto_nbd, self.pareto_nbd_version = params, version
            else:
                self.bgnbd, self.bgnbd_version = params, version
            return version
