"""The consumer group's lease: one live local poller per consumer group.

A worker that may have lost its lease (renewal failed, or it was paused -- SIGSTOP, a
long GC, a suspended laptop -- past its expiry) must not write again before it knows:
:meth:`GroupLease.ensure` is awaited before a batch's effects and before its checkpoint.
While the lease is comfortably valid by the local clock it costs nothing; near or past
expiry it renews first (one conditional put: still ours, or free), and when someone else
holds the group it raises :class:`LeaseLost` and the worker stops. A paused process is
still alive, so a second worker waits for the lease to expire (``ttl_s``) before it takes
over; the resumed first one then fails its renewal and stops before its next write. The
state puts (conditional on the version read) and the checkpoints (never backwards) keep
the data right in the moment between the check and the write.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from consumers.stores.checkpoints import CheckpointStore, Lease
from consumers.stores.dynamo import Dynamo


class GroupBusy(RuntimeError):
    """Another live worker holds this consumer group's lease."""


class LeaseLost(GroupBusy):
    """This worker no longer holds its group: it must not write again."""


def process_alive(pid: int) -> bool:
    """Is there a process ``pid`` on this host (one we may not signal counts as alive)?"""
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

    The local poller reads every shard, so it takes the whole group (state writes are
    conditional, so a second writer would be correct, but would only conflict). The
    lease is taken with a conditional put (absent, expired, or already ours), renewed
    while running (:meth:`renew`), checked before writes (:meth:`ensure`) and released
    on exit; a second poller fails fast with :class:`GroupBusy`.
    """

    db: Dynamo
    table: str
    group: str
    owner: str
    ttl_s: float = 30.0
    #: renew in :meth:`ensure` when less than this is left of the lease, seconds
    margin_s: float = 5.0
    #: when the lease we last wrote expires (epoch seconds; 0: not held)
    valid_until: float = field(default=0.0, init=False)
    #: why the lease is lost (None while held)
    lost: str | None = field(default=None, init=False)
    _rows: CheckpointStore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = CheckpointStore(self.db, self.table, self.group)

    async def acquire(self, now: float) -> None:
        """Take or renew the lease; :class:`GroupBusy` when another live worker holds it."""
        if await self._rows.claim_lease(Lease(self.owner, now + self.ttl_s), now) or \
                await self._take_over_dead_holder(now):
            self.valid_until = now + self.ttl_s
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
        if host != self.owner.partition(":")[0] or not pid.isdigit() or process_alive(int(pid)):
            return False
        if not await self._rows.replace_lease(Lease(self.owner, now + self.ttl_s), holder):
            return False  # someone else took it first
        print(f"took over the lease of {self.group!r} from {holder} (its process is gone)",
              file=sys.stderr)
        return True

    async def renew(self, now: float) -> None:
        """Renew a lease we hold; :class:`LeaseLost` (and :attr:`lost` set) when another
        worker holds the group now."""
        if self.lost is not None:
            raise LeaseLost(self.lost)
        try:
            await self.acquire(now)
        except GroupBusy:
            holder = await self._rows.lease()
            self.lost = (f"lost the lease of consumer group {self.group!r} to "
                         f"{holder.owner if holder else 'nobody'}; stopping before the "
                         "next write")
            self.valid_until = 0.0
            raise LeaseLost(self.lost) from None

    async def ensure(self) -> None:
        """Before a write: return while the lease is ours, renewing it first when less than
        ``margin_s`` of it is left by the local clock; :class:`LeaseLost` otherwise."""
        if self.lost is not None:
            raise LeaseLost(self.lost)
        now = time.time()
        if now < self.valid_until - self.margin_s:
            return
        await self.renew(now)

    async def release(self) -> None:
        # False means it was taken over after expiry: nothing of ours to release
        await self._rows.release_lease(self.owner)
