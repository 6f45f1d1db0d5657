"""The checkpoints table (keys ``group``, ``shard_id``): every row belongs to a group, and
there are three kinds of row, all laid out in this module.

* a **shard checkpoint** (:class:`Checkpoint`; ``shard_id`` = a Kinesis shard id): how
  far a consumer group has processed that shard (``sequence_number``, absent before the
  first record) and whether the shard is read to its end (``ended``). Written by the
  poller after a batch's effects (:class:`CheckpointStore`), and **never backwards**: the
  put is conditional on the stored sequence number being at most the new one, compared
  as numbers (sequence numbers are decimal strings below 2**128 without leading zeros,
  so a shorter one is smaller and equal lengths compare as text; rows written before
  this rule are compared the same way). A refused checkpoint (another worker is ahead)
  is not an error: :meth:`CheckpointStore.save` returns False and counts it. A store that
  knows its stream writes it in ``stream`` and refuses to read a group whose checkpoints
  are another stream's (:class:`OtherStream`: shard ids repeat from stream to stream, so
  another stream's sequence numbers would silently skip this one's records); rows written
  before they carried it are taken as this stream's and tagged with it when first read
  (also an ended parent's or an idle shard's, which are never written again).
* the group's **lease** (:class:`Lease`; ``shard_id`` = :data:`OWNER_KEY`): which worker
  holds the group (``owner``, ``host:pid:token``) and until when (``expires``, epoch
  seconds). Taken, renewed and released with conditional writes by
  :class:`consumers.sources.lease.GroupLease` (a replay job's lock is such a lease too, on
  the group ``replay:<name>``).
* a replay job's **row** (:class:`JobRow`; group ``replay:<name>``, ``shard_id`` =
  :data:`JOB_ROW`): what the job replays (``identity``, ``summary``), when it started
  (``created_at``), its cursor (``cursor_part``, ``cursor_position``), ``status``,
  ``tallies`` (JSON) and ``rejected_bytes`` (:mod:`producers.replay.job`).

Every row also carries ``ended`` (always false on the lease and job rows) and
``updated_at``; the lease and job rows are never shard checkpoints
(:meth:`CheckpointStore.all` leaves them out).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from consumers.stores.dynamo import Dynamo, Item, Rejection, WriteRejected, now_iso

#: the ``shard_id`` of the row that holds the consumer group's lease
OWNER_KEY = "__owner__"
#: the ``shard_id`` of a replay job's row
JOB_ROW = "__job__"

RowKind = Literal["checkpoint", "lease", "job"]


class OtherStream(ValueError):
    """The consumer group's checkpoints belong to another stream (one group reads one
    stream; two streams sharing the tables need a group each)."""


@dataclass(frozen=True)
class Checkpoint:
    """How far a consumer group has processed one shard."""

    shard_id: str
    sequence_number: str | None
    ended: bool


@dataclass(frozen=True)
class Lease:
    """Who holds a group, and until when (epoch seconds)."""

    owner: str
    expires: float


@dataclass(frozen=True)
class JobRow:
    """A replay job's progress as stored; :class:`producers.replay.job.JobState` is the
    job's own view of it (it checks ``status`` and turns ``cursor`` into a ``Cursor``)."""

    name: str
    created_at: float
    identity: str
    summary: str
    status: str
    cursor: tuple[str, str] | None  # (part, position)
    tallies: dict[str, Any]
    rejected_bytes: int


def row_key(group: str, shard_id: str) -> Item:
    return {"group": {"S": group}, "shard_id": {"S": shard_id}}


def row_kind(item: Item) -> RowKind:
    shard_id = item["shard_id"]["S"]
    return "lease" if shard_id == OWNER_KEY else "job" if shard_id == JOB_ROW else "checkpoint"


def checkpoint_item(group: str, cp: Checkpoint, stream: str | None = None) -> Item:
    item: Item = {**row_key(group, cp.shard_id), "ended": {"BOOL": cp.ended},
                  "updated_at": {"S": now_iso()}}
    if cp.sequence_number is not None:
        item["sequence_number"] = {"S": cp.sequence_number}
    if stream:
        item["stream"] = {"S": stream}
    return item


def checkpoint_from_item(item: Item) -> Checkpoint:
    return Checkpoint(item["shard_id"]["S"], item.get("sequence_number", {}).get("S"),
                      item["ended"]["BOOL"])


def lease_item(group: str, lease: Lease) -> Item:
    return {**row_key(group, OWNER_KEY), "owner": {"S": lease.owner}, "ended": {"BOOL": False},
            "expires": {"N": repr(lease.expires)}, "updated_at": {"S": now_iso()}}


def lease_from_item(item: Item) -> Lease:
    return Lease(item["owner"]["S"], float(item.get("expires", {}).get("N", "0")))


def job_item(group: str, job: JobRow) -> Item:
    item: Item = {
        **row_key(group, JOB_ROW), "ended": {"BOOL": False},
        "job": {"S": job.name}, "identity": {"S": job.identity},
        "summary": {"S": job.summary}, "created_at": {"N": repr(job.created_at)},
        "status": {"S": job.status}, "rejected_bytes": {"N": str(job.rejected_bytes)},
        "tallies": {"S": json.dumps(job.tallies, separators=(",", ":"))},
        "updated_at": {"S": now_iso()},
    }
    if job.cursor is not None:
        item["cursor_part"] = {"S": job.cursor[0]}
        item["cursor_position"] = {"S": job.cursor[1]}
    return item


def job_from_item(item: Item) -> JobRow:
    cursor = ((item["cursor_part"]["S"], item["cursor_position"]["S"])
              if "cursor_part" in item else None)
    return JobRow(item["job"]["S"], float(item["created_at"]["N"]), item["identity"]["S"],
                  item["summary"]["S"], item["status"]["S"], cursor,
                  json.loads(item["tallies"]["S"]), int(item["rejected_bytes"]["N"]))


