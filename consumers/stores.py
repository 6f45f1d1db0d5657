"""DynamoDB stores for customer state, predictions, dead letters, checkpoints and models.

All take an aiobotocore DynamoDB client. Batch reads and writes retry
``UnprocessedItems``/``UnprocessedKeys`` and throttling errors
with exponential backoff and jitter; a failure that outlasts the retries raises
:class:`WriteFailed`, so the caller does not checkpoint past effects that were
not durably written.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from consumers.chaos import NO_CHAOS, Chaos
from consumers.core import Rejected
from models.prediction import Prediction
from models.state import CustomerState

Item = dict[str, Any]
#: the checkpoints row that holds the consumer group's lease (see consumers.lease)
OWNER_KEY = "__owner__"


#: errors DynamoDB answers when a table or partition is over its capacity; retried here
#: (after botocore's own retries) like ``UnprocessedItems``
THROTTLED = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException",
                       "RequestLimitExceeded"})


def _throttled(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in THROTTLED


class WriteFailed(RuntimeError):
    """Effects could not be written after every retry; do not checkpoint."""


def to_attr(value: Any) -> dict[str, Any]:
    """Plain JSON-like value -> DynamoDB AttributeValue."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bytes):
        return {"B": value}
    if isinstance(value, dict):
        return {"M": {k: to_attr(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_attr(v) for v in value]}
    raise TypeError(f"cannot store {type(value).__name__}")


def from_attr(av: dict[str, Any]) -> Any:
    (kind, v), = av.items()
    if kind == "N":
        return int(v) if v.lstrip("-").isdigit() else float(v)
    if kind == "M":
        return {k: from_attr(x) for k, x in v.items()}
    if kind == "L":
        return [from_attr(x) for x in v]
    if kind == "NULL":
        return None
    return v


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Dynamo:
    """Shared batch helpers over one aiobotocore client."""

    client: Any
    max_attempts: int = 8
    concurrency: int = 8
    base_delay: float = 0.05
    chaos: Chaos = NO_CHAOS
    #: throttling errors absorbed by the retries below
    throttled: int = 0

    async def _unless_throttled(self, call: Callable[..., Awaitable[Item]],
                                **kw: Any) -> Item | None:
        """``call(**kw)``, or None when DynamoDB answered with a throttling error."""
        try:
            return await call(**kw)
        except ClientError as exc:
            if not _throttled(exc):
                raise
            self.throttled += 1
            return None

    async def _backoff(self, attempt: int) -> None:
        await asyncio.sleep(random.uniform(0, min(2.0, self.base_delay * 2**attempt)))

    async def batch_write(self, table: str, items: Sequence[Item]) -> None:
        await self._batch(table, [{"PutRequest": {"Item": i}} for i in items])

    async def batch_delete(self, table: str, keys: Sequence[Item]) -> None:
        await self._batch(table, [{"DeleteRequest": {"Key": k}} for k in keys])

    async def _batch(self, table: str, writes: Sequence[Item]) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(chunk: Sequence[Item]) -> None:
            requests: dict[str, Any] = {table: list(chunk)}
            async with sem:
                for attempt in range(self.max_attempts):
                    if attempt:
                        await self._backoff(attempt)
                    resp = await self._unless_throttled(self.client.batch_write_item,
                                                        RequestItems=requests)
                    if resp is None:
                        continue  # throttled: the whole chunk is still to write
                    self.chaos.point("mid_batch_write")
                    requests = resp.get("UnprocessedItems") or {}
                    if not requests:
                        return
            left = sum(len(v) for v in requests.values())
            raise WriteFailed(f"{left} item(s) still unprocessed in {table} after "
                              f"{self.max_attempts} attempts")

        await asyncio.gather(*(one(c) for c in _chunks(writes, 25)))

    async def batch_get(self, table: str, key: str, ids: Iterable[str]) -> list[Item]:
        keys = [{key: {"S": i}} for i in sorted(ids)]
        out: list[Item] = []
        sem = asyncio.Semaphore(self.concurrency)

        async def one(chunk: Sequence[Item]) -> None:
            request: dict[str, Any] = {table: {"Keys": list(chunk), "ConsistentRead": True}}
            async with sem:
                for attempt in range(self.max_attempts):
                    if attempt:
                        await self._backoff(attempt)
                    resp = await self._unless_throttled(self.client.batch_get_item,
                                                        RequestItems=request)
                    if resp is None:
                        continue
                    out.extend(resp["Responses"].get(table, []))
                    request = resp.get("UnprocessedKeys") or {}
                    if not request:
                        return
            raise WriteFailed(f"could not read {table} after {self.max_attempts} attempts")

        await asyncio.gather(*(one(c) for c in _chunks(keys, 100)))
        return out

    async def scan(self, table: str, segments: int = 4, **kw: Any) -> list[Item]:
        async def part(seg: int) -> list[Item]:
            items: list[Item] = []
            args: dict[str, Any] = {"TableName": table, "Segment": seg,
                                    "TotalSegments": segments, **kw}
            while True:
                resp = await self.client.scan(**args)
                items.extend(resp.get("Items", []))
                if "LastEvaluatedKey" not in resp:
                    return items
                args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

        parts = await asyncio.gather(*(part(s) for s in range(segments)))
        return [i for p in parts for i in p]


def state_to_item(state: CustomerState) -> Item:
    return {
        "customer_id": {"S": state.customer_id},
        "version": {"N": str(state.version)},
        "purchases": {"N": str(state.purchases)},
        "spend_cents": {"N": str(state.spend_cents)},
        "first_at": {"S": datetime.fromtimestamp(state.first_ts, UTC).isoformat()},
        "last_at": {"S": datetime.fromtimestamp(state.last_ts, UTC).isoformat()},
        "body": {"S": state.to_json()},
        "seen": {"B": state.seen_bytes()},
        "updated_at": {"S": now_iso()},
    }


def state_from_item(item: Item) -> CustomerState:
    return CustomerState.from_parts(
        item["customer_id"]["S"], int(item["version"]["N"]), item["body"]["S"],
        item["seen"]["B"],
    )


@dataclass
class CustomerStore:
    db: Dynamo
    table: str

    async def load(self, ids: Iterable[str]) -> dict[str, CustomerState]:
        items = await self.db.batch_get(self.table, "customer_id", ids)
        return {s.customer_id: s for s in map(state_from_item, items)}

    async def save(self, states: Iterable[CustomerState]) -> None:
        await self.db.batch_write(self.table, [state_to_item(s) for s in states])

    async def delete(self, ids: Iterable[str]) -> None:
        await self.db.batch_delete(self.table, [{"customer_id": {"S": c}} for c in ids])

    async def all(self) -> list[CustomerState]:
        return [state_from_item(i) for i in await self.db.scan(self.table)]


@dataclass
class PredictionStore:
    db: Dynamo
    table: str

    async def save(self, predictions: Iterable[Prediction]) -> None:
        await self.db.batch_write(self.table, [prediction_to_item(p) for p in predictions])

    async def delete(self, ids: Iterable[str]) -> None:
        await self.db.batch_delete(self.table, [{"customer_id": {"S": c}} for c in ids])

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        resp = await self.db.client.get_item(
            TableName=self.table, Key={"customer_id": {"S": customer_id}}, ConsistentRead=True
        )
        item = resp.get("Item")
        return prediction_from_item(item) if item else None

    async def all(self) -> list[dict[str, Any]]:
        return [prediction_from_item(i) for i in await self.db.scan(self.table)]


#: Prediction fields kept as top-level attributes (filterable, projectable); the lists and
#: maps travel as one JSON string, ``detail``, which is cheaper to write and parse.
_FLAT = ("schema_version", "customer_id", "p_alive", "expected_purchases_30d",
         "expected_purchases_90d", "confidence", "data_quality", "data_quality_reason",
         "purchases", "spend", "source", "fallback_reason", "as_of", "generated_at")
#: the merged AI analysis: own attributes, so the enricher can SET them in place
_ANALYSIS = ("analysis", "analysis_at", "analysis_model")


def prediction_to_item(p: Prediction) -> Item:
    d = p.model_dump(mode="json")
    item = {k: to_attr(d.pop(k)) for k in _FLAT}
    seg = d.pop("segment")
    item["segment_id"] = {"N": str(seg["id"])}
    item["segment_name"] = {"S": seg["name"]}
    for k in _ANALYSIS:
        v = d.pop(k)
        if v is not None:
            item[k] = {"S": json.dumps(v, separators=(",", ":")) if k == "analysis" else v}
    item["detail"] = {"S": json.dumps(d, separators=(",", ":"))}
    return item


def prediction_from_item(item: Item) -> dict[str, Any]:
    """The item back in the :class:`Prediction` shape (plain JSON values)."""
    out: dict[str, Any] = {k: from_attr(item[k]) for k in _FLAT if k in item}
    out["segment"] = {"id": int(item["segment_id"]["N"]), "name": item["segment_name"]["S"]}
    out.update(json.loads(item["detail"]["S"]))
    for k in _ANALYSIS:
        v = item.get(k, {}).get("S")
        out[k] = json.loads(v) if k == "analysis" and v else v
    return out


def dead_letter_item(r: Rejected) -> Item:
    rec = r.record
    return {
        "id": {"S": f"{rec.stream}/{rec.shard_id}/{rec.sequence_number}"},
        "stream": {"S": rec.stream},
        "shard_id": {"S": rec.shard_id},
        "sequence_number": {"S": rec.sequence_number},
        "partition_key": {"S": rec.partition_key},
        "payload": {"B": rec.data},
        "kind": {"S": r.kind},
        "reason": {"S": r.reason},
        "received_at": {"S": now_iso()},
        "status": {"S": "open"},
    }


@dataclass
class DeadLetterStore:
    """Poison records with their raw payload; keyed by position, so a re-read overwrites."""

    db: Dynamo
    table: str

    async def save(self, rejected: Sequence[Rejected]) -> None:
        await self.db.batch_write(self.table, [dead_letter_item(r) for r in rejected])

    async def all(self) -> list[dict[str, Any]]:
        return [from_attr({"M": i}) for i in await self.db.scan(self.table)]


@dataclass(frozen=True)
class Checkpoint:
    shard_id: str
    sequence_number: str | None
    ended: bool


@dataclass
class CheckpointStore:
    db: Dynamo
    table: str
    group: str

    async def all(self) -> dict[str, Checkpoint]:
        resp_items: list[Item] = []
        args: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#g = :g",
            "ExpressionAttributeNames": {"#g": "group"},
            "ExpressionAttributeValues": {":g": {"S": self.group}},
            "ConsistentRead": True,
        }
        while True:
            resp = await self.db.client.query(**args)
            resp_items.extend(resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                break
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        out = {}
        for i in resp_items:
            if i["shard_id"]["S"] == OWNER_KEY:
                continue
            seq = i.get("sequence_number", {}).get("S")
            out[i["shard_id"]["S"]] = Checkpoint(i["shard_id"]["S"], seq, i["ended"]["BOOL"])
        return out

    async def save(self, shard_id: str, sequence_number: str | None, ended: bool = False) -> None:
        item: Item = {
            "group": {"S": self.group},
            "shard_id": {"S": shard_id},
            "ended": {"BOOL": ended},
            "updated_at": {"S": now_iso()},
        }
        if sequence_number is not None:
            item["sequence_number"] = {"S": sequence_number}
        await self.db.client.put_item(TableName=self.table, Item=item)
