"""A/B variants: a deterministic assignment of customers to analysis variants.

A customer's variant is a pure function of the experiment name and the customer id
(BLAKE2b, not Python's salted ``hash``), so every adapter, process and rerun agrees,
whatever ``PYTHONHASHSEED`` is, and it is recorded on every prediction. Changing the
experiment name reshuffles everyone; changing the weights moves only customers whose
bucket crosses a boundary.

Variants the analysis understands: ``bedrock`` (the configured analyzer) and
``statistical`` (the control: never sent to a model; its analyses are the statistical
ones with the fallback reason ``ab_control``). Other names are recorded and reported
but analysed like ``bedrock``.

>>> plan = VariantPlan.parse("exp-1", "bedrock=50,statistical=50")
>>> plan.assign("00001"), plan.assign("00001") == plan.assign("00001")
('statistical', True)
>>> from collections import Counter
>>> shares = Counter(plan.assign(f"{i:05d}") for i in range(10_000))
>>> sorted(shares), 4_800 < shares["bedrock"] < 5_200
(['bedrock', 'statistical'], True)
>>> VariantPlan.parse("", "").assign("00001") is None  # no experiment: nothing recorded
True
>>> VariantPlan.parse("exp", "a=0")
Traceback (most recent call last):
...
ValueError: variant weights must be positive integers: 'a=0'
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

BUCKETS = 10_000
CONTROL = "statistical"


@dataclass(frozen=True)
class VariantPlan:
    experiment: str
    weights: tuple[tuple[str, int], ...]

    @classmethod
    def parse(cls, experiment: str, spec: str) -> VariantPlan:
        """``"name=weight,name=weight"``; an empty experiment or spec means no experiment."""
        if not experiment or not spec.strip():
            return cls("", ())
        weights: list[tuple[str, int]] = []
        for part in spec.split(","):
            name, _, weight = part.strip().partition("=")
            if not name or not weight.isdigit() or int(weight) <= 0:
                raise ValueError(f"variant weights must be positive integers: {spec!r}")
            weights.append((name.strip(), int(weight)))
        if len({n for n, _ in weights}) != len(weights):
            raise ValueError(f"a variant is named twice: {spec!r}")
        return cls(experiment, tuple(weights))

    def assign(self, customer_id: str) -> str | None:
        if not self.weights:
            return None
        digest = hashlib.blake2b(f"{self.experiment}\x00{customer_id}".encode(),
                                 digest_size=8).digest()
        point = int.from_bytes(digest, "big") % BUCKETS
        total = sum(w for _, w in self.weights)
        edge = 0
        for name, weight in self.weights:
            edge += weight * BUCKETS
            if point * total < edge:
                return name
        return self.weights[-1][0]  # unreachable: the last edge is total * BUCKETS

    def is_control(self, customer_id: str) -> bool:
        return self.assign(customer_id) == CONTROL


NO_EXPERIMENT = VariantPlan("", ())
