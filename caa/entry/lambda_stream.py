"""The Lambda function's handler, ``caa.entry.lambda_stream.handler`` (deploy/template.yaml).

On the first invocation it builds the settings from the function's environment and wires a
:class:`~consumers.sources.lambda_handler.Runtime` (clients, applier, event loop), kept
while the environment is warm; every invocation runs its event through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from caa import secrets, wiring
from caa.settings import Settings
from consumers.sources.lambda_handler import Runtime


def runtime(settings: Settings, wrap_dynamodb: Callable[[Any], Any] | None = None) -> Runtime:
    """A runtime on ``settings``; ``wrap_dynamodb``: tests wrap the real client."""
    return Runtime(lambda stack: wiring.open_applier(settings, stack, wrap_dynamodb),
                   settings.stream_name)


_runtime: list[Runtime] = []  # built on the first invocation, kept while warm


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, Any]:
    """Entry point of the Lambda function (event source mapping on the stream)."""
    if not _runtime:
        # the pseudonym key from where CAA_PSEUDONYM_KEY_PARAMETER names it (caa.secrets):
        # the same one the API function reads
        _runtime.append(runtime(secrets.resolve(Settings())))
    return _runtime[0].handle(event, context)
