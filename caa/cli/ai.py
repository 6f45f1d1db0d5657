"""The AI-analysis commands of ``caa``: costs, history and on-demand analysis."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.analyzer import Wait
from caa.cli.context import current
from caa.cli.customers import CustomerId, analysis_rows, check_customer_id
from caa.cli.output import JsonFlag
from caa.errors import CaaError, NotFound
from caa.settings import Settings
from consumers.stores.dynamo import Dynamo
from consumers.stores.usage import daily_usage, non_aws_endpoints, simulated_note

#: exit code of `caa analyze` when its queued request got no answer in time (sysexits'
#: EX_TEMPFAIL: try again later)
NOT_YET = 75


async def _daily_usage(settings: Settings, aws: Aws) -> list[dict[str, Any]]:
    async with aws.clients("dynamodb") as c:
        return await daily_usage(Dynamo(c["dynamodb"]), settings.tables.usage,
                                 settings.daily_budget_usd)


async def _history(settings: Settings, aws: Aws, customer_id: str,
                   limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The analyses, and whether the customer is known (has a prediction)."""
    from caa import wiring
    from consumers.stores.predictions import PredictionStore

    async with aws.clients("dynamodb") as c:
        db = Dynamo(c["dynamodb"])
        recs = await wiring.analysis_store(settings, db).history(customer_id, limit)
        known = bool(recs) or await PredictionStore(db, settings.tables.predictions).get(
            customer_id) is not None
        return recs, known


def costs(settings: Settings, aws: Aws, as_json: bool) -> int:
    """``caa costs``: Bedrock usage per day. A day whose calls went elsewhere than AWS (the
    local test server of ``make run-ai``) says so: ``simulated`` and ``note`` in ``--json``,
    a column and a line under the table."""
    out = asyncio.run(_daily_usage(settings, aws))
    for day in out:
        day["simulated"] = bool(day["endpoints"])
        day["note"] = simulated_note(day["endpoints"])
    if as_json:
        output.print_json(out)
        return 0
    elsewhere = non_aws_endpoints(out)
    rows = []
    for r in out:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["fallback_reasons"].items()))
        rows.append((r["day"], f"{r['spend_usd']:.4f}", f"{r['calls']:,}",
                     f"{r['failed_analyses']:,}",
                     f"{r['input_tokens']:,}", f"{r['output_tokens']:,}", f"{r['analyses']:,}",
                     f"{r['fallbacks']:,}" + (f" ({reasons})" if reasons else ""),
                     f"{r['cache_hits']:,}",
                     *([", ".join(r["endpoints"]) or "AWS"] if elsewhere else [])))
    columns = ("day", "spend USD", "calls", "failed", "tokens in", "tokens out", "analyses",
               "fallbacks", "cache hits", *(["answered by"] if elsewhere else []))
    output.table("Bedrock usage per day (UTC)", columns, rows,
                 right=set(columns[1:9]), caption=simulated_note(elsewhere))
    if not out:
        output.note("no usage recorded yet")
    return 0


def history(settings: Settings, aws: Aws, customer_id: str, limit: int, as_json: bool) -> int:
    """``caa history``: a customer's last ``limit`` analyses, newest first (none yet: an
    empty list); :class:`NotFound` for a customer with no prediction."""
    check_customer_id(customer_id)
    recs, known = asyncio.run(_history(settings, aws, customer_id, limit))
    if not known:
        raise NotFound(f"no customer {customer_id!r} with a prediction")
    for r in recs:
        r.pop("signature", None)
    if as_json:
        output.print_json(recs)
        return 0
    if not recs:
        output.note(f"no analyses for customer {customer_id!r} yet: they are made with "
                    "CAA_ANALYZER=bedrock, or by `caa analyze`")
        return 0
    # where the answers came from, when not from AWS (the local test server)
    elsewhere = sorted({str(r["endpoint"]) for r in recs if r.get("endpoint")})
    rows = []
    for r in recs:
        a = r["analysis"]
        rows.append((r["at"][:19], r["trigger"], r["source"], r["model"],
                     r.get("fallback_reason") or "", f"{r['input_tokens']}/{r['output_tokens']}",
                     f"{r['cost_usd']:.6f}", f"{a['confidence']:.2f}",
                     f"{a['next_best_action']['action']}: {a['next_best_action']['detail']}",
                     *([str(r.get("endpoint") or "")] if elsewhere else [])))
    output.table(f"analyses of customer {customer_id} (newest first)",
                 ("at", "trigger", "source", "model", "fallback", "tokens in/out", "cost USD",
                  "confidence", "next best action", *(["endpoint"] if elsewhere else [])),
                 rows, caption=simulated_note(elsewhere))
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


