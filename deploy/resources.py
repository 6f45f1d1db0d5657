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
    return created
