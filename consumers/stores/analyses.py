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

**Which analysis is the latest** is decided by ``input_at``: when the state the analysis
read was captured (a daily batch job's creation; when a queued analysis's input was filed;
the start of an analysis that read the state just before), not when the answer came. A
batch job can end hours after it was created, so its answers may be older than an analysis
made meanwhile: the write of the latest is conditional (``input_at`` not after the one
stored), and an analysis it refuses is **superseded**: kept in the history (it happened,
and was paid for), not in ``analyses`` nor in the prediction item.

**Erasure** leaves a tombstone in ``analyses``: ``customer_id``, ``erased``, ``input_at``
= the erasure's time plus :data:`ERASURE_CLOCK_MARGIN` (the clocks of the host that
erases and those that analyse may differ) and ``expires_at`` after
:data:`TOMBSTONE_TTL_DAYS` (longer than a Bedrock batch job may run and wait to be
ingested). An analysis of the erased state that lands later (a batch job created before,
a call in flight) is refused and stored nowhere; readers see no analysis. A customer
who buys again after the margin is analysed as new.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from consumers.stores.dynamo import Dynamo, Item
from models.analysis import AnalysisRecord

#: how far past an erasure's own clock its tombstone refuses analyses (clock skew between
#: the host that erases and those that analyse)
ERASURE_CLOCK_MARGIN = timedelta(minutes=5)
#: how long a tombstone stays: a Bedrock batch job runs for at most 7 days (its
#: ``timeoutDurationInHours`` is at most 168) and is ingested when it ends
TOMBSTONE_TTL_DAYS = 14

#: what :meth:`AnalysisStore.record` did with an analysis: made it the ``latest``, kept it
#: in the history only (``superseded`` by one of a newer input), or nothing (``erased``:
#: the customer was erased after its input was captured)
Stored = Literal["latest", "superseded", "erased"]


def input_key(at: datetime) -> str:
    """``at`` as the ordered text ``input_at`` holds (UTC, microseconds: the same length
    for every time, so text order is time order)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def is_tombstone(item: Item) -> bool:
    return "erased" in item


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
            if is_tombstone(item):
                continue
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

    async def erase(self, customer_id: str, at: datetime) -> tuple[int, int]:
        """Delete the customer's latest analysis and history, leaving a tombstone (see the
        module's text) for an erasure made at ``at``: how many analyses went from each (the
        analysis merged into the prediction goes with the prediction)."""
        old, history = await asyncio.gather(self._stored(customer_id),
                                            self._keys(self.history_table, customer_id))
        tombstone = {
            "customer_id": {"S": customer_id}, "erased": {"S": input_key(at)},
            "input_at": {"S": input_key(at + ERASURE_CLOCK_MARGIN)},
            "expires_at": {"N": str(int(at.timestamp()) + TOMBSTONE_TTL_DAYS * 86_400)}}
        await asyncio.gather(self.db.client.put_item(TableName=self.table, Item=tombstone),
                             *([self.db.batch_delete(self.history_table, history)]
                               if history else []))
        return int(old is not None and not is_tombstone(old)), len(history)

    async def _keys(self, table: str, customer_id: str) -> list[Item]:
        return await self.db.query(
            table, KeyConditionExpression="customer_id = :c",
            ExpressionAttributeValues={":c": {"S": customer_id}}, ConsistentRead=True,
            ProjectionExpression="customer_id, #at", ExpressionAttributeNames={"#at": "at"})

    async def record(self, rec: AnalysisRecord, input_at: datetime | None = None) -> Stored:
        """Store one analysis everywhere it belongs; ``input_at``: when the state it read was
        captured (default ``rec.at``). The latest only when no analysis of a later input is
        stored, nothing after an erasure (module text). Raises if a write fails.

        The prediction item is merged after the latest is written, then checked against
        the latest as read back: two writers that race each merge, then the later merge
        sees the final latest and puts it back if it was not its own."""
        client = self.db.client
        history = record_item(rec)
        history["at"] = {"S": f"{history['at']['S']}#{uuid.uuid4().hex[:6]}"}
        expires = int(rec.at.timestamp()) + self.history_ttl_days * 86_400
        history["expires_at"] = {"N": str(expires)}
        latest = record_item(rec)
        latest["input_at"] = {"S": input_key(input_at or rec.at)}
        try:
            await client.put_item(
                TableName=self.table, Item=latest,
                ConditionExpression="attribute_not_exists(input_at) OR input_at <= :i",
                ExpressionAttributeValues={":i": latest["input_at"]})
        except client.exceptions.ConditionalCheckFailedException:
            stored = await self._stored(rec.customer_id)
            if stored is not None and is_tombstone(stored):
                return "erased"
            await client.put_item(TableName=self.history_table, Item=history)
            return await self._settle(rec, history, "superseded")
        await asyncio.gather(client.put_item(TableName=self.history_table, Item=history),
                             self.merge(rec))
        return await self._settle(rec, history, "latest")

    async def _settle(self, rec: AnalysisRecord, history: Item, stored: Stored) -> Stored:
        """After the writes, the latest read back: another writer's (a later one) is merged
        into the prediction again, in case a prediction written meanwhile carried ``rec``
        or its merge came last; a tombstone (an erasure that ran between our writes and
        missed them) takes back our history item and our analysis in the prediction."""
        now = await self._stored(rec.customer_id)
        if now is not None and is_tombstone(now):
            await asyncio.gather(
                self.db.client.delete_item(TableName=self.history_table, Key={
                    "customer_id": history["customer_id"], "at": history["at"]}),
                self._unmerge(rec))
            return "erased"
        if now is not None and now["at"]["S"] != rec.at.isoformat(timespec="microseconds"):
            with contextlib.suppress(ValidationError):
                await self.merge(record_from_item(now))
        return stored

    async def _unmerge(self, rec: AnalysisRecord) -> None:
        """Remove ``rec``'s analysis from the prediction item, if it is still there."""
        client = self.db.client
        with contextlib.suppress(client.exceptions.ConditionalCheckFailedException):
            await client.update_item(
                TableName=self.predictions_table,
                Key={"customer_id": {"S": rec.customer_id}},
                UpdateExpression="REMOVE analysis, analysis_at, analysis_model",
                ConditionExpression="analysis_at = :t",
                ExpressionAttributeValues={":t": {"S": rec.at.isoformat()}})

    async def _stored(self, customer_id: str) -> Item | None:
        resp = await self.db.client.get_item(TableName=self.table, ConsistentRead=True,
                                             Key={"customer_id": {"S": customer_id}})
        item: Item | None = resp.get("Item")
        return item

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
