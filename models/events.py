"""The wire schema (version 1) of what the stream carries, and its decoder.

One :class:`PurchaseEvent` per order, published by the orders service to Kinesis with
the customer id as partition key. Beside orders, the same stream carries the
customer's privacy statements, so the consumer stays the single writer of a
customer's state and they apply in order with the purchases: a
:class:`ConsentEvent` (``"type": "consent"``, published by the API or the
orders service) and an :class:`ErasureEvent` (``"type": "erasure"``, published by
``caa erase``). After an order, the orders service may publish a :class:`RefundEvent`
(``"type": "refund"``: an amount given back, optionally with the lines returned) or a
:class:`CancellationEvent` (``"type": "cancellation"``: the order never counts), keyed by
the order's ``order_id``; either may arrive before its purchase. Money is exact
(``Decimal``) in an ISO 4217 currency with at most as many decimals as its minor unit
(USD 2, JPY 0, KWD 3); a total must equal the sum of its line items exactly.

These types were added within schema version 1: a version-1 reader that predates them
rejects them as ``schema`` dead letters (redrive applies them after an upgrade).

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
>>> r = decode_event(b'{"type": "refund", "event_id": "r-1", "order_id": "o-1", '
...                  b'"customer_id": "00001", "occurred_at": "1997-01-03T00:00:00Z", '
...                  b'"currency": "USD", "amount": "5.50"}')
>>> type(r).__name__, r.amount
('RefundEvent', Decimal('5.50'))
>>> decode_event(b'{"type": "consent", "event_id": "c-1"}')  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
models.events.EventRejected: schema: customer_id: Field required; ...
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)

from models.kpl import aggregate_defect, is_aggregate
from models.money import exponent

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({SCHEMA_VERSION})
#: Default largest encoded event we accept; Kinesis itself allows 1 MiB per record.
MAX_EVENT_BYTES = 256 * 1024

Money = Annotated[Decimal, Field(ge=0, max_digits=16, decimal_places=4)]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
#: what an id (event, order, customer, product) may hold, and how long it may be
ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"
ID_MAX_CHARS = 64
Identifier = Annotated[str, Field(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN)]
_ID = re.compile(ID_PATTERN)


def is_identifier(text: str) -> bool:
    """Does ``text`` pass :data:`Identifier`'s rule (without pydantic: the dead letters'
    scan of payloads asks it of many texts)?

    >>> is_identifier("c-1"), is_identifier("a b"), is_identifier("x" * 65)
    (True, False, False)
    """
    return 0 < len(text) <= ID_MAX_CHARS and _ID.fullmatch(text) is not None
Label = Annotated[str, Field(min_length=1, max_length=128)]
Channel = Literal["web", "app", "store", "phone", "marketplace", "other"]


#: a time of day's seconds of 60 (a leap second, RFC 3339 section 5.7) or its hour 24
_LEAP_OR_24 = re.compile(r"(?P<head>\d{4}-\d\d-\d\d[Tt ])(?P<hh>\d\d):(?P<mm>\d\d)"
                         r"(?::(?P<ss>\d\d)(?P<frac>[.,]\d+)?)?(?P<tail>.*)")


def _leap_second(text: str) -> str:
    """A date-time text with a leap second (``23:59:60Z``; RFC 3339 allows second 60, Python
    and pydantic do not) as the last microsecond of the second before it (``23:59:59.999999``:
    the same UTC day and minute, after every earlier instant, as POSIX time has no second
    60). A leap second ends a UTC day: second 60 at another time (``10:30:60Z``) is refused
    with that reason, and so is hour 24 (``24:00:00``, ISO 8601's end of a day, not RFC
    3339). Other texts are returned as they are.

    >>> _leap_second("2017-01-01T00:59:60+01:00")
    '2017-01-01T00:59:59.999999+01:00'
    """
    m = _LEAP_OR_24.fullmatch(text)
    if m is None:
        return text
    if m["hh"] == "24":
        raise ValueError("hour 24 is not a time of day in RFC 3339: write 00:00:00 of the "
                         "next day")
    if m["ss"] != "60":
        return text
    before = f"{m['head']}{m['hh']}:{m['mm']}:59.999999{m['tail']}"
    try:
        at = datetime.fromisoformat(before.upper())
    except ValueError:
        return before  # the rest is wrong: pydantic says what
    if at.tzinfo is not None and at.astimezone(UTC).strftime("%H:%M") != "23:59":
        raise ValueError("second 60 is a leap second, which only ends a UTC day "
                         "(23:59:60Z); this is not one")
    return before


def _date_time_text(value: object) -> object:
    """``occurred_at``: RFC 3339 / ISO 8601 text with its offset, or a number (or a text
    of digits) of **seconds** since the epoch, UTC. Always seconds: pydantic alone would
    read a number above 2e10 as milliseconds, so a producer's epoch seconds far in the
    future (20000000001, the year 2603) would silently become 1970-08-20. A boolean is
    refused. A leap second is read as the instant before it (:func:`_leap_second`).

    >>> _date_time_text("2016-12-31T23:59:60Z")
    '2016-12-31T23:59:59.999999Z'
    """
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 date-time text with its UTC offset, such as "
                         "2024-05-01T10:00:00Z, or seconds since the epoch")
    if isinstance(value, str):
        text = value.strip()  # blanks around either form are no part of it
        if not (text.isascii() and text.lstrip("+-").replace(".", "", 1).isdigit()):
            # digits of other scripts (str.isdigit: "\uff11\uff17...") are no epoch time
            return _leap_second(text) if ":60" in text or "24:" in text else text
        value = float(text)
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{_number_text(value)} seconds since the epoch is not a date "
                             "between the years 1 and 9999") from None
    return value


def _number_text(value: float) -> str:
    """A number for an error line, however large: ``1e+30``, or ``a 400-digit number`` for
    an integer no float holds (formatting one as a float would raise)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"a {len(str(abs(value))) if value.bit_length() < 14_000 else 'many'}-digit number"
    return f"{value:g}"


def _not_boolean(value: object) -> object:
    """A count or a version is a JSON number: ``true`` is refused (pydantic would read it
    as 1, so ``"quantity": true`` became one item and ``"schema_version": true`` version
    1). Numbers and digit texts go on to the field's own checks."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


#: the schema version an event declares (1; ``true`` is not 1)
Version = Annotated[Literal[1], BeforeValidator(_not_boolean)]
#: a line's quantity: a whole number of units, 1..100,000 (``true`` is not 1)
Quantity = Annotated[int, Field(gt=0, le=100_000), BeforeValidator(_not_boolean)]


#: when an event happened: ISO 8601 text with an offset (:func:`_date_time_text`)
Timestamp = Annotated[AwareDatetime, BeforeValidator(_date_time_text)]


#: the longest ``detail`` of an :class:`EventRejected` (characters; longer ones are cut)
MAX_DETAIL_CHARS = 500


def printable(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """``text`` safe to show on an operator's terminal: control characters (ANSI escapes,
    BEL, NUL, ...: Unicode category C) written as Python escapes, and cut to ``limit``
    characters with ``...``.

    >>> printable("key \\x1b[2J\\x07 done")
    'key \\\\x1b[2J\\\\x07 done'
    """
    if text.isprintable() and len(text) <= limit:
        return text
    clean = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    return clean if len(clean) <= limit else clean[:limit] + "..."


class EventRejected(ValueError):
    """A record that can never become a valid event; ``kind`` is a short machine code and
    ``detail`` says why in one printable line (:func:`printable`: a payload's own text in
    it cannot drive a terminal)."""

    def __init__(self, kind: str, detail: str) -> None:
        detail = printable(detail)
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class LineItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    product_id: Identifier
    category: Label
    quantity: Quantity
    unit_price: Money


class Contact(BaseModel):
    """Personal data some orders services attach. Accepted, never stored, never analysed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(max_length=256)] | None = None
    email: Annotated[str, Field(max_length=256)] | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None
    address: Annotated[str, Field(max_length=1024)] | None = None


