"""Erasure of one customer (``caa erase``), everywhere we keep them.

Two halves, so no order of events can bring the customer back:

1. an :class:`~models.events.ErasureEvent` goes on the stream under the customer's
   partition key. The consumer (the single writer of states) applies it in order with
   the customer's purchases: it drops any state it holds in memory and deletes the
   state and the prediction, so a write from a stale cache cannot resurrect them, and
   the analyses and the dead letters of the customer's records before it (those it
   writes after step 2 ran, lagging behind);
2. this module deletes directly what the consumer does not own or may not reach soon:
   the state and prediction (for an answer now, even with no consumer running), the
   latest analysis (the analysis cache), the analysis history and the dead letters
   published under the customer's key. The latest analysis becomes a tombstone for two
   weeks, so an analysis of the erased state that lands later (a daily batch job created
   before the erasure, a Bedrock call in flight) is stored nowhere
   (:mod:`consumers.stores.analyses`).

Then it writes an audit entry with no personal data: a random request id (for the
ticket), the time, how many items each table lost, and the erasure event's position.
Events published after the erasure make a new customer; a backfill that replays
history from before it must leave the customer out (``caa replay`` reads files).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.stores.analyses import AnalysisStore
from consumers.stores.audit import AuditEntry, AuditLog
from consumers.stores.customers import CustomerStore
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from models.events import ErasureEvent


@dataclass(frozen=True)
class ErasureTargets:
    """Where a customer is kept: the stream their events go on, and the tables."""

    stream_name: str
    customers: str
    predictions: str
    analyses: str
    analysis_history: str
    dead_letters: str
    audit: str


@dataclass
class ErasureReport:
    request_id: str
    at: str
    sequence_number: str
    deleted: dict[str, int] = field(default_factory=dict)

    def audit_entry(self) -> AuditEntry:
        return AuditEntry(self.request_id, "erase", self.at, self.sequence_number, self.deleted)


async def erase_letters(targets: ErasureTargets, db: Dynamo, partition_key: str,
                        now: datetime | None = None) -> ErasureReport:
    """Erase the dead letters of a partition key no event can carry as its customer id
    (``Ünï``, ``jane+shop@example.com``: every record under it is refused, its payload
    kept in a letter). Nothing else can hold it: no state, prediction or analysis, and no
    erasure event can name it (its ``sequence_number`` is empty). Audited like
    :func:`erase`."""
    at = now or datetime.now(UTC)
    letters = await DeadLetterStore(db, targets.dead_letters).erase(partition_key)
    report = ErasureReport(uuid.uuid4().hex, at.isoformat(timespec="seconds"), "",
                           {"dead-letters": letters})
    await AuditLog(db, targets.audit).record(report.audit_entry())
    return report


async def erase(targets: ErasureTargets, kinesis: Any, db: Dynamo, customer_id: str,
                now: datetime | None = None) -> ErasureReport:
    """Erase ``customer_id``; returns what was deleted (the audit entry)."""
    t = targets
    at = now or datetime.now(UTC)
    request_id = uuid.uuid4().hex
    event = ErasureEvent(type="erasure", event_id=f"erase-{request_id}",
                         customer_id=customer_id, occurred_at=at)
    put = await kinesis.put_record(StreamName=t.stream_name, Data=event.to_bytes(),
                                   PartitionKey=customer_id)
    states, predictions, (latest, history), letters = await asyncio.gather(
        CustomerStore(db, t.customers).erase(customer_id),
        PredictionStore(db, t.predictions).erase(customer_id),
        AnalysisStore(db, t.analyses, t.analysis_history, t.predictions).erase(customer_id, at),
        DeadLetterStore(db, t.dead_letters).erase(customer_id))
    deleted = {"customers": states, "predictions": predictions, "analyses": latest,
               "analysis-history": history, "dead-letters": letters}
    report = ErasureReport(request_id, at.isoformat(timespec="seconds"), put["SequenceNumber"],
                           deleted)
    await AuditLog(db, t.audit).record(report.audit_entry())
    return report
