"""The consumer group's lease: one live local poller per consumer group."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

from consumers.stores.checkpoints import OWNER_KEY
from consumers.stores.dynamo import Dynamo, now_iso


class GroupBusy(RuntimeError):
    """Another live worker holds this consumer group's lease."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class GroupLease:
    """One live local poller per consumer group: a lease item in the checkpoints table.

    State writes are unconditional batch writes, correct only with one writer per
    shard; the local poller reads every shard, so it takes the whole group. The lease
    is taken with a conditional put (absent, expired, or already ours), renewed while
    running and released on exit; a second poller fails fast with :class:`GroupBusy`.
    """

    db: Dynamo
    table: str
    group: str
    owner: str
    ttl_s: float = 30.0

    async def acquire(self, now: float) -> None:
        try:
            await self.db.client.put_item(
                TableName=self.table,
                Item={"group": {"S": self.group}, "shard_id": {"S": OWNER_KEY},
                      "owner": {"S": self.owner}, "ended": {"BOOL": False},
                      "expires": {"N": repr(now + self.ttl_s)}, "updated_at": {"S": now_iso()}},
                ConditionExpression="attribute_not_exists(#o) OR #o = :me OR #e < :now",
                ExpressionAttributeNames={"#o": "owner", "#e": "expires"},
                ExpressionAttributeValues={":me": {"S": self.owner}, ":now": {"N": repr(now)}},
            )
        except self.db.client.exceptions.ConditionalCheckFailedException:
            if await self._take_over_dead_holder(now):
                return
            raise GroupBusy(
                f"consumer group {self.group!r} is held by another live worker; stop it or "
                f"use another CAA_CONSUMER_GROUP (the lease expires {self.ttl_s:.0f} s after "
                "its holder stops renewing it)"
            ) from None

    async def _take_over_dead_holder(self, now: float) -> bool:
        """A holder on this host whose process is gone (killed) cannot renew: take its
        lease now instead of waiting for it to expire. Holders elsewhere are left alone."""
        item = (await self.db.client.get_item(
            TableName=self.table, Key={"group": {"S": self.group}, "shard_id": {"S": OWNER_KEY}},
            ConsistentRead=True,
        )).get("Item")
        holder = item["owner"]["S"] if item else ""
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host != self.owner.partition(":")[0] or not pid.isdigit() or _alive(int(pid)):
            return False
        try:
            await self.db.client.put_item(
                TableName=self.table,
                Item={"group": {"S": self.group}, "shard_id": {"S": OWNER_KEY},
                      "owner": {"S": self.owner}, "ended": {"BOOL": False},
                      "expires": {"N": repr(now + self.ttl_s)}, "updated_at": {"S": now_iso()}},
                ConditionExpression="#o = :dead",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":dead": {"S": holder}},
            )
        except self.db.client.exceptions.ConditionalCheckFailedException:
            return False  # someone else took it first
        print(f"took over the lease of {self.group!r} from {holder} (its process is gone)",
              file=sys.stderr)
        return True

    async def release(self) -> None:
        # a failed condition means it was taken over after expiry: nothing of ours to release
        with contextlib.suppress(self.db.client.exceptions.ConditionalCheckFailedException):
            await self.db.client.delete_item(
                TableName=self.table,
                Key={"group": {"S": self.group}, "shard_id": {"S": OWNER_KEY}},
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":me": {"S": self.owner}},
            )
