"""``caa setup|publish|consume|run``: the stream and tables, publishing a dataset, the
consumer, and all of them at once; with the progress bars and the run summary."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.report.words import converted, money
from caa.settings import Settings
from models.money import to_major

if TYPE_CHECKING:
    from consumers.refit import RefitReport


def cdnow_events(limit: int | None) -> list[Any]:
    """The CDNOW master log, time-ordered; the first ``limit`` events if given."""
    from producers.datasets.cdnow import load_events, time_ordered

    with output.progress() as progress:  # a few seconds
        progress.phase("reading the CDNOW log")
        events = time_ordered(load_events())
    return events[:limit] if limit else events


def synthetic_events(customers: int, days: int, seed: int, limit: int | None) -> list[Any]:
    """The synthetic stream: purchases with a few percent of them refunded or cancelled."""
    from producers.datasets.synthetic import generate_stream

    events = generate_stream(customers=customers, days=days, seed=seed)
    return events[:limit] if limit else events


def publish(settings: Settings, aws: Aws, events: list[Any]) -> Any:
    from producers.publisher import Publisher

    pub = Publisher(aws.client("kinesis"), settings.stream_name)
    with output.progress() as progress:  # on stderr: `--json` output stays parseable
        progress.phase("publishing", total=len(events))
        report = pub.publish(events, progress=progress.advance)
    output.note(f"published {report.records:,} events in {report.seconds:.1f} s "
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
    if ai and settings.analysis_queue:  # durable analysis requests
        extra.append("sqs")
    async with aws.clients("kinesis", "dynamodb", "cloudwatch", *extra) as c:
        with output.progress() as progress:
            # the consuming, counted here; the worker starts the phases after it (winding
            # down, the AI analyses, the final refit's), which end this one
            progress.phase("consuming", total=expected)
            worker = wiring.worker(
                settings, c["kinesis"], c["dynamodb"],
                on_batch=lambda _s, r: progress.advance(len(r.outcomes)),
                bedrock=c.get("bedrock-runtime"), cloudwatch=c.get("cloudwatch"),
                sqs=c.get("sqs"))
            report = await worker.run(until_idle=until_idle, stop=stop, final_refit=refit,
                                      progress=progress)
        t = worker.applier.totals
        summary: dict[str, Any] = {
            "records_read": t.records, "applied": t.applied, "duplicates": t.duplicate,
            "duplicate_orders": t.duplicate_order,
            "rejected": t.rejected, "batches": t.batches, "erasures": t.erasures,
            "dead_letters_erased": t.dead_letters_erased,
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
            if worker.requests is not None:
                summary["ai"]["requests"] = worker.requests.summary()
        if report:
            summary.update(refit_summary(report))
    return summary


def refit_summary(report: RefitReport) -> dict[str, Any]:
    """The final refit's part of the run summary: the customer table's totals, its spend in
    the reporting currency (``table_spend``, to the cent as predictions give it;
    ``table_spend_currency``), per currency in major units, the currencies left out for want
    of a rate and a note saying so."""
    return dict(
        forecast_model=report.forecast_model, forecast_params=report.params.to_dict(),
        table_customers=report.customers,
        table_purchases=report.purchases, table_spend=round(report.spend, 2),
        table_spend_currency=report.currency,
        table_spend_unconverted=list(report.unconverted),
        table_spend_by_currency={c: to_major(m, c) for c, m in report.spend_minor.items()},
        table_spend_note=converted(report.spend_minor, report.rates)[1],
        segments=report.segment_sizes,
        refit_reason=report.reason,
        fit_caution=fit_caution(report.customers),
        spend_model=({"model": "gamma_gamma", "params": report.value_params.to_dict(),
                      **(report.value_fit or {})} if report.value_params else None),
    )


#: fewer customers than this and the summary warns that the population fit is thin (our
#: rule of thumb, not a published figure: Fader & Hardie fit CDNOW's 2,357-customer sample;
#: on a few dozen customers the Pareto/NBD's heterogeneity collapses and every customer
#: gets nearly the same forecast)
STABLE_FIT_CUSTOMERS = 500


def fit_caution(customers: int) -> str | None:
    """A line for a fit on too few customers to trust (None: enough)."""
    if customers >= STABLE_FIT_CUSTOMERS:
        return None
    noun = "customer" if customers == 1 else "customers"
    return (f"the purchase and spend models were fitted on {customers:,} {noun}, fewer than "
            f"{STABLE_FIT_CUSTOMERS:,}: their population parameters are unstable and "
            "customers' forecasts (P(alive), churn, CLV) may barely differ; read them as "
            "provisional")


def _spend(summary: dict[str, Any]) -> str:
    """The table's spend in the reporting currency, with what was converted at which rates'
    date and what was left out for want of a rate (:func:`caa.report.words.converted`)."""
    line = money(summary["table_spend"], summary["table_spend_currency"])
    note = summary.get("table_spend_note")
    return f"{line} ({note})" if note else line


def print_summary(summary: dict[str, Any]) -> None:
    rows = []
    if "table_customers" in summary:
        rows += [
            ("events in the customer table", f"{summary['table_purchases']:,}"),
            ("customers", f"{summary['table_customers']:,}"),
            ("spend", _spend(summary)),
            *([("caution", summary["fit_caution"])] if summary.get("fit_caution") else []),
        ]
    rows += [
        ("records read this run", f"{summary['records_read']:,}"),
        ("  applied / duplicates / duplicate orders",
         f"{summary['applied']:,} / {summary['duplicates']:,} / "
         f"{summary.get('duplicate_orders', 0):,}"),
        ("  rejected (dead letters)", f"{summary['rejected']:,}"),
        *([("  erasures (their dead letters deleted)",
            f"{summary['erasures']:,} ({summary['dead_letters_erased']:,})")]
          if summary.get("erasures") else []),
        ("predictions written", f"{summary['predictions_written']:,}"),
        ("consuming", f"{summary['consume_s']:.1f} s, {summary['events_per_s']:,.0f} events/s"),
        ("refit + prediction rewrite", f"{summary['refit_s']:.1f} s"),
        ("elapsed", f"{summary['elapsed_s']:.1f} s"),
    ]
    ai: dict[str, Any] = summary.get("ai", {})
    rows += [(f"ai: {k}", str(v)) for k, v in ai.items() if k not in ("answered_by", "note")]
    if ai.get("answered_by"):
        rows.append(("ai: answered by", ", ".join(ai["answered_by"])))
    rows += [(f"segment: {name}", f"{n:,}") for name, n in summary.get("segments", {}).items()]
    # the demo's Bedrock answers from the local test server are said to be so, under the table
    output.pairs("customer-ai-analytics: run summary", rows, caption=ai.get("note"))


def next_steps(summary: dict[str, Any], customer_id: str | None,
               prog: str = "caa") -> list[tuple[str, str]]:
    """Three commands to try after ``caa run``; ``prog``: how to call caa here
    (:func:`how_to_call`)."""
    steps = [(f"{prog} show {customer_id}", "one customer's prediction and analysis")
             if customer_id else (f"{prog} segments", "the segments, their sizes and centres")]
    if customer_id:
        steps.append((f"{prog} segments", "the segments, their sizes and centres"))
    if summary.get("rejected"):
        steps.append((f"{prog} dlq list",
                      f"the {summary['rejected']:,} rejected record(s) and why"))
    from caa.cli.report import DEFAULT_OUT

    steps.append((f"{prog} report", f"charts of segments, forecasts and costs in {DEFAULT_OUT}"))
    if len(steps) < 3:
        steps.append((f"{prog} watch --limit 5", "the prediction change feed"))
    return steps[:3]


#: the variables that choose this run's stream and tables: a command to try must repeat them
_CHOOSERS = ("CAA_STREAM_NAME", "CAA_TABLE_PREFIX", "CAA_CONSUMER_GROUP")


def how_to_call(argv0: str | None = None, environ: dict[str, str] | None = None) -> str:
    """The command a user types to reach the same data: the path of this ``caa`` when it is
    not the one on the PATH (``.venv/bin/caa`` after ``make run``), preceded by the variables
    that chose another stream or tables (``make run-ai``'s ``caa-ai-`` ones).

    >>> how_to_call("/nowhere/bin/caa", {"CAA_TABLE_PREFIX": "caa-ai-"})
    'CAA_TABLE_PREFIX=caa-ai- /nowhere/bin/caa'
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    env = dict(os.environ) if environ is None else environ
    prog = "caa"
    if os.path.basename(argv0) == "caa":
        on_path = shutil.which("caa")
        same = on_path is not None and os.path.exists(argv0) and os.path.samefile(on_path, argv0)
        if not same:
            rel = os.path.relpath(argv0)
            prog = rel if not rel.startswith("..") else argv0
            prog = prog if "/" in prog else f"./{prog}"
    chosen = [f"{k}={shlex.quote(env[k])}" for k in _CHOOSERS if env.get(k)]
    return " ".join([*chosen, shlex.quote(prog)])


def ensure_emulator(settings: Settings, how_to_stop: str) -> None:
    """Start the local emulator (or find it running); a port chosen by CAA_EMULATOR_PORT
    that is taken is :class:`~caa.errors.EmulatorError`, else a free one is used."""
    from caa.errors import EmulatorError
    from deploy.local import emulator

    try:
        emu, _ = emulator.start(settings.emulator_file, settings.emulator_host,
                                settings.emulator_port,
                                strict="emulator_port" in settings.model_fields_set)
    except emulator.EmulatorError as exc:
        raise EmulatorError(f"the emulator did not start: {exc}") from exc
    output.note(f"emulator at {emu.endpoint} (pid {emu.pid}); {how_to_stop}")


def setup(settings: Settings, aws: Aws, as_json: bool = False) -> int:
    """``caa setup``: create the stream and tables (idempotent)."""
    from caa.wiring import ensure_resources

    done = ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"),
                            aws.client("sqs") if settings.analysis_queue else None)
    if as_json:
        output.print_json({"created": done.created, "pending": done.pending})
    else:
        print("created: " + ", ".join(done.created) if done.created
              else "resources already exist")
        for line in done.pending:
            output.note(line)
    return 0


