"""``caa dlq list|redrive``: the dead letters (see consumers.stores.dead_letters and
consumers.ops.redrive)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from caa.aws import Aws
from caa.settings import Settings


async def letters(settings: Settings, aws: Aws, open_only: bool) -> list[dict[str, Any]]:
    """The dead letters oldest first: the open ones, or every one."""
    from consumers.stores.dead_letters import DeadLetterStore
    from consumers.stores.dynamo import Dynamo

    async with aws.clients("dynamodb") as c:
        store = DeadLetterStore(Dynamo(c["dynamodb"]), settings.tables.dead_letters)
        return await store.by_arrival(open_only=open_only)


async def redrive_letters(settings: Settings, aws: Aws, dry_run: bool) -> dict[str, Any]:
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


def dlq_redrive(settings: Settings, aws: Aws, dry_run: bool) -> int:
    """``caa dlq redrive``: prints the report as JSON."""
    print(json.dumps(asyncio.run(redrive_letters(settings, aws, dry_run)), indent=2))
    return 0


def dlq_list(settings: Settings, aws: Aws, show_all: bool, as_json: bool) -> int:
    """``caa dlq list``: the open dead letters (``show_all``: redriven ones too)."""
    rows = asyncio.run(letters(settings, aws, open_only=not show_all))
    if as_json:
        print(json.dumps([{k: _shown(v) for k, v in d.items()} for d in rows], indent=2))
        return 0
    for d in rows:
        payload: bytes = d["payload"]
        print(f"{d['received_at']}  {d['status']:<8}  {d['stream']}  "
              f"{d['shard_id']}  {d['sequence_number']}  {len(payload):>7} B  "
              f"{d['reason']}")
    print(f"{len(rows)} dead letter(s)" + ("" if show_all else " open"), file=sys.stderr)
    return 0
