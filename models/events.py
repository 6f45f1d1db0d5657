"""The wire schema (version 1) of what the stream carries, and its decoder.

One :class:`PurchaseEvent` per order, published by the orders service to Kinesis with
the customer id as partition key. Beside orders, the same stream carries the
customer's privacy statements, so the consumer stays the single writer of a
customer's state and they apply in order with the purchases: a
:class:`ConsentEvent` (``"type": "consent"``, published by the API or the
orders service) and an :class:`ErasureEvent` (``"type": "erasure"``, published by
``caa erase``). Money is exact (``Decimal``, at most two
decimals); a total must equal the sum of its line items to the cent.

>>> e = PurchaseEvent.model_validate({
...     "event_id": "e-1", "order_id": "o-1", "customer_id": "00001",
...     "occurred_at": "1997-01-01T00:00:00Z", "currency": "USD",
...     "items": [{"product_id": "cd", "category": "music", "quantity": 2,
...                "unit_price": "5.50"}],
...     "total": "11.00", "channel": "web"})
>>> decode_event(e.to_bytes()).total
Decimal('11.00')
>>> decode_event(b'{"schema_version": 9}')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
models.events.EventRejected: unknown_version: schema_version 9 is not supported (this ...
>>> c = decode_event(b'{"type": "consent", "event_id": "c-1", "customer_id": "00001", '
...                  b'"occurred_at": "1997-01-02T00:00:00Z", "analysis": false}')
>>> type(c).__name__, c.analysis
('ConsentEvent', False)
>>> decode_event(b'{"type": "consent", "event_id": "c-1"}')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
models.events.EventRejected: schema: customer_id: Field required; ...
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from models.kpl import aggregate_defect, is_aggregate

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({SCHEMA_VERSION})
#: Default largest encoded event we accept; Kinesis itself allows 1 MiB per record.
MAX_EVENT_BYTES = 256 * 1024

Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]
Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")]
Label = Annotated[str, Field(min_length=1, max_length=128)]
Channel = Literal["web", "app", "store", "phone", "marketplace", "other"]


class EventRejected(ValueError):
    """A record that can never become a valid event; ``kind`` is a short machine code."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class LineItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: Identifier
    category: Label
    quantity: Annotated[int, Field(gt=0, le=100_000)]
    unit_price: Money


class Contact(BaseModel):
    """Personal data some orders services attach. Accepted, never stored, never analysed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(max_length=256)] | None = None
    email: Annotated[str, Field(max_length=256)] | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None
    address: Annotated[str, Field(max_length=1024)] | None = None


class PurchaseEvent(BaseModel):
    """One order as the orders service publishes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    event_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    occurred_at: AwareDatetime
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    items: Annotated[list[LineItem], Field(min_length=1, max_length=500)]
    total: Money
    channel: Channel = "web"
    consent: bool | None = None
    contact: Contact | None = None

    @model_validator(mode="after")
    def _total_matches_items(self) -> PurchaseEvent:
        expected = sum((i.unit_price * i.quantity for i in self.items), Decimal("0"))
        if expected != self.total:
            raise ValueError(f"total {self.total} does not match the sum of its items {expected}")
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class _Statement(BaseModel):
    """What consent and erasure events share: a customer's statement at an instant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    event_id: Identifier
    customer_id: Identifier
    occurred_at: AwareDatetime

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ConsentEvent(_Statement):
    """The customer's statement on AI analysis of their features; the latest one wins."""

    type: Literal["consent"]
    analysis: bool


class ErasureEvent(_Statement):
    """Forget the customer: state and prediction go; later events start a new customer."""

    type: Literal["erasure"]


StreamEvent = PurchaseEvent | ConsentEvent | ErasureEvent
_STATEMENTS: dict[str, type[ConsentEvent] | type[ErasureEvent]] = {
    "consent": ConsentEvent, "erasure": ErasureEvent}


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "event"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def _statement(text: str, exc: ValidationError) -> ConsentEvent | ErasureEvent | None:
    """A consent or erasure event, when the purchase schema refused only its ``type``."""
    if not any(e["loc"] == ("type",) and e["type"] == "extra_forbidden"
               for e in exc.errors(include_url=False)):
        return None
    try:
        kind = json.loads(text).get("type")
    except (ValueError, AttributeError):
        return None
    model = _STATEMENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise EventRejected("schema", f"type: {str(kind)[:40]!r} is not one of "
                                      f"purchase (no type), {', '.join(_STATEMENTS)}")
    try:
        return model.model_validate_json(text)
    except ValidationError as inner:
        raise EventRejected("schema", _describe(inner)) from None


def decode_event(data: bytes, max_bytes: int = MAX_EVENT_BYTES) -> StreamEvent:
    """Decode one record's bytes, or raise :class:`EventRejected` saying why."""
    if is_aggregate(data):  # the adapters de-aggregate: one that reaches here is corrupt
        raise EventRejected("bad_aggregate", aggregate_defect(data)
                            or "a KPL aggregate must be de-aggregated before decoding")
    if len(data) > max_bytes:
        raise EventRejected("oversized", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
    try:
        return PurchaseEvent.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise EventRejected("not_json", first["msg"]) from None
        if any(e["loc"][:1] == ("schema_version",) for e in exc.errors(include_url=False)):
            raise _version_error(text) from None
        statement = _statement(text, exc)
        if statement is not None:
            return statement
        raise EventRejected("schema", _describe(exc)) from None


def _version_error(text: str) -> EventRejected:
    try:
        version = json.loads(text).get("schema_version")
    except (ValueError, AttributeError):
        version = None
    return EventRejected(
        "unknown_version",
        f"schema_version {version} is not supported (this reader knows "
        f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))})",
    )
