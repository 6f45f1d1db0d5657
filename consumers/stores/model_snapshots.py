"""The models table: versioned JSON snapshots of the segment and forecast models.

One item per document (key ``name``: ``segments``, the forecast model's name,
``segment-sizes``, ...): ``version`` (0 for an unversioned companion document), ``body``
(JSON) and ``updated_at``. Readers (the registry, ``caa segments``, the API, the report)
use :meth:`ModelStore.load`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from consumers.stores.dynamo import Dynamo, now_iso


class Conflict(RuntimeError):
    """A compare-and-set lost against another writer."""


@dataclass
class ModelStore:
    """Versioned JSON snapshots with compare-and-set on the version."""

    db: Dynamo
    table: str

    async def load(self, name: str) -> tuple[int, dict[str, Any]] | None:
        resp = await self.db.client.get_item(
            TableName=self.table, Key={"name": {"S": name}}, ConsistentRead=True
        )
        item = resp.get("Item")
        if not item:
            return None
        return int(item["version"]["N"]), json.loads(item["body"]["S"])

    async def put(self, name: str, body: dict[str, Any]) -> None:
        """An unversioned companion document (for example segment sizes at a refit)."""
        await self.db.client.put_item(
            TableName=self.table,
            Item={"name": {"S": name}, "version": {"N": "0"},
                  "body": {"S": json.dumps(body, separators=(",", ":"))},
                  "updated_at": {"S": now_iso()}},
        )

    async def delete(self, name: str) -> None:
        """Remove a companion document (absent: nothing to do)."""
        await self.db.client.delete_item(TableName=self.table, Key={"name": {"S": name}})

    async def save(self, name: str, expected_version: int, body: dict[str, Any]) -> int:
        """Write version ``expected_version + 1``; raise :class:`Conflict` if someone else did."""
        new = expected_version + 1
        cond = "attribute_not_exists(#v)" if expected_version == 0 else "#v = :v"
        values = {} if expected_version == 0 else {":v": {"N": str(expected_version)}}
        try:
            await self.db.client.put_item(
                TableName=self.table,
                Item={"name": {"S": name}, "version": {"N": str(new)},
                      "body": {"S": json.dumps(body, separators=(",", ":"))},
                      "updated_at": {"S": now_iso()}},
                ConditionExpression=cond,
                ExpressionAttributeNames={"#v": "version"},
                **({"ExpressionAttributeValues": values} if values else {}),
            )
        except self.db.client.exceptions.ConditionalCheckFailedException:
            raise Conflict(f"model {name!r} moved past version {expected_version}") from None
        return new
