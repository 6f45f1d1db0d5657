"""The throughput cost of conditional state writes (issue 14, item 8), on the emulator.

Consumes the same log (default: the whole CDNOW log) twice with the local worker
(``caa consume``'s, state cache on), each time on a fresh stream and tables of the same
moto server:

- ``batch``: states written with BatchWriteItem, unconditionally (the write path before
  optimistic concurrency; correct only with one writer per customer);
- ``conditional``: states written with one conditional PutItem each (the current path,
  up to 32 in flight); predictions and dead letters stay on BatchWriteItem in both.

Prints events/s of each (records handled / seconds consuming) and writes
out/bench-writers.json. On moto a PutItem costs about as much as a BatchWriteItem of 25
items, so the conditional path is much slower there; on DynamoDB both are billed per item
and the puts run in parallel. Run: ``.venv/bin/python bench/writers.py [--limit N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from consumers.stores.customers import CustomerStore
from deploy.local.emulator import launch
from models.events import PurchaseEvent
from models.state import CustomerState
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher


async def _batch_save_if(self: CustomerStore, states: Iterable[CustomerState],
                         read: dict[str, int | None]) -> dict[str, Any]:
    """The old write: one BatchWriteItem per 25 states, no condition."""
    states = list(states)
    await self.save(states)
    return {s.customer_id: "ok" for s in states}


async def _consume(settings: Settings) -> tuple[int, float, int]:
    async with Aws(settings, quiet=True).clients("kinesis", "dynamodb") as c:
        worker = wiring.worker(settings, c["kinesis"], c["dynamodb"])
        await worker.run(until_idle=True, final_refit=False)
        t = worker.applier.totals
        return t.records, worker.consume_seconds, t.conflicts


def run(mode: str, events: list[PurchaseEvent]) -> dict[str, float]:
    settings = Settings(stream_name=f"bench-{mode}-{uuid.uuid4().hex[:6]}",
                        table_prefix=f"bench-{mode}-{uuid.uuid4().hex[:6]}-",
                        refit_interval_s=0)
    aws = Aws(settings, quiet=True)
    ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
    Publisher(aws.client("kinesis"), settings.stream_name).publish(events)
    original = CustomerStore.save_if
    if mode == "batch":
        CustomerStore.save_if = _batch_save_if  # type: ignore[method-assign]
    try:
        records, seconds, conflicts = asyncio.run(_consume(settings))
    finally:
        CustomerStore.save_if = original  # type: ignore[method-assign]
    return {"records": records, "seconds": round(seconds, 2),
            "events_per_s": round(records / seconds, 1), "conflicts": conflicts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="CDNOW rows (default: all)")
    args = ap.parse_args()
    events = time_ordered(load_events(limit=args.limit))
    figures: dict[str, Any] = {"events": len(events)}
    with tempfile.TemporaryDirectory() as tmp:
        emu = launch("127.0.0.1", log=Path(tmp) / "moto.log")
        try:
            os.environ.update(AWS_ENDPOINT_URL=emu.endpoint, AWS_ACCESS_KEY_ID="bench",
                              AWS_SECRET_ACCESS_KEY="bench", CAA_STATE_DIR=tmp)
            for mode in ("batch", "conditional"):
                figures[mode] = run(mode, events)
                print(f"{mode:<12} {figures[mode]['events_per_s']:>10,.0f} events/s  "
                      f"({figures[mode]['records']:,} records in {figures[mode]['seconds']} s, "
                      f"{figures[mode]['conflicts']} conflicts)", flush=True)
        finally:
            emu.stop()
    ratio = figures["conditional"]["events_per_s"] / figures["batch"]["events_per_s"]
    print(f"conditional / batch = {ratio:.2f}")
    out = Path("out")
    out.mkdir(exist_ok=True)
    (out / "bench-writers.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
