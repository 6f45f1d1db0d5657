"""The daily batch (``caa batch --active-since 1d``).

1. **Who.** Customers *active* since the cut-off: their state was written since then
   (``updated_at`` of the customer item, the wall-clock time the consumer last applied an
   event of theirs). A Scan with a filter: it reads the whole customers table once per run
   (read units for every item), which is fine for a daily job at this size; a GSI on a day
   bucket would make it a Query.
2. **Predictions** are recomputed with the current models (no refit) through the refit's
   own :func:`~consumers.refit.rewrite_predictions`, as of the stream watermark (the latest
   event among them, or of the last refit if later), keeping each customer's analysis.
3. **Analyses**, with ``CAA_ANALYZER=bedrock``: consent, the A/B control variant and the
   change-aware cache apply as for a scheduled re-analysis (refusals get the statistical
   analysis, ``no_consent``, and so does the control, ``ab_control``, and those value routing
   sends to it, ``low_value``: :mod:`consumers.analysis.value_route`; unchanged customers
   keep theirs). The rest go to a Bedrock batch inference job instead of on-demand calls:
   the exact Converse request the on-demand analyzer builds (pseudonymised prompt, forced
   tool) in the model's native format (:func:`models.daily_job.messages_body`: Converse-type
   jobs do not support tool use), one JSONL line each, written to S3 with the job record,
   then CreateModelInvocationJob of the InvokeModel type.
   :mod:`consumers.analysis.daily.ingest` reads the answers back.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from consumers.analysis.analyzer import PriceTable, statistical_analysis
from consumers.analysis.bedrock import BedrockAnalyzer
from consumers.analysis.enricher import AB_CONTROL, LOW_VALUE, Enricher
from consumers.analysis.trigger import Signature, stale_reason
from consumers.analysis.value_route import route
from consumers.progress import NO_PROGRESS, Progress
from consumers.refit import rewrite_predictions
from consumers.registry import ModelRegistry
from consumers.stores.analyses import AnalysisStore
from consumers.stores.customers import CustomerStore
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from consumers.stores.usage import UsageLedger
from models.analysis import AnalysisRecord
from models.daily_job import INVOCATION_TYPE, BatchEntry, BatchJob, input_line, record_id, s3_uri
from models.features import rfm
from models.prediction import Prediction
from models.prompt import AnalysisInput, build_input
from models.state import CustomerState


@dataclass(frozen=True)
class BatchConfig:
    """What the daily batch needs to know: the usage table it counts in, prices (and the
    batch share of them), the model, and where its jobs go (S3, and the role Bedrock assumes
    to read and write there; both are needed only to submit)."""

    usage_table: str
    prices: PriceTable
    price_factor: float
    model_id: str
    bucket: str | None
    prefix: str
    role_arn: str | None


@dataclass
class Plan:
    """What the batch sends to Bedrock, and what it settled without a call."""

    entries: dict[str, BatchEntry] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    no_consent: int = 0
    ab_control: int = 0
    #: settled with the statistical analysis by value routing (consumers.analysis.value_route)
    low_value: int = 0
    cache_hits: int = 0
    worst_case_usd: float = 0.0


async def active_states(db: Dynamo, table: str, since: datetime,
                        progress: Progress = NO_PROGRESS) -> list[CustomerState]:
    """Customers with purchases whose state was written at or after ``since`` (UTC);
    ``progress``: the phase "finding active customers" counts the customers read."""
    progress.phase("finding active customers")
    states = await CustomerStore(db, table).updated_since(since, progress)
    return sorted((s for s in states if s.purchases), key=lambda s: s.customer_id)


async def recompute(registry: ModelRegistry, predictions: PredictionStore,
                    states: Sequence[CustomerState],
                    enricher: Enricher | None,
                    progress: Progress = NO_PROGRESS) -> tuple[int, list[Prediction]]:
    """Rewrite these customers' predictions with the current models: (as_of, predictions);
    ``progress``: the phase "rewriting predictions", counted."""
    await registry.load()
    fitted = await registry.store.load(registry.forecast_model)
    as_of = max([*(s.last_ts for s in states), int(fitted[1].get("as_of", 0)) if fitted else 0])
    model = registry.segmenter
    segments = [model.predict_one(rfm(s, as_of, registry.rates)) for s in states]
    out = await rewrite_predictions(states, segments, model.segment_names(),
                                    registry.view().forecaster, registry.segments_version,
                                    as_of, predictions, enricher, progress, registry.rates)
    return as_of, out


def statistical_record(cid: str, x: AnalysisInput, at: datetime, reason: str) -> AnalysisRecord:
    return AnalysisRecord(customer_id=cid, at=at, as_of=x.as_of, source="statistical",
                          model="statistical", trigger="schedule", fallback_reason=reason,
                          analysis=statistical_analysis(x))


async def store_all(store: AnalysisStore, records: Sequence[AnalysisRecord],
                    concurrency: int = 8, progress: Progress = NO_PROGRESS,
                    input_at: datetime | None = None,
                    outcomes: Counter[str] | None = None) -> list[str]:
    """Store every record (latest, history, prediction); the errors, as text.
    ``input_at``: when their inputs were read (a job's creation; default each record's
    ``at``); ``outcomes`` counts what :meth:`AnalysisStore.record` did with each
    (``latest``, ``superseded``, ``erased``). ``progress`` advances by one per record
    stored (or failed)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(rec: AnalysisRecord) -> str | None:
        async with sem:
            try:
                stored = await store.record(rec, input_at=input_at)
            except Exception as exc:  # noqa: BLE001 -- reported; the rest go on
                return f"{rec.customer_id}: {type(exc).__name__}: {exc}"[:300]
            finally:
                progress.advance()
            if outcomes is not None:
                outcomes[stored] += 1
            return None

    return [e for e in await asyncio.gather(*(one(r) for r in records)) if e]


async def plan(config: BatchConfig, enricher: Enricher, states: Sequence[CustomerState],
               predictions: Sequence[Prediction], as_of: int, now: datetime,
               progress: Progress = NO_PROGRESS) -> Plan:
    """Consent and cache first (settled now, written like the enricher writes them); the
    rest become input lines with the on-demand analyzer's exact request (in the model's
    native format). ``progress``: "storing statistical analyses" (no consent, A/B control;
    counted), then "preparing the batch input" (counted, out of the rest)."""
    analyzer = enricher.analyzer
    assert isinstance(analyzer, BedrockAnalyzer), "the batch needs the Bedrock analyzer"
    by_id = {p.customer_id: p for p in predictions}
    ref = enricher.reference_order_value()
    inputs = {s.customer_id: build_input(s, by_id.get(s.customer_id), as_of_ts=as_of,
                                         key=enricher.key, reference_order_value=ref,
                                         rates=enricher.rates)
              for s in states}
    out = Plan()
    refused = [cid for cid, x in inputs.items() if not enricher._consented(x)]
    # the A/B control variant is never analysed by a model (as in Enricher._analyze)
    control = [cid for cid in inputs if cid not in set(refused)
               and enricher.variants.is_control(cid)]
    progress.phase("storing statistical analyses", total=len(refused) + len(control))
    errors = await store_all(enricher.store, [
        *(statistical_record(cid, inputs[cid], now, "no_consent") for cid in refused),
        *(statistical_record(cid, inputs[cid], now, AB_CONTROL) for cid in control)],
        progress=progress)
    if errors:
        raise RuntimeError(f"could not store {len(errors)} analyses: {errors[0]}")
    out.no_consent, out.ab_control = len(refused), len(control)
    asked = [cid for cid in inputs if cid not in {*refused, *control}]
    # value routing: those whose analysis could not change an action get the statistical one
    cuts = await enricher.router.cuts() if enricher.router.enabled else None
    low = [cid for cid in asked
           if route(inputs[cid].p_alive, inputs[cid].clv, cuts, daily=True,
                    purchase_days=inputs[cid].purchase_days) == "statistical"]
    if low:
        errors = await store_all(enricher.store, [
            statistical_record(cid, inputs[cid], now, LOW_VALUE) for cid in low])
        if errors:
            raise RuntimeError(f"could not store {len(errors)} analyses: {errors[0]}")
        out.low_value = len(low)
        asked = [cid for cid in asked if cid not in set(low)]
    progress.phase("preparing the batch input", total=len(asked))
    previous = await enricher.store.latest(asked)
    prices = config.prices
    for cid in asked:
        progress.advance()
        x = inputs[cid]
        sig = Signature.of(x, enricher.version)
        prev = previous.get(cid)
        old = Signature.from_dict(prev.signature) if prev and prev.signature else None
        if stale_reason(old, sig, enricher.rules) is None:
            out.cache_hits += 1
            continue
        rid = record_id(len(out.entries) + 1)
        out.entries[rid] = BatchEntry(customer_id=cid, input=x, signature=sig.to_dict())
        out.lines.append(input_line(rid, analyzer.request(x)))
        out.worst_case_usd += prices.cost(analyzer.model, analyzer.input_tokens_bound(x),
                                          analyzer.max_tokens)
    out.worst_case_usd = round(out.worst_case_usd * config.price_factor, 6)
    await UsageLedger(enricher.store.db, config.usage_table).add(now.date().isoformat(), {
        "analyses": out.no_consent + out.ab_control + out.low_value,
        "source_statistical": out.no_consent + out.ab_control + out.low_value,
        "fallbacks": out.no_consent, "fallback_no_consent": out.no_consent,
        AB_CONTROL: out.ab_control, LOW_VALUE: out.low_value, "cache_hits": out.cache_hits})
    return out


