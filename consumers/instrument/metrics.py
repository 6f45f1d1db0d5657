"""Counters published as CloudWatch metrics (PutMetricData), one namespace per system.

The enricher hands over deltas since the last flush (analyses, Bedrock calls,
tokens, cost, fallbacks by reason, cache hits); the dashboard and the daily-cost
alarm read them. Without a client it publishes nothing.

Adapters whose platform collects logs (Lambda, KCL workers) publish the same
names in CloudWatch Embedded Metric Format instead (:class:`EmfMetrics`, built on
powertools' EMF provider): one JSON line per flush, no API call on the hot path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

NAMESPACE = "CustomerAIAnalytics"


class MetricSink(Protocol):
    async def put(self, deltas: dict[str, float]) -> None: ...


def _unit(name: str) -> str:
    return "None" if name.endswith("_usd") else "Count"


def batch_deltas(counts: Mapping[str, int]) -> dict[str, float]:
    """What every adapter reports per batch (a result's ``counts``): the dashboard's
    events and dead-letter widgets.

    >>> batch_deltas({"applied": 3, "duplicate": 1, "duplicate_order": 1, "rejected": 2})
    {'records_applied': 3.0, 'records_duplicate': 1.0, 'records_duplicate_order': 1.0, \
'dead_letters': 2.0}
    """
    c = counts
    return {"records_applied": float(c.get("applied", 0)),
            "records_duplicate": float(c.get("duplicate", 0)),
            "records_duplicate_order": float(c.get("duplicate_order", 0)),
            "dead_letters": float(c.get("rejected", 0))}


class EmfMetrics:
    """The same metrics as one EMF JSON line on ``out`` per flush.

    Lambda: stdout (its log group extracts them). KCL: stderr, since stdout is the
    MultiLangDaemon's channel; the CloudWatch agent or log shipper extracts them.

    >>> import io
    >>> out = io.StringIO()
    >>> import asyncio
    >>> asyncio.run(EmfMetrics(out, {"Stream": "s"}).put({"dead_letters": 2, "applied": 0}))
    >>> line = json.loads(out.getvalue())
    >>> line["dead_letters"], line["Stream"], line["_aws"]["CloudWatchMetrics"][0]["Namespace"]
    ([2.0], 's', 'CustomerAIAnalytics')
    """

    def __init__(self, out: TextIO, dimensions: dict[str, str],
                 namespace: str = NAMESPACE) -> None:
        self.out = out
        self.namespace = namespace
        self.dimensions = dict(dimensions)

    async def put(self, deltas: dict[str, float]) -> None:
        from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
            AmazonCloudWatchEMFProvider,
        )

        values = {k: float(v) for k, v in sorted(deltas.items()) if v}
        if not values:
            return
        emf = AmazonCloudWatchEMFProvider(namespace=self.namespace, metric_set={},
                                          dimension_set={}, metadata_set={},
                                          default_dimensions={})
        for dim, label in self.dimensions.items():
            emf.add_dimension(dim, label)
        for name, value in values.items():
            emf.add_metric(name, _unit(name), value)
        self.out.write(json.dumps(emf.serialize_metric_set(), separators=(",", ":")) + "\n")
        self.out.flush()


class Metrics:
    def __init__(self, client: Any | None, dimensions: dict[str, str],
                 namespace: str = NAMESPACE) -> None:
        self.client = client
        self.namespace = namespace
        self.dimensions = [{"Name": k, "Value": v} for k, v in sorted(dimensions.items())]

    async def put(self, deltas: dict[str, float]) -> None:
        data = [{"MetricName": name, "Value": float(v), "Dimensions": self.dimensions,
                 "Unit": _unit(name)}
                for name, v in sorted(deltas.items()) if v]
        if self.client is None:
            return
        for i in range(0, len(data), 1000):  # PutMetricData takes up to 1,000 values
            await self.client.put_metric_data(Namespace=self.namespace, MetricData=data[i:i + 1000])
