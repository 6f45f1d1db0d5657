"""The prediction change feed: one versioned event per change of a customer's prediction.

Downstream recommendation services read prediction changes from the DynamoDB stream of the
predictions table (``NEW_AND_OLD_IMAGES``). Each stream record becomes one
:class:`PredictionChange`: what kind of change, which prediction fields changed, and a
:class:`PredictionSnapshot` of the figures consumers act on before and after. The contract
and its versioning rules are in ``docs/change-feed.md``.

An update is **notable** (``PredictionChange.notable``: why a marketer would act on it; a
consumer that wants only those filters on a non-empty list) when

* ``segment``: the customer moved to another segment;
* ``churn_band``: the churn band (low / medium / high) changed;
* ``clv``: the customer's value moved by at least :data:`CLV_CHANGE` (25%) of its old
  value, and by at least :data:`CLV_MIN_MOVE` (1 unit of the reporting currency, so a few
  cents on a near-zero value are not a move). A value appearing for the first time (the
  old prediction was written before CLV was computed) is not a move.

Created and deleted predictions are changes of their own (``kind``), never notable.

>>> from models.prediction import LastEvent, SegmentRef
>>> p = Prediction(customer_id="00042", segment=SegmentRef(id=1, name="Loyal"), p_alive=0.9,
...     expected_purchases_30d=0.5, expected_purchases_90d=1.4, next_purchases=[], alerts=[],
...     recommendations=[], confidence=0.6, data_quality="B", data_quality_reason="ok",
...     purchases=4, spend=80.0, model_versions={"bgnbd": 1}, as_of="2024-05-01T00:00:00Z",
...     generated_at="2024-05-01T10:00:00Z",
...     last_event=LastEvent(event_id="e4", occurred_at="2024-05-01T09:00:00Z"))
>>> later = p.model_copy(update={"segment": SegmentRef(id=3, name="At risk"), "p_alive": 0.4,
...     "generated_at": datetime(2024, 6, 1, tzinfo=UTC)})
>>> at = datetime(2024, 6, 1, 0, 0, 1, tzinfo=UTC)
>>> c = change_of("00042", p.model_dump(mode="json"), later.model_dump(mode="json"),
...               sequence="300", at=at, event_id="ev-1")
>>> c.kind, c.changed, c.old.segment.name, c.new.segment.name, c.new.p_alive, c.notable
('updated', ['p_alive', 'segment'], 'Loyal', 'At risk', 0.4, ['segment'])
>>> notable_moves(p.model_copy(update={"clv": 100.0, "churn_band": "low"}),
...               p.model_copy(update={"clv": 70.0, "churn_band": "medium"}))
['churn_band', 'clv']
>>> notable_moves(p.model_copy(update={"clv": 100.0}), p.model_copy(update={"clv": 80.0}))
[]
>>> change_of("00042", None, p.model_dump(mode="json"), sequence="1", at=at, event_id="e").kind
'created'
>>> gone = change_of("00042", p.model_dump(mode="json"), None, sequence="9", at=at, event_id="e")
>>> gone.kind, gone.changed, gone.new is None
('deleted', [], True)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from models.prediction import ChurnBand, Grade, Prediction, SegmentRef

CHANGE_SCHEMA_VERSION: Literal[1] = 1
ChangeKind = Literal["created", "updated", "deleted"]
#: renewed by every write of a prediction, so never listed in ``changed``
BOOKKEEPING = frozenset({"generated_at"})
#: a CLV move is notable from this share of the old value on ...
CLV_CHANGE = 0.25
#: ... and from this many units of the reporting currency
CLV_MIN_MOVE = 1.0
#: why an update is worth acting on (see the module's docstring)
Notable = Literal["segment", "churn_band", "clv"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AnalysisSummary(_Frozen):
    """The headline of the customer's AI (or statistical fallback) analysis."""

    at: datetime | None
    model: str | None
    next_best_action: str
    next_best_action_detail: str
    confidence: float
    narrative: str


