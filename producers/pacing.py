"""Pacing PutRecords to a stream's write capacity, adapting to throttling (AIMD).

A Kinesis shard takes 1,000 records and 1 MiB (data plus partition keys) a second, on
provisioned and on-demand streams alike, so a stream's capacity is its open shard
count times that. :class:`AimdLimiter` paces calls at a *fraction* of the capacity:

- each call reserves its cost in time, ``max(records / record rate, bytes / byte
  rate)``, and waits until the calls before it have used theirs (no burst credit
  builds up while idle, so no second holds more than the rate plus one call);
- a ``ProvisionedThroughputExceeded`` answer cuts the fraction multiplicatively
  (``decrease``), at most once per ``cooldown_s``, so the entries of one call and its
  retries count as one congestion signal;
- every call answered without throttling grows it additively, ``increase_per_s`` of
  the capacity per second since the last change, back up to ``ceiling``.

Pure: the caller passes the time and does the waiting.

>>> lim = AimdLimiter(Capacity.for_shards(1))
>>> [lim.reserve(500, 100_000, now=0.0) for _ in range(3)]   # 1,000 records/s
[0.0, 0.5, 1.0]
>>> lim.throttled(now=0.1); lim.fraction
0.5
>>> lim.throttled(now=0.2); lim.fraction                     # same episode: one cut
0.5
>>> lim.succeeded(now=2.2); round(lim.fraction, 2)           # + 0.05 a second
0.6
"""

from __future__ import annotations

from dataclasses import dataclass

#: per shard, per second (Kinesis Data Streams quotas)
SHARD_RECORDS_PER_S = 1000
SHARD_BYTES_PER_S = 1024 * 1024


@dataclass(frozen=True)
class Capacity:
    records_per_s: float
    bytes_per_s: float

    @classmethod
    def for_shards(cls, shards: int) -> Capacity:
        if shards < 1:
            raise ValueError(f"a stream has at least one open shard, got {shards}")
        return cls(float(SHARD_RECORDS_PER_S * shards), float(SHARD_BYTES_PER_S * shards))


class AimdLimiter:
    def __init__(
        self,
        capacity: Capacity,
        *,
        ceiling: float = 1.0,
        start: float | None = None,
        floor: float = 0.02,
        decrease: float = 0.5,
        increase_per_s: float = 0.05,
        cooldown_s: float = 1.0,
    ) -> None:
        if not 0 < floor <= ceiling:
            raise ValueError("need 0 < floor <= ceiling")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be in (0, 1)")
        self.capacity = capacity
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        self.increase_per_s = increase_per_s
        self.cooldown_s = cooldown_s
        self.fraction = ceiling if start is None else min(max(start, floor), ceiling)
        self.cuts = 0
        self._next_free = float("-inf")  # when the reserved calls have used their time
        self._last_change: float | None = None
        self._last_cut = float("-inf")

    @property
    def records_per_s(self) -> float:
        """The pace now, in records per second."""
        return self.fraction * self.capacity.records_per_s

    def set_capacity(self, capacity: Capacity) -> None:
        """The stream was resharded: the same fraction of its new capacity."""
        self.capacity = capacity

    def reserve(self, records: int, nbytes: int, now: float) -> float:
        """Reserve one call's share; returns the seconds to wait before making it."""
        cost = max(records / self.records_per_s,
                   nbytes / (self.fraction * self.capacity.bytes_per_s))
        start = max(now, self._next_free)
        self._next_free = start + cost
        return start - now

    def throttled(self, now: float) -> None:
        """Kinesis refused records for throughput: cut the pace (once per episode)."""
        self._last_change = now
        if now - self._last_cut < self.cooldown_s:
            return
        self._last_cut = now
        self.fraction = max(self.floor, self.fraction * self.decrease)
        self.cuts += 1

    def succeeded(self, now: float) -> None:
        """A call was taken whole: grow the pace by ``increase_per_s`` per second."""
        if self._last_change is not None:
            grown = self.fraction + self.increase_per_s * max(0.0, now - self._last_change)
            self.fraction = min(self.ceiling, grown)
        self._last_change = now
