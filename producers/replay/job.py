"""A replay job's progress and lock, in the checkpoints table.

One row of the checkpoints table (group ``replay:<name>``, shard_id ``__job__``; its
layout is :class:`consumers.stores.checkpoints.JobRow`) holds what the job replays (a
digest of the source's identity and the target, and a line for people), when it
started (the bound of its S3 and stream sources), its cursor, its status and its
tallies. It is written only after the target acknowledged a chunk, so a job resumed
after a crash or a kill sends at most the chunk that was in flight again, and the
consumer's event-id digests count that once. The tallies ride in the same write, so
the job's counts stay exact across any number of interruptions.

The lock is a :class:`~consumers.sources.lease.GroupLease` on the group ``replay:<name>``: a
second run of the same job while one is alive is refused, and a killed run's lock is
taken over at once on the same host (or when it expires, 30 s later, elsewhere).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from consumers.sources.lease import GroupBusy, GroupLease
from consumers.stores.checkpoints import CheckpointStore, JobRow
from consumers.stores.dynamo import Dynamo
from producers.replay.sources import Cursor

Status = Literal["running", "finishing", "complete"]


class JobMismatch(RuntimeError):
    """A job name already used for another source or target."""


def digest(identity: dict[str, Any], target: str) -> str:
    body = json.dumps({"source": identity, "target": target}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass
class JobState:
    name: str
    created_at: float  # epoch seconds; S3 and stream sources end there
    identity: str = ""  # digest(source identity, target)
    summary: str = ""
    status: Status = "running"
    cursor: Cursor | None = None
    tallies: dict[str, Any] = field(default_factory=dict)
    rejected_bytes: int = 0  # length of the rejected-records log at the last commit

    def to_row(self) -> JobRow:
        cursor = (self.cursor.part, self.cursor.position) if self.cursor is not None else None
        return JobRow(self.name, self.created_at, self.identity, self.summary, self.status,
                      cursor, self.tallies, self.rejected_bytes)

    @classmethod
    def from_row(cls, row: JobRow) -> JobState:
        if row.status not in ("running", "finishing", "complete"):
            raise ValueError(f"unknown job status {row.status!r}")
        cursor = Cursor(*row.cursor) if row.cursor is not None else None
        return cls(row.name, row.created_at, row.identity, row.summary,
                   cast(Status, row.status), cursor,
                   row.tallies, row.rejected_bytes)


class ReplayJob:
    def __init__(self, db: Dynamo, table: str, name: str, owner: str) -> None:
        self.db = db
        self.table = table
        self.name = name
        self.group = f"replay:{name}"
        self.lease = GroupLease(db, table, self.group, owner)
        self.rows = CheckpointStore(db, table, self.group)

    async def lock(self, now: float) -> None:
        """Take or renew the lock; :class:`~consumers.sources.lease.GroupBusy` when another live
        run holds it."""
        try:
            await self.lease.acquire(now)
        except GroupBusy:
            raise GroupBusy(f"replay job {self.name!r} is running in another live process; "
                            "wait for it, or stop it (a stopped run's lock is taken over "
                            f"at once on this host, else {self.lease.ttl_s:.0f} s after it "
                            "stopped)") from None

    async def unlock(self) -> None:
        await self.lease.release()

    async def load(self) -> JobState | None:
        row = await self.rows.job()
        return JobState.from_row(row) if row else None

    async def save(self, state: JobState) -> None:
        await self.rows.save_job(state.to_row())
