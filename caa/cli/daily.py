"""``caa batch``: the daily batch (consumers.analysis.daily.job) and its Bedrock job's ingestion
(consumers.analysis.daily.ingest)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.errors import BadInput, CaaError, explain
from caa.settings import Settings
from consumers.progress import NO_PROGRESS, Progress

#: exit code of `caa batch --ingest` while the job is still running (sysexits' EX_TEMPFAIL:
#: try again later; distinct from every code of caa.errors)
NOT_FINISHED = 75


async def run_batch(settings: Settings, aws: Aws, since: datetime,
                    now: datetime | None = None,
                    progress: Progress = NO_PROGRESS) -> dict[str, Any]:
    """The daily batch; ``progress`` hears its phases (finding the active customers,
    rewriting their predictions, storing statistical analyses, preparing the batch input,
    submitting the job), counted where they can be."""
    from caa import wiring
    from consumers.analysis.daily.job import active_states, plan, recompute, submit
    from consumers.stores.predictions import PredictionStore

    s, now = settings, now or datetime.now(UTC)
    ai = s.analyzer == "bedrock"
    async with aws.clients("dynamodb", *(["s3", "bedrock"] if ai else [])) as c:
        db = wiring.dynamo(s, c["dynamodb"])
        registry = wiring.registry(s, db)
        # no runtime client: the enricher only carries analyses over and builds requests
        enricher = wiring.enricher(s, db, None, registry) if ai else None
        states = await active_states(db, s.table("customers"), since, progress)
        out: dict[str, Any] = {"active_since": since.isoformat(), "active": len(states),
                               "predictions_written": 0}
        if not states:
            return out
        as_of, predictions = await recompute(
            registry, PredictionStore(db, s.table("predictions")), states, enricher, progress)
        out.update(predictions_written=len(predictions),
                   as_of=datetime.fromtimestamp(as_of, UTC).isoformat())
        if enricher is None:
            return out
        config = wiring.batch_config(s)
        work = await plan(config, enricher, states, predictions, as_of, now, progress)
        out["analysis"] = {"no_consent": work.no_consent, "ab_control": work.ab_control,
                           "cache_hits": work.cache_hits,
                           "to_analyse": len(work.entries),
                           "worst_case_usd": work.worst_case_usd}
        if len(work.entries) < s.batch_min_records:
            out["analysis"]["job"] = (
                f"not submitted: {len(work.entries)} record(s), fewer than Bedrock's minimum "
                f"{s.batch_min_records} (CAA_BATCH_MIN_RECORDS); their analyses stay as they are")
            return out
        progress.phase(f"submitting the batch job ({len(work.entries):,} records)")
        job = await submit(config, c["s3"], c["bedrock"], work, now)
        out["analysis"]["job"] = job.summary()
        return out


async def run_ingest(settings: Settings, aws: Aws, ident: str,
                     now: datetime | None = None) -> dict[str, Any]:
    from caa import wiring
    from consumers.analysis.daily.ingest import ingest, load_job

    s, config = settings, wiring.batch_config(settings)
    async with aws.clients("dynamodb", "s3", "bedrock") as c:
        job = await load_job(config, c["s3"], c["bedrock"], ident)
        store = wiring.analysis_store(s, wiring.dynamo(s, c["dynamodb"]))
        return await ingest(config, store, c["s3"], c["bedrock"], job, now or datetime.now(UTC))


def _missing(settings: Settings) -> list[str]:
    if settings.analyzer != "bedrock":
        return []
    return [name for name, v in (("CAA_BATCH_BUCKET", settings.batch_bucket),
                                 ("CAA_BATCH_ROLE_ARN", settings.batch_role_arn)) if not v]


def _print(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.print_json(out)
        return
    title = f"batch job {out['job']}" if "job" in out else "daily batch"
    output.pairs(title, [(k, json.dumps(v, default=str) if isinstance(v, dict | list)
                          else str(v)) for k, v in out.items()])


def span(text: str | None) -> str | None:
    """``--active-since``: a span like 30m, 12h, 1d or 2w (checked here, used as text)."""
    from models.daily_job import parse_since

    if text is not None:
        try:
            parse_since(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return text


def batch(settings: Settings, aws: Aws, active_since: str | None, ingest: str | None,
          as_json: bool) -> int:
    """``caa batch``: the daily batch over the customers active within ``active_since`` (30m,
    12h, 1d, 2w), or else the ingestion of the finished batch job ``ingest``.
    :class:`BadInput` on missing settings, 1 on a failure, :data:`NOT_FINISHED` while the
    job runs."""
    from botocore.exceptions import BotoCoreError, ClientError

    from consumers.analysis.daily.ingest import IngestRefused
    from models.daily_job import parse_since

    missing = _missing(settings) if active_since else (
        [] if settings.batch_bucket else ["CAA_BATCH_BUCKET"])
    if missing:
        raise BadInput(f"caa batch with Bedrock needs {' and '.join(missing)}")
    since: timedelta | None = parse_since(active_since) if active_since else None
    try:
        if since:
            with output.progress() as progress:  # on stderr: `--json` stays parseable
                out = asyncio.run(run_batch(settings, aws, datetime.now(UTC) - since,
                                            progress=progress))
        else:
            out = asyncio.run(run_ingest(settings, aws, ingest or ""))
    except IngestRefused as exc:
        raise CaaError(f"batch: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise (explain(exc, aws.endpoint_url) or CaaError(f"batch: {exc}")) from exc
    _print(out, as_json)
    job = out.get("analysis", {}).get("job")
    if isinstance(job, dict) and job.get("submit_error"):
        return 1
    if ingest and not out.get("ingested"):
        output.note(f"job {out['job']} is {out['status']}: not finished yet")
        return NOT_FINISHED
    return 0


def _batch(
    ctx: typer.Context,
    active_since: Annotated[str | None, typer.Option(
        metavar="SPAN", callback=span,
        help="Recompute the customers whose state was written within SPAN (30m, 12h, 1d, "
             "2w); with CAA_ANALYZER=bedrock, submit their analyses as a batch job.")] = None,
    ingest: Annotated[str | None, typer.Option(
        metavar="JOB",
        help="Store the answers of a finished batch job (its name, id or ARN).")] = None,
    as_json: JsonFlag = False,
) -> int:
    if (active_since is None) == (ingest is None):
        raise typer.BadParameter("give exactly one of --active-since SPAN or --ingest JOB",
                                 param_hint="'--active-since' / '--ingest'")
    inv = current(ctx)
    return batch(inv.settings, inv.aws(), active_since, ingest, as_json)


def register(app: typer.Typer) -> None:
    app.command("batch", rich_help_panel=output.OPERATIONS,
                help="The daily batch: recompute recently active customers; with Bedrock, "
                     "analyse them in a batch inference job (docs/daily-batch.md).")(_batch)
