"""``caa erase CUSTOMER_ID``: forget a customer everywhere (see consumers.ops.erasure)."""

from __future__ import annotations

import json
from dataclasses import asdict

from caa.aws import Aws
from caa.settings import Settings
from consumers.ops import erasure
from consumers.ops.erasure import ErasureReport


async def run(settings: Settings, customer_id: str) -> ErasureReport:
    from caa import wiring  # the pipeline is imported when the command runs

    async with Aws(settings, quiet=True).clients("kinesis", "dynamodb") as c:
        db = wiring.dynamo(settings, c["dynamodb"])
        return await erasure.erase(wiring.erasure_targets(settings), c["kinesis"], db, customer_id)


def erase(settings: Settings, customer_id: str, as_json: bool) -> int:
    """``caa erase``: prints the audit request id (or the whole report as JSON)."""
    import asyncio

    report = asyncio.run(run(settings, customer_id))
    if as_json:
        print(json.dumps(asdict(report), sort_keys=True))
    else:
        deleted = ", ".join(f"{k} {v}" for k, v in sorted(report.deleted.items()))
        print(f"erased (request {report.request_id}, audit entry written): {deleted}; "
              f"erasure event at {report.sequence_number}")
    return 0
