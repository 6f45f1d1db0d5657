"""Create the stream and tables the system needs, idempotently (boto3, any endpoint)."""

from __future__ import annotations

from typing import Any

from caa.settings import Settings

#: table name -> (hash key, range key or None)
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
#: tables whose items expire (attribute holding the epoch second)
TTL = {"analysis-history": "expires_at"}
#: tables with a DynamoDB stream (its view type): the predictions change feed for downstream
#: consumers (docs/change-feed.md, `caa watch`)
STREAMS = {"predictions": "NEW_AND_OLD_IMAGES"}


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


def ensure_table(dynamodb: Any, name: str, hash_key: str, range_key: str | None) -> bool:
    schema = [{"AttributeName": hash_key, "KeyType": "HASH"}]
    attrs = [{"AttributeName": hash_key, "AttributeType": "S"}]
    if range_key:
        schema.append({"AttributeName": range_key, "KeyType": "RANGE"})
        attrs.append({"AttributeName": range_key, "AttributeType": "S"})
    created = False
    try:
        dynamodb.create_table(
            TableName=name, KeySchema=schema, AttributeDefinitions=attrs,
            BillingMode="PAY_PER_REQUEST",
        )
        created = True
    except dynamodb.exceptions.ResourceInUseException:
        pass
    dynamodb.get_waiter("table_exists").wait(
        TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
    )
    return created


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


def ensure_resources(settings: Settings, kinesis: Any, dynamodb: Any) -> list[str]:
    """Everything the consumer and publisher need; returns what was created now."""
    created = []
    if ensure_stream(kinesis, settings.stream_name, settings.shard_count):
        created.append(f"stream {settings.stream_name} ({settings.shard_count} shards)")
    for table, (hk, rk) in KEYS.items():
        name = settings.table(table)
        if ensure_table(dynamodb, name, hk, rk):
            created.append(f"table {name}")
            if table in TTL:
                dynamodb.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL[table]},
                )
        if table in STREAMS and ensure_table_stream(dynamodb, name, STREAMS[table]):
            created.append(f"stream on {name} ({STREAMS[table]})")
    return created
