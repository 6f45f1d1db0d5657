"""Where analyses live: the latest per customer, the history, and the prediction item.

* ``analyses`` (key ``customer_id``): the latest analysis and the feature
  signature it saw, so the change-aware cache survives restarts.
* ``analysis-history`` (keys ``customer_id``, ``at``): every analysis (time,
  source, model, trigger, tokens, cost, confidence, fallback reason) with a TTL.
* ``predictions``: the analysis is merged into the customer's prediction item
  with one UpdateItem, after the statistical prediction was written.

Both tables hold an item of the same layout (:func:`record_item`: the record as JSON in
``record``, and its time, source, model, trigger, tokens, cost, confidence, fallback
reason and, when the answer did not come from AWS, ``endpoint`` as their own
attributes); the history's ``at`` ends with ``#`` and a random suffix, so two analyses in
the same microsecond both stay, and it has ``expires_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from consumers.stores.dynamo import Dynamo, Item
from models.analysis import AnalysisRecord


def record_item(rec: AnalysisRecord) -> Item:
    item: Item = {
        "customer_id": {"S": rec.customer_id},
        "at": {"S": rec.at.isoformat(timespec="microseconds")},
        "source": {"S": rec.source},
        "model": {"S": rec.model},
        "trigger": {"S": rec.trigger},
        "input_tokens": {"N": str(rec.input_tokens)},
        "output_tokens": {"N": str(rec.output_tokens)},
        "cost_usd": {"N": repr(rec.cost_usd)},
        "confidence": {"N": repr(rec.analysis.confidence)},
        "record": {"S": rec.model_dump_json()},
    }
    if rec.fallback_reason:
        item["fallback_reason"] = {"S": rec.fallback_reason}
    if rec.endpoint:
        item["endpoint"] = {"S": rec.endpoint}
    return item


def record_from_item(item: Item) -> AnalysisRecord:
    return AnalysisRecord.model_validate_json(item["record"]["S"])


def document_from_item(item: Item) -> dict[str, Any]:
    """The stored record as a plain JSON document, whatever schema it was written with."""
    doc: dict[str, Any] = json.loads(item["record"]["S"])
    return doc


def record_from_document(doc: dict[str, Any]) -> AnalysisRecord:
    """A document from :meth:`AnalysisStore.history` as a record (raises
    ``pydantic.ValidationError`` for one of an older schema)."""
    return AnalysisRecord.model_validate(doc)


@dataclass
class AnalysisStore:
    db: Dynamo
    table: str
    history_table: str
    predictions_table: str
    history_ttl_days: int = 90

    async def latest(self, ids: Iterable[str]) -> dict[str, AnalysisRecord]:
        """The latest analyses of these customers; one that no longer parses (an older
        schema) counts as absent, so the customer is simply analysed afresh."""
        out = {}
        for item in await self.db.batch_get(self.table, "customer_id", ids):
            with contextlib.suppress(ValidationError):
                rec = record_from_item(item)
                out[rec.customer_id] = rec
        return out

    async def history(self, customer_id: str, limit: int) -> list[dict[str, Any]]:
        """The customer's last ``limit`` analyses, newest first, as stored (JSON documents:
        see :func:`record_from_document`)."""
        resp = await self.db.client.query(
            TableName=self.history_table, KeyConditionExpression="customer_id = :c",
            ExpressionAttributeValues={":c": {"S": customer_id}}, ScanIndexForward=False,
            Limit=limit)
        return [document_from_item(i) for i in resp.get("Items", [])]

    async def erase(self, customer_id: str) -> tuple[int, int]:
        """Delete the customer's latest analysis and history: how many items went from
        each (the analysis merged into the prediction goes with the prediction)."""
        latest, history = await asyncio.gather(
            self._keys(self.table, customer_id), self._keys(self.history_table, customer_id))
        await asyncio.gather(*(self.db.batch_delete(t, keys) for t, keys in
                               ((self.table, latest), (self.history_table, history)) if keys))
        return len(latest), len(history)

    async def _keys(self, table: str, customer_id: str) -> list[Item]:
        keys: list[Item] = []
        kw: dict[str, Any] = {
            "TableName": table, "KeyConditionExpression": "customer_id = :c",
            "ExpressionAttributeValues": {":c": {"S": customer_id}}, "ConsistentRead": True}
        if table == self.history_table:
            kw["ProjectionExpression"] = "customer_id, #at"
            kw["ExpressionAttributeNames"] = {"#at": "at"}
        else:
            kw["ProjectionExpression"] = "customer_id"
        while True:
            resp = await self.db.client.query(**kw)
            keys.extend(resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return keys
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def record(self, rec: AnalysisRecord) -> None:
        """Store one analysis everywhere it belongs (raises if any write fails)."""
        client = self.db.client
        history = record_item(rec)
        history["at"] = {"S": f"{history['at']['S']}#{uuid.uuid4().hex[:6]}"}
        expires = int(rec.at.timestamp()) + self.history_ttl_days * 86_400
        history["expires_at"] = {"N": str(expires)}
        await asyncio.gather(
            client.put_item(TableName=self.table, Item=record_item(rec)),
            client.put_item(TableName=self.history_table, Item=history),
            self.merge(rec),
        )

    async def merge(self, rec: AnalysisRecord) -> None:
        """Set the analysis attributes of the customer's prediction item in place."""
        client = self.db.client
        values: dict[str, Any] = {
            ":a": {"S": rec.analysis.model_dump_json()},
            ":t": {"S": rec.at.isoformat()},
            ":m": {"S": rec.model},
            ":s": {"S": rec.source},
            ":f": {"S": rec.fallback_reason} if rec.fallback_reason else {"NULL": True},
        }
        # No prediction item yet (an on-demand call before any batch) is fine: the next
        # statistical prediction carries the latest analysis over (see Enricher.attach).
        with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
            await client.update_item(
                TableName=self.predictions_table,
                Key={"customer_id": {"S": rec.customer_id}},
                UpdateExpression="SET analysis = :a, analysis_at = :t, analysis_model = :m, "
                "#src = :s, fallback_reason = :f",
                ConditionExpression="attribute_exists(customer_id)",
                ExpressionAttributeNames={"#src": "source"},
                ExpressionAttributeValues=values,
            )
