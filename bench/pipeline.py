"""Throughput of the pipeline: publishing, end-to-end consuming on the emulator, pure core.

Run with `make bench` (not part of the tests). Prints a table and writes
out/bench-pipeline.json. Aims (issue 2): end to end >= 2,000 events/s on CDNOW; pure core
>= 20,000 events/s.

Then it runs bench/e2e.py in a child process (BENCH_E2E=0 skips it): our consumer against a
naive one on the emulator, the pure core and peak RSS, into out/bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from consumers.core import ModelView, StreamRecord, decode_batch, process_batch
from consumers.sources.worker import Worker
from deploy.local.emulator import launch
from models.events import PurchaseEvent
from models.learn.forecaster import DEFAULT_PRIOR, Forecaster
from models.learn.segmentation import SegmentModel
from models.state import CustomerState
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher


def bench_core(events: list[PurchaseEvent], batch: int = 1000) -> float:
    records = [StreamRecord(e.to_bytes(), str(i), e.customer_id, "shard-0")
               for i, e in enumerate(events)]
    model = SegmentModel()
    states: dict[str, CustomerState] = {}
    now = datetime.now(UTC)
    started = time.perf_counter()
    watermark = 0
    for k in range(0, len(records), batch):
        view = ModelView(model, 0, Forecaster(DEFAULT_PRIOR))
        r = process_batch(decode_batch(records[k:k + batch]), states, view, now=now,
                          watermark=watermark)
        watermark = r.watermark
        states.update(r.states)
        for x in r.learn:
            model.learn_one(x)
    return len(records) / (time.perf_counter() - started)


async def consume(settings: Settings) -> Worker:
    async with Aws(settings, quiet=True).clients("kinesis", "dynamodb") as c:
        worker = wiring.worker(settings, c["kinesis"], c["dynamodb"])
        await worker.run(until_idle=True, final_refit=False)
        return worker


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None, help="CDNOW rows (default: all)")
    args = ap.parse_args()
    events = time_ordered(load_events(limit=args.limit))
    figures: dict[str, float] = {"events": len(events)}
    figures["core_events_per_s"] = bench_core(events)

    with tempfile.TemporaryDirectory() as tmp:
        emu = launch("127.0.0.1", log=Path(tmp) / "moto.log")
        try:
            os.environ.update(AWS_ENDPOINT_URL=emu.endpoint, AWS_ACCESS_KEY_ID="bench",
                              AWS_SECRET_ACCESS_KEY="bench", CAA_STATE_DIR=tmp)
            settings = Settings(stream_name=f"bench-{uuid.uuid4().hex[:6]}",
                                refit_interval_s=0)
            aws = Aws(settings, quiet=True)
            ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
            report = Publisher(aws.client("kinesis"), settings.stream_name).publish(events)
            figures["publish_events_per_s"] = report.records_per_s
            worker = asyncio.run(consume(settings))
            t = worker.applier.totals
            figures["e2e_events_per_s"] = t.records / worker.consume_seconds
            figures["e2e_seconds"] = worker.consume_seconds
            figures["batches"] = t.batches
            figures["state_cache_hits"] = worker.applier.cache.hits
        finally:
            emu.stop()

    print(f"{'figure':<28}{'value':>14}   aim")
    aims = {"core_events_per_s": 20_000, "e2e_events_per_s": 2_000}
    for k, v in figures.items():
        aim = f">= {aims[k]:,}" if k in aims else ""
        print(f"{k:<28}{v:>14,.0f}   {aim}")
    out = Path("out")
    out.mkdir(exist_ok=True)
    (out / "bench-pipeline.json").write_text(json.dumps(figures, indent=2))
    if os.environ.get("BENCH_E2E", "1") != "0":
        print(flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("e2e.py"))], check=True)


if __name__ == "__main__":
    main()
