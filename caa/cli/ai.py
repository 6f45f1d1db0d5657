"""The AI-analysis commands of ``caa``: costs, history and on-demand analysis."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from caa.aws import Aws
from caa.settings import Settings
from consumers.stores.dynamo import Dynamo
from consumers.stores.usage import daily_usage

console = Console()


async def _daily_usage(settings: Settings, aws: Aws) -> list[dict[str, Any]]:
    async with aws.clients("dynamodb") as c:
        return await daily_usage(Dynamo(c["dynamodb"]), settings.tables.usage,
                                 settings.daily_budget_usd)


async def _history(settings: Settings, aws: Aws, customer_id: str,
                   limit: int) -> list[dict[str, Any]]:
    from caa import wiring

    async with aws.clients("dynamodb") as c:
        return await wiring.analysis_store(settings, Dynamo(c["dynamodb"])).history(
            customer_id, limit)


def costs(settings: Settings, aws: Aws, as_json: bool) -> int:
    """``caa costs``: Bedrock usage per day."""
    out = asyncio.run(_daily_usage(settings, aws))
    if as_json:
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


def history(settings: Settings, aws: Aws, customer_id: str, limit: int, as_json: bool) -> int:
    """``caa history``: a customer's last ``limit`` analyses, newest first."""
    recs = asyncio.run(_history(settings, aws, customer_id, limit))
    for r in recs:
        r.pop("signature", None)
    if as_json:
        print(json.dumps(recs, indent=2))
        return 0
    if not recs:
        print(f"no analyses for customer {customer_id!r}", file=sys.stderr)
        return 1
    t = Table(title=f"analyses of customer {customer_id} (newest first)")
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


async def analysis(settings: Settings, aws: Aws, customer_id: str) -> dict[str, Any] | None:
    """:func:`consumers.analysis.on_demand.analyze` on clients of its own."""
    from caa import wiring
    from consumers.analysis import on_demand
    from consumers.stores.customers import CustomerStore
    from consumers.stores.predictions import PredictionStore

    ai = settings.analyzer == "bedrock"
    async with aws.clients("dynamodb", *(["bedrock-runtime"] if ai else [])) as c:
        db = Dynamo(c["dynamodb"])
        registry = wiring.registry(settings, db)
        enricher = wiring.enricher(settings, db, c["bedrock-runtime"], registry) if ai else None
        return await on_demand.analyze(
            CustomerStore(db, settings.tables.customers),
            PredictionStore(db, settings.tables.predictions), registry, enricher, customer_id,
            lambda: wiring.pseudonym_key(settings))


def analyze(settings: Settings, aws: Aws, customer_id: str) -> int:
    """``caa analyze``: prints the analysis; 1 for an unknown customer or an error."""
    out = asyncio.run(analysis(settings, aws, customer_id))
    if out is None:
        print(f"no customer {customer_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 1 if "error" in out else 0
