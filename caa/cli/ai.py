"""The AI-analysis commands of ``caa``: costs, history and on-demand analysis."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from caa.aws import Aws
from caa.settings import Settings

if TYPE_CHECKING:
    from consumers.analysis.enricher import Enricher
    from consumers.registry import ModelRegistry
    from consumers.stores.dynamo import Dynamo
    from models.analysis import AnalysisRecord

console = Console()


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("costs", help="Bedrock spend, calls, tokens, fallbacks, cache hits per day")
    c.add_argument("--json", action="store_true")
    h = sub.add_parser("history", help="a customer's analyses, newest first")
    h.add_argument("customer_id")
    h.add_argument("--limit", type=int, default=20)
    h.add_argument("--json", action="store_true")
    a = sub.add_parser("analyze", help="analyse a customer now (bypasses debounce and cache)")
    a.add_argument("customer_id")


def daily_usage(settings: Settings, aws: Aws) -> list[dict[str, Any]]:
    """The usage table, one row per day (UTC), oldest first: what ``caa costs`` shows."""
    from consumers.stores.dynamo import from_attr

    ddb = aws.client("dynamodb")
    rows: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=settings.table("usage")):
        rows += [{k: from_attr(v) for k, v in i.items()} for i in page["Items"]]
    rows.sort(key=lambda r: str(r["day"]))
    return [
        {
            "day": r["day"],
            "spend_usd": round(int(r.get("spend_micros", 0)) / 1e6, 6),
            "budget_usd": settings.daily_budget_usd,
            "calls": int(r.get("calls", 0)),
            "failed_calls": int(r.get("failed_calls", 0)),
            "input_tokens": int(r.get("input_tokens", 0)),
            "output_tokens": int(r.get("output_tokens", 0)),
            "analyses": int(r.get("analyses", 0)),
            "fallbacks": int(r.get("fallbacks", 0)),
            "fallback_reasons": {k.removeprefix("fallback_"): int(v) for k, v in r.items()
                                 if k.startswith("fallback_")},
            "cache_hits": int(r.get("cache_hits", 0)),
        }
        for r in rows
    ]


def cmd_costs(settings: Settings, aws: Aws, args: argparse.Namespace) -> int:
    out = daily_usage(settings, aws)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    t = Table(title="Bedrock usage per day (UTC)")
    for col in ("day", "spend USD", "calls", "tokens in", "tokens out", "analyses",
                "fallbacks", "cache hits"):
        t.add_column(col, justify="left" if col == "day" else "right")
    for r in out:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["fallback_reasons"].items()))
        t.add_row(r["day"], f"{r['spend_usd']:.4f}", f"{r['calls']:,}",
                  f"{r['input_tokens']:,}", f"{r['output_tokens']:,}", f"{r['analyses']:,}",
                  f"{r['fallbacks']:,}" + (f" ({reasons})" if reasons else ""),
                  f"{r['cache_hits']:,}")
    console.print(t)
    if not out:
        print("no usage recorded yet", file=sys.stderr)
    return 0


def cmd_history(settings: Settings, aws: Aws, args: argparse.Namespace) -> int:
    resp = aws.client("dynamodb").query(
        TableName=settings.table("analysis-history"),
        KeyConditionExpression="customer_id = :c",
        ExpressionAttributeValues={":c": {"S": args.customer_id}},
        ScanIndexForward=False, Limit=args.limit,
    )
    recs = [json.loads(i["record"]["S"]) for i in resp.get("Items", [])]
    for r in recs:
        r.pop("signature", None)
    if args.json:
        print(json.dumps(recs, indent=2))
        return 0
    if not recs:
        print(f"no analyses for customer {args.customer_id!r}", file=sys.stderr)
        return 1
    t = Table(title=f"analyses of customer {args.customer_id} (newest first)")
    for col in ("at", "trigger", "source", "model", "fallback", "tokens in/out", "cost USD",
                "confidence", "next best action"):
        t.add_column(col)
    for r in recs:
        a = r["analysis"]
        t.add_row(r["at"][:19], r["trigger"], r["source"], r["model"],
                  r.get("fallback_reason") or "", f"{r['input_tokens']}/{r['output_tokens']}",
                  f"{r['cost_usd']:.6f}", f"{a['confidence']:.2f}",
                  f"{a['next_best_action']['action']}: {a['next_best_action']['detail']}")
    console.print(t)
    return 0


class OnDemandFailed(RuntimeError):
    """The analysis ran but could not be stored; ``errors`` says why."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors) or "the analysis failed")
        self.errors = errors


async def analyze(settings: Settings, aws: Aws, customer_id: str) -> dict[str, Any] | None:
    from consumers.registry import ModelRegistry
    from consumers.sources.worker import build_enricher
    from consumers.stores.dynamo import Dynamo
    from consumers.stores.model_snapshots import ModelStore

    ai = settings.analyzer == "bedrock"
    async with aws.clients("dynamodb", *(["bedrock-runtime"] if ai else [])) as c:
        db = Dynamo(c["dynamodb"])
        registry = ModelRegistry(ModelStore(db, settings.table("models")), settings)
        enricher = build_enricher(settings, db, c["bedrock-runtime"], registry) if ai else None
        try:
            rec = await on_demand(settings, db, registry, enricher, customer_id)
        except OnDemandFailed as exc:
            return {"error": exc.errors}
        if rec is None:
            return None
        if enricher is None:
            return {"source": "statistical", "analysis": rec.analysis.model_dump(mode="json")}
        out = rec.model_dump(mode="json")
        out.pop("signature", None)
        return out


async def on_demand(settings: Settings, db: Dynamo, registry: ModelRegistry,
                    enricher: Enricher | None, customer_id: str) -> AnalysisRecord | None:
    """Analyse one customer now, bypassing debounce and cache (consent, breaker, budget and
    limits still hold): an ``AnalysisRecord``, or None for an unknown customer. With no
    enricher (``CAA_ANALYZER=statistical``) the statistical analysis, not stored. Shared by
    ``caa analyze`` and the HTTP API (``caa.api.app``), which keeps one enricher for its life."""
    from datetime import UTC, datetime

    from consumers.analysis.analyzer import statistical_analysis
    from consumers.sources.worker import pseudonym_key, reference_order_value
    from consumers.stores.customers import CustomerStore
    from consumers.stores.predictions import PredictionStore
    from models.analysis import AnalysisRecord
    from models.prediction import Prediction
    from models.prompt import build_input

    states = await CustomerStore(db, settings.table("customers")).load([customer_id])
    stored = await PredictionStore(db, settings.table("predictions")).get(customer_id)
    if customer_id not in states or stored is None:
        return None
    await registry.load()
    prediction = Prediction.model_validate(stored)
    x = build_input(states[customer_id], prediction, as_of_ts=int(prediction.as_of.timestamp()),
                    key=pseudonym_key(settings),
                    reference_order_value=reference_order_value(registry.segmenter))
    if enricher is None:
        return AnalysisRecord(customer_id=customer_id, at=datetime.now(UTC), as_of=x.as_of,
                              source="statistical", model="statistical", trigger="on_demand",
                              analysis=statistical_analysis(x))
    errors_before = enricher.counts["errors"]
    rec = await enricher.analyze_now(customer_id, x)
    await enricher.flush_counters()
    if rec is None:
        new = enricher.counts["errors"] - errors_before
        raise OnDemandFailed(enricher.errors[-new:] if new > 0 else [])
    return rec
