"""The consumer group's lease: one live local poller per consumer group."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from consumers.stores import OWNER_KEY, Dynamo, _now


class GroupBusy(RuntimeError):
    """Another live worker holds this consumer group's lease."""



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
                      "expires": {"N": repr(now + self.ttl_s)}, "updated_at": {"S": _now()}},
                ConditionExpression="attribute_not_exists(#o) OR #o = :me OR #e < :now",
                ExpressionAttributeNames={"#o": "owner", "#e": "expires"},
                ExpressionAttributeValues={":me": {"S": self.owner}, ":now": {"N": repr(now)}},
            )
        except self.db.client.exceptions.ConditionalCheckFailedException:
            raise GroupBusy(
                f"consumer group {self.group!r} is held by another live worker; stop it or "
                f"use another CAA_CONSUMER_GROUP (the lease expires {self.ttl_s:.0f} s after "
                "its holder stops renewing it)"
            ) from None

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
