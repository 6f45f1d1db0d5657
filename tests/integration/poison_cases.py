"""The poison catalogue :mod:`tests.integration.test_poison` feeds through every adapter.

Each :class:`Poison` is one Kinesis record (raw bytes and partition key) that must never
crash the consumer: every user record in it that is poison becomes a dead letter of a
specific kind whose reason names the defect, and the good user records a KPL aggregate
may hold beside it are applied. Beside the poison, valid records at the schema's edges
(the largest amounts, 500 lines, the epoch, a refund before its purchase, ...) must be
applied, never dead-lettered, never crash what comes after the decoder. :func:`stream`
puts a good purchase of the same customer before and after each one, so every record sits
between good records of its own customer, shard and batch.

Kinds: ``bad_aggregate`` (KPL), ``not_utf8``, ``not_json``, ``duplicate_key``, ``oversized``,
``schema``, ``unknown_version``, ``partition_key``, ``future_event``, ``time_out_of_range``
(decoder and admission) and ``currency_mismatch`` (the core: a refund in another currency
than its order's).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import messages_pb2

from models.events import MAX_EVENT_BYTES
from models.kpl import MAGIC

CUSTOMER = "c1"
#: Kinesis allows 1 MiB of data and partition key per record
KINESIS_MAX = 1024 * 1024
#: when the poison and the first good purchase are dated (the good ones a minute apart)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=12)


@dataclass(frozen=True)
class Letter:
    """One dead letter a poison record must leave: its user record, kind, reason fragment."""

    sub: int
    kind: str
    reason: str


@dataclass(frozen=True)
class Poison:
    """One Kinesis record: the dead letters it must leave, and what in it must be applied
    (purchases of CUSTOMER, and other events: refunds, cancellations, consent)."""

    name: str
    data: bytes
    letters: tuple[Letter, ...] = ()
    partition_key: str = CUSTOMER
    good: int = 0
    others: int = 0
    #: the dead letters when the KCL daemon de-aggregates (3.1.3 ``AggregatorUtil``), where
    #: they differ (None: the same): it drops an aggregate with no user records (nothing is
    #: lost) and, after logging it, one whose key index is outside its table; it passes a
    #: partition key that is not UTF-8 on with U+FFFD in place of the bad bytes
    under_kcl: tuple[Letter, ...] | None = None


def purchase(event_id: str, at: datetime = T0, **changes: Any) -> dict[str, Any]:
    """A valid purchase of CUSTOMER (EUR 2.50), with ``changes`` (None deletes a field)."""
    e: dict[str, Any] = {
        "schema_version": 1, "event_id": event_id, "order_id": f"o-{event_id}",
        "customer_id": CUSTOMER, "occurred_at": at.isoformat(), "currency": "EUR",
        "items": [{"product_id": "p-1", "category": "music", "quantity": 1,
                   "unit_price": "2.50"}],
        "total": "2.50", "channel": "web"}
    e.update(changes)
    return {k: v for k, v in e.items() if v is not None}


def enc(event: dict[str, Any]) -> bytes:
    return json.dumps(event, allow_nan=True).encode()


def good(event_id: str, at: datetime = T0) -> bytes:
    return enc(purchase(event_id, at))


def _item(**changes: Any) -> list[dict[str, Any]]:
    return [{"product_id": "p-1", "category": "music", "quantity": 1, "unit_price": "2.50",
             **changes}]


def _one(name: str, data: bytes, kind: str, reason: str, pk: str = CUSTOMER) -> Poison:
    return Poison(name, data, (Letter(0, kind, reason),), pk)


def _refund(**changes: Any) -> bytes:
    e = {"type": "refund", "event_id": "r-1", "order_id": "o-g0a", "customer_id": CUSTOMER,
         "occurred_at": T0.isoformat(), "currency": "EUR", "amount": "1.00", **changes}
    return enc({k: v for k, v in e.items() if v is not None})


def aggregate(users: Sequence[tuple[str, bytes]]) -> tuple[str, bytes]:
    """(partition key, data) of one KPL aggregate of ``users``, made by aws-kinesis-agg."""
    agg = RecordAggregator()
    for pk, data in users:
        assert agg.add_user_record(pk, data) is None  # all fit in one record
    pk, _ehk, blob = agg.clear_and_get().get_contents()
    return str(pk), bytes(blob)


def corrupt(blob: bytes) -> bytes:
    """The aggregate with one bit of its protobuf flipped: the MD5 no longer matches."""
    i = len(MAGIC) + 3
    return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]


def with_md5(message: bytes) -> bytes:
    """The magic bytes, ``message`` and its (right) MD5: an aggregate whatever it holds."""
    return MAGIC + message + hashlib.md5(message).digest()


def _varint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def _raw_aggregate(partition_key: bytes, data: bytes | None) -> bytes:
    """An ``AggregatedRecord`` written field by field (protobuf would refuse to build it):
    one partition key of these bytes, one user record of ``data`` (None: no data field)."""
    record = b"\x08\x00" + (b"" if data is None else b"\x1a" + _varint(len(data)) + data)
    return (b"\x0a" + _varint(len(partition_key)) + partition_key
            + b"\x1a" + _varint(len(record)) + record)


def _kpl() -> list[Poison]:
    _, blob = aggregate([(CUSTOMER, good("kpl-0")), (CUSTOMER, good("kpl-1"))])
    _, mixed = aggregate([(CUSTOMER, good("kpl-mix-0")), (CUSTOMER, b"\xff\xfe not json"),
                          (CUSTOMER, good("kpl-mix-2"))])
    _, inner = aggregate([(CUSTOMER, blob)])  # an aggregate inside an aggregate
    bad_index = messages_pb2.AggregatedRecord()
    bad_index.partition_key_table.append(CUSTOMER)
    bad_index.records.add(partition_key_index=3, data=good("kpl-idx"))
    empty = messages_pb2.AggregatedRecord()
    empty.partition_key_table.append(CUSTOMER)
    return [
        _one("kpl_bad_md5", corrupt(blob), "bad_aggregate", "MD5 digest does not match"),
        _one("kpl_truncated", blob[: len(blob) // 2], "bad_aggregate",
             "MD5 digest does not match"),
        _one("kpl_magic_only", blob[:4], "bad_aggregate", "too short"),
        _one("kpl_garbage_protobuf", with_md5(b"\xff" * 40), "bad_aggregate",
             "does not parse"),
        replace(_one("kpl_key_index_out_of_table", with_md5(bad_index.SerializeToString()),
                     "bad_aggregate", "partition key index 3 outside a table of 1"),
                under_kcl=()),
        replace(_one("kpl_no_user_records", with_md5(empty.SerializeToString()),
                     "bad_aggregate", "holds no user records"), under_kcl=()),
        replace(_one("kpl_partition_key_not_utf8",
                     with_md5(_raw_aggregate(b"\xff\xfe", good("kpl-pk"))),
                     "bad_aggregate", "user record 0: partition key is not UTF-8"),
                under_kcl=(Letter(0, "partition_key", "is not the event's customer_id"),)),
        _one("kpl_user_record_without_data", with_md5(_raw_aggregate(CUSTOMER.encode(), None)),
             "bad_aggregate", "misses required fields: records[0].data"),
        _one("kpl_aggregate_in_an_aggregate", inner, "bad_aggregate",
             "this one is nested in another"),
        Poison("kpl_one_poison_two_good", mixed, (Letter(1, "not_utf8", "invalid UTF-8"),),
               good=2),
    ]


def _with_its_order() -> list[Poison]:
    """A refund after its purchase, both in one KPL aggregate (so the catalogue's order
    ids stay its own)."""
    def pair(name: str, refund: dict[str, Any]) -> bytes:
        buy = purchase(name)
        back = {"type": "refund", "event_id": f"r-{name}", "order_id": buy["order_id"],
                "customer_id": CUSTOMER, "occurred_at": T0.isoformat(), **refund}
        return aggregate([(CUSTOMER, enc(buy)), (CUSTOMER, enc(back))])[1]

    return [
        Poison("refund_in_another_currency", pair("cur", {"currency": "JPY", "amount": "5"}),
               (Letter(1, "currency_mismatch", "not its order's currency"),), good=1),
        Poison("refund_above_its_order", pair("cap", {"currency": "EUR", "amount": "999.00"}),
               good=1, others=1),
    ]


def _json_and_encoding() -> list[Poison]:
    ok = good("enc")
    return [
        _one("empty_bytes", b"", "not_json", "EOF while parsing"),
        _one("not_utf8", b"\xff\xfe\xfd", "not_utf8", "invalid UTF-8 at byte 0"),
        _one("overlong_utf8", b'{"a":"\xc0\xaf"}', "not_utf8", "invalid UTF-8 at byte 6"),
        _one("utf8_encoded_surrogate", b'{"a":"\xed\xa0\x80"}', "not_utf8",
             "invalid UTF-8 at byte 6"),
        _one("utf16_with_bom", ok.decode().encode("utf-16"), "not_utf8", "UTF-16"),
        _one("utf8_bom", b"\xef\xbb\xbf" + ok, "not_json", "byte order mark"),
        _one("gzip", gzip.compress(ok), "not_utf8", "gzip"),
        _one("invalid_json", b"{not json", "not_json", "key must be a string"),
        _one("truncated_json", ok[:-10], "not_json", "EOF while parsing"),
        _one("trailing_garbage", ok + b" x", "not_json", "trailing characters"),
        _one("two_objects", ok + ok, "not_json", "trailing characters"),
        _one("nul_in_json", ok[:5] + b"\x00" + ok[5:], "not_json", "control character"),
        _one("python_repr", str(purchase("repr")).encode(), "not_json", "key must be a string"),
        _one("nan_literal", enc(purchase("nan", total=float("nan"))), "schema",
             "total: Input should be a finite number"),
        _one("infinity_literal", enc(purchase("inf", total=float("inf"))), "schema",
             "total: Input should be a finite number"),
        _one("amount_1e309", ok.replace(b'"total": "2.50"', b'"total": 1e309'), "schema",
             "total: Input should be a finite number"),
        _one("nan_string", enc(purchase("nans", total="NaN")), "schema",
             "total: Input should be a finite number"),
        _one("5000_digit_number", ok.replace(b'"quantity": 1', b'"quantity": ' + b"9" * 5000),
             "not_json", "number out of range"),
        _one("deeply_nested_list", b"[" * 100_000 + b"]" * 100_000, "not_json",
             "recursion limit exceeded"),
        _one("deeply_nested_field", ok[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000
             + b"}", "not_json", "recursion limit exceeded"),
        _one("lone_surrogate_escape", ok.replace(b'"music"', b'"\\ud800"'), "not_json",
             "hex escape"),
        _one("lone_low_surrogate_escape", ok.replace(b'"music"', b'"\\udc00x"'), "not_json",
             "surrogate"),
        _one("duplicate_keys", ok[:-1] + b', "total": "2.50"}', "duplicate_key",
             "'total'"),
        _one("duplicate_customer_id", ok[:-1] + b', "customer_id": "c1"}', "duplicate_key",
             "'customer_id'"),
        _one("just_over_max_event_bytes", ok[:-1] + b', "pad": "'
             + b"x" * (MAX_EVENT_BYTES - len(ok)) + b'"}', "oversized",
             f"exceeds the limit of {MAX_EVENT_BYTES}"),
        _one("huge_record", ok[:-1] + b', "pad": "' + b"x" * (KINESIS_MAX - len(ok) - 20)
             + b'"}', "oversized", "exceeds the limit of"),
    ]


def _not_an_object() -> list[Poison]:
    return [_one(f"json_{n}", d, "schema", "event: Input should be an object")
            for n, d in (("list", b"[]"), ("string", b'"x"'), ("number", b"1"),
                         ("null", b"null"), ("true", b"true"),
                         ("double_encoded", json.dumps(good("dbl").decode()).encode()))]


def _schema() -> list[Poison]:
    future = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).isoformat()
    return [
        _one("empty_object", b"{}", "schema", "event_id: Field required"),
        _one("unknown_schema_version", enc(purchase("v", schema_version=2)),
             "unknown_version", "schema_version 2 is not supported"),
        _one("schema_version_as_text", enc(purchase("vs", schema_version="1")),
             "unknown_version", 'schema_version "1" is not supported'),
        _one("unknown_type", enc(purchase("t", type="return")), "schema",
             "type: 'return' is not one of"),
        _one("type_not_text", enc(purchase("t5", type=5)), "schema", "type: '5' is not one of"),
        _one("extra_field", enc(purchase("x", coupon="FREE")), "schema",
             "coupon: Extra inputs are not permitted"),
        _one("missing_field", enc(purchase("m", order_id=None)), "schema",
             "order_id: Field required"),
        _one("items_not_a_list", enc(purchase("il", items={})), "schema",
             "items: Input should be a valid array"),
        _one("no_items", enc(purchase("ni", items=[])), "schema", "items: List should have"),
        _one("negative_quantity", enc(purchase("nq", items=_item(quantity=-1))), "schema",
             "quantity: Input should be greater than 0"),
        _one("fractional_quantity", enc(purchase("fq", items=_item(quantity=1.5))), "schema",
             "quantity: Input should be a valid integer"),
        _one("negative_price", enc(purchase("np", items=_item(unit_price="-2.50"),
                                            total="-2.50")),
             "schema", "greater than or equal to 0"),
        _one("total_mismatch", enc(purchase("tm", total="3.00")), "schema",
             "total 3.00 does not match the sum of its items 2.50"),
        _one("currency_abc", enc(purchase("abc", currency="ABC")), "schema",
             "'ABC' is not an ISO 4217 currency code"),
        _one("currency_gold", enc(purchase("xau", currency="XAU")), "schema",
             "XAU has no minor unit"),
        _one("currency_lowercase", enc(purchase("eur", currency="eur")), "schema",
             "currency: String should match pattern"),
        _one("jpy_with_decimals", enc(purchase("jpy", currency="JPY")), "schema",
             "2.50 JPY has more than 0 decimal places"),
        _one("far_future", enc(purchase("ff", at=datetime(2100, 1, 1, tzinfo=UTC))),
             "future_event", "occurred_at 2100-01-01T00:00:00+00:00 is"),
        _one("year_9999_minus_14h", enc(purchase("y9", occurred_at="9999-12-31T23:59:59-14:00")),
             "future_event", "9999-12-31T23:59:59-14:00"),
        _one("the_epoch", enc(purchase("epoch", occurred_at="1970-01-01T00:00:00Z")),
             "time_out_of_range", "a producer clock that was never set"),
        _one("a_reset_clock", enc(purchase("reset", occurred_at=1_000)),
             "time_out_of_range", "occurred_at 1970-01-01T00:16:40+00:00 is not between "
                                  "1990-01-01T00:00:00+00:00"),
        _one("just_before_1990", enc(purchase("b90", occurred_at="1989-12-31T23:59:59Z")),
             "time_out_of_range", "1989-12-31T23:59:59+00:00 is not between"),
        _one("utc_year_0", enc(purchase("y0", occurred_at="0001-01-01T00:00:00+14:00")),
             "time_out_of_range", "0001-01-01T00:00:00+14:00 is not between"),
        _one("year_0000", enc(purchase("y00", occurred_at="0000-01-01T00:00:00Z")),
             "schema", "occurred_at: Input should be a valid datetime"),
        _one("before_1970", enc(purchase("b70", at=datetime(1969, 12, 31, tzinfo=UTC))),
             "time_out_of_range", "1969-12-31T00:00:00+00:00 is not between"),
        _one("no_timezone", enc(purchase("ntz", occurred_at="2024-01-01T00:00:00")),
             "schema", "occurred_at: Input should have timezone info"),
        _one("february_30", enc(purchase("f30", occurred_at="2024-02-30T00:00:00Z")),
             "schema", "day value is outside expected range"),
        _one("unix_time_past_9999", enc(purchase("ut", occurred_at=1e20)), "schema",
             "1e+20 seconds since the epoch is not a date between the years 1 and 9999"),
        _one("unix_seconds_not_milliseconds", enc(purchase("ut2", occurred_at=20000000001)),
             "future_event", "occurred_at 2603-10-11T11:33:21+00:00 is"),
        _one("id_with_control_characters", enc(purchase("c\x00\x1b[31m")), "schema",
             "event_id: String should match pattern"),
        _one("customer_id_with_newline", enc(purchase("nl", customer_id="c1\n")), "schema",
             "customer_id: String should match pattern"),
        _one("10k_char_id", enc(purchase("i" * 10_000)), "schema",
             "event_id: String should have at most 64 characters"),
        _one("10k_char_category", enc(purchase("cat", items=_item(category="k" * 10_000))),
             "schema", "category: String should have at most 128 characters"),
        _one("501_items", enc(purchase("501", items=_item() * 501, total="1252.50")),
             "schema", "items: List should have at most 500 items"),
        _one("partition_key_not_the_customer", good("pk"), "partition_key",
             "'c2' is not the event's customer_id 'c1'", pk="c2"),
        _one("refund_without_amount", _refund(amount=None), "schema", "amount: Field required"),
        _one("refund_negative_amount", _refund(amount="-1.00"), "schema",
             "amount: Input should be greater than or equal to 0"),
        _one("refund_jpy_decimals", _refund(currency="JPY", amount="0.5"), "schema",
             "0.5 JPY has more than 0 decimal places"),
        _one("refund_in_the_future", _refund(occurred_at="2100-01-01T00:00:00Z"),
             "future_event", "2100-01-01"),
        _one("cancellation_with_bad_items", enc(
            {"type": "cancellation", "event_id": "x-1", "order_id": "o-g0a",
             "customer_id": CUSTOMER, "occurred_at": T0.isoformat(),
             "items": [{"product_id": "p-1", "quantity": 0}]}), "schema",
             "items.0.category: Field required"),
        _one("consent_not_bool", enc(
            {"type": "consent", "event_id": "k-1", "customer_id": CUSTOMER,
             "occurred_at": T0.isoformat(), "analysis": "maybe"}), "schema",
             "analysis: Input should be a valid boolean"),
        _one("year_9999", enc(purchase("fu", occurred_at=future)), "future_event",
             "9999-12-31"),
    ]


def _follow_up(kind: str, order_id: str, **fields: Any) -> bytes:
    return enc({"type": kind, "event_id": f"{kind}-{order_id}", "order_id": order_id,
                "customer_id": CUSTOMER, "occurred_at": T0.isoformat(), **fields})


def _edge() -> list[Poison]:
    """Valid records at the edges of the schema: applied, never a dead letter, never a
    crash downstream of the decoder (features, forecasts, the state item)."""
    now = datetime.now(UTC)
    lines = [{"product_id": f"p-{i}", "category": "k" * 128, "quantity": 100_000,
              "unit_price": "0.01"} for i in range(500)]
    return [
        Poison("largest_total", enc(purchase("big", items=_item(unit_price="999999999999.99"),
                                             total="999999999999.99")), good=1),
        Poison("largest_quantity", enc(purchase("bq", items=_item(quantity=100_000,
                                                                  unit_price="9999999.99"),
                                                total="999999999000.00")), good=1),
        Poison("500_lines_of_largest_quantity", enc(purchase("lines", items=lines,
                                                             total="500000.00")), good=1),
        Poison("free_order", enc(purchase("free", items=_item(unit_price="0"), total="0")),
               good=1),
        Poison("kwd_three_decimals", enc(purchase("kwd", currency="KWD",
                                                  items=_item(unit_price="1.234"),
                                                  total="1.234")), good=1),
        Poison("jpy_whole", enc(purchase("jpy", currency="JPY", items=_item(unit_price="6000"),
                                         total="6000")), good=1),
        Poison("the_earliest_event_time", enc(purchase(
            "earliest", occurred_at="1990-01-01T00:00:00Z")), good=1),
        Poison("unix_seconds_time", enc(purchase("unix", occurred_at=int(T0.timestamp()))),
               good=1),
        Poison("within_the_future_tolerance",
               enc(purchase("soon", at=now + timedelta(seconds=120))), good=1),
        Poison("unicode_category", enc(purchase(
            "uni", items=_item(category="\U0001f600 \u202e\u001b[31m\u0000 \ud83d\ude00"))),
            good=1),
        Poison("consent", enc({"type": "consent", "event_id": "consent-1",
                               "customer_id": CUSTOMER, "occurred_at": T0.isoformat(),
                               "analysis": False}), others=1),
        Poison("refund_before_its_purchase", _follow_up("refund", "o-later", currency="JPY",
                                                        amount="500"), others=1),
        Poison("cancellation_before_its_purchase", _follow_up("cancellation", "o-never"),
               others=1),
    ]


def catalogue() -> list[Poison]:
    return [*_kpl(), *_json_and_encoding(), *_not_an_object(), *_schema(),
            *_with_its_order(), *_edge()]


def stream(cases: list[Poison]) -> list[tuple[str, bytes, int]]:
    """(partition key, data, good purchases in it) in stream order: each catalogue record
    between two good purchases of CUSTOMER, each dated a minute after the one before."""
    out: list[tuple[str, bytes, int]] = []
    for i, case in enumerate(cases):
        at = T0 + timedelta(minutes=2 * i)
        out.append((CUSTOMER, good(f"g{i}a", at), 1))
        out.append((case.partition_key, case.data, case.good))
        out.append((CUSTOMER, good(f"g{i}b", at + timedelta(minutes=1)), 1))
    return out
