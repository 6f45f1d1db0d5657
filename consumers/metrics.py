"""Counters published as CloudWatch metrics (PutMetricData), one namespace per system.

The enricher hands over deltas since the last flush (analyses, Bedrock calls,
tokens, cost, fallbacks by reason, cache hits); the dashboard and the daily-cost
alarm read them. Without a client it publishes nothing.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "CustomerAIAnalytics"


class Metrics:
    def __init__(self, client: Any | None, dimensions: dict[str, str],
                 namespace: str = NAMESPACE) -> None:
        self.client = client
        self.namespace = namespace
        self.dimensions = [{"Name": k, "Value": v} for k, v in sorted(dimensions.items())]

    async def put(self, deltas: dict[str, float]) -> None:
        data = [{"MetricName": name, "Value": float(v), "Dimensions": self.dimensions,
                 "Unit": "None" if name.endswith("_usd") else "Count"}
                for name, v in sorted(deltas.items()) if v]
        if self.client is None:
            return
        for i in range(0, len(data), 1000):  # PutMetricData takes up to 1,000 values
            await self.client.put_metric_data(Namespace=self.namespace, MetricData=data[i:i + 1000])