def job_name(now: datetime) -> str:
    """``caa-batch-20240601t020000-1a2b3c``: a valid Bedrock job name and idempotency token."""
    return f"caa-batch-{now:%Y%m%dt%H%M%S}-{secrets.token_hex(3)}"


async def save_job(s3: Any, bucket: str, job: BatchJob) -> None:
    key = job.record_uri.removeprefix(f"s3://{bucket}/")
    await s3.put_object(Bucket=bucket, Key=key, Body=job.model_dump_json().encode(),
                        ContentType="application/json")


async def submit(config: BatchConfig, s3: Any, bedrock: Any, work: Plan, now: datetime,
                 ) -> BatchJob:
    """Write the input and the job record to S3, then create the job. A refused creation is
    kept in the record (``submit_error``), not raised."""
    assert config.bucket and config.role_arn
    bucket, name, base = config.bucket, job_name(now), config.prefix
    job = BatchJob(name=name, model_id=config.model_id, created_at=now,
                   input_uri=s3_uri(bucket, f"{base}input/{name}.jsonl"),
                   output_uri=s3_uri(bucket, f"{base}output/{name}/"),
                   record_uri=s3_uri(bucket, f"{base}jobs/{name}.json"), entries=work.entries)
    await s3.put_object(Bucket=bucket, Key=f"{base}input/{name}.jsonl",
                        Body=("\n".join(work.lines) + "\n").encode(),
                        ContentType="application/jsonl")
    await save_job(s3, bucket, job)  # first: an answer must never lack its customer map
    try:
        resp = await bedrock.create_model_invocation_job(
            jobName=name, roleArn=config.role_arn, clientRequestToken=name,
            modelId=job.model_id, modelInvocationType=INVOCATION_TYPE,
            inputDataConfig={"s3InputDataConfig": {"s3InputFormat": "JSONL",
                                                   "s3Uri": job.input_uri}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": job.output_uri}},
            tags=[{"key": "caa", "value": "daily-batch"}])
        job = job.model_copy(update={"job_arn": str(resp["jobArn"])})
    except (ClientError, BotoCoreError) as exc:
        job = job.model_copy(update={"submit_error": f"{type(exc).__name__}: {exc}"[:500]})
    await save_job(s3, bucket, job)
    return job
