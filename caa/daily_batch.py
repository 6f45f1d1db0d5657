"""The daily batch and its Bedrock job's ingestion, for every edge that runs them: the command
line (``caa batch``, caa/cli/daily.py) and the batch function (caa/entry/batch_lambda.py).

:func:`run_batch` recomputes the customers active since a time and, with
``CAA_ANALYZER=bedrock``, submits their analyses as a Bedrock batch inference job
(:mod:`consumers.analysis.daily.job`); :func:`run_ingest` stores a finished job's answers
(:mod:`consumers.analysis.daily.ingest`). Both return a JSON-able summary. No command-line
code here: the Lambda artifact leaves ``caa/cli`` out.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from caa.aws import Aws
from caa.settings import Settings
from consumers.progress import NO_PROGRESS, Progress

__all__ = ["missing_settings", "run_batch", "run_ingest"]


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
            # too few for a job (Bedrock's minimum): on demand now, so that nobody waits
            # past the next run; the guard's budget and limits hold as for any call
            out["analysis"]["job"] = (
                f"not submitted: {len(work.entries)} record(s), fewer than Bedrock's minimum "
                f"{s.batch_min_records} (CAA_BATCH_MIN_RECORDS): analysed on demand instead")
            if work.entries:
                progress.phase(f"analysing {len(work.entries):,} customers on demand")
                out["analysis"]["on_demand"] = await _on_demand(s, aws, db, registry, work)
            return out
        progress.phase(f"submitting the batch job ({len(work.entries):,} records)")
        job = await submit(config, c["s3"], c["bedrock"], work, now)
        out["analysis"]["job"] = job.summary()
        return out


async def _on_demand(settings: Settings, aws: Aws, db: Any, registry: Any,
                     work: Any) -> dict[str, int]:
    """Each planned entry analysed on demand (``bedrock_concurrency`` at a time): how many
    came back from Bedrock, fell back to the statistical analysis, or failed to be stored."""
    from caa import wiring

    entries = list(work.entries.values())
    gate = asyncio.Semaphore(settings.bedrock_concurrency)
    async with aws.clients("bedrock-runtime") as c:
        live = wiring.enricher(settings, db, c["bedrock-runtime"], registry)

        async def one(entry: Any) -> str:
            async with gate:
                rec = await live.analyze_now(entry.customer_id, entry.input, "schedule")
            if rec is None:
                return "failed"
            return "bedrock" if rec.source == "bedrock" else "statistical"

        done = Counter(await asyncio.gather(*(one(e) for e in entries)))
    return {k: done.get(k, 0) for k in ("bedrock", "statistical", "failed")}


async def run_ingest(settings: Settings, aws: Aws, ident: str,
                     now: datetime | None = None) -> dict[str, Any]:
    """Store the answers of the batch job ``ident`` (its name, id or ARN) once it has ended;
    a job still running is reported with ``ingested`` false.
    :class:`~consumers.analysis.daily.ingest.IngestRefused` for an unknown, unsubmitted or
    already ingested job."""
    from caa import wiring
    from consumers.analysis.daily.ingest import ingest, load_job

    s, config = settings, wiring.batch_config(settings)
    async with aws.clients("dynamodb", "s3", "bedrock") as c:
        job = await load_job(config, c["s3"], c["bedrock"], ident)
        store = wiring.analysis_store(s, wiring.dynamo(s, c["dynamodb"]))
        return await ingest(config, store, c["s3"], c["bedrock"], job, now or datetime.now(UTC))


def missing_settings(settings: Settings) -> list[str]:
    """The variables the batch with Bedrock needs and lacks (none for the statistical one)."""
    if settings.analyzer != "bedrock":
        return []
    return [name for name, v in (("CAA_BATCH_BUCKET", settings.batch_bucket),
                                 ("CAA_BATCH_ROLE_ARN", settings.batch_role_arn)) if not v]
