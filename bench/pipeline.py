"""Throughput of the pipeline: publishing, end-to-end consuming on the emulator, pure core.

Run with `make bench` (not part of the tests). Prints two tables and writes
out/bench-pipeline.json. Aims (issue 2): end to end >= 2,000 events/s on CDNOW; pure core
>= 20,000 events/s.

* Publishing and end to end: the CDNOW log (time-ordered; ``--limit`` rows, default all) is
  published to a fresh stream on the emulator (moto's server, :func:`deploy.local.emulator
  .launch`), then drained by our local worker (default settings, forecast model
  ``CAA_FORECAST_MODEL``: Pareto/NBD unless set, no refit) in this process.
  ``e2e_events_per_s`` is events / the worker's consuming time; around the poller's run,
  ``bench/e2e_cpu.py``'s meter takes this process's CPU (the client) and the moto server's
  (``/proc/<pid>/stat``), printed per event and as shares of the wall time, with what
  limits the drain.
* Pure core: ``bench/pipeline_core.py`` (``bench/core_cpu.py``'s child with the applier's
  GC policy, timed by both the CPU and the wall clock), each stream of
  ``bench/core_golden.py`` (``cdnow``, ``synthetic``) with each forecast model (``pareto_nbd``,
  the production default, and ``bgnbd``), each run a fresh process, interleaved repeat by
  repeat; printed per stream and model: the median (min-max) of us CPU per event, us wall
  per event, events per CPU second and events per wall second. The aim is checked against
  CDNOW's events per CPU second with the production model (``core_events_per_s`` in the
  JSON; the first stream's when CDNOW is not measured). Knobs: ``BENCH_CORE_REPEATS``
  (3), ``BENCH_CORE_STREAMS`` (cdnow,synthetic), ``BENCH_CORE_MODELS``
  (pareto_nbd,bgnbd); ``BENCH_CORE=0`` skips it.

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
import uuid
from pathlib import Path
from typing import Any

from e2e_cpu import Meter, print_limits
from pipeline_core import interleaved, print_table, summarise

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from consumers.sources.worker import Worker
from deploy.local.emulator import launch
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher


async def consume(settings: Settings, meter: Meter) -> Worker:
    async with Aws(settings, quiet=True).clients("kinesis", "dynamodb") as c:
        worker = wiring.worker(settings, c["kinesis"], c["dynamodb"])
        poll = worker.poller.run

        async def metered(**kwargs: Any) -> Any:  # the consuming itself, as consume_seconds
            meter.start()
            try:
                return await poll(**kwargs)
            finally:
                meter.stop()

        setattr(worker.poller, "run", metered)  # noqa: B010
        await worker.run(until_idle=True, final_refit=False)
        return worker


def env_list(name: str, default: str) -> list[str]:
    return [x for x in os.environ.get(name, default).split(",") if x]


def bench_e2e(events: list[Any], figures: dict[str, Any], detail: dict[str, Any]) -> None:
    """Publish ``events`` to a fresh stream on a fresh emulator, drain it with our worker."""
    with tempfile.TemporaryDirectory() as tmp:
        emu = launch("127.0.0.1", log=Path(tmp) / "moto.log")
        try:
            os.environ.update(AWS_ENDPOINT_URL=emu.endpoint, AWS_ACCESS_KEY_ID="bench",
                              AWS_SECRET_ACCESS_KEY="bench", CAA_STATE_DIR=tmp)
            settings = Settings(stream_name=f"bench-{uuid.uuid4().hex[:6]}",
                                refit_interval_s=0)
            figures["forecast_model"] = settings.forecast_model
            print(f"pipeline: {len(events):,} CDNOW events; our local worker on the emulator, "
                  f"forecast model {settings.forecast_model} (CAA_FORECAST_MODEL)", flush=True)
            aws = Aws(settings, quiet=True)
            ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
            report = Publisher(aws.client("kinesis"), settings.stream_name).publish(events)
            figures["publish_events_per_s"] = report.records_per_s
            meter = Meter(emu.pid)
            worker = asyncio.run(consume(settings, meter))
            t = worker.applier.totals
            figures["e2e_events_per_s"] = t.records / worker.consume_seconds
            figures["e2e_seconds"] = worker.consume_seconds
            figures["batches"] = t.batches
            figures["state_cache_hits"] = worker.applier.cache.hits
            lim = meter.limits(t.records)
            figures["e2e_client_cpu_us_per_event"] = lim["client_cpu_us_per_event"]
            figures["e2e_emulator_cpu_us_per_event"] = lim["emulator_cpu_us_per_event"]
            detail["e2e_limits"] = lim
        finally:
            emu.stop()


def bench_core(figures: dict[str, Any], detail: dict[str, Any]) -> None:
    """The pure core's CPU and wall time per event, every stream and model, interleaved."""
    streams = env_list("BENCH_CORE_STREAMS", "cdnow,synthetic")
    models = env_list("BENCH_CORE_MODELS", "pareto_nbd,bgnbd")
    repeats = int(os.environ.get("BENCH_CORE_REPEATS", "3"))
    print(f"\npure core (decode_batch + process_batch, batches of 1,000, GC policy on; "
          f"{repeats} interleaved repeats, each a fresh process; median (min-max)):", flush=True)
    runs = interleaved(streams, models, repeats,
                       say=lambda s: print(s, file=sys.stderr, flush=True))
    rows = summarise(runs)
    print_table(rows)
    detail["core"] = rows
    detail["core_runs"] = runs
    for r in rows:
        figures[f"core_{r['stream']}_{r['model']}_us_cpu_per_event"] = (
            r["cpu_us_per_event"]["median"])
    head = next((r for r in rows if r["model"] == "pareto_nbd"), rows[0] if rows else None)
    if head is not None:
        rate = head["events_per_cpu_s"]["median"]
        figures["core_events_per_s"] = rate  # per CPU second: the load does not change it
        print(f"pure core aim (>= 20,000 events per CPU second; {head['stream']}, "
              f"{head['model']}): {rate:,.0f} -> {'met' if rate >= 20_000 else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None, help="CDNOW rows (default: all)")
    args = ap.parse_args()
    events = time_ordered(load_events(limit=args.limit))
    figures: dict[str, Any] = {"events": len(events)}
    detail: dict[str, Any] = {}
    bench_e2e(events, figures, detail)
    print(f"{'figure':<32}{'value':>14}   aim")
    aims = {"e2e_events_per_s": 2_000}
    for k, v in figures.items():
        if isinstance(v, str):
            continue
        aim = f">= {aims[k]:,}" if k in aims else ""
        print(f"{k:<32}{v:>14,.0f}   {aim}")
    print()
    print_limits({"ours (CDNOW)": detail["e2e_limits"]}, width=16)
    if os.environ.get("BENCH_CORE", "1") != "0":
        bench_core(figures, detail)
    out = Path("out")
    out.mkdir(exist_ok=True)
    (out / "bench-pipeline.json").write_text(json.dumps(figures | detail, indent=2))
    if os.environ.get("BENCH_E2E", "1") != "0":
        print(flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name("e2e.py"))], check=True)


if __name__ == "__main__":
    main()
