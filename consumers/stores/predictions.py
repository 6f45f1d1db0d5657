"""The predictions table: one item per customer (key ``customer_id``), the layout written
once here and read back by every reader (CLI, API, report)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from consumers.stores.dynamo import Dynamo, Item, from_attr, to_attr
from models.prediction import Prediction

#: Prediction fields kept as top-level attributes (filterable, projectable); the lists and
#: maps travel as one JSON string, ``detail``, which is cheaper to write and parse.
_FLAT = ("schema_version", "customer_id", "p_alive", "expected_purchases_30d",
         "expected_purchases_90d", "confidence", "data_quality", "data_quality_reason",
         "purchases", "spend", "source", "fallback_reason", "as_of", "generated_at", "clv",
         "churn_band")
#: the merged AI analysis: own attributes, so the enricher can SET them in place
_ANALYSIS = ("analysis", "analysis_at", "analysis_model")


_TOP: set[str] = {*_FLAT, *_ANALYSIS}
_NOT_DETAIL: set[str] = {*_TOP, "segment"}


def _flat_attr(value: Any) -> dict[str, Any]:
    """:func:`to_attr` of a flat field's JSON value, the usual types first."""
    kind = type(value)
    if kind is str:
        return {"S": value}
    if kind is float or kind is int:
        return {"N": repr(value)}
    return to_attr(value)


def prediction_to_item(p: Prediction) -> Item:
    """The item of ``p``: the :data:`_FLAT` fields and the segment as attributes, the
    analysis fields when set, and the rest as ``detail``, compact JSON by pydantic's own
    serialiser (UTF-8 text, not ``\\u`` escapes; values as ``json.loads`` reads them back).
    Written for every prediction: this is in the consumers' hot path (about a third of
    building the whole dict and encoding it with :mod:`json`)."""
    top = p.model_dump(mode="json", include=_TOP)
    item = {k: _flat_attr(top[k]) for k in _FLAT}
    item["segment_id"] = {"N": str(p.segment.id)}
    item["segment_name"] = {"S": p.segment.name}
    for k in _ANALYSIS:
        v = top[k]
        if v is not None:
            item[k] = {"S": json.dumps(v, separators=(",", ":")) if k == "analysis" else v}
    item["detail"] = {"S": p.model_dump_json(exclude=_NOT_DETAIL)}
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


def prediction_key(customer_id: str) -> Item:
    return {"customer_id": {"S": customer_id}}


def customer_of_key(key: Mapping[str, Any]) -> str | None:
    """The customer id in a predictions key (as DynamoDB Streams records carry it), or None
    when it has none."""
    attr = key.get("customer_id", {})
    return attr.get("S") if isinstance(attr, dict) else None


@dataclass
class PredictionStore:
    db: Dynamo
    table: str

    async def save(self, predictions: Iterable[Prediction]) -> None:
        await self.db.batch_write(self.table, [prediction_to_item(p) for p in predictions])

    async def delete(self, ids: Iterable[str]) -> None:
        await self.db.batch_delete(self.table, [prediction_key(c) for c in ids])

    async def get(self, customer_id: str) -> dict[str, Any] | None:
        resp = await self.db.client.get_item(
            TableName=self.table, Key=prediction_key(customer_id), ConsistentRead=True
        )
        item = resp.get("Item")
        return prediction_from_item(item) if item else None

    async def erase(self, customer_id: str) -> int:
        """Delete the customer's prediction: how many items went (0 or 1)."""
        resp = await self.db.client.get_item(TableName=self.table, Key=prediction_key(customer_id),
                                             ProjectionExpression="customer_id",
                                             ConsistentRead=True)
        if "Item" not in resp:
            return 0
        await self.delete([customer_id])
        return 1

    async def all(self) -> list[dict[str, Any]]:
        return [prediction_from_item(i) for i in await self.db.scan(self.table)]
