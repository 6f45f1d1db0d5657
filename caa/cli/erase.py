"""``caa erase CUSTOMER_ID``: forget a customer everywhere (see consumers.ops.erasure)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.customers import CustomerId
from caa.cli.output import JsonFlag
from caa.errors import BadInput
from caa.settings import Settings
from consumers.ops import erasure
from consumers.ops.erasure import ErasureReport
from models.events import is_identifier

#: a Kinesis partition key's length in Unicode characters
MAX_PARTITION_KEY = 256


async def run(settings: Settings, aws: Aws, customer_id: str) -> ErasureReport:
    from caa import wiring  # the pipeline is imported when the command runs

    async with aws.clients("kinesis", "dynamodb") as c:
        db = wiring.dynamo(settings, c["dynamodb"])
        targets = wiring.erasure_targets(settings)
        if not is_identifier(customer_id):  # only dead letters can hold it
            return await erasure.erase_letters(targets, db, customer_id)
        return await erasure.erase(targets, c["kinesis"], db, customer_id)


def check_erasable(customer_id: str) -> None:
    """A customer id, or any other partition key a producer may have used (1 to 256
    characters): records under a key that is no customer id are refused, but their letters
    keep what they held and must be erasable too; BadInput otherwise."""
    if is_identifier(customer_id) or (
            len(customer_id) <= MAX_PARTITION_KEY and customer_id.strip()):
        return
    if not customer_id.strip():
        raise BadInput("a customer id is needed, not an empty string")
    raise BadInput(f"not a customer id or a partition key: {customer_id[:64]!r}... "
                   f"({len(customer_id):,} characters; a partition key has 1 to "
                   f"{MAX_PARTITION_KEY})")


def erase(settings: Settings, aws: Aws, customer_id: str, as_json: bool) -> int:
    """``caa erase``: prints the audit request id (or the whole report as JSON). A key that
    is no customer id (``jane+shop@example.com``) erases the dead letters under it or
    naming it, the only place it can be, and says so."""
    check_erasable(customer_id)
    report = asyncio.run(run(settings, aws, customer_id))
    if as_json:
        output.print_json(asdict(report), sort_keys=True, indent=None)
        return 0
    deleted = ", ".join(f"{k} {v}" for k, v in sorted(report.deleted.items()))
    if report.sequence_number:
        print(f"erased (request {report.request_id}, audit entry written): {deleted}; "
              f"erasure event at {report.sequence_number}")
    else:
        print(f"erased (request {report.request_id}, audit entry written): {deleted}; "
              f"{customer_id[:64]!r} is no customer id an event can carry, so only dead "
              "letters could hold it (no erasure event)")
    return 0


def _erase(ctx: typer.Context, customer_id: CustomerId, as_json: JsonFlag = False) -> int:
    check_erasable(customer_id)
    inv = current(ctx)
    return erase(inv.settings, inv.aws(quiet=True), customer_id, as_json)


def register(app: typer.Typer) -> None:
    app.command("erase", rich_help_panel=output.CUSTOMERS,
                help="Forget a customer everywhere: every table, the analyses and the dead "
                     "letters; an erasure event goes on the stream; prints the audit request "
                     "id.")(_erase)