def _check_amounts(currency: str, amounts: list[Decimal]) -> None:
    """``ValueError`` unless ``currency`` is an ISO 4217 code and every amount fits its minor
    unit (no more decimals than it has)."""
    places = exponent(currency)
    for amount in amounts:
        written = amount.as_tuple().exponent  # a Money amount is finite: an int
        if isinstance(written, int) and written >= -places:
            continue  # as written it has no more decimals (normalising only drops zeros)
        decimals = -int(amount.normalize().as_tuple().exponent)
        if decimals > places:
            raise ValueError(f"{amount} {currency} has more than {places} decimal places")


class PurchaseEvent(BaseModel):
    """One order as the orders service publishes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Version = 1
    event_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    occurred_at: Timestamp
    currency: CurrencyCode
    items: Annotated[list[LineItem], Field(min_length=1, max_length=500)]
    total: Money
    channel: Channel = "web"
    #: a JSON boolean only ("no", 0 or "off" are refused, as the API refuses them)
    consent: StrictBool | None = None
    contact: Contact | None = None

    @model_validator(mode="after")
    def _total_matches_items(self) -> PurchaseEvent:
        _check_amounts(self.currency, [self.total, *(i.unit_price for i in self.items)])
        expected = sum((i.unit_price * i.quantity for i in self.items), Decimal("0"))
        if expected != self.total:
            raise ValueError(f"total {self.total} does not match the sum of its items {expected}")
        return self

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class _Statement(BaseModel):
    """What consent and erasure events share: a customer's statement at an instant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Version = 1
    event_id: Identifier
    customer_id: Identifier
    occurred_at: Timestamp

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ConsentEvent(_Statement):
    """The customer's statement on AI analysis of their features; the latest one wins."""

    type: Literal["consent"]
    #: a JSON boolean only ("no", 0 or "off" are refused, as the API refuses them)
    analysis: StrictBool


class ErasureEvent(_Statement):
    """Forget the customer: state and prediction go; later events start a new customer."""

    type: Literal["erasure"]


class _OrderFollowUp(BaseModel):
    """What refund and cancellation events share: something that happened to an order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Version = 1
    event_id: Identifier
    order_id: Identifier
    customer_id: Identifier
    occurred_at: Timestamp

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class RefundEvent(_OrderFollowUp):
    """Money given back on an order: ``amount`` (in the order's ``currency``) reduces the
    customer's spend; ``items``, when given, are the lines returned (their quantities
    come off the product and category statistics). Several refunds of one order add up,
    capped at the order's total."""

    type: Literal["refund"]
    currency: CurrencyCode
    amount: Money
    items: Annotated[list[LineItem], Field(max_length=500)] = []

    @model_validator(mode="after")
    def _amounts_fit(self) -> RefundEvent:
        _check_amounts(self.currency, [self.amount, *(i.unit_price for i in self.items)])
        return self


class CancellationEvent(_OrderFollowUp):
    """The order is cancelled: it leaves the counts, spend, intervals and BTYD inputs
    (and, when ``items`` are given with the ``currency``, the product statistics) as if
    never placed."""

    type: Literal["cancellation"]
    items: Annotated[list[LineItem], Field(max_length=500)] = []
    #: the order's currency; required with ``items`` (their prices are in it)
    currency: CurrencyCode | None = None

    @model_validator(mode="after")
    def _priced_lines(self) -> CancellationEvent:
        if self.items:
            if self.currency is None:
                raise ValueError("a cancellation with items needs the order's currency")
            _check_amounts(self.currency, [i.unit_price for i in self.items])
        return self


