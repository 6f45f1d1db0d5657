"""The checkpoints table (keys ``group``, ``shard_id``): one row per shard of a consumer
group, the group's lease row and replay jobs' rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumers.stores.dynamo import Dynamo, Item, now_iso

#: the checkpoints row that holds the consumer group's lease (see consumers.sources.lease)
OWNER_KEY = "__owner__"


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
