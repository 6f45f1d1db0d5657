"""``caa show|segments``: a customer's prediction, and the segments with their sizes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from caa.aws import Aws
from caa.settings import Settings
from consumers.stores.dynamo import Dynamo

T = TypeVar("T")
console = Console(stderr=False)


def _read(aws: Aws, read: Callable[[Dynamo], Awaitable[T]]) -> T:
    """One read through the table stores (they are async), on a client of its own."""
    async def run() -> T:
        async with aws.clients("dynamodb") as c:
            return await read(Dynamo(c["dynamodb"]))

    return asyncio.run(run())


def show(settings: Settings, aws: Aws, customer_id: str, as_json: bool) -> int:
    """``caa show``: 1 when the customer has no prediction."""
    from consumers.stores.predictions import PredictionStore

    pred = _read(aws, lambda db: PredictionStore(db, settings.tables.predictions).get(
        customer_id))
    if pred is None:
        print(f"no prediction for customer {customer_id!r}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(pred, indent=2, sort_keys=True))
        return 0
    t = Table(title=f"customer {customer_id}", show_header=False)
    for key in ("segment", "p_alive", "expected_purchases_30d", "expected_purchases_90d",
                "purchases", "spend", "data_quality", "data_quality_reason", "confidence",
                "source", "as_of", "generated_at", "last_event", "model_versions"):
        v: Any = pred.get(key)
        if key == "segment":
            v = v["name"]
        t.add_row(key, json.dumps(v) if isinstance(v, dict | list) else str(v))
    for n in pred.get("next_purchases", []):
        t.add_row(f"next {n['kind']}", f"{n['key']}: {n['expected_date']} ({n['status']}, "
                  f"every {n['avg_days_between']} d, confidence {n['confidence']})")
    for a in pred.get("alerts", []):
        t.add_row("alert", a["message"])
    for r in pred.get("recommendations", []):
        t.add_row("recommend", f"{r['kind']} {r['key']} ({r['reason']}, {r['score']})")
    console.print(t)
    return 0


def segments(settings: Settings, aws: Aws, as_json: bool) -> int:
    """``caa segments``: 1 when there is no segment model yet."""
    from consumers.refit import SIZES
    from consumers.registry import SEGMENTS
    from consumers.stores.model_snapshots import ModelStore
    from models.learn.segmentation import SegmentModel

    async def read(db: Dynamo) -> tuple[tuple[int, dict[str, Any]] | None,
                                        tuple[int, dict[str, Any]] | None]:
        store = ModelStore(db, settings.tables.models)
        return await store.load(SEGMENTS), await store.load(SIZES)

    found, sized = _read(aws, read)
    if found is None:
        print("no segment model yet: run `caa consume` first", file=sys.stderr)
        return 1
    version, body = found
    model = SegmentModel.from_dict(body)
    sizes: dict[str, int] = sized[1]["sizes"] if sized else {}
    rows = [{**d, "customers": sizes.get(str(d["name"]), 0)} for d in model.describe()]
    if as_json:
        print(json.dumps({"version": version, "segments": rows}, indent=2))
        return 0
    t = Table(title=f"segments (model version {version})")
    for col in ("id", "name", "customers", "recency_days", "frequency", "monetary"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for r in sorted(rows, key=lambda r: -int(str(r["customers"]))):
        c: Any = r.get("centre", r)
        t.add_row(str(r["id"]), str(r["name"]), f"{r['customers']:,}",
                  f"{float(c['recency_days']):.0f}", f"{float(c['frequency']):.2f}",
                  f"{float(c['monetary']):.2f}")
    console.print(t)
    return 0
