"""``caa serve``: the HTTP API for downstream services (:mod:`caa.api.app`) on uvicorn."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from caa.cli import output
from caa.cli.context import current
from caa.errors import BadInput
from caa.settings import Settings


def serve(settings: Settings, host: str, port: int, print_openapi: bool) -> int:
    """The API on ``host``:``port`` until SIGTERM/SIGINT; with ``print_openapi`` only print
    the OpenAPI document (regenerate the checked-in spec: ``> docs/openapi.json``).
    :class:`BadInput` without API keys."""
    from caa.api.app import create_app, spec_json  # FastAPI is imported when the command runs

    if print_openapi:
        sys.stdout.write(spec_json(settings))
        return 0
    from caa import secrets, wiring

    settings = secrets.resolve(settings)  # CAA_*_PARAMETER: read once, before listening
    if not settings.api_keys:
        raise BadInput("caa serve needs API keys", "set CAA_API_KEYS (comma-separated) or "
                       "CAA_API_KEYS_PARAMETER (an SSM parameter or Secrets Manager secret)")

    fx = wiring.rates(settings)  # a bad CAA_FX_RATES file: one line, before listening
    import uvicorn

    uvicorn.run(create_app(settings, rates=fx), host=host, port=port, log_level="info")
    return 0


def _serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="The port to listen on.")] = 8000,
    print_openapi: Annotated[bool, typer.Option(
        "--print-openapi",
        help="Only print the OpenAPI document (docs/openapi.json) and exit.")] = False,
) -> int:
    return serve(current(ctx).settings, host, port, print_openapi)


def register(app: typer.Typer) -> None:
    app.command("serve", rich_help_panel=output.LOCAL,
                help="The HTTP API for downstream services (needs CAA_API_KEYS).")(_serve)
