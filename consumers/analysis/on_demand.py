"""On-demand analysis of one customer (``caa analyze`` and ``POST .../analyze`` of the HTTP
API): now, bypassing debounce and the analysis cache; consent, the circuit breaker, the
budget and the token limits still hold.

The callers build the stores, the registry and the enricher from their settings (the API
keeps one enricher for its life, so its breaker, token bucket and ledger hold across
requests) and pass them in.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from consumers.analysis.analyzer import statistical_analysis
from models.analysis import AnalysisRecord
from models.prediction import Prediction
from models.prompt import build_input

if TYPE_CHECKING:
    from consumers.analysis.enricher import Enricher
    from consumers.registry import ModelRegistry
    from consumers.stores.customers import CustomerStore
    from consumers.stores.predictions import PredictionStore


class OnDemandFailed(RuntimeError):
    """The analysis ran but could not be stored; ``errors`` says why."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors) or "the analysis failed")
        self.errors = errors


async def on_demand(customers: CustomerStore, predictions: PredictionStore,
                    registry: ModelRegistry, enricher: Enricher | None, customer_id: str,
                    pseudonym_key: Callable[[], bytes]) -> AnalysisRecord | None:
    """Analyse one customer now: an ``AnalysisRecord``, or None for an unknown customer.
    With no enricher (``CAA_ANALYZER=statistical``) the statistical analysis, not stored.
    ``pseudonym_key`` is called once the customer is found."""
    from consumers.sources.worker import reference_order_value

    states = await customers.load([customer_id])
    stored = await predictions.get(customer_id)
    if customer_id not in states or stored is None:
        return None
    await registry.load()
    prediction = Prediction.model_validate(stored)
    x = build_input(states[customer_id], prediction, as_of_ts=int(prediction.as_of.timestamp()),
                    key=pseudonym_key(),
                    reference_order_value=reference_order_value(registry.segmenter),
                    rates=registry.rates)
    if enricher is None:
        return AnalysisRecord(customer_id=customer_id, at=datetime.now(UTC), as_of=x.as_of,
                              source="statistical", model="statistical", trigger="on_demand",
                              analysis=statistical_analysis(x))
    errors_before = enricher.counts["errors"]
    rec = await enricher.analyze_now(customer_id, x)
    await enricher.flush_counters()
    if rec is None:
        new = enricher.counts["errors"] - errors_before
        raise OnDemandFailed(enricher.errors[-new:] if new > 0 else [])
    return rec


async def analyze(customers: CustomerStore, predictions: PredictionStore,
                  registry: ModelRegistry, enricher: Enricher | None, customer_id: str,
                  pseudonym_key: Callable[[], bytes]) -> dict[str, Any] | None:
    """:func:`on_demand` as ``caa analyze`` prints it: the record (without the feature
    signature), only the statistical analysis when there is no enricher,
    ``{"error": [...]}`` when it could not be stored, None for an unknown customer."""
    try:
        rec = await on_demand(customers, predictions, registry, enricher, customer_id,
                              pseudonym_key)
    except OnDemandFailed as exc:
        return {"error": exc.errors}
    if rec is None:
        return None
    if enricher is None:
        return {"source": "statistical", "analysis": rec.analysis.model_dump(mode="json")}
    out = rec.model_dump(mode="json")
    out.pop("signature", None)
    return out
