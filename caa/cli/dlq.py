"""``caa dlq list|redrive``: the dead letters (see consumers.stores.dead_letters and
consumers.ops.redrive)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.settings import Settings


async def letters(settings: Settings, aws: Aws, open_only: bool) -> list[dict[str, Any]]:
    """The dead letters oldest first: the open ones, or every one."""
    from consumers.stores.dead_letters import DeadLetterStore
    from consumers.stores.dynamo import Dynamo

    async with aws.clients("dynamodb") as c:
        store = DeadLetterStore(Dynamo(c["dynamodb"]), settings.tables.dead_letters)
        return await store.by_arrival(open_only=open_only)


async def redrive_letters(settings: Settings, aws: Aws, dry_run: bool) -> dict[str, Any]:
    from caa import wiring
    from consumers.ops.redrive import redrive
    from consumers.stores.dynamo import Dynamo

    async with aws.clients("kinesis", "dynamodb") as c:
        report = await redrive(Dynamo(c["dynamodb"]), settings.tables.dead_letters,
                               c["kinesis"], settings.stream_name, settings.max_event_bytes,
                               dry_run=dry_run,
                               future_tolerance_s=settings.future_tolerance_s,
                               earliest_ts=wiring.time_rule(settings).earliest_ts)
    return report.as_dict()


def _shown(value: object) -> object:
    """A dead letter's attribute as ``caa dlq list --json`` shows it: the payload as its
    size, every other value (text, numbers such as ``arrival_ts``, flags) as it is."""
    return len(value) if isinstance(value, bytes) else value


def _position(letter: dict[str, Any]) -> str:
    """A letter's sequence number, with ``/`` and its sub-sequence number when it is a user
    record of a KPL aggregate (the first one's ``/0`` included): the user records of one
    aggregate share the sequence number, and a letter of the whole record has none.

    >>> _position({"sequence_number": "49", "sub_sequence_number": 0}), _position(
    ...     {"sequence_number": "49"})
    ('49/0', '49')
    """
    sub = letter.get("sub_sequence_number")
    return (str(letter["sequence_number"]) if sub is None
            else f"{letter['sequence_number']}/{sub}")


def dlq_redrive(settings: Settings, aws: Aws, dry_run: bool, as_json: bool = False) -> int:
    """``caa dlq redrive``: prints the report."""
    report = asyncio.run(redrive_letters(settings, aws, dry_run))
    if as_json:
        output.print_json(report)
    else:
        output.pairs("dead-letter redrive" + (" (dry run: nothing put back)" if dry_run else ""),
                     [(k, str(v)) for k, v in report.items()])
    return 0


def dlq_list(settings: Settings, aws: Aws, show_all: bool, as_json: bool) -> int:
    """``caa dlq list``: the open dead letters (``show_all``: redriven ones too)."""
    rows = asyncio.run(letters(settings, aws, open_only=not show_all))
    if as_json:
        output.print_json([{k: _shown(v) for k, v in d.items()} for d in rows])
        return 0
    output.table("dead letters, oldest first" + ("" if show_all else " (open)"),
                 ("received", "status", "stream", "shard", "sequence number", "bytes", "reason"),
                 [(str(d["received_at"]), str(d["status"]), str(d["stream"]), str(d["shard_id"]),
                   _position(d), f"{len(d['payload']):,}", str(d["reason"]))
                  for d in rows], right={"bytes"})
    output.note(f"{len(rows)} dead letter(s)" + ("" if show_all else " open"))
    return 0


dlq_app = typer.Typer(help="Dead letters: the records the consumer could not decode.",
                      no_args_is_help=True)


@dlq_app.command("list", help="The open dead letters, oldest first: time, stream, shard, "
                              "sequence number (/sub-sequence number of a KPL user record), "
                              "size, reason.")
def _list(
    ctx: typer.Context,
    show_all: Annotated[bool, typer.Option("--all", help="Also the redriven ones.")] = False,
    as_json: JsonFlag = False,
) -> int:
    inv = current(ctx)
    return dlq_list(inv.settings, inv.aws(), show_all, as_json)


@dlq_app.command("redrive", help="Re-check the open dead letters with the current decoder "
                                 "and put the ones that now decode back on the stream.")
def _redrive(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run",
        help="Only report what would be put back; change nothing.")] = False,
    as_json: JsonFlag = False,
) -> int:
    inv = current(ctx)
    return dlq_redrive(inv.settings, inv.aws(), dry_run, as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq", rich_help_panel=output.OPERATIONS)
