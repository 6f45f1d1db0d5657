"""``caa setup|publish|consume|run``: the stream and tables, publishing a dataset, the
consumer, and all of them at once; with the progress bars and the run summary."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from caa.aws import Aws
from caa.settings import Settings

console = Console(stderr=False)
#: progress bars go to stderr, so `--json` output on stdout stays parseable
progress_console = Console(stderr=True)


def cdnow_events(limit: int | None) -> list[Any]:
    """The CDNOW master log, time-ordered; the first ``limit`` events if given."""
    from producers.datasets.cdnow import load_events, time_ordered

    events = time_ordered(load_events())
    return events[:limit] if limit else events


def synthetic_events(customers: int, days: int, seed: int, limit: int | None) -> list[Any]:
    from producers.datasets.synthetic import generate

    events = generate(customers=customers, days=days, seed=seed)
    return events[:limit] if limit else events


class TransferSpeedless(ProgressColumn):
    """Items per second (rich's own speed column speaks bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:>8,.0f}/s")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TransferSpeedless(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=progress_console)


def publish(settings: Settings, aws: Aws, events: list[Any]) -> Any:
    from producers.publisher import Publisher

    pub = Publisher(aws.client("kinesis"), settings.stream_name)
    with _progress() as progress:
        task = progress.add_task("publishing", total=len(events))
        report = pub.publish(events, progress=lambda n: progress.advance(task, n))
    console.print(f"published {report.records:,} events in {report.seconds:.1f} s "
                  f"({report.records_per_s:,.0f}/s, {report.calls} PutRecords calls, "
                  f"{report.retried_records} retried)")
    return report


async def consume(settings: Settings, aws: Aws, until_idle: bool,
                  expected: int | None = None, refit: bool = True) -> dict[str, Any]:
    from caa import wiring

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.perf_counter()
    ai = settings.analyzer == "bedrock"
    extra = ["bedrock-runtime"] if ai else []
    async with aws.clients("kinesis", "dynamodb", "cloudwatch", *extra) as c:
        with _progress() as progress:
            task = progress.add_task("consuming", total=expected)
            worker = wiring.worker(
                settings, c["kinesis"], c["dynamodb"],
                on_batch=lambda _s, r: progress.advance(task, len(r.outcomes)),
                bedrock=c.get("bedrock-runtime"), cloudwatch=c.get("cloudwatch"))
            report = await worker.run(until_idle=until_idle, stop=stop, final_refit=refit)
        t = worker.applier.totals
        summary: dict[str, Any] = {
            "records_read": t.records, "applied": t.applied, "duplicates": t.duplicate,
            "rejected": t.rejected, "batches": t.batches,
            "predictions_written": t.predictions
            + (report.predictions_rewritten if report else 0),
            "consume_s": round(worker.consume_seconds, 2),
            "events_per_s": round(t.records / worker.consume_seconds, 1)
            if worker.consume_seconds else 0.0,
            "refit_s": round(report.seconds, 2) if report else 0.0,
            "elapsed_s": round(time.perf_counter() - started, 2),
            "state_cache_hits": worker.applier.cache.hits,
        }
        if worker.enricher is not None:
            summary["ai"] = worker.enricher.summary()
        if report:
            summary.update(
                forecast_model=report.forecast_model, forecast_params=report.params.to_dict(),
                table_customers=report.customers,
                table_purchases=report.purchases, table_spend=report.spend_cents / 100,
                segments=report.segment_sizes,
            )
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    t = Table(title="customer-ai-analytics: run summary", show_header=False)
    rows = []
    if "table_customers" in summary:
        rows += [
            ("events in the customer table", f"{summary['table_purchases']:,}"),
            ("customers", f"{summary['table_customers']:,}"),
            ("spend", f"{summary['table_spend']:,.2f}"),
        ]
    rows += [
        ("records read this run", f"{summary['records_read']:,}"),
        ("  applied / duplicates", f"{summary['applied']:,} / {summary['duplicates']:,}"),
        ("  rejected (dead letters)", f"{summary['rejected']:,}"),
        ("predictions written", f"{summary['predictions_written']:,}"),
        ("consuming", f"{summary['consume_s']:.1f} s, {summary['events_per_s']:,.0f} events/s"),
        ("refit + prediction rewrite", f"{summary['refit_s']:.1f} s"),
        ("elapsed", f"{summary['elapsed_s']:.1f} s"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    for k, v in summary.get("ai", {}).items():
        t.add_row(f"ai: {k}", str(v))
    for name, n in summary.get("segments", {}).items():
        t.add_row(f"segment: {name}", f"{n:,}")
    console.print(t)


def setup(settings: Settings, aws: Aws) -> int:
    """``caa setup``: create the stream and tables (idempotent)."""
    from caa.wiring import ensure_resources

    created = ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
    console.print("created: " + ", ".join(created) if created else "resources already exist")
    return 0


def publish_dataset(settings: Settings, aws: Aws, dataset: str, limit: int | None,
                    customers: int, days: int, seed: int) -> int:
    """``caa publish``: the CDNOW log or a synthetic dataset (``customers``, ``days``,
    ``seed``) onto the stream; the first ``limit`` events if given."""
    events = (cdnow_events(limit) if dataset == "cdnow"
              else synthetic_events(customers, days, seed, limit))
    publish(settings, aws, events)
    return 0


def consume_stream(settings: Settings, aws: Aws, until_idle: bool, as_json: bool,
                   refit: bool) -> int:
    """``caa consume``: the consumer, until stopped (or idle); then its summary."""
    summary = asyncio.run(consume(settings, aws, until_idle, refit=refit))
    print(json.dumps(summary, indent=2)) if as_json else print_summary(summary)
    return 0


def run(settings: Settings, limit: int | None) -> int:
    """``caa run``: emulator + setup + publish CDNOW (``limit`` events) + consume until idle."""
    from deploy.local import emulator

    emu, _ = emulator.start(settings.emulator_file, settings.emulator_host,
                            settings.emulator_port)
    console.print(f"emulator at {emu.endpoint} (pid {emu.pid}); `make stop` stops it")
    aws = Aws(settings)
    setup(settings, aws)
    events = cdnow_events(limit)
    publish(settings, aws, events)
    summary = asyncio.run(consume(settings, aws, until_idle=True, expected=len(events)))
    print_summary(summary)
    return 0
