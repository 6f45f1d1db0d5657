"""Read a Bedrock batch inference job's answers back (``caa batch --ingest JOB``).

Once the job has ended (Completed, PartiallyCompleted, Stopped, Expired or Failed), every
``<input name>.out`` object under its output prefix is read line by line; an answer is the
model's native response (the job is of the InvokeModel type, see :mod:`models.daily_job`): an
Anthropic Messages ``modelOutput`` whose ``tool_use`` block is validated as the on-demand
analyzer validates its ``toolUse`` (:func:`~consumers.analysis.bedrock.parse_native_answer`), tokens
from its ``usage`` (``input_tokens``, ``output_tokens``). Every record of the
job gets exactly one analysis, stored through the same :class:`AnalysisStore` path as
on-demand analyses (latest, history, merged into the prediction), with trigger ``schedule``:

* a valid answer: source ``bedrock``, its tokens priced at the batch rate
  (``CAA_BEDROCK_BATCH_PRICE_FACTOR`` of the on-demand price);
* an answer that fails validation, a text-only answer or another tool (billed, not
  corrected: a batch has no second turn): statistical, ``invalid_answer``;
* an ``error`` line: statistical, ``batch_error``; a line with a record id but neither
  answer nor error: ``batch_malformed``; no line at all (an unreadable line, a failed job):
  ``batch_missing``.

The day's usage counters get the job's tokens, spend (also counted against the daily budget's
``committed_micros``), calls and fallbacks in one update at the end. A marker object beside
the job record claims the ingestion first (a conditional put), so a job is counted once; an
ingestion that fails before counting gives the claim back (analyses it stored are stored
again, and counted once, by the next attempt).
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from consumers.analysis.analyzer import PriceTable, with_statistical_patterns
from consumers.analysis.bedrock import endpoint, parse_native_answer
from consumers.analysis.daily.job import BatchConfig, statistical_record, store_all
from consumers.stores.analyses import AnalysisStore
from consumers.stores.usage import UsageLedger, micros
from models.analysis import AnalysisRecord
from models.daily_job import BatchEntry, BatchJob, OutputLine, parse_output_line, split_s3_uri

#: job states with nothing more to come
ENDED = frozenset({"Completed", "PartiallyCompleted", "Stopped", "Expired", "Failed"})


class IngestRefused(RuntimeError):
    """The job cannot be ingested (unknown, not submitted, or ingested already)."""


async def _read(s3: Any, bucket: str, key: str) -> bytes:
    resp = await s3.get_object(Bucket=bucket, Key=key)
    async with resp["Body"] as body:
        data: bytes = await body.read()
    return data


async def load_job(config: BatchConfig, s3: Any, bedrock: Any, ident: str) -> BatchJob:
    """The job record, by job name, job id or job ARN."""
    assert config.bucket
    name = ident
    if ident.startswith("arn:") or (len(ident) == 12 and ident.isalnum() and ident.islower()):
        name = str((await bedrock.get_model_invocation_job(jobIdentifier=ident))["jobName"])
    key = f"{config.prefix}jobs/{name}.json"
    try:
        return BatchJob.model_validate_json(await _read(s3, config.bucket, key))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise IngestRefused(f"no job record s3://{config.bucket}/{key}") from None
        raise


def _items(x: Any) -> set[str]:
    """The names an answer may mention (as the on-demand analyzer checks them)."""
    return {i.name for i in (*x.products, *x.categories)} | {h.name for h in x.statistical_next}


def analysis_of(entry: BatchEntry, line: OutputLine, prices: PriceTable, model: str,
                factor: float, at: datetime) -> AnalysisRecord:
    """The analysis one output line gives its record (the statistical one on any failure)."""
    x = entry.input
    if line.kind == "error":
        return statistical_record(entry.customer_id, x, at, "batch_error")
    if line.kind == "malformed" or line.output is None:
        return statistical_record(entry.customer_id, x, at, "batch_malformed")
    usage = line.output.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    tin, tout = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    cost = round(prices.cost(model, tin, tout) * factor, 9)
    analysis, _why, _use = parse_native_answer(line.output)
    if analysis is not None and not analysis.problems(_items(x)):
        return AnalysisRecord(
            customer_id=entry.customer_id, at=at, as_of=x.as_of, source="bedrock", model=model,
            trigger="schedule", input_tokens=tin, output_tokens=tout, cost_usd=cost,
            attempts=1, analysis=with_statistical_patterns(analysis, x),
            signature=entry.signature)
    fallback = statistical_record(entry.customer_id, x, at, "invalid_answer")
    return fallback.model_copy(update={"input_tokens": tin, "output_tokens": tout,
                                       "cost_usd": cost, "attempts": 1})


async def _output_lines(s3: Any, job: BatchJob) -> list[str]:
    bucket, prefix = split_s3_uri(job.output_uri)
    lines: list[str] = []
    paginator = s3.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(f"/{job.input_name}.out") or obj["Key"] == (
                    f"{job.input_name}.out"):
                data = await _read(s3, bucket, obj["Key"])
                lines += [ln for ln in data.decode("utf-8", "replace").splitlines()
                          if ln.strip()]
    return lines


async def read_answers(config: BatchConfig, s3: Any, job: BatchJob, now: datetime,
                       ) -> tuple[list[AnalysisRecord], list[str]]:
    """One analysis per record of the job, and what was wrong with the output lines."""
    prices, problems = config.prices, []
    seen: dict[str, OutputLine] = {}
    for n, text in enumerate(await _output_lines(s3, job), 1):
        line = parse_output_line(text)
        if line.record_id is None or line.record_id not in job.entries:
            problems.append(f"line {n}: {line.error or 'unknown record ' + repr(line.record_id)}")
        elif line.record_id in seen:
            problems.append(f"line {n}: record {line.record_id} answered twice; the first kept")
        else:
            seen[line.record_id] = line
            if line.error:
                problems.append(f"line {n} ({line.record_id}): {line.error}")
    factor = config.price_factor
    records = [
        analysis_of(entry, seen[rid], prices, job.model_id, factor, now) if rid in seen
        else statistical_record(entry.customer_id, entry.input, now, "batch_missing")
        for rid, entry in sorted(job.entries.items())
    ]
    return records, problems


async def _count(config: BatchConfig, store: AnalysisStore, records: list[AnalysisRecord],
                 now: datetime, where: str | None = None) -> dict[str, Any]:
    """Add the job to the day's usage counters, in one update (``where``: the job's
    endpoint when not AWS's, added to the day's ``endpoints``)."""
    reasons = Counter(r.fallback_reason for r in records if r.fallback_reason)
    billed = [r for r in records if r.attempts]
    spend = micros(sum(r.cost_usd for r in records))
    await UsageLedger(store.db, config.usage_table).add(now.date().isoformat(), {
        "calls": len(billed), "batch_records": len(billed),
        "input_tokens": sum(r.input_tokens for r in records),
        "output_tokens": sum(r.output_tokens for r in records),
        "spend_micros": spend, "committed_micros": spend,
        "failed_analyses": reasons["invalid_answer"], "analyses": len(records),
        "source_bedrock": sum(r.source == "bedrock" for r in records),
        "source_statistical": sum(r.source == "statistical" for r in records),
        "fallbacks": sum(reasons.values()),
        **{f"fallback_{k}": v for k, v in reasons.items()}}, endpoint=where)
    return {"cost_usd": spend / 1e6, "bedrock": sum(r.source == "bedrock" for r in records),
            "fallbacks": dict(sorted(reasons.items()))}


async def ingest(config: BatchConfig, store: AnalysisStore, s3: Any, bedrock: Any,
                 job: BatchJob, now: datetime) -> dict[str, Any]:
    """Ingest an ended job; a job still running is reported (``ingested`` false)."""
    if job.job_arn is None:
        raise IngestRefused(f"job {job.name} was never submitted: {job.submit_error}")
    described = await bedrock.get_model_invocation_job(jobIdentifier=job.job_arn)
    status = str(described["status"])
    # a job described by something other than AWS (the local test server) ran no model
    where = endpoint(bedrock, described.get("ResponseMetadata", {}).get("HTTPHeaders"))
    report: dict[str, Any] = {"job": job.name, "job_arn": job.job_arn, "status": status,
                              "records": len(job.entries), "ingested": False}
    if status not in ENDED:
        return report
    bucket, record_key = split_s3_uri(job.record_uri)
    marker = record_key.removesuffix(".json") + ".ingested.json"
    try:
        await s3.put_object(Bucket=bucket, Key=marker, IfNoneMatch="*",
                            Body=json.dumps({"claimed_at": now.isoformat()}).encode())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            raise IngestRefused(f"job {job.name} was ingested already (or is being ingested): "
                                f"s3://{bucket}/{marker}") from None
        raise
    try:
        records, problems = await read_answers(config, s3, job, now)
        if where:
            records = [r.model_copy(update={"endpoint": where}) if r.attempts else r
                       for r in records]
        stored: Counter[str] = Counter()
        errors = await store_all(store, records, input_at=job.created_at, outcomes=stored)
        report.update(await _count(config, store, records, now, where))
    except BaseException:  # nothing counted: free the claim, so the job can be ingested again
        with contextlib.suppress(Exception):
            await s3.delete_object(Bucket=bucket, Key=marker)
        raise
    # superseded: an analysis of a later state was stored meanwhile (kept in the history
    # only); erased: the customer was erased after the job was created (stored nowhere)
    report.update(ingested=True, analyses=len(records) - len(errors),
                  superseded=stored["superseded"], erased=stored["erased"],
                  problems=problems[:50], write_errors=errors[:50])
    await s3.put_object(Bucket=bucket, Key=marker, Body=json.dumps(
        {**report, "claimed_at": now.isoformat()}).encode())
    return report
