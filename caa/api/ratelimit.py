"""Per-key sliding-window rate limits for the HTTP API (in process, pure: the caller passes
the time).

Each :class:`SlidingWindow` keeps, per key, the times of the requests it let through in the
last ``window_s`` seconds; a request is allowed while fewer than ``limit`` are in it.
:func:`take` admits a request only if every window it counts against has room, and then
records it in all of them, so a refused request costs nothing. The windows live in this
process: each API replica keeps its own, so N replicas allow up to N times the limit (and a
restart forgets them). Keys are evicted least recently used past ``max_keys``.

>>> minute, hour = SlidingWindow(2, 60.0), SlidingWindow(3, 3600.0)
>>> [take([minute, hour], "c1", t) for t in (0.0, 1.0, 2.0)]
[0.0, 0.0, 58.0]
>>> take([minute, hour], "c2", 2.0), take([minute, hour], "c1", 61.0)
(0.0, 0.0)
>>> take([minute, hour], "c1", 200.0), take([minute, hour], "c1", 201.0)
(3400.0, 3399.0)
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence


class SlidingWindow:
    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a window needs limit >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._log: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_s(self, key: str, now: float) -> float:
        """0 when a request for ``key`` may go now, else the seconds until one may."""
        times = self._log.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._log[key]
            return 0.0
        return 0.0 if len(times) < self.limit else times[0] + self.window_s - now

    def record(self, key: str, now: float) -> None:
        times = self._log.get(key)
        if times is None:
            times = self._log[key] = deque(maxlen=self.limit)
        times.append(now)
        self._log.move_to_end(key)
        while len(self._log) > self.max_keys:
            self._log.popitem(last=False)

    def __len__(self) -> int:
        return len(self._log)


def take(windows: Sequence[SlidingWindow], key: str, now: float) -> float:
    """Admit one request for ``key`` (0.0) or say how long to wait (nothing is recorded)."""
    wait = max((w.wait_s(key, now) for w in windows), default=0.0)
    if wait > 0:
        return wait
    for w in windows:
        w.record(key, now)
    return 0.0
