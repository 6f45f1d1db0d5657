"""The refit's summary keeps spend per currency and converts it with the registry's rates,
naming what it left out: never a silent sum across currencies (issue 14, item 5)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from consumers.refit import refit, spend_by_currency
from consumers.registry import ModelRegistry, RegistryConfig
from models.events import PurchaseEvent
from models.money import Rates
from models.state import CustomerState

RATES = Rates("USD", {"EUR": 1.08, "JPY": 0.0067}, as_of="2026-11-30")


class Models:
    """The models table in memory (what the refit calls of ModelStore)."""

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


def buyer(cid: str, *orders: tuple[str, str, int]) -> CustomerState:
    """A customer with one order per (currency, total, day of November 2026)."""
    s = CustomerState.new(cid)
    for i, (currency, total, day) in enumerate(orders):
        s.apply(PurchaseEvent.model_validate({
            "event_id": f"{cid}-e{i}", "order_id": f"{cid}-o{i}", "customer_id": cid,
            "occurred_at": f"2026-11-{day:02d}T10:00:00Z", "currency": currency,
            "items": [{"product_id": "p", "category": "c", "quantity": 1,
                       "unit_price": total}], "total": total}))
    return s


STATES = [buyer("c1", ("EUR", "40.00", 2), ("JPY", "6000", 9), ("USD", "15.00", 20)),
          buyer("c2", ("USD", "10.00", 3), ("USD", "5.50", 25)),
          buyer("c3", ("EUR", "2.00", 4))]


def run(rates: Rates) -> Any:
    registry = ModelRegistry(Models(), RegistryConfig(  # type: ignore[arg-type]
        n_segments=5, segment_seed=1, segment_warmup=10, forecast_model="pareto_nbd"),
        rates=rates)
    report = asyncio.run(refit(Customers(STATES), None, registry,  # type: ignore[arg-type]
                               rewrite=False, as_of_ts=1_796_000_000))
    assert report is not None
    return report


def test_the_spend_is_kept_per_currency_in_minor_units() -> None:
    assert STATES[0].spend_minor == {"EUR": 4000, "JPY": 6000, "USD": 1500}
    assert spend_by_currency(STATES) == {"EUR": 4200, "JPY": 6000, "USD": 3050}
    report = run(RATES)
    assert report.purchases == 6 and report.spend_minor == {"EUR": 4200, "JPY": 6000,
                                                            "USD": 3050}


def test_the_refit_summary_converts_with_the_registrys_rates_and_names_the_rest() -> None:
    report = run(RATES)
    # EUR 42.00 * 1.08 + JPY 6000 * 0.0067 + USD 30.50, not 6,072.50 or 10,250 "cents"
    assert (report.currency, report.unconverted) == ("USD", ())
    assert report.spend == float(Decimal("45.36") + Decimal("40.20") + Decimal("30.50"))
    report = run(Rates("USD", {"EUR": 1.08}, "2026-11-30"))
    assert report.spend == 75.86 and report.unconverted == ("JPY",)
    report = run(Rates("EUR"))  # reporting in EUR without rates: only the euros
    assert (report.currency, report.spend, report.unconverted) == ("EUR", 42.0, ("JPY", "USD"))