StreamEvent = PurchaseEvent | ConsentEvent | ErasureEvent | RefundEvent | CancellationEvent
_STATEMENTS: dict[str, type[ConsentEvent] | type[ErasureEvent] | type[RefundEvent]
                  | type[CancellationEvent]] = {
    "consent": ConsentEvent, "erasure": ErasureEvent, "refund": RefundEvent,
    "cancellation": CancellationEvent}


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "event"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def _statement(text: str, exc: ValidationError) -> StreamEvent | None:
    """A consent, erasure, refund or cancellation event, when the purchase schema refused
    its ``type``."""
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
    """Decode one record's bytes, or raise :class:`EventRejected` saying why.

    Beyond the schema: a byte order mark is refused (``not_json``; JSON text must not
    start with one), and so is an object with a key twice (``duplicate_key``: parsers
    disagree on which value counts, so the event is ambiguous).

    >>> decode_event(b'{"type": "refund", "type": "consent"}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    models.events.EventRejected: duplicate_key: key 'type' appears more than once in ...
    """
    if is_aggregate(data):  # the adapters de-aggregate: one that reaches here is corrupt
        raise EventRejected("bad_aggregate", aggregate_defect(data)
                            or "a KPL aggregate must be de-aggregated once: this one is "
                               "nested in another")
    if len(data) > max_bytes:
        raise EventRejected("oversized", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    if data.startswith(_UTF8_BOM):
        raise EventRejected("not_json", "starts with a UTF-8 byte order mark (U+FEFF), "
                                        "which JSON text must not")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected("not_utf8", f"invalid UTF-8 at byte {exc.start}"
                                        f"{_encoding_hint(data)}") from None
    try:
        parsed = _DECODER.decode(text)
    except EventRejected:
        raise
    except (ValueError, RecursionError):
        parsed = None  # not JSON (or too deep): the schema's parser below says why
    kind = parsed.get("type") if isinstance(parsed, dict) else None
    statement = _STATEMENTS.get(kind) if isinstance(kind, str) else None
    if statement is not None:  # straight to its schema (the purchase one would refuse it)
        try:
            return statement.model_validate_json(text)
        except ValidationError as exc:
            raise _rejection(text, exc) from None
    return _validate(text)


def _rejection(text: str, exc: ValidationError) -> EventRejected:
    """Why a known event type's schema refused ``text``: not JSON to pydantic's parser,
    an unknown ``schema_version``, or the schema's first errors."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return EventRejected("not_json", errors[0]["msg"])
    if any(e["loc"][:1] == ("schema_version",) for e in errors):
        return _version_error(text)
    return EventRejected("schema", _describe(exc))


def _validate(text: str) -> StreamEvent:
    try:
        return PurchaseEvent.model_validate_json(text)
    except ValidationError as exc:
        rejection = _rejection(text, exc)
        if rejection.kind == "schema":  # perhaps a statement with a type it does not know
            statement = _statement(text, exc)
            if statement is not None:
                return statement
        try:
            raise rejection from None
        finally:  # the traceback holds this frame: a local naming the error is a cycle
            del rejection


_UTF8_BOM = b"\xef\xbb\xbf"


def _encoding_hint(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return " (starts with a UTF-16 byte order mark: the producer must send UTF-8)"
    if data.startswith(b"\x1f\x8b"):
        return " (starts with the gzip magic bytes: the producer must not compress)"
    return ""


def unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json.loads``'s object hook: :class:`EventRejected` (``duplicate_key``) on a key given
    twice (the decoder's, and the API's for its bodies)."""
    out: dict[str, object] = dict(pairs)
    if len(out) == len(pairs):  # every key once (the common case, in C)
        return out
    out = {}
    for key, value in pairs:
        if key in out:
            raise EventRejected("duplicate_key", f"key {key[:64]!r} appears more than once in "
                                                 f"one object (parsers disagree on which "
                                                 f"value counts)")
        out[key] = value
    return out


#: ``json.loads(text, object_pairs_hook=unique_keys)`` built once (``json.loads`` with a
#: hook builds a decoder and its scanner per call: half the parse's time); the byte order
#: mark it would refuse is refused before
_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)


def _version_error(text: str) -> EventRejected:
    try:
        version = json.loads(text).get("schema_version")
    except (ValueError, AttributeError):
        version = None
    kind = {bool: "a boolean", str: "a text", float: "a fraction"}.get(type(version))
    if isinstance(version, float) and version.is_integer():
        kind = None  # 1.0: JSON has one number type
    return EventRejected(
        "unknown_version",
        f"schema_version {json.dumps(version)[:40]} is not supported (this reader knows "
        f"{', '.join(map(str, sorted(SUPPORTED_VERSIONS)))}"
        f"{f'; a version is a JSON whole number, not {kind}' if kind else ''})",
    )
