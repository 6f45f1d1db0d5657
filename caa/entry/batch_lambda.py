"""The daily batch function's handler, ``caa.entry.batch_lambda.handler``
(deploy/template.yaml: ``BatchFunction``). Three events reach it:

- the schedule's input (``BatchSchedule``, EventBridge Scheduler, daily by default):
  ``{"job": "batch", "active_since": "1d", ...}`` runs the daily batch
  (:func:`caa.daily_batch.run_batch`) over the customers active within that span (``1d``
  when absent): their predictions rewritten, their analyses submitted as a Bedrock batch
  inference job (the job's record and input in ``CAA_BATCH_BUCKET``);
- Bedrock's "Batch Inference Job State Change" event (``BatchJobStateRule``, an EventBridge
  rule on ``source`` ``aws.bedrock``), ``detail.batchJobArn`` and ``detail.status``: a job
  that ended (``Completed``, ``PartiallyCompleted``, ``Failed``, ``Stopped``, ``Expired``) is
  ingested (:func:`caa.daily_batch.run_ingest`: every record's analysis stored, the spend
  counted). A job that failed, expired or was stopped part way has been billed for the
  records it answered: those answers are stored and their spend counts against the day's
  budget, and every other record gets its statistical analysis (``batch_missing``) at once
  instead of none. Any other status is skipped, nothing written;
- by hand: ``{"job": "ingest", "job_id": "<name, id or ARN>"}`` ingests that job whatever
  the event said.

It returns, and logs as one JSON line, a summary with ``job`` (``batch`` or ``ingest``) and
``status``: ``submitted``, ``not_submitted`` (too few records, or nobody active),
``submit_failed`` (the job record keeps Bedrock's refusal), ``ingested``, ``running`` (the
job has not ended: GetModelInvocationJob is asked, not the event), ``refused`` (an unknown
job, e.g. another stack's, or one ingested already) or ``skipped``. The pseudonym key the
prompts need is read from ``CAA_PSEUDONYM_KEY_PARAMETER`` (caa/secrets.py) for the batch only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from caa import secrets
from caa.aws import Aws
from caa.daily_batch import missing_settings, run_batch, run_ingest
from caa.errors import BadInput
from caa.settings import Settings
from consumers.analysis.daily.ingest import ENDED, IngestRefused
from models.daily_job import parse_since

#: what the EventBridge rule matches (deploy/template.yaml: BatchJobStateRule)
EVENT_SOURCE = "aws.bedrock"
DETAIL_TYPE = "Batch Inference Job State Change"
#: job states whose answers the event path ingests: every ended one (a failed, expired or
#: stopped job was billed for what it answered); the others are skipped
INGESTED_STATES = ENDED
DEFAULT_SPAN = "1d"


def _settings(*, pseudonyms: bool) -> Settings:
    s = Settings()
    missing = missing_settings(s) if pseudonyms else (
        [] if s.batch_bucket else ["CAA_BATCH_BUCKET"])
    if missing:
        raise BadInput(f"the batch function needs {' and '.join(missing)}")
    # the prompts are pseudonymised with the key every function shares (caa/secrets.py)
    return secrets.resolve(s) if pseudonyms else s


def batch(event: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The scheduled daily batch over ``event["active_since"]`` (default 1d)."""
    span = str(event.get("active_since") or DEFAULT_SPAN)
    since = parse_since(span)  # ValueError on a malformed schedule input: fix the template
    s, now = _settings(pseudonyms=True), now or datetime.now(UTC)
    out = asyncio.run(run_batch(s, Aws(s, quiet=True), now - since, now=now))
    job = out.get("analysis", {}).get("job")
    if isinstance(job, dict):
        status = "submit_failed" if job.get("submit_error") else "submitted"
    else:
        status = "not_submitted"
    return {"job": "batch", "status": status, "span": span,
            "scheduled_time": event.get("scheduled_time") or event.get("time"), **out}


def ingest(ident: str, trigger: str, now: datetime | None = None) -> dict[str, Any]:
    """Ingest the job ``ident``; an unknown or already ingested job is ``refused``."""
    s = _settings(pseudonyms=False)
    summary: dict[str, Any] = {"job": "ingest", "trigger": trigger, "job_id": ident}
    try:
        report = asyncio.run(run_ingest(s, Aws(s, quiet=True), ident, now=now))
    except IngestRefused as exc:  # nothing a retry would change
        return {**summary, "status": "refused", "reason": str(exc)}
    status = "ingested" if report.get("ingested") else "running"
    # the report's job (its name) and status (Bedrock's) under names of their own
    return {**summary, "status": status, "job_name": report.pop("job", None),
            "job_status": report.pop("status", None), **report}


def state_change(event: Mapping[str, Any]) -> dict[str, Any]:
    """Bedrock's job state change: ingest an ended job; skip any other status."""
    detail = event.get("detail") or {}
    arn, status = str(detail.get("batchJobArn") or ""), str(detail.get("status") or "")
    if not arn:
        raise BadInput(f"a {DETAIL_TYPE!r} event without detail.batchJobArn")
    if status not in INGESTED_STATES:
        return {"job": "ingest", "trigger": "event", "job_id": arn, "status": "skipped",
                "job_status": status, "job_name": detail.get("batchJobName"),
                "reason": f"the job is {status or 'of no status'}: only "
                          f"{' or '.join(sorted(INGESTED_STATES))} jobs are ingested"}
    return ingest(arn, "event")


def route(event: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of one event (see the module's docstring)."""
    if event.get("source") == EVENT_SOURCE and event.get("detail-type") == DETAIL_TYPE:
        return state_change(event)
    job = event.get("job")
    if job == "batch":
        return batch(event)
    if job == "ingest":
        ident = str(event.get("job_id") or "")
        if not ident:
            raise BadInput('{"job": "ingest"} needs "job_id": the job\'s name, id or ARN')
        return ingest(ident, "manual")
    raise BadInput(f"not an event of the batch function: job={job!r}, "
                   f"source={event.get('source')!r}, detail-type={event.get('detail-type')!r}")


def handler(event: Mapping[str, Any] | None, context: Any = None) -> dict[str, Any]:
    """Entry point of the batch function (the schedule's and the EventBridge rule's target)."""
    summary = route(event if isinstance(event, Mapping) else {})
    print(json.dumps(summary, default=str))  # one line in the function's log
    return summary
