"""``caa batch``: the daily batch (consumers.analysis.daily.job) and its Bedrock job's ingestion
(consumers.analysis.daily.ingest), run by caa.daily_batch (shared with the batch function)."""

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
from caa.daily_batch import missing_settings, run_batch, run_ingest
from caa.errors import BadInput, CaaError, explain
from caa.settings import Settings

#: exit code of `caa batch --ingest` while the job is still running (sysexits' EX_TEMPFAIL:
#: try again later; distinct from every code of caa.errors)
NOT_FINISHED = 75


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

    missing = missing_settings(settings) if active_since else (
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
