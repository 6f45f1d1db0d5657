"""Create the stream and tables the system needs, idempotently (boto3, any endpoint).

The catalogue of our tables (:data:`KEYS`) and their names in one deployment
(:class:`TableNames`, built from the table prefix) live here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: the catalogue: table -> (hash key, range key or None)
KEYS: dict[str, tuple[str, str | None]] = {
    "customers": ("customer_id", None),
    "predictions": ("customer_id", None),
    "checkpoints": ("group", "shard_id"),
    "models": ("name", None),
    "dead-letters": ("id", None),
    "analyses": ("customer_id", None),
    "analysis-history": ("customer_id", "at"),
    "usage": ("day", None),
    "audit": ("id", None),
}
@dataclass(frozen=True)
class Index:
    """A global secondary index: its name, hash and range key (strings) and the other
    attributes it projects."""

    name: str
    hash_key: str
    range_key: str
    include: tuple[str, ...]

    def spec(self) -> dict[str, Any]:
        """The index as CreateTable and UpdateTable take it."""
        return {"IndexName": self.name,
                "KeySchema": [{"AttributeName": self.hash_key, "KeyType": "HASH"},
                              {"AttributeName": self.range_key, "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "INCLUDE",
                               "NonKeyAttributes": list(self.include)}}


_POSITION = ("stream", "shard_id", "sequence_number", "sub_sequence_number")
#: tables' global secondary indexes: the dead letters by partition key and by the customer
#: their payload names, so an erasure queries one customer's letters instead of scanning
#: them all (consumers.stores.dead_letters.BY_PARTITION_KEY, BY_CUSTOMER_ID)
INDEXES: dict[str, tuple[Index, ...]] = {"dead-letters": (
    Index("by-partition-key", "partition_key", "id", _POSITION),
    Index("by-customer-id", "customer_id", "id", _POSITION))}
#: tables whose items expire (attribute holding the epoch second): the history, and the
#: erasure tombstones among the latest analyses (consumers/stores/analyses.py)
TTL = {"analyses": "expires_at", "analysis-history": "expires_at"}
#: tables with a DynamoDB stream (its view type): the predictions change feed for downstream
#: consumers (docs/change-feed.md, `caa watch`)
STREAMS = {"predictions": "NEW_AND_OLD_IMAGES"}
#: every table of the catalogue, in its order
TABLES = tuple(KEYS)


@dataclass(frozen=True)
class TableNames:
    """The names of one deployment's tables: ``<prefix><table>`` for each catalogued table.

    >>> t = TableNames("caa-")
    >>> t.customers, t.name("dead-letters"), t.analysis_history
    ('caa-customers', 'caa-dead-letters', 'caa-analysis-history')
    """

    prefix: str

    def name(self, table: str) -> str:
        if table not in KEYS:
            raise KeyError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
        return f"{self.prefix}{table}"

    def all(self) -> dict[str, str]:
        """Catalogue name -> table name, for every table."""
        return {t: self.name(t) for t in TABLES}

    @property
    def customers(self) -> str:
        return self.name("customers")

    @property
    def predictions(self) -> str:
        return self.name("predictions")

    @property
    def checkpoints(self) -> str:
        return self.name("checkpoints")

    @property
    def models(self) -> str:
        return self.name("models")

    @property
    def dead_letters(self) -> str:
        return self.name("dead-letters")

    @property
    def analyses(self) -> str:
        return self.name("analyses")

    @property
    def analysis_history(self) -> str:
        return self.name("analysis-history")

    @property
    def usage(self) -> str:
        return self.name("usage")

    @property
    def audit(self) -> str:
        return self.name("audit")


def ensure_stream(kinesis: Any, name: str, shards: int) -> bool:
    """Create the stream if absent and wait until ACTIVE; True if it was created."""
    created = False
    try:
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        created = True
    except kinesis.exceptions.ResourceInUseException:
        pass
    kinesis.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    return created


def _attributes(*names: str | None) -> list[dict[str, str]]:
    """The (string) key attributes' definitions, each once."""
    return [{"AttributeName": n, "AttributeType": "S"} for n in dict.fromkeys(names) if n]


def ensure_table(dynamodb: Any, name: str, hash_key: str, range_key: str | None,
                 indexes: tuple[Index, ...] = ()) -> bool:
    schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
    if range_key:
        schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
    keys = (hash_key, range_key, *(k for i in indexes for k in (i.hash_key, i.range_key)))
    extra: dict[str, Any] = ({"GlobalSecondaryIndexes": [i.spec() for i in indexes]}
                             if indexes else {})
    created = False
    try:
        dynamodb.create_table(
            TableName=name, KeySchema=schema, AttributeDefinitions=_attributes(*keys),
            BillingMode="PAY_PER_REQUEST", **extra,
        )
        created = True
    except dynamodb.exceptions.ResourceInUseException:
        pass
    dynamodb.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    return created


#: in the line of an index DynamoDB cannot add yet (:class:`IndexPending`)
PENDING = "not added yet"


class IndexPending(RuntimeError):
    """DynamoDB builds one index of a table at a time: this one must wait for the other
    (``caa setup`` again, minutes later, adds it)."""


