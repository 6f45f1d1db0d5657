"""A token bucket sized to the account's Bedrock tokens-per-minute quota (pure).

Bedrock counts input plus output tokens and reserves ``maxTokens`` when a
request starts, so a call takes its input estimate plus ``maxTokens`` up front
and :meth:`TokenBucket.give_back` returns what the answer did not use.

>>> b = TokenBucket(tokens_per_minute=6000, now=0.0)
>>> b.try_take(5000, 0.0), b.try_take(5000, 0.0), round(b.wait_s(5000, 0.0), 1)
(True, False, 40.0)
>>> b.give_back(3000); b.try_take(4000, 0.0)
True
>>> b.try_take(10_000, 1000.0)  # more than the bucket holds: never
False
"""

from __future__ import annotations


class TokenBucket:
    def __init__(self, tokens_per_minute: float, now: float) -> None:
        self.capacity = float(tokens_per_minute)
        self.rate = tokens_per_minute / 60.0
        self._level = self.capacity
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
            self._at = now

    def try_take(self, n: float, now: float) -> bool:
        self._refill(now)
        if n <= self._level:
            self._level -= n
            return True
        return False

    def wait_s(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are available (inf when ``n`` exceeds the capacity)."""
        self._refill(now)
        if n > self.capacity:
            return float("inf")
        return max(0.0, (n - self._level) / self.rate) if self.rate else float("inf")

    def give_back(self, n: float) -> None:
        """Return unused tokens; a negative ``n`` (a call used more than it took) is debt."""
        self._level = min(self.capacity, self._level + n)
