"""``caa serve``: the HTTP API for downstream services (:mod:`caa.api.app`) on uvicorn."""

from __future__ import annotations

import sys

from caa.settings import Settings


def serve(settings: Settings, host: str, port: int, print_openapi: bool) -> int:
    """The API on ``host``:``port`` until SIGTERM/SIGINT; with ``print_openapi`` only print
    the OpenAPI document (regenerate the checked-in spec: ``> docs/openapi.json``). 2 without
    API keys."""
    from caa.api.app import create_app, spec_json  # FastAPI is imported when the command runs

    if print_openapi:
        sys.stdout.write(spec_json(settings))
        return 0
    if not settings.api_keys:
        print("caa serve: no API keys; set CAA_API_KEYS (comma-separated)", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
    return 0
