"""Daily Bedrock spend and counters in DynamoDB (atomic ADDs), shared by every worker.

The budget is enforced with a reservation ledger: before a call,
:meth:`UsageLedger.reserve` adds the call's worst-case cost to the day's
``committed_micros`` in one conditional UpdateItem that fails when the total
would pass the budget; afterwards :meth:`UsageLedger.settle` replaces the
reservation with the real cost. So concurrent workers in any number of
processes never commit more than the budget (as long as the worst-case
estimate bounds the real cost, which :mod:`consumers.analysis.enricher` ensures by
counting ``maxTokens`` in full). Amounts are integer micro-dollars.

One item per UTC day (key ``day``, ``YYYY-MM-DD``) of number attributes, each added to
atomically: ``committed_micros``, ``spend_micros``, and the counters the enricher keeps
(``calls``, ``failed_analyses``, ``input_tokens``, ``output_tokens``, ``analyses``,
``fallbacks``, ``fallback_<reason>``, ``cache_hits``, ...), and ``endpoints``, a string set
of where calls went when that was not AWS (the local test server: its answers are canned and
its "costs" are what AWS would charge for the same tokens). :func:`daily_usage` reads them
back, one row per day, for ``caa costs`` and ``caa report``; :func:`non_aws_endpoints` and
:func:`simulated_note` say whether, and in one sentence, the figures are not AWS's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumers.stores.dynamo import Dynamo, from_attr


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


def day_from_item(item: dict[str, Any], budget_usd: float) -> dict[str, Any]:
    """One day of the ledger as ``caa costs --json`` shows it."""
    r = {k: from_attr(v) for k, v in item.items()}
    return {
        "day": r["day"],
        "spend_usd": round(int(r.get("spend_micros", 0)) / 1e6, 6),
        "budget_usd": budget_usd,
        "calls": int(r.get("calls", 0)),
        # analyses whose calls failed (after their retries), as the enricher, the guard
        # and the batch ingest count them: this read "failed_calls", which nothing wrote
        "failed_analyses": int(r.get("failed_analyses", 0)),
        "input_tokens": int(r.get("input_tokens", 0)),
        "output_tokens": int(r.get("output_tokens", 0)),
        "analyses": int(r.get("analyses", 0)),
        "fallbacks": int(r.get("fallbacks", 0)),
        "fallback_reasons": {k.removeprefix("fallback_"): int(v) for k, v in r.items()
                             if k.startswith("fallback_")},
        "cache_hits": int(r.get("cache_hits", 0)),
        "endpoints": sorted(r.get("endpoints", [])),
    }


def non_aws_endpoints(days: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where the calls of these days (rows of :func:`daily_usage`) went when that was not AWS,
    e.g. ``["test server at http://127.0.0.1:4599 (canned answers)"]``; [] when every call
    went to AWS (or there were none)."""
    return sorted({str(e) for d in days for e in d.get("endpoints", [])})


def simulated_note(endpoints: Iterable[str]) -> str | None:
    """One sentence for people reading costs or analyses that came from elsewhere than AWS
    (``endpoints``: see :func:`non_aws_endpoints`); None when there were none.

    >>> simulated_note(["test server at http://127.0.0.1:4599 (canned answers)"])
    'Bedrock answers came from the local test server (canned answers), not from a model; \
costs shown are what AWS would charge for the same tokens.'
    >>> simulated_note([]) is None
    True
    """
    found = sorted(set(endpoints))
    if not found:
        return None
    if all(e.startswith("test server at ") for e in found):
        return ("Bedrock answers came from the local test server (canned answers), not from "
                "a model; costs shown are what AWS would charge for the same tokens.")
    return (f"Bedrock answers came from {', '.join(found)}, not from AWS; costs shown are "
            "what AWS would charge for the same tokens.")


async def daily_usage(db: Dynamo, table: str, budget_usd: float) -> list[dict[str, Any]]:
    """The usage table, one row per day (UTC), oldest first: what ``caa costs`` shows and
    ``caa report`` plots (``budget_usd``: the configured daily budget, shown beside)."""
    items = await db.scan(table)
    return [day_from_item(i, budget_usd) for i in sorted(items, key=lambda i: i["day"]["S"])]


@dataclass
class UsageLedger:
    """The day's Bedrock usage, by atomic UpdateItems on one item per day: concurrent
    analyses of any number of processes all count (DynamoDB applies each update of an item
    atomically; the local emulator does too: :mod:`deploy.local.moto_server`)."""

    db: Dynamo
    table: str

    async def daily(self, budget_usd: float) -> list[dict[str, Any]]:
        """:func:`daily_usage` of this ledger."""
        return await daily_usage(self.db, self.table, budget_usd)

    async def reserve(self, day: str, usd: float, budget_usd: float) -> bool:
        r = micros(usd)
        headroom = micros(budget_usd) - r
        if headroom < 0:
            return False
        client = self.db.client
        try:
            await client.update_item(
                TableName=self.table, Key={"day": {"S": day}},
                UpdateExpression="ADD committed_micros :r",
                ConditionExpression="attribute_not_exists(committed_micros) OR "
                "committed_micros <= :h",
                ExpressionAttributeValues={":r": {"N": str(r)}, ":h": {"N": str(headroom)}},
            )
        except client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    async def release(self, day: str, usd: float) -> None:
        await self.add(day, {"committed_micros": -micros(usd)})

    async def settle(self, day: str, reserved_usd: float, cost_usd: float,
                     counters: dict[str, int], endpoint: str | None = None) -> None:
        """Replace a reservation with the real cost (``endpoint``: where the call went when
        not to AWS, kept in the day's ``endpoints``)."""
        await self.add(day, {**counters, "committed_micros": micros(cost_usd) -
                             micros(reserved_usd), "spend_micros": micros(cost_usd)},
                       endpoint=endpoint)

    async def add(self, day: str, counters: dict[str, int],
                  endpoint: str | None = None) -> None:
        """Atomically add to the day's counters (names are plain identifiers) and, given an
        ``endpoint``, add it to the day's ``endpoints``."""
        counters = {k: v for k, v in counters.items() if v}
        if not counters and not endpoint:
            return
        names = {f"#c{i}": k for i, k in enumerate(counters)}
        values: dict[str, Any] = {f":v{i}": {"N": str(v)} for i, v in enumerate(counters.values())}
        adds = [f"#c{i} :v{i}" for i in range(len(counters))]
        if endpoint:
            names["#e"], values[":e"] = "endpoints", {"SS": [endpoint]}
            adds.append("#e :e")
        await self.db.client.update_item(
            TableName=self.table, Key={"day": {"S": day}},
            UpdateExpression="ADD " + ", ".join(adds),
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )
