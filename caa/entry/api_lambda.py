"""The API function's handler, ``caa.entry.api_lambda.handler`` (deploy/template.yaml).

The FastAPI app (:mod:`caa.api.app`) behind a Lambda function URL, through Mangum's ASGI
adapter (it also takes API Gateway HTTP API v2 and REST events). On the first invocation it
builds the settings from the function's environment, reads the API keys and the pseudonym key
from where ``CAA_API_KEYS_PARAMETER`` and ``CAA_PSEUDONYM_KEY_PARAMETER`` name them
(:mod:`caa.secrets`), builds the app and enters its lifespan once (clients, model registry,
enricher) on an event loop of its own; all of it is kept while the environment is warm, so
the enricher's breaker and budget and the per-customer limits hold across the requests one
environment serves (each environment keeps its own windows, like each ``caa serve``
replica). Mangum's own per-request lifespan is off. After each request the enricher's
counters are flushed (an environment may be frozen or dropped at any time).

A secret that cannot be read raises (its message names the variable and the reference) and
the next invocation tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

from mangum import Mangum

from caa import secrets, wiring
from caa.api.app import create_app
from caa.settings import Settings


class ApiRuntime:
    """The app over ``settings`` (secrets resolved here), its lifespan entered, and the
    adapter; :meth:`close` ends the lifespan (tests; Lambda simply drops the environment)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = secrets.resolve(settings)
        self.app = create_app(self.settings, rates=wiring.rates(self.settings))
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # Mangum runs each request on the current loop
        self._stack = AsyncExitStack()
        self.loop.run_until_complete(
            self._stack.enter_async_context(self.app.router.lifespan_context(self.app)))
        self.adapter = Mangum(self.app, lifespan="off")

    def __call__(self, event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
        asyncio.set_event_loop(self.loop)
        try:
            return self.adapter(dict(event), context)
        finally:
            enricher = self.app.state.caa.enricher
            if enricher is not None:
                self.loop.run_until_complete(enricher.flush_counters())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self._stack.aclose())
        finally:
            self.loop.close()


_runtime: list[ApiRuntime] = []  # built on the first invocation, kept while warm


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Entry point of the API function (function URL, or API Gateway HTTP API, events)."""
    if not _runtime:
        _runtime.append(ApiRuntime(Settings()))
    return _runtime[0](event, context)
