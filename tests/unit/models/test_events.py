from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest

from models.events import (
    CancellationEvent,
    ConsentEvent,
    ErasureEvent,
    EventRejected,
    PurchaseEvent,
    RefundEvent,
    decode_event,
)


def good(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "schema_version": 1, "event_id": "e-1", "order_id": "o-1", "customer_id": "00042",
        "occurred_at": "2024-03-01T12:00:00+01:00", "currency": "EUR",
        "items": [{"product_id": "milk", "category": "dairy", "quantity": 2,
                   "unit_price": "1.25"},
                  {"product_id": "bread", "category": "bakery", "quantity": 1,
                   "unit_price": 2}],
        "total": "4.50", "channel": "app", "consent": True,
    }
    d.update(over)
    return d


def enc(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def test_round_trip_keeps_everything():
    e = decode_event(enc(good()))
    assert isinstance(e, PurchaseEvent)
    assert decode_event(e.to_bytes()) == e
    assert e.customer_id == "00042" and str(e.total) == "4.50"


@pytest.mark.parametrize(
    ("change", "kind", "fragment"),
    [
        ({"items": [{"product_id": "p", "category": "c", "quantity": 0, "unit_price": "1"}],
          "total": "0"}, "schema", "items.0.quantity"),
        ({"items": [{"product_id": "p", "category": "c", "quantity": -1, "unit_price": "1"}],
          "total": "-1"}, "schema", "greater than 0"),
        ({"items": [{"product_id": "p", "category": "c", "quantity": 1, "unit_price": "-1"}],
          "total": "0"}, "schema", "unit_price"),
        ({"total": "4.51"}, "schema", "does not match the sum of its items 4.50"),
        ({"occurred_at": "2024-03-01T12:00:00"}, "schema", "timezone"),
        ({"schema_version": 2}, "unknown_version", "schema_version 2 is not supported"),
        ({"currency": "euro"}, "schema", "currency"),
        ({"extra": 1}, "schema", "extra"),
        ({"items": []}, "schema", "items"),
        ({"total": "4.505"}, "schema", "decimal places"),
    ],
)
def test_invalid_events_are_rejected_with_a_clear_reason(change, kind, fragment):
    with pytest.raises(EventRejected) as info:
        decode_event(enc(good(**change)))
    assert info.value.kind == kind
    assert fragment in str(info.value)


def test_not_utf8_not_json_and_oversized():
    with pytest.raises(EventRejected, match="not_utf8: invalid UTF-8 at byte 1"):
        decode_event(b"{\xff}")
    with pytest.raises(EventRejected, match="not_json"):
        decode_event(b"{not json")
    big = enc(good(order_id="o" * 10))
    with pytest.raises(EventRejected, match=f"oversized: {len(big)} bytes"):
        decode_event(big, max_bytes=len(big) - 1)
    decoded = decode_event(big, max_bytes=len(big))
    assert isinstance(decoded, PurchaseEvent) and decoded.order_id == "o" * 10


def test_zero_spend_is_a_valid_purchase():
    e = decode_event(enc(good(items=[{"product_id": "p", "category": "c", "quantity": 1,
                                      "unit_price": "0.00"}], total="0.00")))
    assert isinstance(e, PurchaseEvent) and e.total == 0


def test_events_are_immutable():
    e = PurchaseEvent.model_validate(good())
    with pytest.raises(ValueError):
        e.total = 1  # type: ignore[misc,assignment]


def test_consent_and_erasure_events_decode_and_bad_types_are_rejected():
    base = {"event_id": "k1", "customer_id": "00042", "occurred_at": "2024-01-01T00:00:00Z"}
    consent = decode_event(json.dumps({**base, "type": "consent", "analysis": False}).encode())
    assert isinstance(consent, ConsentEvent) and consent.analysis is False
    erasure = decode_event(json.dumps({**base, "type": "erasure"}).encode())
    assert isinstance(erasure, ErasureEvent) and erasure.customer_id == "00042"
    with pytest.raises(EventRejected, match="schema: type: 'return' is not one of"):
        decode_event(json.dumps({**base, "type": "return"}).encode())
    with pytest.raises(EventRejected, match="schema: order_id: Field required; currency"):
        decode_event(json.dumps({**base, "type": "refund"}).encode())
    with pytest.raises(EventRejected, match="schema: analysis"):
        decode_event(json.dumps({**base, "type": "consent", "analysis": "maybe"}).encode())
    with pytest.raises(EventRejected, match="schema: "):  # a purchase may not carry a type
        decode_event(enc(good(type="purchase")))


_STATEMENT = {"event_id": "k1", "customer_id": "00042", "occurred_at": "2024-01-01T00:00:00Z"}
_LINE = {"product_id": "p", "category": "k", "quantity": 1, "unit_price": "2.50"}
_OF_EVERY_TYPE = [
    good(), {**_STATEMENT, "type": "consent", "analysis": True},
    {**_STATEMENT, "type": "erasure"},
    {**_STATEMENT, "type": "refund", "order_id": "o1", "currency": "EUR", "amount": "2.50",
     "items": [_LINE]},
    {**_STATEMENT, "type": "cancellation", "order_id": "o1", "currency": "EUR",
     "items": [_LINE]},
]


@pytest.mark.parametrize("event", _OF_EVERY_TYPE, ids=lambda e: e.get("type", "purchase"))
def test_a_boolean_is_never_read_as_a_number(event: dict[str, Any]):
    """JSON ``true`` is not the number 1: pydantic's lax mode took ``"schema_version": true``
    for version 1 and ``"quantity": true`` for one unit."""
    decode_event(enc(event))  # the event as given is good
    with pytest.raises(EventRejected, match="unknown_version: schema_version true"):
        decode_event(enc({**event, "schema_version": True}))
    if "items" in event:
        for flag in (True, False):
            bad = {**event, "items": [{**_LINE, "quantity": flag}]}
            with pytest.raises(EventRejected, match=r"items\.0\.quantity: .*not a boolean"):
                decode_event(enc(bad))
    assert decode_event(enc({**event, "schema_version": 1})).schema_version == 1


@pytest.mark.parametrize("text", ['"yes"', '"no"', '"off"', '"true"', "1", "0", "0.0"])
def test_consent_flags_are_json_booleans(text: str):
    """A consent statement is a JSON ``true`` or ``false``: ``"no"``, ``0`` or ``"off"``
    were read as consent refused (and ``"yes"``, ``1`` as granted), as the API never did."""
    consent = json.dumps({**_STATEMENT, "type": "consent", "analysis": True})
    with pytest.raises(EventRejected, match="schema: analysis: Input should be a valid boolean"):
        decode_event(consent.replace("true", text).encode())
    purchase = json.dumps(good(consent=True))
    with pytest.raises(EventRejected, match="schema: consent: Input should be a valid boolean"):
        decode_event(purchase.replace("true", text).encode())
    assert decode_event(purchase.encode()).consent is True  # type: ignore[union-attr]


def test_money_is_checked_against_the_currency_minor_unit():
    # JPY has no minor unit, KWD three decimals, ABC is no ISO 4217 currency
    line = {"product_id": "p", "category": "k", "quantity": 1}
    yen = decode_event(enc(good(currency="JPY", items=[{**line, "unit_price": "6000"}],
                                total="6000")))
    assert isinstance(yen, PurchaseEvent) and yen.total == 6000
    with pytest.raises(EventRejected, match="more than 0 decimal places"):
        decode_event(enc(good(currency="JPY", items=[{**line, "unit_price": "1.5"}],
                              total="1.5")))
    kwd = decode_event(enc(good(currency="KWD", items=[{**line, "unit_price": "1.125"}],
                                total="1.125")))
    assert isinstance(kwd, PurchaseEvent) and kwd.total == Decimal("1.125")
    with pytest.raises(EventRejected, match="'ABC' is not an ISO 4217 currency"):
        decode_event(enc(good(currency="ABC")))


def test_refund_and_cancellation_events_decode():
    base = {"event_id": "r1", "order_id": "o1", "customer_id": "00042",
            "occurred_at": "2024-01-02T00:00:00Z"}
    refund = decode_event(json.dumps({**base, "type": "refund", "currency": "EUR",
                                      "amount": "4.50"}).encode())
    assert isinstance(refund, RefundEvent) and refund.amount == Decimal("4.50")
    assert refund.items == []
    cancel = decode_event(json.dumps({**base, "type": "cancellation"}).encode())
    assert isinstance(cancel, CancellationEvent) and cancel.order_id == "o1"
    with pytest.raises(EventRejected, match="more than 2 decimal places"):
        decode_event(json.dumps({**base, "type": "refund", "currency": "EUR",
                                 "amount": "4.505"}).encode())


def test_four_decimal_currencies_and_twelve_integer_digits_are_accepted():
    line = {"product_id": "p", "category": "k", "quantity": 1}
    clf = decode_event(enc(good(currency="CLF", items=[{**line, "unit_price": "1.2345"}],
                                total="1.2345")))
    assert isinstance(clf, PurchaseEvent) and clf.total == Decimal("1.2345")
    big = decode_event(enc(good(currency="USD", items=[{**line, "unit_price": "999999999999.99"}],
                                total="999999999999.99")))
    assert isinstance(big, PurchaseEvent)


@pytest.mark.parametrize("key", ["\x1b[2J\x1b[31mPWNED\x07", "\u202eevil", "k" * 200_000,
                                 "nul\x00"])
def test_a_payloads_own_text_in_a_reason_is_escaped_and_cut(key: str) -> None:
    """An extra key's name is echoed in the reason: a producer must not be able to drive
    the operator's terminal (``caa dlq list``) with it, nor make reasons unbounded."""
    with pytest.raises(EventRejected) as info:
        decode_event(enc({**good(), key: 1}), max_bytes=1 << 20)
    detail = info.value.detail
    assert info.value.kind == "schema" and detail.isprintable() and len(detail) <= 503
    assert str(info.value) == f"schema: {detail}"
    if len(key) < 100:  # shown escaped, as Python writes it
        assert detail == f"{repr(key)[1:-1]}: Extra inputs are not permitted"


@pytest.mark.parametrize(("when", "read"), [
    (20000000001, "2603-10-11T11:33:21+00:00"), ("20000000001", "2603-10-11T11:33:21+00:00"),
    (1714557600, "2024-05-01T10:00:00+00:00"), (1714557600.5, "2024-05-01T10:00:00.500000+00:00"),
])
def test_a_number_for_occurred_at_is_seconds_never_milliseconds(when: Any, read: str) -> None:
    """pydantic alone reads a number above 2e10 as milliseconds: 20000000001 would become
    1970-08-20 silently. Seconds, always: that one is in 2603 (a future_event for the
    consumer)."""
    assert decode_event(enc(good(occurred_at=when))).occurred_at.isoformat() == read


@pytest.mark.parametrize(("when", "read"), [
    ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999999+00:00"),
    ("2016-12-31t23:59:60.25z", "2016-12-31T23:59:59.999999+00:00"),
    ("2017-01-01 00:59:60+01:00", "2017-01-01T00:59:59.999999+01:00"),
    ("2016-12-31T12:24:00Z", "2016-12-31T12:24:00+00:00"),  # "24:" not an hour
    (" 2024-05-01T00:00:00Z\n", "2024-05-01T00:00:00+00:00"),  # blanks, as around a number
])
def test_a_leap_second_is_the_instant_before_it(when: str, read: str) -> None:
    """RFC 3339 allows second 60 (a leap second); pydantic refused it as "unexpected extra
    characters". It is read as the last microsecond of the second before it: the same
    minute and UTC day, after every earlier instant."""
    assert decode_event(enc(good(occurred_at=when))).occurred_at.isoformat() == read


@pytest.mark.parametrize(("when", "said"), [
    ("2016-12-31T24:00:00Z", "hour 24 is not a time of day in RFC 3339"),
    ("2016-12-31 24:00:00+00:00", "hour 24 is not a time of day in RFC 3339"),
    ("2016-12-31T24:00Z", "hour 24 is not a time of day in RFC 3339"),
    ("2016-12-31T10:30:60Z", "second 60 is a leap second, which only ends a UTC day"),
    ("2016-12-31T23:59:60+01:00", "second 60 is a leap second, which only ends a UTC day"),
    ("\uff11\uff17\uff11\uff14\uff15\uff15\uff17\uff16\uff10\uff10", "valid datetime"),
])
def test_times_of_day_that_are_not_are_refused_with_their_reason(when: str, said: str) -> None:
    """Hour 24 and a second 60 that ends no UTC day got pydantic's "unexpected extra
    characters" or were read as a leap second; full-width digits (``str.isdigit`` is true
    of them) were read as epoch seconds."""
    with pytest.raises(EventRejected, match=f"schema: occurred_at: .*{re.escape(said)}"):
        decode_event(enc(good(occurred_at=when)))


@pytest.mark.parametrize("when", [True, 1e20, "-1e400"])
def test_a_boolean_or_an_impossible_epoch_for_occurred_at_is_refused(when: Any) -> None:
    with pytest.raises(EventRejected) as info:
        decode_event(enc(good(occurred_at=when)))
    assert info.value.kind == "schema" and info.value.detail.startswith("occurred_at:")


@pytest.mark.parametrize(("when", "said"), [
    ("9" * 400, "a 400-digit number seconds since the epoch is not a date"),
    ("-" + "9" * 30, "a 30-digit number seconds"),
    ("1e400", "inf seconds since the epoch"),
    ("99999999999999", "1e+14 seconds since the epoch"),
])
def test_an_epoch_time_no_float_holds_is_a_schema_letter(when: str, said: str):
    """Formatting a 400-digit integer as a float raised in the error path itself (an
    internal decoder error, not the schema's reason)."""
    text = json.dumps(good())
    text = text.replace(f'"occurred_at": {json.dumps(good()["occurred_at"])}',
                        f'"occurred_at": {when}')
    assert when in text
    with pytest.raises(EventRejected, match=f"schema: occurred_at: .*{re.escape(said)}"):
        decode_event(text.encode())


@pytest.mark.parametrize(("version", "said"), [
    ('"1"', "not a text"), ("true", "not a boolean"), ("1.5", "not a fraction")])
def test_a_version_that_is_not_a_whole_number_says_so(version: str, said: str):
    text = json.dumps({**good(), "schema_version": 1}).replace('"schema_version": 1',
                                                               f'"schema_version": {version}')
    with pytest.raises(EventRejected, match=f"unknown_version: .*JSON whole number, {said}"):
        decode_event(text.encode())
