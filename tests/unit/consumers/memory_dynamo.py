"""An in-memory stand-in for the aiobotocore DynamoDB client, for the write path's unit
tests: the calls the stores make (BatchGetItem, BatchWriteItem, PutItem with the
conditions they use, DeleteItem, GetItem), errors injected per call, and a scheduler hook
that yields to the event loop inside every call so two writers interleave.

Only for error branches and interleavings; the integration tests use the real emulator.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import ClientError

Item = dict[str, Any]


def client_error(code: str, message: str = "m", status: int = 400,
                 op: str = "PutItem") -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message},
                     "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, op)


class _Exceptions:
    ConditionalCheckFailedException = ClientError


class MemoryDynamo:
    """Tables as ``{table: {key: item}}`` (key: the item's hash and range values).

    ``fail(op, item) -> Exception | None`` is asked before every call (``item``: the
    item or key, or the whole RequestItems for a batch) and raised when it answers one.
    ``rng`` (when set) makes every call yield 0-3 times first."""

    exceptions = _Exceptions()

    def __init__(self, keys: Mapping[str, tuple[str, ...]],
                 fail: Callable[[str, Any], Exception | None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.keys = keys
        self.tables: dict[str, dict[tuple[str, ...], Item]] = {t: {} for t in keys}
        self.fail = fail or (lambda op, item: None)
        self.rng = rng
        self.calls: list[str] = []

    def _key(self, table: str, item: Item) -> tuple[str, ...]:
        return tuple(next(iter(item[k].values())) for k in self.keys[table])

    async def _enter(self, op: str, item: Any) -> None:
        self.calls.append(op)
        for _ in range(self.rng.randrange(4) if self.rng else 0):
            await asyncio.sleep(0)
        err = self.fail(op, item)
        if err is not None:
            raise err

    async def batch_get_item(self, RequestItems: dict[str, Any]) -> Item:
        await self._enter("BatchGetItem", RequestItems)
        out: dict[str, list[Item]] = {}
        for table, req in RequestItems.items():
            rows = self.tables[table]
            out[table] = [dict(rows[k]) for k in (self._key(table, key) for key in req["Keys"])
                          if k in rows]
        return {"Responses": out, "UnprocessedKeys": {}}

    async def batch_write_item(self, RequestItems: dict[str, Any]) -> Item:
        await self._enter("BatchWriteItem", RequestItems)
        for table, writes in RequestItems.items():
            for w in writes:
                if "PutRequest" in w:
                    item = w["PutRequest"]["Item"]
                    self.tables[table][self._key(table, item)] = dict(item)
                else:
                    self.tables[table].pop(self._key(table, w["DeleteRequest"]["Key"]), None)
        return {"UnprocessedItems": {}}

    async def put_item(self, TableName: str, Item: Item, ConditionExpression: str = "",
                       ExpressionAttributeValues: Item | None = None, **_: Any) -> Item:
        await self._enter("PutItem", Item)
        key = self._key(TableName, Item)
        old = self.tables[TableName].get(key)
        if ConditionExpression and not _holds(ConditionExpression, old,
                                              ExpressionAttributeValues or {}):
            raise client_error("ConditionalCheckFailedException", "The conditional request "
                               "failed")
        self.tables[TableName][key] = dict(Item)
        return {}

    async def delete_item(self, TableName: str, Key: Item, **_: Any) -> Item:
        await self._enter("DeleteItem", Key)
        self.tables[TableName].pop(self._key(TableName, Key), None)
        return {}

    async def get_item(self, TableName: str, Key: Item, **_: Any) -> Item:
        await self._enter("GetItem", Key)
        item = self.tables[TableName].get(self._key(TableName, Key))
        return {"Item": dict(item)} if item is not None else {}


def _holds(condition: str, old: Item | None, values: Item) -> bool:
    """The conditions the stores write (and nothing else)."""
    if condition == "attribute_not_exists(customer_id)":
        return old is None
    if condition == "version = :read":
        return old is not None and old["version"]["N"] == values[":read"]["N"]
    if condition == "attribute_not_exists(sequence_number)":
        return old is None or "sequence_number" not in old
    if condition.startswith("attribute_not_exists(sequence_number) OR size("):
        if old is None or "sequence_number" not in old:
            return True
        have, new = old["sequence_number"]["S"], values[":s"]["S"]
        return int(have) <= int(new)
    if condition == "attribute_not_exists(id) OR #s <> :r":  # the dead letters'
        return old is None or old.get("status") != values[":r"]
    raise AssertionError(f"condition not modelled: {condition}")
