"""``caa dlq list|redrive``: the dead letters (see consumers.stores.dead_letters and
consumers.ops.redrive)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from caa.aws import Aws
from caa.settings import Settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("dlq", help="dead letters")
    d.add_argument("action", choices=("list", "redrive"),
                   help="list: open dead letters; redrive: re-check them with the current "
                        "decoder and put the ones that now decode back on the stream")
    d.add_argument("--all", action="store_true", help="list: redriven ones too")
    d.add_argument("--json", action="store_true")
    d.add_argument("--dry-run", action="store_true", help="redrive: only report")


async def letters(settings: Settings, aws: Aws, open_only: bool) -> list[dict[str, Any]]:
    """The dead letters oldest first: the open ones, or every one."""
    from consumers.stores.dead_letters import DeadLetterStore
    from consumers.stores.dynamo import Dynamo

    async with aws.clients("dynamodb") as c:
        store = DeadLetterStore(Dynamo(c["dynamodb"]), settings.tables.dead_letters)
        return await store.by_arrival(open_only=open_only)


async def dlq_redrive(settings: Settings, aws: Aws, dry_run: bool) -> dict[str, Any]:
    from consumers.ops.redrive import redrive
    from consumers.stores.dynamo import Dynamo

    async with aws.clients("kinesis", "dynamodb") as c:
        report = await redrive(Dynamo(c["dynamodb"]), settings.tables.dead_letters,
                               c["kinesis"], settings.stream_name, settings.max_event_bytes,
                               dry_run=dry_run)
    return report.as_dict()


def _shown(value: object) -> object:
    """A dead letter's attribute as ``caa dlq list --json`` shows it: text as it is, the
    payload as its size."""
    if isinstance(value, bytes):
        return len(value)
    return value if isinstance(value, str) and value else 0


def cmd_dlq(settings: Settings, aws: Aws, args: argparse.Namespace) -> int:
    if args.action == "redrive":
        print(json.dumps(asyncio.run(dlq_redrive(settings, aws, args.dry_run)), indent=2))
        return 0
    rows = asyncio.run(letters(settings, aws, open_only=not args.all))
    if args.json:
        print(json.dumps([{k: _shown(v) for k, v in d.items()} for d in rows], indent=2))
        return 0
    for d in rows:
        payload: bytes = d["payload"]
        print(f"{d['received_at']}  {d['status']:<8}  {d['stream']}  "
              f"{d['shard_id']}  {d['sequence_number']}  {len(payload):>7} B  "
              f"{d['reason']}")
    print(f"{len(rows)} dead letter(s)" + ("" if args.all else " open"), file=sys.stderr)
    return 0
