"""The consumer group's lease: one live local poller per consumer group."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from consumers.stores.checkpoints import CheckpointStore, Lease
from consumers.stores.dynamo import Dynamo


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
    _rows: CheckpointStore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = CheckpointStore(self.db, self.table, self.group)

    async def acquire(self, now: float) -> None:
        if await self._rows.claim_lease(Lease(self.owner, now + self.ttl_s), now):
            return
        if await self._take_over_dead_holder(now):
            return
        raise GroupBusy(
            f"consumer group {self.group!r} is held by another live worker; stop it or "
            f"use another CAA_CONSUMER_GROUP (the lease expires {self.ttl_s:.0f} s after "
            "its holder stops renewing it)"
        )

    async def _take_over_dead_holder(self, now: float) -> bool:
        """A holder on this host whose process is gone (killed) cannot renew: take its
        lease now instead of waiting for it to expire. Holders elsewhere are left alone."""
        lease = await self._rows.lease()
        holder = lease.owner if lease else ""
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host != self.owner.partition(":")[0] or not pid.isdigit() or _alive(int(pid)):
            return False
        if not await self._rows.replace_lease(Lease(self.owner, now + self.ttl_s), holder):
            return False  # someone else took it first
        print(f"took over the lease of {self.group!r} from {holder} (its process is gone)",
              file=sys.stderr)
        return True

    async def release(self) -> None:
        # False means it was taken over after expiry: nothing of ours to release
        await self._rows.release_lease(self.owner)