def publish_dataset(settings: Settings, aws: Aws, dataset: str, limit: int | None,
                    customers: int, days: int, seed: int, as_json: bool = False) -> int:
    """``caa publish``: the CDNOW log or a synthetic dataset (``customers``, ``days``,
    ``seed``) onto the stream; the first ``limit`` events if given."""
    events = (cdnow_events(limit) if dataset == "cdnow"
              else synthetic_events(customers, days, seed, limit))
    r = publish(settings, aws, events)
    out = {"records": r.records, "bytes": r.bytes, "calls": r.calls,
           "retried_records": r.retried_records, "throttled_records": r.throttled_records,
           "seconds": round(r.seconds, 2), "records_per_s": round(r.records_per_s, 1)}
    if as_json:
        output.print_json(out)
    else:
        output.pairs(f"published to {settings.stream_name}", [(k, str(v)) for k, v in out.items()])
    return 0


def consume_stream(settings: Settings, aws: Aws, until_idle: bool, as_json: bool,
                   refit: bool) -> int:
    """``caa consume``: the consumer, until stopped (or idle); then its summary."""
    summary = asyncio.run(consume(settings, aws, until_idle, refit=refit))
    output.print_json(summary) if as_json else print_summary(summary)
    return 0


def run(settings: Settings, connect: Callable[[], Aws], limit: int | None,
        as_json: bool = False) -> int:
    """``caa run``: emulator + setup + publish CDNOW (``limit`` events) + consume until idle;
    ``connect`` makes the AWS clients once the emulator runs."""
    ensure_emulator(settings, "`make stop` stops it")
    aws = connect()
    from caa.wiring import ensure_resources

    done = ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
    output.note("created: " + ", ".join(done.created) if done.created
                else "resources already exist")
    for line in done.pending:
        output.note(line)
    events = cdnow_events(limit)
    publish(settings, aws, events)
    summary = asyncio.run(consume(settings, aws, until_idle=True, expected=len(events)))
    if as_json:
        output.print_json(summary)
        return 0
    print_summary(summary)
    output.lines("try next:", next_steps(summary, events[0].customer_id if events else None,
                                         how_to_call()))
    return 0


