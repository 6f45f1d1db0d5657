"""The analyzer function's handler, ``caa.entry.analyzer_lambda.handler`` (deploy/template.yaml):
an SQS event source mapping on the analysis requests' queue with ``ReportBatchItemFailures``.

On the first invocation it builds the settings from the function's environment, opens the
clients and the enricher (:func:`caa.wiring.open_request_analyzer`) on an event loop kept
while the environment is warm, so the breaker, token bucket and caches hold across
invocations. Each invocation runs its messages through
:meth:`~consumers.analysis.requests.RequestAnalyzer.handle_event` (superseded requests are
dropped, the others analysed) and answers with the failed ones as ``batchItemFailures``:
Lambda deletes the rest, SQS makes those visible again and, after ``maxReceiveCount``
receives, moves them to the dead-letter queue. The event source mapping's
``ScalingConfig.MaximumConcurrency`` bounds the environments, hence Bedrock's concurrency
(``CAA_BEDROCK_CONCURRENCY`` calls in each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from caa import secrets, wiring
from caa.settings import Settings
from consumers.analysis.requests import RequestAnalyzer


class AnalyzerRuntime:
    """What a warm environment keeps: the loop, the clients and the analyzer."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._stack = AsyncExitStack()
        self.analyzer: RequestAnalyzer = self.loop.run_until_complete(
            wiring.open_request_analyzer(settings, self._stack))

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        answer = self.loop.run_until_complete(self.analyzer.handle_event(dict(event)))
        # the day's shared counters and the metrics; a failed flush keeps them for next time
        self.loop.run_until_complete(self.analyzer.enricher.flush_counters())
        return answer

    def close(self) -> None:
        self.loop.run_until_complete(self._stack.aclose())
        self.loop.close()


_runtime: list[AnalyzerRuntime] = []  # built on the first invocation, kept while warm


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Entry point of the analyzer function (SQS event source mapping)."""
    if not _runtime:
        # the pseudonym key from where CAA_PSEUDONYM_KEY_PARAMETER names it (caa.secrets):
        # the same one the API function reads
        _runtime.append(AnalyzerRuntime(secrets.resolve(Settings())))
    return _runtime[0].handle(event)
