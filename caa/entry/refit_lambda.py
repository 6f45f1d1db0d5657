"""The scheduled refit function's handler, ``caa.entry.refit_lambda.handler``
(deploy/template.yaml: ``RefitFunction``, invoked by the EventBridge Scheduler schedule
``RefitSchedule`` at the rate of the ``RefitScheduleExpression`` parameter).

Each invocation runs one refit (:func:`consumers.refit.refit`: both models over the whole
customers table, every prediction rewritten keeping its analysis) under the refit lock
(:func:`consumers.refit.locked_refit`): when another refit holds it (a slow previous run, a
local ``caa consume``) this one is skipped and says so. It returns, and logs as one JSON
line, a summary: ``status`` (``refitted``, ``skipped`` or ``empty``: no customer yet) and
the new versions, or the holder and the reason.

The event is the schedule's input (``{"job": "refit", "scheduled_time": ...}``); an
EventBridge rule's "Scheduled Event" and a direct invocation with ``{}`` work too, and
``{"rewrite": false}`` refits the models without rewriting the predictions.

**When due.** The deployed schedule runs often (every 5 minutes) with ``"when_due": true``:
the function then refits only when a worker asked for it (drift seen by a stream consumer:
:meth:`~consumers.registry.ModelRegistry.request_refit`, its reason kept in every
prediction's ``refit_reason``) or the last refit is ``CAA_REFIT_INTERVAL_S`` old, and else
answers ``not_due`` after two reads. A direct invocation always refits (``reason`` in the
event names why, default "on request").

With ``CAA_ANALYSIS_QUEUE`` the refit then sends a scheduled re-analysis request (due at once)
for every customer active within ``CAA_ANALYSIS_ACTIVE_DAYS``; the analyzer function takes
them (a purchase since supersedes one; the change-aware cache skips the unchanged).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from caa import wiring
from caa.settings import Settings
from consumers.refit import (
    REFIT_GROUP,
    KeptAnalyses,
    RefitSkipped,
    locked_refit,
    refit,
    refit_lock,
)
from consumers.registry import REFIT_REQUEST, ModelRegistry
from consumers.stores.checkpoints import CheckpointStore


async def run(settings: Settings, event: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """One refit under the refit lock, held as ``owner``; the summary."""
    rewrite = bool(event.get("rewrite", True))
    summary: dict[str, Any] = {
        "job": "refit", "owner": owner,
        "scheduled_time": event.get("scheduled_time") or event.get("time"),
    }
    async with AsyncExitStack() as stack:
        applier = await wiring.open_applier(settings, stack)  # the models loaded
        registry = applier.registry
        reason = str(event.get("reason") or "on request")
        request = await registry.refit_requested()
        if event.get("when_due"):  # the schedule's check: a drift request, or the interval
            due = await _due(settings, registry, request)
            if due is None:
                summary.update(status="not_due", reason=(
                    f"no refit requested and the last one is under "
                    f"{settings.refit_interval_s:g} s old (CAA_REFIT_INTERVAL_S)"))
                return summary
            reason = due
        elif request is not None:
            reason = f"{reason} ({request.get('reason')} was pending)"
        db = applier.customers.db
        lock = refit_lock(CheckpointStore(db, wiring.tables(settings).checkpoints, REFIT_GROUP),
                          owner)
        outcome = await locked_refit(lock, lambda: refit(
            applier.customers, applier.predictions, applier.registry, rewrite=rewrite,
            enricher=KeptAnalyses(wiring.analysis_store(settings, db)),
            # with CAA_ANALYSIS_QUEUE: the scheduled re-analysis of the recently active
            # customers, as durable requests the analyzer function takes
            active_days=settings.analysis_active_days if applier.requests else 0,
            requests=applier.requests, reason=reason))
        if request is not None and not isinstance(outcome, RefitSkipped):
            await registry.store.delete(REFIT_REQUEST)  # answered
    summary["refit_reason"] = reason
    if isinstance(outcome, RefitSkipped):
        summary.update(status="skipped", holder=outcome.holder, reason=outcome.reason)
    elif outcome is None:
        summary.update(status="empty", reason="no customer with a purchase yet")
    else:
        summary.update(
            status="refitted", forecast_model=outcome.forecast_model,
            forecast_params=outcome.params.to_dict(),
            forecast_version=outcome.forecast_version,
            segments_version=outcome.segments_version, segment_sizes=outcome.segment_sizes,
            customers=outcome.customers, purchases=outcome.purchases,
            as_of=outcome.as_of.isoformat(), predictions_rewritten=outcome.predictions_rewritten,
            seconds=round(outcome.seconds, 2))
    return summary


async def _due(settings: Settings, registry: ModelRegistry,
               request: Mapping[str, Any] | None) -> str | None:
    """Why the scheduled check should refit now (a pending drift request, the interval
    passed, never refitted), or None."""
    if request is not None:
        return str(request.get("reason") or "requested")
    last = await registry.last_fitted_at()
    if last is None:
        return "schedule: never refitted"
    if time.time() - last >= settings.refit_interval_s:
        return "schedule"
    return None


def handler(event: Mapping[str, Any] | None, context: Any = None) -> dict[str, Any]:
    """Entry point of the refit function (an EventBridge Scheduler schedule's target)."""
    request = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
    # never "host:pid:...": a holder is only taken over by its own host's live-process check
    owner = f"lambda/{request}"
    summary = asyncio.run(run(Settings(), event if isinstance(event, Mapping) else {}, owner))
    print(json.dumps(summary, default=str))  # one line in the function's log
    return summary
