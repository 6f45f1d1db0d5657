"""The KPL aggregation format, read with ``aws-kinesis-agg`` (pure, no I/O).

A Kinesis record made by the Kinesis Producer Library may hold many *user records*: the
magic bytes ``F3 89 9A C2``, a protobuf ``AggregatedRecord`` (a partition key table, an
explicit hash key table, the records), then the MD5 of the protobuf. Its user records share
the Kinesis record's sequence number and are numbered 0, 1, ... by a *sub-sequence number*.

``aws_kinesis_agg.deaggregator`` passes a record whose MD5 or protobuf is wrong through as if
it were plain (and logs and truncates on a bad table index); we want such a record to be one
dead letter saying why, so this module checks each step itself with the library's constants
and protobuf message.

>>> from aws_kinesis_agg.aggregator import RecordAggregator
>>> agg = RecordAggregator()
>>> for pk, d in (("c1", b"a"), ("c2", b"b"), ("c1", b"c")):
...     _ = agg.add_user_record(pk, d)
>>> _, _, blob = agg.clear_and_get().get_contents()
>>> [(u.partition_key, u.data) for u in deaggregate(blob)]
[('c1', b'a'), ('c2', b'b'), ('c1', b'c')]
>>> deaggregate(b"plain") is None
True
>>> aggregate_defect(blob[:-1] + bytes([blob[-1] ^ 1]))
'MD5 digest does not match the aggregated record'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import aws_kinesis_agg
from aws_kinesis_agg.deaggregator import messages_pb2  # its module puts config_pb2 on the path
from google.protobuf.message import DecodeError

MAGIC: bytes = aws_kinesis_agg.MAGIC
DIGEST_SIZE: int = aws_kinesis_agg.DIGEST_SIZE
#: a Kinesis partition key's longest (Unicode characters; the shortest is 1)
MAX_PARTITION_KEY = 256


class BadAggregate(ValueError):
    """A record that starts with the KPL magic bytes but cannot be de-aggregated."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    partition_key: str
    data: bytes
    explicit_hash_key: str | None = None


def is_aggregate(data: bytes) -> bool:
    """Starts with the KPL magic bytes (it may still be corrupt)."""
    return data[: len(MAGIC)] == MAGIC


def deaggregate(data: bytes) -> list[UserRecord] | None:
    """The user records of a KPL aggregate, in sub-sequence order; None for a plain record.

    Raises :class:`BadAggregate` when the magic bytes are there but the rest is not a valid
    aggregate (too short, MD5 mismatch, protobuf that does not parse, a key index out of
    its table, a key that is not UTF-8, a partition key empty or over 256 characters, a
    required field missing, no user records)."""
    if not is_aggregate(data):
        return None
    body = data[len(MAGIC):]
    if len(body) <= DIGEST_SIZE:
        raise BadAggregate(f"{len(data)} bytes is too short for a KPL aggregate")
    message, digest = body[:-DIGEST_SIZE], body[-DIGEST_SIZE:]
    if hashlib.md5(message).digest() != digest:
        raise BadAggregate("MD5 digest does not match the aggregated record")
    record = messages_pb2.AggregatedRecord()
    try:
        record.ParseFromString(message)
    except DecodeError as exc:
        raise BadAggregate(f"protobuf AggregatedRecord does not parse: {exc}") from None
    if not record.IsInitialized():  # the KCL's parser refuses it; upb's lets it through
        missing = ", ".join(record.FindInitializationErrors()[:3])
        raise BadAggregate(f"protobuf AggregatedRecord misses required fields: {missing}")
    pks = list(record.partition_key_table)
    ehks = list(record.explicit_hash_key_table)
    out: list[UserRecord] = []
    for i, r in enumerate(record.records):
        if r.partition_key_index >= len(pks):
            raise BadAggregate(f"user record {i}: partition key index {r.partition_key_index} "
                               f"outside a table of {len(pks)}")
        ehk: str | None = None
        if r.HasField("explicit_hash_key_index"):
            if r.explicit_hash_key_index >= len(ehks):
                raise BadAggregate(f"user record {i}: explicit hash key index "
                                   f"{r.explicit_hash_key_index} outside a table of {len(ehks)}")
            ehk = _text(ehks[r.explicit_hash_key_index], "explicit hash key", i)
        key = _text(pks[r.partition_key_index], "partition key", i)
        if not 1 <= len(key) <= MAX_PARTITION_KEY:  # what Kinesis takes, and KPL with it;
            # an empty one would skip the consumer's partition key check (it exempts only
            # old dead letters that have none)
            raise BadAggregate(f"user record {i}: partition key of {len(key)} characters "
                               f"(1 to {MAX_PARTITION_KEY})")
        out.append(UserRecord(key, bytes(r.data), ehk))
    if not out:
        raise BadAggregate("KPL aggregate holds no user records")
    return out


def _text(value: str | bytes, what: str, i: int) -> str:
    """A key from the aggregate's tables: protobuf hands over the bytes of one that is not
    UTF-8, which cannot be a partition key."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadAggregate(f"user record {i}: {what} is not UTF-8") from None
    return str(value)


def valid_user_records(data: bytes) -> list[UserRecord] | None:
    """A valid KPL aggregate's user records; None for a plain record **or a corrupt
    aggregate**, which the caller keeps whole (the decoder then refuses it as
    ``bad_aggregate``, with the reason): what the consumers, redrive and replay each do
    with one Kinesis record.

    >>> valid_user_records(b"plain") is None, valid_user_records(MAGIC + b"x") is None
    (True, True)
    """
    try:
        return deaggregate(data)
    except BadAggregate:
        return None


def aggregate_defect(data: bytes) -> str | None:
    """Why this KPL aggregate cannot be de-aggregated; None when it can (or is plain)."""
    try:
        deaggregate(data)
    except BadAggregate as exc:
        return str(exc)
    return None
