"""``caa erase CUSTOMER_ID``: forget a customer everywhere (see consumers.ops.erasure)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.customers import CustomerId, check_customer_id
from caa.cli.output import JsonFlag
from caa.settings import Settings
from consumers.ops import erasure
from consumers.ops.erasure import ErasureReport


async def run(settings: Settings, aws: Aws, customer_id: str) -> ErasureReport:
    from caa import wiring  # the pipeline is imported when the command runs

    async with aws.clients("kinesis", "dynamodb") as c:
        db = wiring.dynamo(settings, c["dynamodb"])
        return await erasure.erase(wiring.erasure_targets(settings), c["kinesis"], db, customer_id)


def erase(settings: Settings, aws: Aws, customer_id: str, as_json: bool) -> int:
    """``caa erase``: prints the audit request id (or the whole report as JSON)."""
    check_customer_id(customer_id)
    report = asyncio.run(run(settings, aws, customer_id))
    if as_json:
        output.print_json(asdict(report), sort_keys=True, indent=None)
    else:
        deleted = ", ".join(f"{k} {v}" for k, v in sorted(report.deleted.items()))
        print(f"erased (request {report.request_id}, audit entry written): {deleted}; "
              f"erasure event at {report.sequence_number}")
    return 0


def _erase(ctx: typer.Context, customer_id: CustomerId, as_json: JsonFlag = False) -> int:
    check_customer_id(customer_id)
    inv = current(ctx)
    return erase(inv.settings, inv.aws(quiet=True), customer_id, as_json)


def register(app: typer.Typer) -> None:
    app.command("erase", rich_help_panel=output.CUSTOMERS,
                help="Forget a customer everywhere: every table, the analyses and the dead "
                     "letters; an erasure event goes on the stream; prints the audit request "
                     "id.")(_erase)
