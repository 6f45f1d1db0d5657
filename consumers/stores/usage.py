"""Daily Bedrock spend and counters in DynamoDB (atomic ADDs), shared by every worker.

The budget is enforced with a reservation ledger: before a call,
:meth:`UsageLedger.reserve` adds the call's worst-case cost to the day's
``committed_micros`` in one conditional UpdateItem that fails when the total
would pass the budget; afterwards :meth:`UsageLedger.settle` replaces the
reservation with the real cost. So concurrent workers in any number of
processes never commit more than the budget (as long as the worst-case
estimate bounds the real cost, which :mod:`consumers.analysis.enricher` ensures by
counting ``maxTokens`` in full). Amounts are integer micro-dollars.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.stores.dynamo import Dynamo


def micros(usd: float) -> int:
    return round(usd * 1_000_000)


@dataclass
class UsageLedger:
    db: Dynamo
    table: str

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
                     counters: dict[str, int]) -> None:
        await self.add(day, {**counters, "committed_micros": micros(cost_usd) -
                             micros(reserved_usd), "spend_micros": micros(cost_usd)})

    async def add(self, day: str, counters: dict[str, int]) -> None:
        """Atomically add to the day's counters (names are plain identifiers)."""
        counters = {k: v for k, v in counters.items() if v}
        if not counters:
            return
        names = {f"#c{i}": k for i, k in enumerate(counters)}
        values = {f":v{i}": {"N": str(v)} for i, v in enumerate(counters.values())}
        await self.db.client.update_item(
            TableName=self.table, Key={"day": {"S": day}},
            UpdateExpression="ADD " + ", ".join(f"#c{i} :v{i}" for i in range(len(counters))),
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )
