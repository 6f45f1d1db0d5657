"""``caa batch``: the daily batch (consumers.analysis.daily.job) and its Bedrock job's ingestion
(consumers.analysis.daily.ingest)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from caa.aws import Aws
from caa.settings import Settings

#: exit code of `caa batch --ingest` while the job is still running
NOT_FINISHED = 3


async def run_batch(settings: Settings, aws: Aws, since: datetime,
                    now: datetime | None = None) -> dict[str, Any]:
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
        states = await active_states(db, s.table("customers"), since)
        out: dict[str, Any] = {"active_since": since.isoformat(), "active": len(states),
                               "predictions_written": 0}
        if not states:
            return out
        as_of, predictions = await recompute(
            registry, PredictionStore(db, s.table("predictions")), states, enricher)
        out.update(predictions_written=len(predictions),
                   as_of=datetime.fromtimestamp(as_of, UTC).isoformat())
        if enricher is None:
            return out
        config = wiring.batch_config(s)
        work = await plan(config, enricher, states, predictions, as_of, now)
        out["analysis"] = {"no_consent": work.no_consent, "ab_control": work.ab_control,
                           "cache_hits": work.cache_hits,
                           "to_analyse": len(work.entries),
                           "worst_case_usd": work.worst_case_usd}
        if len(work.entries) < s.batch_min_records:
            out["analysis"]["job"] = (
                f"not submitted: {len(work.entries)} record(s), fewer than Bedrock's minimum "
                f"{s.batch_min_records} (CAA_BATCH_MIN_RECORDS); their analyses stay as they are")
            return out
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
        print(json.dumps(out, indent=2, default=str))
        return
    for k, v in out.items():
        print(f"{k}: {json.dumps(v, default=str) if isinstance(v, dict | list) else v}")


def batch(settings: Settings, aws: Aws, active_since: str | None, ingest: str | None,
          as_json: bool) -> int:
    """``caa batch``: the daily batch over the customers active within ``active_since`` (30m,
    12h, 1d, 2w), or else the ingestion of the finished batch job ``ingest``. 2 on missing
    settings or a bad span, 1 on a failure, :data:`NOT_FINISHED` while the job runs."""
    from botocore.exceptions import BotoCoreError, ClientError

    from consumers.analysis.daily.ingest import IngestRefused
    from models.daily_job import parse_since

    missing = _missing(settings) if active_since else (
        [] if settings.batch_bucket else ["CAA_BATCH_BUCKET"])
    if missing:
        print(f"caa batch with Bedrock needs {' and '.join(missing)}", file=sys.stderr)
        return 2
    try:
        span = parse_since(active_since) if active_since else None
    except ValueError as exc:
        print(f"caa batch: {exc}", file=sys.stderr)
        return 2
    try:
        out = (asyncio.run(run_batch(settings, aws, datetime.now(UTC) - span)) if span
               else asyncio.run(run_ingest(settings, aws, ingest or "")))
    except (IngestRefused, ClientError, BotoCoreError) as exc:
        print(f"caa batch: {exc}", file=sys.stderr)
        return 1
    _print(out, as_json)
    job = out.get("analysis", {}).get("job")
    if isinstance(job, dict) and job.get("submit_error"):
        return 1
    if ingest and not out.get("ingested"):
        print(f"job {out['job']} is {out['status']}: not finished yet", file=sys.stderr)
        return NOT_FINISHED
    return 0
