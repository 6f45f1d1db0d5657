"""Fault injection for the crash harness: SIGKILL this process at named points.

Off unless ``CAA_CHAOS_POINTS`` names points and ``CAA_CHAOS_PROBABILITY`` > 0;
the harness (``make chaos``) turns it on in the consumers it starts, to be sure
some kills land exactly where crash safety is hardest:

- ``mid_batch_write``: after one chunk of a DynamoDB batch write, before the rest;
- ``before_checkpoint``: a batch's effects are written, its checkpoint is not;
- ``after_checkpoint``: both done, before the next batch.

>>> Chaos(frozenset({"mid_batch_write"}), 0.0).point("mid_batch_write")  # p = 0: never
>>> Chaos.parse("before_checkpoint, nowhere", 1.0)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: unknown chaos point(s): nowhere (known: after_checkpoint, ...)
"""

from __future__ import annotations

import os
import random
import signal
import sys

POINTS = frozenset({"mid_batch_write", "before_checkpoint", "after_checkpoint"})


class Chaos:
    def __init__(self, points: frozenset[str], probability: float,
                 seed: int | None = None) -> None:
        self.points = points
        self.probability = probability
        self._rng = random.Random(seed)

    @classmethod
    def parse(cls, spec: str, probability: float) -> Chaos:
        points = frozenset(p.strip() for p in spec.split(",") if p.strip())
        unknown = points - POINTS
        if unknown:
            raise ValueError(f"unknown chaos point(s): {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(POINTS))})")
        return cls(points, probability)

    def point(self, name: str) -> None:
        if name in self.points and self.probability and self._rng.random() < self.probability:
            print(f"chaos: SIGKILL at {name}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


NO_CHAOS = Chaos(frozenset(), 0.0)
