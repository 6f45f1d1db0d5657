"""The analyzer interface and its statistical implementation.

An analyzer turns an :class:`~models.prompt.AnalysisInput` (features only, no
personal data) into an :class:`AnalyzerResult`: an :class:`~models.analysis.Analysis`
or a failure with its reason, plus the tokens and cost it took. Failures are
data; the caller (:mod:`consumers.analysis.enricher`) falls back to the statistical
analyzer, which needs no service and whose answers are built from the features
alone (it is never checked for sensitive terms: it states none).

The caller steers the calls of one analysis with :class:`Calls`: the analyzer reports every
call that failed on the service's side and every answer (the circuit breaker counts them), asks
before each retry, and gives up at once, as ``stopped``, when the stop event is set.

>>> from datetime import date
>>> from models.prompt import AnalysisInput, ItemFeature, StatisticalHint
>>> x = AnalysisInput(subject="cust_1", as_of=date(2024, 3, 1), consent=True, purchases=6,
...     purchase_days=6, tenure_days=60, recency_days=3, total_spend=120.0,
...     avg_order_value=20.0, avg_items_per_order=4.0, reference_order_value=25.0,
...     channels={"web": 6}, segment="Loyal", data_quality="A",
...     products=[ItemFeature(kind="product", name="milk", orders=6, quantity=12, spend=30.0,
...               purchase_days=6, avg_days_between=11.4, days_since_last=3)],
...     categories=[ItemFeature(kind="category", name="dairy", orders=6, quantity=12,
...               spend=30.0, purchase_days=6, avg_days_between=11.4, days_since_last=3)],
...     statistical_next=[StatisticalHint(kind="product", name="milk",
...               expected_date=date(2024, 3, 5), avg_days_between=11.4, confidence=0.6)])
>>> a = statistical_analysis(x)
>>> a.profile.shopping_frequency, a.profile.price_preference, a.next_best_action.action
('regular', 'mid_range', 'replenishment_reminder')
>>> PriceTable.parse({"m": [1.0, 5.0]}).cost("m", 1000, 200)
0.002
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol

from models.analysis import (
    Action,
    Analysis,
    AnalysisRecommendation,
    BehaviouralInsight,
    ConsumptionPattern,
    Frequency,
    NextBestAction,
    PricePreference,
    Profile,
    Source,
)
from models.prompt import AnalysisInput

#: ``stopped``: the stop event cut the analysis short (its customer is analysed later)
FailureKind = Literal["throttled", "unavailable", "timeout", "invalid_answer", "rejected",
                      "stopped"]


def _nothing() -> None:
    return None


def _always() -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Calls:
    """How the caller steers the calls one analysis makes.

    ``failed()`` after each call that failed on the service's side (throttled, unavailable,
    timed out, unreachable), ``answered()`` after each answer (even an unusable one);
    ``may_retry()`` before each retry; ``stop`` set: no further call, the analysis ends as
    ``stopped`` (a call in flight is the caller's to wait for or cancel)."""

    stop: asyncio.Event | None = None
    failed: Callable[[], None] = _nothing
    answered: Callable[[], None] = _nothing
    may_retry: Callable[[], bool] = _always

    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()


#: no steering: every retry the analyzer's own policy allows, never stopped
FREE = Calls()


@dataclass(frozen=True, slots=True)
class AnalyzerResult:
    analysis: Analysis | None
    source: Source
    model: str
    failure: FailureKind | None = None
    detail: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    latency_ms: float = 0.0
    #: where the answer came from when not from AWS (see consumers.analysis.bedrock.endpoint)
    endpoint: str | None = None


class Analyzer(Protocol):
    model: str

    def worst_case_tokens(self, x: AnalysisInput) -> tuple[int, int]:
        """(input, output) tokens one analysis can be billed at most."""
        ...

    async def analyze(self, x: AnalysisInput, calls: Calls = FREE) -> AnalyzerResult: ...


@dataclass(frozen=True, slots=True)
class PriceTable:
    """USD per million input and output tokens, per model id."""

    prices: Mapping[str, tuple[float, float]]

    @classmethod
    def parse(cls, raw: Mapping[str, list[float] | tuple[float, float]]) -> PriceTable:
        return cls({k: (float(v[0]), float(v[1])) for k, v in raw.items()})

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        try:
            pin, pout = self.prices[model]
        except KeyError:
            raise KeyError(f"no price for model {model!r}; add it to CAA_BEDROCK_PRICES") from None
        return round((input_tokens * pin + output_tokens * pout) / 1e6, 9)


def _frequency(x: AnalysisInput) -> Frequency:
    if x.purchase_days <= 1:
        return "one_off"
    per_month = (x.purchase_days - 1) / max(x.tenure_days, 1) * 30.0
    if per_month >= 3:
        return "frequent"
    return "regular" if per_month >= 0.5 else "occasional"


def _price(x: AnalysisInput) -> PricePreference:
    ratio = x.avg_order_value / x.reference_order_value if x.reference_order_value else 1.0
    if ratio < 0.6:
        return "budget"
    return "premium" if ratio > 1.6 else "mid_range"


def _insights(x: AnalysisInput) -> list[BehaviouralInsight]:
    out: list[BehaviouralInsight] = []
    regular = [p for p in x.products if p.avg_days_between and p.purchase_days >= 3]
    if x.purchase_days <= 1:
        out.append(BehaviouralInsight(label="new_customer",
                                      evidence=f"{x.purchases} order(s) so far"))
    if regular:
        p = regular[0]
        out.append(BehaviouralInsight(
            label="planned_shopper",
            evidence=f"buys {p.name} about every {p.avg_days_between:g} days"))
    if x.avg_items_per_order >= 5:
        out.append(BehaviouralInsight(
            label="bulk_buyer", evidence=f"{x.avg_items_per_order:g} items per order on average"))
    if x.p_alive is not None and x.p_alive < 0.3 and x.purchase_days > 1:
        out.append(BehaviouralInsight(
            label="lapsing", evidence=f"no purchase for {x.recency_days} days"))
    return out[:5]


def _action(x: AnalysisInput, recs: list[AnalysisRecommendation]) -> NextBestAction:
    action: Action
    if recs and recs[0].urgency != "low":
        action, detail = "replenishment_reminder", f"remind about {recs[0].product}"
    elif x.purchase_days <= 1:
        action, detail = "welcome", "welcome offer to encourage a second order"
    elif x.p_alive is not None and x.p_alive < 0.3:
        action, detail = "win_back", f"win-back offer after {x.recency_days} quiet days"
    elif x.categories:
        action, detail = "cross_sell", f"suggest more from {x.categories[0].name}"
    else:
        action, detail = "no_action", "nothing to suggest yet"
    return NextBestAction(action=action, detail=detail)


def statistical_patterns(x: AnalysisInput) -> list[ConsumptionPattern]:
    """The consumption patterns of the purchase intervals (the prompt's ``statistical_next``
    products)."""
    return [
        ConsumptionPattern(product=h.name, avg_days_between=h.avg_days_between,
                           predicted_next_date=h.expected_date, confidence=h.confidence)
        for h in x.statistical_next if h.kind == "product"
    ][:10]


def with_statistical_patterns(a: Analysis, x: AnalysisInput) -> Analysis:
    """A model's analysis with the consumption patterns of the purchase intervals when it
    gave none (the tool's schema no longer asks for them: the model would only restate the
    ``statistical_next`` it was given, at output-token prices)."""
    if a.consumption_patterns:
        return a
    return a.model_copy(update={"consumption_patterns": statistical_patterns(x)})


def statistical_analysis(x: AnalysisInput) -> Analysis:
    """The analysis the BG/NBD forecast and the purchase intervals support."""
    patterns = statistical_patterns(x)
    recs = [
        AnalysisRecommendation(
            product=h.name,
            reason=f"bought about every {h.avg_days_between:g} days",
            urgency="high" if h.expected_date <= x.as_of
            else "medium" if h.expected_date <= x.as_of + timedelta(days=7) else "low",
            predicted_date=h.expected_date,
        )
        for h in x.statistical_next if h.kind == "product"
    ][:5]
    quality = {"A": 0.8, "B": 0.6, "C": 0.4}.get(x.data_quality or "D", 0.2)
    return Analysis(
        profile=Profile(
            shopping_frequency=_frequency(x),
            price_preference=_price(x),
            preferred_categories=[c.name for c in x.categories[:5]],
            behavioural_insights=_insights(x),
        ),
        consumption_patterns=patterns,
        recommendations=recs,
        next_best_action=_action(x, recs),
        narrative=(
            f"{x.purchases} order(s) on {x.purchase_days} day(s) over {x.tenure_days} days, "
            f"last {x.recency_days} days ago; average order {x.avg_order_value:.2f}"
            + (f"; segment {x.segment}" if x.segment else "") + "."
        ),
        confidence=quality,
    )


class StatisticalAnalyzer:
    """Always answers; the fallback for every Bedrock failure."""

    model = "statistical"

    def worst_case_tokens(self, x: AnalysisInput) -> tuple[int, int]:
        return 0, 0

    async def analyze(self, x: AnalysisInput, calls: Calls = FREE) -> AnalyzerResult:
        return AnalyzerResult(statistical_analysis(x), "statistical", self.model, attempts=0)