#: the condition of a shard checkpoint: nothing stored yet, or a sequence number not above
#: the new one (``:n`` its length, ``:s`` itself)
FORWARD_ONLY = ("attribute_not_exists(sequence_number) OR size(sequence_number) < :n OR "
                "(size(sequence_number) = :n AND sequence_number <= :s)")


@dataclass
class CheckpointStore:
    """The rows of one group: its shard checkpoints, its lease and (for a replay job's
    group) the job's row."""

    db: Dynamo
    table: str
    group: str
    #: the stream the group reads (None: not checked, not written)
    stream: str | None = None
    #: checkpoints refused because the stored one was further along
    refused: int = 0

    async def all(self) -> dict[str, Checkpoint]:
        """The group's shard checkpoints by shard id (not its lease or job row).
        :class:`OtherStream` when one of them is another stream's."""
        resp_items: list[Item] = []
        args: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#g = :g",
            "ExpressionAttributeNames": {"#g": "group"},
            "ExpressionAttributeValues": {":g": {"S": self.group}},
            "ConsistentRead": True,
        }
        while True:
            resp = await self.db.client.query(**args)
            resp_items.extend(resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                break
            args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        rows = [i for i in resp_items if row_kind(i) == "checkpoint"]
        other = {i["stream"]["S"] for i in rows if "stream" in i} - {self.stream or ""}
        if self.stream and other:
            raise OtherStream(
                f"consumer group {self.group!r} holds the checkpoints of stream "
                f"{sorted(other)[0]!r}, not of {self.stream!r} (shard ids repeat from stream "
                "to stream: reading on would skip records): give each stream its own "
                "CAA_CONSUMER_GROUP")
        untagged = [i for i in rows if "stream" not in i]
        if self.stream and untagged:
            await self._adopt(untagged)
        return {cp.shard_id: cp for cp in map(checkpoint_from_item, rows)}

    async def _adopt(self, rows: list[Item]) -> None:
        """Tag checkpoints written before they named their stream with this one (unless
        another writer tagged them first)."""
        client = self.db.client
        for item in rows:
            try:
                await client.update_item(
                    TableName=self.table, Key=row_key(self.group, item["shard_id"]["S"]),
                    UpdateExpression="SET #st = :s", ConditionExpression=(
                        "attribute_exists(#g) AND attribute_not_exists(#st)"),
                    ExpressionAttributeNames={"#st": "stream", "#g": "group"},
                    ExpressionAttributeValues={":s": {"S": str(self.stream)}})
            except client.exceptions.ConditionalCheckFailedException:
                continue

    async def save(self, shard_id: str, sequence_number: str | None, ended: bool = False) -> bool:
        """Checkpoint ``shard_id`` at ``sequence_number`` (None: before the first record,
        only written while nothing is stored). False, counted in :attr:`refused`, when the
        stored checkpoint is further along (another worker is ahead); the same number again
        is accepted (to mark the shard ended)."""
        item = checkpoint_item(self.group, Checkpoint(shard_id, sequence_number, ended),
                               self.stream)
        if sequence_number is None:
            answer = await self.db.put_if(self.table, item,
                                          "attribute_not_exists(sequence_number)")
        else:
            answer = await self.db.put_if(
                self.table, item, FORWARD_ONLY,
                values={":n": {"N": str(len(sequence_number))}, ":s": {"S": sequence_number}})
        if isinstance(answer, Rejection):
            raise WriteRejected(self.table, [answer])
        if answer == "conflict":
            self.refused += 1
            return False
        return True

    async def _get(self, shard_id: str) -> Item | None:
        resp = await self.db.client.get_item(TableName=self.table,
                                             Key=row_key(self.group, shard_id),
                                             ConsistentRead=True)
        item: Item | None = resp.get("Item")
        return item

    async def lease(self) -> Lease | None:
        """The group's lease as stored (possibly expired), or None when nobody holds it."""
        item = await self._get(OWNER_KEY)
        return lease_from_item(item) if item else None

    async def claim_lease(self, lease: Lease, now: float) -> bool:
        """Write ``lease`` if the group is free at ``now``: no lease, an expired one, or one
        already held by ``lease.owner``. False when someone else holds it."""
        client = self.db.client
        try:
            await client.put_item(
                TableName=self.table, Item=lease_item(self.group, lease),
                ConditionExpression="attribute_not_exists(#o) OR #o = :me OR #e < :now",
                ExpressionAttributeNames={"#o": "owner", "#e": "expires"},
                ExpressionAttributeValues={":me": {"S": lease.owner}, ":now": {"N": repr(now)}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    async def replace_lease(self, lease: Lease, holder: str) -> bool:
        """Write ``lease`` only if ``holder`` still holds the group (False: someone else
        took it first)."""
        client = self.db.client
        try:
            await client.put_item(
                TableName=self.table, Item=lease_item(self.group, lease),
                ConditionExpression="#o = :dead",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":dead": {"S": holder}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    async def release_lease(self, owner: str) -> bool:
        """Delete the lease if ``owner`` holds it; False when it does not (taken over after
        expiry, or already gone): then there is nothing of theirs to release."""
        client = self.db.client
        try:
            await client.delete_item(
                TableName=self.table, Key=row_key(self.group, OWNER_KEY),
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": owner}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    async def job(self) -> JobRow | None:
        """The replay job's row of this group (``replay:<name>``), if it was ever saved."""
        item = await self._get(JOB_ROW)
        return job_from_item(item) if item else None

    async def save_job(self, job: JobRow) -> None:
        await self.db.client.put_item(TableName=self.table, Item=job_item(self.group, job))