def analyze(settings: Settings, aws: Aws, customer_id: str, as_json: bool = False,
            wait_s: float = 60.0) -> int:
    """``caa analyze``: prints the analysis; :class:`NotFound` for an unknown customer,
    1 when the analysis could not be made or stored. With ``CAA_ANALYSIS_QUEUE`` the request
    goes to the analysis queue (the analyzer function, or ``caa analyzer``, takes it) and
    the answer is waited for up to ``wait_s``; :data:`NOT_YET` when it did not come."""
    from caa.cli.analyzer import queued_analysis

    check_customer_id(customer_id)
    queued = settings.analysis_queue is not None and settings.analyzer == "bedrock"
    out = asyncio.run(queued_analysis(settings, aws, customer_id, wait_s) if queued
                      else analysis(settings, aws, customer_id))
    if out is None:
        raise NotFound(f"no customer {customer_id!r} with a prediction")
    if "queued" in out:
        if as_json:
            output.print_json(out)
        output.note(f"the request for {customer_id} is on {out['queued']}; no analysis came "
                    f"within {wait_s:g} s (is an analyzer running? `caa analyzer`, or the "
                    "analyzer function); `caa history` shows it once made")
        return NOT_YET
    if "error" in out:
        raise CaaError(f"the analysis of {customer_id!r} failed: "
                       + ("; ".join(out["error"]) or "see the logs"))
    if as_json:
        output.print_json(out)
        return 0
    source = out.get("source")
    if out.get("fallback_reason"):  # as caa show says it: why the model was not used
        source = f"{source} (fallback: {out['fallback_reason']})"
    output.pairs(f"analysis of customer {customer_id} (now)",
                 [("trigger", str(out.get("trigger", "on_demand"))),
                  *analysis_rows(out.get("analysis"), out.get("at"), out.get("model"),
                                 source)])
    return 0


def _costs(ctx: typer.Context, as_json: JsonFlag = False) -> int:
    inv = current(ctx)
    return costs(inv.settings, inv.aws(), as_json)


def _history_command(
    ctx: typer.Context, customer_id: CustomerId,
    limit: Annotated[int, typer.Option(min=1, help="At most this many analyses.")] = 20,
    as_json: JsonFlag = False,
) -> int:
    inv = current(ctx)
    return history(inv.settings, inv.aws(), customer_id, limit, as_json)


def _analyze(ctx: typer.Context, customer_id: CustomerId, as_json: JsonFlag = False,
             wait_s: Wait = 60.0) -> int:
    inv = current(ctx)
    return analyze(inv.settings, inv.aws(), customer_id, as_json, wait_s)


def register(app: typer.Typer) -> None:
    app.command("costs", rich_help_panel=output.AI,
                help="Bedrock spend, calls, tokens, fallbacks and cache hits per day.")(_costs)
    app.command("history", rich_help_panel=output.AI,
                help="A customer's analyses, newest first: time, trigger, source, model, "
                     "tokens, cost, next best action.")(_history_command)
    app.command("analyze", rich_help_panel=output.AI,
                help="Analyse a customer now, bypassing debounce and the analysis cache "
                     "(consent, budget and breaker still hold); with CAA_ANALYSIS_QUEUE, "
                     "through the queue's analyzer.")(_analyze)