def ensure_index(dynamodb: Any, name: str, index: Index) -> bool:
    """Add ``index`` to the existing table ``name`` unless it has it; True if added now.

    Items whose index hash key is an empty string lose that attribute first (no item may
    have one once the index exists: DynamoDB would refuse every later write of it). The
    index is not waited for: DynamoDB builds it from the items already there (minutes on a
    large table), and its readers fall back to what they did without it meanwhile.
    :class:`IndexPending` when the table is building another index (DynamoDB creates one
    at a time per table: ``LimitExceededException``, or ``ResourceInUseException`` while
    the table is updating)."""
    table = dynamodb.describe_table(TableName=name)["Table"]
    if any(i["IndexName"] == index.name for i in table.get("GlobalSecondaryIndexes", [])):
        return False
    keys = {f"#t{n}": k["AttributeName"] for n, k in enumerate(table["KeySchema"])}
    pages = dynamodb.get_paginator("scan").paginate(
        TableName=name, FilterExpression="#k = :e", ProjectionExpression=", ".join(keys),
        ExpressionAttributeNames={"#k": index.hash_key, **keys},
        ExpressionAttributeValues={":e": {"S": ""}}, ConsistentRead=True)
    for item in (i for page in pages for i in page.get("Items", [])):
        dynamodb.update_item(TableName=name, Key={k: item[k] for k in keys.values()},
                             UpdateExpression="REMOVE #k",
                             ExpressionAttributeNames={"#k": index.hash_key})
    try:
        dynamodb.update_table(
            TableName=name, AttributeDefinitions=_attributes(index.hash_key, index.range_key),
            GlobalSecondaryIndexUpdates=[{"Create": index.spec()}])
    except (dynamodb.exceptions.LimitExceededException,
            dynamodb.exceptions.ResourceInUseException) as exc:
        raise IndexPending(f"index {index.name} on {name} {PENDING}: the table is "
                           f"building another one ({exc.response['Error'].get('Code')}); "
                           "run setup again when it is done") from None
    return True


def ensure_table_stream(dynamodb: Any, name: str, view_type: str) -> bool:
    """Enable the table's stream with ``view_type`` unless it is on; True if enabled now.

    A stream already on with another view type is left alone and reported: switching means
    a new stream, and every reader of the old one would lose its place.
    """
    spec = dynamodb.describe_table(TableName=name)["Table"].get("StreamSpecification") or {}
    if spec.get("StreamEnabled"):
        if spec.get("StreamViewType") != view_type:
            raise RuntimeError(f"table {name} streams {spec.get('StreamViewType')}, not "
                               f"{view_type}: disable its stream, then run setup again")
        return False
    dynamodb.update_table(TableName=name, StreamSpecification={
        "StreamEnabled": True, "StreamViewType": view_type})
    dynamodb.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    return True


@dataclass
class Provisioned:
    """What :func:`ensure_resources` did: one line per resource ``created`` now, one line
    per index DynamoDB cannot add yet and why (``pending``: :class:`IndexPending`), and the
    ``(table, index)`` pairs of the indexes added now or pending (``indexes``)."""

    created: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    indexes: list[tuple[str, str]] = field(default_factory=list)


def ensure_resources(kinesis: Any, dynamodb: Any, *, stream_name: str, shard_count: int,
                     tables: TableNames) -> Provisioned:
    """Everything the consumer and publisher need, idempotently: see :class:`Provisioned`."""
    done = Provisioned()
    created = done.created
    if ensure_stream(kinesis, stream_name, shard_count):
        created.append(f"stream {stream_name} ({shard_count} shards)")
    for table, (hk, rk) in KEYS.items():
        name = tables.name(table)
        indexes = INDEXES.get(table, ())
        if ensure_table(dynamodb, name, hk, rk, indexes):
            created.append(f"table {name}")
            if table in TTL:
                dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL[table]},
                )
        else:
            for index in indexes:
                try:
                    if ensure_index(dynamodb, name, index):
                        created.append(f"index {index.name} on {name}")
                        done.indexes.append((name, index.name))
                except IndexPending as exc:  # the next setup adds it; the rest goes on
                    done.pending.append(str(exc))
                    done.indexes.append((name, index.name))
        if table in STREAMS and ensure_table_stream(dynamodb, name, STREAMS[table]):
            created.append(f"stream on {name} ({STREAMS[table]})")
    return done


def ensure_queue(sqs: Any, name: str, *, max_receives: int, visibility_s: int) -> list[str]:
    """The analysis requests' queue ``name`` and its dead-letter queue ``<name>-dlq`` (a
    request goes there after ``max_receives`` receives), idempotently; returns what was
    created now. ``name`` may be the queue's URL (its last path segment is the name)."""
    name = name.rstrip("/").rsplit("/", 1)[-1]
    created = []
    dlq = f"{name}-dlq"
    existing = set()
    for n in (dlq, name):
        try:
            sqs.get_queue_url(QueueName=n)
            existing.add(n)
        except sqs.exceptions.QueueDoesNotExist:
            pass
    dlq_url = sqs.create_queue(QueueName=dlq, Attributes={
        "MessageRetentionPeriod": str(14 * 86400)})["QueueUrl"]
    if dlq not in existing:
        created.append(f"queue {dlq}")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
    attrs = {"VisibilityTimeout": str(visibility_s), "RedrivePolicy": redrive,
             "MessageRetentionPeriod": str(4 * 86400)}
    if name in existing:
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
    else:
        sqs.create_queue(QueueName=name, Attributes=attrs)
        created.append(f"queue {name} (dead letters to {dlq} after {max_receives} receives)")
    return created
