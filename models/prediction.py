"""The prediction item written to DynamoDB, one per customer, read by downstream services."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from models.analysis import Analysis

PREDICTION_SCHEMA_VERSION = 1

Grade = Literal["A", "B", "C", "D"]
#: a next purchase's status as of the prediction: ``due`` (its expected date has come),
#: ``upcoming`` (within max(2 days, a quarter of the mean gap) of it), ``later``, or
#: ``lapsed`` (overdue by more than the mean gap and more than 14 days:
#: :data:`models.learn.forecaster.LAPSE_MIN_DAYS`; no alert, no recommendation)
Status = Literal["due", "upcoming", "later", "lapsed"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_M = TypeVar("_M", bound=_Frozen)


def validator(cls: type[_M]) -> Callable[[dict[str, Any]], _M]:
    """``cls``'s own validation of a dict of its fields: ``validator(cls)(fields)`` is
    ``cls(**fields)`` (the same checks, an equal instance) without ``BaseModel.__init__``'s
    Python frame and keyword packing, about 1.5 us less per model the hot path builds.

    >>> validator(SegmentRef)({"id": 1, "name": "Loyal"}) == SegmentRef(id=1, name="Loyal")
    True
    """
    validate: Callable[[dict[str, Any]], _M] = cls.__pydantic_validator__.validate_python
    return validate


@lru_cache(maxsize=1 << 12, typed=True)
def shared(cls: type[_M], *values: Any) -> _M:
    """One validated ``cls`` per distinct ``values`` (its fields in declaration order, all
    hashable; ``1`` and ``1.0`` are told apart), kept and given to every caller: the
    models here are frozen, and a prediction holds a nested one as it is (pydantic does
    not revalidate instances). For the parts many predictions share: a segment, a churn
    figure, a category's affinity (the 4,096 most recent, about 2 MB).

    >>> shared(SegmentRef, 1, "Loyal") is shared(SegmentRef, 1, "Loyal")
    True
    """
    return validator(cls)(dict(zip(cls.model_fields, values, strict=True)))


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


ChurnBand = Literal["low", "medium", "high"]


class Value(_Frozen):
    """Customer value in the reporting currency (major units).

    ``clv`` is the expected discounted value of the next ``months`` months: the BTYD
    model's expected purchases per month times the Gamma-Gamma expected order value,
    discounted at ``monthly_discount_rate`` (models.learn.clv); ``clv_low``/``clv_high``
    bound it at 80%.  ``historic`` is the spend so far, net of refunds.

    ``expected_order_value`` is the Gamma-Gamma expected value of one **purchase day** (a
    day's orders together), not of one order: the BTYD models count purchase days (x is
    repeat purchase days), so the CLV is expected purchase days times this (as Fader, Hardie
    & Lee 2005 do with CDNOW's daily transactions). A customer placing three $2.50 orders a
    day has one of about $7.50. The field keeps its name for the item's readers.
    """

    clv: float
    clv_low: float
    clv_high: float
    expected_order_value: float
    historic: float
    months: int
    monthly_discount_rate: float


class Churn(_Frozen):
    """P(no purchase in the next 30 / 90 days | history) from the BTYD model in use and
    its band (thresholds in models.learn.churn)."""

    p_no_purchase_30d: float
    p_no_purchase_90d: float
    band: ChurnBand


class Timing(_Frozen):
    """The customer's order rhythm: mean days between purchase days (None before a repeat)
    and the dates by which the model gives a next order 50% and 80% probability (None when
    it never reaches that probability, e.g. a customer most likely gone)."""

    avg_days_between: float | None
    next_order_50: date | None
    next_order_80: date | None


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
    #: 80% interval of the purchases expected in the next 90 days (predictive distribution)
    expected_purchases_90d_interval: tuple[float, float] | None = None
    #: expected discounted value (``value.clv``), top level so that scans can filter on it
    clv: float | None = None
    #: ``churn.band``, top level so that scans can filter on it
    churn_band: ChurnBand | None = None
    value: Value | None = None
    churn: Churn | None = None
    timing: Timing | None = None
    #: why the forecast and segment models in use were last refitted (schedule, drift, ...)
    refit_reason: str | None = None
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