class PredictionSnapshot(_Frozen):
    """The figures of one prediction that downstream consumers act on."""

    segment: SegmentRef
    p_alive: float
    expected_purchases_30d: float
    expected_purchases_90d: float
    purchases: int
    #: net of refunds, in ``currency`` (the reporting currency); ``unconverted`` names what
    #: was left out for want of a rate
    spend: float
    currency: str = "USD"
    unconverted: list[str] = []
    data_quality: Grade
    source: Literal["statistical", "bedrock"]
    fallback_reason: str | None = None
    analysis: AnalysisSummary | None = None
    #: the customer's A/B variant when an experiment runs (models.variant)
    variant: str | None = None
    #: expected discounted value of the coming months, in ``currency`` (None: a prediction
    #: written before value was computed)
    clv: float | None = None
    #: churn band on P(no purchase in the next 90 days): low / medium / high
    churn_band: ChurnBand | None = None
    as_of: datetime
    generated_at: datetime

    @classmethod
    def of(cls, p: Prediction) -> PredictionSnapshot:
        a = p.analysis
        summary = None if a is None else AnalysisSummary(
            at=p.analysis_at, model=p.analysis_model, next_best_action=a.next_best_action.action,
            next_best_action_detail=a.next_best_action.detail, confidence=a.confidence,
            narrative=a.narrative)
        return cls(segment=p.segment, p_alive=p.p_alive,
                   expected_purchases_30d=p.expected_purchases_30d,
                   expected_purchases_90d=p.expected_purchases_90d, purchases=p.purchases,
                   spend=p.spend, currency=p.currency, unconverted=p.unconverted,
                   data_quality=p.data_quality, source=p.source,
                   fallback_reason=p.fallback_reason, analysis=summary, variant=p.variant,
                   clv=p.clv, churn_band=p.churn_band, as_of=p.as_of,
                   generated_at=p.generated_at)


class PredictionChange(_Frozen):
    """One change of one customer's prediction (schema version 1, docs/change-feed.md)."""

    schema_version: Literal[1] = CHANGE_SCHEMA_VERSION
    customer_id: str
    kind: ChangeKind
    #: the Prediction fields whose value differs (``generated_at`` never counts); all the
    #: fields the new prediction has when created, none when deleted
    changed: list[str]
    #: why an update is worth acting on, sorted (empty: a change of figures alone, or a
    #: created or deleted prediction); thresholds in this module's docstring
    notable: list[Notable] = []
    old: PredictionSnapshot | None
    new: PredictionSnapshot | None
    #: the stream's sequence number: increases with each change of one customer
    sequence: str
    #: when DynamoDB recorded the change (the stream's ApproximateCreationDateTime)
    at: datetime
    #: the stream record's id: the same change read twice carries the same id
    event_id: str


def _changed(old: Prediction | None, new: Prediction | None) -> list[str]:
    if new is None:
        return []
    after = new.model_dump(mode="json", exclude_none=True)
    if old is None:
        return sorted(set(after) - BOOKKEEPING)
    before = old.model_dump(mode="json", exclude_none=True)
    return sorted(k for k in (set(before) | set(after)) - BOOKKEEPING
                  if before.get(k) != after.get(k))


def notable_moves(old: Prediction | None, new: Prediction | None) -> list[Notable]:
    """Why the update from ``old`` to ``new`` is worth acting on (empty when it is not, or
    when either is missing)."""
    if old is None or new is None:
        return []
    out: list[Notable] = []
    if old.segment != new.segment:
        out.append("segment")
    if old.churn_band is not None and new.churn_band is not None \
            and old.churn_band != new.churn_band:
        out.append("churn_band")
    if old.clv is not None and new.clv is not None:
        move = abs(new.clv - old.clv)
        if move >= CLV_MIN_MOVE and move >= CLV_CHANGE * abs(old.clv):
            out.append("clv")
    return out


def change_of(customer_id: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
              *, sequence: str, at: datetime, event_id: str) -> PredictionChange:
    """The change from the old to the new prediction (each a :class:`Prediction` as plain
    JSON values, or None when absent). Raises ``ValueError`` (pydantic's ValidationError
    included) when an image is not a prediction."""
    if old is None and new is None:
        raise ValueError("a change needs an old or a new prediction")
    before = None if old is None else Prediction.model_validate(old)
    after = None if new is None else Prediction.model_validate(new)
    kind: ChangeKind = "created" if before is None else "deleted" if after is None else "updated"
    return PredictionChange(
        customer_id=customer_id, kind=kind, changed=_changed(before, after),
        notable=notable_moves(before, after),
        old=None if before is None else PredictionSnapshot.of(before),
        new=None if after is None else PredictionSnapshot.of(after),
        sequence=sequence, at=at if at.tzinfo else at.replace(tzinfo=UTC), event_id=event_id)
