"""The prediction item written to DynamoDB, one per customer, read by downstream services."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.analysis import Analysis

PREDICTION_SCHEMA_VERSION = 1

Grade = Literal["A", "B", "C", "D"]
Status = Literal["due", "upcoming", "later"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SegmentRef(_Frozen):
    id: int
    name: str


class NextPurchase(_Frozen):
    """When the customer is expected to buy one product (or category) again."""

    kind: Literal["product", "category"]
    key: str
    expected_date: date
    avg_days_between: float
    purchases: int
    confidence: float
    status: Status


class Alert(_Frozen):
    kind: Literal["replenishment_due", "replenishment_upcoming"]
    key: str
    expected_date: date
    message: str


class Recommendation(_Frozen):
    key: str
    kind: Literal["product", "category"]
    reason: Literal["replenishment_due", "replenishment_upcoming", "category_affinity"]
    score: float


class LastEvent(_Frozen):
    event_id: str
    occurred_at: datetime


class Prediction(_Frozen):
    schema_version: int = PREDICTION_SCHEMA_VERSION
    customer_id: str
    segment: SegmentRef
    p_alive: float
    expected_purchases_30d: float
    expected_purchases_90d: float
    next_purchases: list[NextPurchase]
    alerts: list[Alert]
    recommendations: list[Recommendation]
    confidence: float
    data_quality: Grade
    data_quality_reason: str
    purchases: int
    #: spend net of refunds in ``currency`` (the reporting currency), major units
    spend: float
    currency: str = "USD"
    #: currencies the customer paid in that have no rate: left out of ``spend`` and of the
    #: monetary feature
    unconverted: list[str] = []
    model_versions: dict[str, int]
    #: the customer's A/B variant (models.variant), when an experiment runs
    variant: str | None = None
    source: Literal["statistical", "bedrock"] = "statistical"
    fallback_reason: str | None = None
    #: the latest AI (or fallback) analysis merged in after the statistical prediction
    analysis: Analysis | None = None
    analysis_at: datetime | None = None
    analysis_model: str | None = None
    as_of: datetime
    generated_at: datetime
    last_event: LastEvent
