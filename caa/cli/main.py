"""``caa``: the command line. Settings are built here, once, and passed down."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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
from caa.cli import ai as ai_cli
from caa.cli import daily as batch_cli
from caa.cli import dlq as dlq_cli
from caa.cli import erase as erase_cli
from caa.cli import evaluate as evaluate_cli
from caa.cli import kcl as kcl_cli
from caa.cli import replay as replay_cli
from caa.cli import watch as feed_cli
from caa.report import build as report
from caa.settings import Settings
from consumers.stores.dynamo import Dynamo

T = TypeVar("T")
console = Console(stderr=False)
#: progress bars go to stderr, so `--json` output on stdout stays parseable
progress_console = Console(stderr=True)


def _events(args: argparse.Namespace) -> list[Any]:
    if args.dataset == "cdnow":
        from producers.datasets.cdnow import load_events, time_ordered

        return time_ordered(load_events())[: args.limit] if args.limit else time_ordered(
            load_events())
    from producers.datasets.synthetic import generate

    events = generate(customers=args.customers, days=args.days, seed=args.seed)
    return events[: args.limit] if args.limit else events


def cmd_emulator(settings: Settings, args: argparse.Namespace) -> int:
    from deploy.local import emulator

    if args.action == "start":
        emu, started = emulator.start(settings.emulator_file, settings.emulator_host,
                                      settings.emulator_port)
        console.print(f"emulator {'started' if started else 'already running'} at "
                      f"{emu.endpoint} (pid {emu.pid})")
    elif args.action == "stop":
        console.print("emulator stopped" if emulator.stop(settings.emulator_file)
                      else "no emulator was running")
    else:
        found = emulator.recorded(settings.emulator_file)
        console.print(f"running at {found.endpoint} (pid {found.pid})" if found
                      else "not running")
        return 0 if found else 1
    return 0


def cmd_setup(settings: Settings, aws: Aws) -> int:
    from caa.wiring import ensure_resources

    created = ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
    console.print("created: " + ", ".join(created) if created else "resources already exist")
    return 0


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


class TransferSpeedless(ProgressColumn):
    """Items per second (rich's own speed column speaks bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:>8,.0f}/s")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TaskProgressColumn(), TransferSpeedless(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=progress_console)


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


def _read(aws: Aws, read: Callable[[Dynamo], Awaitable[T]]) -> T:
    """One read through the table stores (they are async), on a client of its own."""
    async def run() -> T:
        async with aws.clients("dynamodb") as c:
            return await read(Dynamo(c["dynamodb"]))

    return asyncio.run(run())


def cmd_show(settings: Settings, aws: Aws, args: argparse.Namespace) -> int:
    from consumers.stores.predictions import PredictionStore

    pred = _read(aws, lambda db: PredictionStore(db, settings.tables.predictions).get(
        args.customer_id))
    if pred is None:
        print(f"no prediction for customer {args.customer_id!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(pred, indent=2, sort_keys=True))
        return 0
    t = Table(title=f"customer {args.customer_id}", show_header=False)
    for key in ("segment", "p_alive", "expected_purchases_30d", "expected_purchases_90d",
                "purchases", "spend", "data_quality", "data_quality_reason", "confidence",
                "source", "as_of", "generated_at", "last_event", "model_versions"):
        v: Any = pred.get(key)
        if key == "segment":
            v = v["name"]
        t.add_row(key, json.dumps(v) if isinstance(v, dict | list) else str(v))
    for n in pred.get("next_purchases", []):
        t.add_row(f"next {n['kind']}", f"{n['key']}: {n['expected_date']} ({n['status']}, "
                  f"every {n['avg_days_between']} d, confidence {n['confidence']})")
    for a in pred.get("alerts", []):
        t.add_row("alert", a["message"])
    for r in pred.get("recommendations", []):
        t.add_row("recommend", f"{r['kind']} {r['key']} ({r['reason']}, {r['score']})")
    console.print(t)
    return 0


def cmd_segments(settings: Settings, aws: Aws, args: argparse.Namespace) -> int:
    from consumers.refit import SIZES
    from consumers.registry import SEGMENTS
    from consumers.stores.model_snapshots import ModelStore
    from models.learn.segmentation import SegmentModel

    async def read(db: Dynamo) -> tuple[tuple[int, dict[str, Any]] | None,
                                        tuple[int, dict[str, Any]] | None]:
        store = ModelStore(db, settings.tables.models)
        return await store.load(SEGMENTS), await store.load(SIZES)

    found, sized = _read(aws, read)
    if found is None:
        print("no segment model yet: run `caa consume` first", file=sys.stderr)
        return 1
    version, body = found
    model = SegmentModel.from_dict(body)
    sizes: dict[str, int] = sized[1]["sizes"] if sized else {}
    rows = [{**d, "customers": sizes.get(str(d["name"]), 0)} for d in model.describe()]
    if args.json:
        print(json.dumps({"version": version, "segments": rows}, indent=2))
        return 0
    t = Table(title=f"segments (model version {version})")
    for col in ("id", "name", "customers", "recency_days", "frequency", "monetary"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for r in sorted(rows, key=lambda r: -int(str(r["customers"]))):
        c: Any = r.get("centre", r)
        t.add_row(str(r["id"]), str(r["name"]), f"{r['customers']:,}",
                  f"{float(c['recency_days']):.0f}", f"{float(c['frequency']):.2f}",
                  f"{float(c['monetary']):.2f}")
    console.print(t)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caa", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("emulator", help="start/stop the local AWS emulator (moto server)")
    e.add_argument("action", choices=("start", "stop", "status"))
    sub.add_parser("setup", help="create the stream and tables (idempotent)")
    pub = sub.add_parser("publish", help="publish a dataset to the stream")
    pub.add_argument("--dataset", choices=("cdnow", "synthetic"), default="cdnow")
    pub.add_argument("--limit", type=int)
    pub.add_argument("--customers", type=int, default=1000)
    pub.add_argument("--days", type=int, default=120)
    pub.add_argument("--seed", type=int, default=42)
    c = sub.add_parser("consume", help="consume the stream")
    c.add_argument("--until-idle", action="store_true")
    c.add_argument("--json", action="store_true", help="print the summary as JSON")
    c.add_argument("--no-refit", action="store_true",
                   help="skip the refit and prediction rewrite when --until-idle finishes")
    r = sub.add_parser("run", help="emulator + setup + publish CDNOW + consume until idle")
    r.add_argument("--limit", type=int)
    s = sub.add_parser("show", help="a customer's prediction")
    s.add_argument("customer_id")
    s.add_argument("--json", action="store_true")
    g = sub.add_parser("segments", help="segment sizes and centres")
    g.add_argument("--json", action="store_true")
    dlq_cli.add_parser(sub)
    ai_cli.add_parsers(sub)
    erase_cli.add_parser(sub)
    feed_cli.add_parser(sub)
    batch_cli.add_parser(sub)
    kcl_cli.add_parser(sub)
    replay_cli.add_parser(sub)
    evaluate_cli.add_parser(sub)
    report.add_parser(sub)
    sv = sub.add_parser("serve", help="the HTTP API for downstream services (caa.api.app)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--print-openapi", action="store_true", help="print docs/openapi.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings()
    if args.command == "kcl":
        return kcl_cli.cmd_kcl(settings, args)
    if args.command == "erase":
        return erase_cli.cmd_erase(settings, args)
    if args.command == "evaluate":
        return evaluate_cli.cmd_evaluate(settings, args)
    if args.command == "replay":
        return replay_cli.cmd_replay(settings, args)
    if args.command == "serve":
        from caa.api import app as api

        return api.serve(settings, args)
    if args.command == "emulator":
        return cmd_emulator(settings, args)
    if args.command == "run":
        from deploy.local import emulator

        emu, _ = emulator.start(settings.emulator_file, settings.emulator_host,
                                settings.emulator_port)
        console.print(f"emulator at {emu.endpoint} (pid {emu.pid}); `make stop` stops it")
    aws = Aws(settings)
    if args.command == "setup":
        return cmd_setup(settings, aws)
    if args.command == "publish":
        publish(settings, aws, _events(args))
        return 0
    if args.command == "consume":
        summary = asyncio.run(consume(settings, aws, args.until_idle, refit=not args.no_refit))
        print(json.dumps(summary, indent=2)) if args.json else print_summary(summary)
        return 0
    if args.command == "run":
        cmd_setup(settings, aws)
        args.dataset = "cdnow"
        events = _events(args)
        publish(settings, aws, events)
        summary = asyncio.run(consume(settings, aws, until_idle=True, expected=len(events)))
        print_summary(summary)
        return 0
    if args.command == "show":
        return cmd_show(settings, aws, args)
    if args.command == "segments":
        return cmd_segments(settings, aws, args)
    if args.command == "watch":
        return feed_cli.cmd_watch(settings, aws, args)
    if args.command == "batch":
        return batch_cli.cmd_batch(settings, aws, args)
    if args.command == "report":
        return report.cmd_report(settings, aws, args)
    if args.command == "costs":
        return ai_cli.cmd_costs(settings, aws, args)
    if args.command == "history":
        return ai_cli.cmd_history(settings, aws, args)
    if args.command == "analyze":
        out = asyncio.run(ai_cli.analyze(settings, aws, args.customer_id))
        if out is None:
            print(f"no customer {args.customer_id!r}", file=sys.stderr)
            return 1
        print(json.dumps(out, indent=2))
        return 1 if "error" in out else 0
    return dlq_cli.cmd_dlq(settings, aws, args)


if __name__ == "__main__":
    sys.exit(main())
