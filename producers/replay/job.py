"""A replay job's progress and lock, in the checkpoints table.

One item (group ``replay:<name>``, shard_id ``__job__``) holds what the job replays (a
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
from typing import Any, Literal

from consumers.sources.lease import GroupBusy, GroupLease
from consumers.stores.dynamo import Dynamo, Item, now_iso
from producers.replay.sources import Cursor

JOB_ROW = "__job__"
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

    def to_item(self, group: str) -> Item:
        item: Item = {
            "group": {"S": group}, "shard_id": {"S": JOB_ROW}, "ended": {"BOOL": False},
            "job": {"S": self.name}, "identity": {"S": self.identity},
            "summary": {"S": self.summary}, "created_at": {"N": repr(self.created_at)},
            "status": {"S": self.status}, "rejected_bytes": {"N": str(self.rejected_bytes)},
            "tallies": {"S": json.dumps(self.tallies, separators=(",", ":"))},
            "updated_at": {"S": now_iso()},
        }
        if self.cursor is not None:
            item["cursor_part"] = {"S": self.cursor.part}
            item["cursor_position"] = {"S": self.cursor.position}
        return item

    @classmethod
    def from_item(cls, item: Item) -> JobState:
        cursor = (Cursor(item["cursor_part"]["S"], item["cursor_position"]["S"])
                  if "cursor_part" in item else None)
        status = item["status"]["S"]
        if status not in ("running", "finishing", "complete"):
            raise ValueError(f"unknown job status {status!r}")
        return cls(item["job"]["S"], float(item["created_at"]["N"]), item["identity"]["S"],
                   item["summary"]["S"], status, cursor, json.loads(item["tallies"]["S"]),
                   int(item["rejected_bytes"]["N"]))


class ReplayJob:
    def __init__(self, db: Dynamo, table: str, name: str, owner: str) -> None:
        self.db = db
        self.table = table
        self.name = name
        self.group = f"replay:{name}"
        self.lease = GroupLease(db, table, self.group, owner)

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
        resp = await self.db.client.get_item(
            TableName=self.table, Key={"group": {"S": self.group}, "shard_id": {"S": JOB_ROW}},
            ConsistentRead=True)
        item = resp.get("Item")
        return JobState.from_item(item) if item else None

    async def save(self, state: JobState) -> None:
        await self.db.client.put_item(TableName=self.table, Item=state.to_item(self.group))