Limit = Annotated[int | None, typer.Option(
    min=1, help="Only the first N events (default: all).", metavar="N")]


def _setup(ctx: typer.Context, as_json: JsonFlag = False) -> int:
    inv = current(ctx)
    return setup(inv.settings, inv.aws(), as_json)


def _publish(
    ctx: typer.Context,
    dataset: Annotated[Literal["cdnow", "synthetic"], typer.Option(
        help="cdnow: the CDNOW master log (time-ordered); synthetic: generated grocery "
             "orders (see --customers, --days, --seed).")] = "cdnow",
    limit: Limit = None,
    customers: Annotated[int, typer.Option(min=1, help="synthetic: customers.")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="synthetic: days of orders.")] = 120,
    seed: Annotated[int, typer.Option(help="synthetic: random seed.")] = 42,
    as_json: JsonFlag = False,
) -> int:
    inv = current(ctx)
    return publish_dataset(inv.settings, inv.aws(), dataset, limit, customers, days, seed,
                           as_json)


def _consume(
    ctx: typer.Context,
    until_idle: Annotated[bool, typer.Option(
        "--until-idle",
        help="Stop once the stream has no new records (then refit and rewrite the "
             "predictions); default: run until Ctrl-C or SIGTERM.")] = False,
    as_json: JsonFlag = False,
    no_refit: Annotated[bool, typer.Option(
        "--no-refit",
        help="Skip the refit and prediction rewrite when --until-idle finishes.")] = False,
) -> int:
    inv = current(ctx)
    return consume_stream(inv.settings, inv.aws(), until_idle, as_json, refit=not no_refit)


def _run(ctx: typer.Context, limit: Limit = None, as_json: JsonFlag = False) -> int:
    inv = current(ctx)
    return run(inv.settings, lambda: inv.aws(quiet=True), limit, as_json)


def register(app: typer.Typer) -> None:
    app.command("run", rich_help_panel=output.START,
                help="Start the local emulator, create the stream and tables, publish the "
                     "CDNOW log and consume it until idle (what `make run` does).")(_run)
    app.command("setup", rich_help_panel=output.PIPELINE,
                help="Create the stream and tables (idempotent).")(_setup)
    app.command("publish", rich_help_panel=output.PIPELINE,
                help="Publish a dataset to the stream, as the orders service would.")(_publish)
    app.command("consume", rich_help_panel=output.PIPELINE,
                help="Consume the stream: customer state, segments, forecasts, predictions; "
                     "then print a summary.")(_consume)
