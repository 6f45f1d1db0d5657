"""``caa erase CUSTOMER_ID``: forget a customer everywhere (see consumers.ops.erasure)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from caa.aws import Aws
from caa.settings import Settings
from consumers.ops.erasure import ErasureReport, erase


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    e = sub.add_parser("erase", help="erase a customer from every table, history and dead "
                                     "letters; prints the audit request id")
    e.add_argument("customer_id")
    e.add_argument("--json", action="store_true")


async def run(settings: Settings, customer_id: str) -> ErasureReport:
    from caa import wiring  # the pipeline is imported when the command runs

    async with Aws(settings, quiet=True).clients("kinesis", "dynamodb") as c:
        db = wiring.dynamo(settings, c["dynamodb"])
        return await erase(wiring.erasure_targets(settings), c["kinesis"], db, customer_id)


def cmd_erase(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    report = asyncio.run(run(settings, args.customer_id))
    if args.json:
        print(json.dumps(asdict(report), sort_keys=True))
    else:
        deleted = ", ".join(f"{k} {v}" for k, v in sorted(report.deleted.items()))
        print(f"erased (request {report.request_id}, audit entry written): {deleted}; "
              f"erasure event at {report.sequence_number}")
    return 0
