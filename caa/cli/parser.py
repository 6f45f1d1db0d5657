"""The ``caa`` argument parser, the one module that knows argparse: :func:`parser` builds it
(subcommands in ``--help`` order), and :data:`COMMANDS` maps each parsed namespace onto the
command's plain function in its group's module."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeAlias

from caa.aws import Aws
from caa.cli import (
    ai,
    customers,
    daily,
    dlq,
    emulator,
    erase,
    evaluate,
    kcl,
    pipeline,
    replay,
    report,
    serve,
    watch,
)
from caa.settings import Settings
from producers.replay.framing import FORMATS

DESCRIPTION = "``caa``: the command line. Settings are built here, once, and passed down."
Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: one command: the settings and the parsed arguments -> the exit code
Command: TypeAlias = Callable[[Settings, argparse.Namespace], int]
JOB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _emulator(sub: Sub) -> None:
    e = sub.add_parser("emulator", help="start/stop the local AWS emulator (moto server)")
    e.add_argument("action", choices=("start", "stop", "status"))


def _pipeline(sub: Sub) -> None:
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


def _customers(sub: Sub) -> None:
    s = sub.add_parser("show", help="a customer's prediction")
    s.add_argument("customer_id")
    s.add_argument("--json", action="store_true")
    g = sub.add_parser("segments", help="segment sizes and centres")
    g.add_argument("--json", action="store_true")


def _dlq(sub: Sub) -> None:
    d = sub.add_parser("dlq", help="dead letters")
    d.add_argument("action", choices=("list", "redrive"),
                   help="list: open dead letters; redrive: re-check them with the current "
                        "decoder and put the ones that now decode back on the stream")
    d.add_argument("--all", action="store_true", help="list: redriven ones too")
    d.add_argument("--json", action="store_true")
    d.add_argument("--dry-run", action="store_true", help="redrive: only report")


def _ai(sub: Sub) -> None:
    c = sub.add_parser("costs", help="Bedrock spend, calls, tokens, fallbacks, cache hits per day")
    c.add_argument("--json", action="store_true")
    h = sub.add_parser("history", help="a customer's analyses, newest first")
    h.add_argument("customer_id")
    h.add_argument("--limit", type=int, default=20)
    h.add_argument("--json", action="store_true")
    a = sub.add_parser("analyze", help="analyse a customer now (bypasses debounce and cache)")
    a.add_argument("customer_id")


def _erase(sub: Sub) -> None:
    e = sub.add_parser("erase", help="erase a customer from every table, history and dead "
                                     "letters; prints the audit request id")
    e.add_argument("customer_id")
    e.add_argument("--json", action="store_true")


def _watch(sub: Sub) -> None:
    w = sub.add_parser("watch", help="tail the prediction change feed (DynamoDB Streams)")
    w.add_argument("--from", dest="start", choices=("trim_horizon", "latest"),
                   default="trim_horizon",
                   help="trim_horizon: every change still in the stream (24 h); latest: new "
                        "changes only (with --follow)")
    w.add_argument("--json", action="store_true", help="one PredictionChange JSON per line")
    w.add_argument("--customer", help="only this customer's changes")
    w.add_argument("--limit", type=int, help="stop after this many changes")
    w.add_argument("--follow", action="store_true",
                   help="keep waiting for new changes (Ctrl-C stops)")


def _batch(sub: Sub) -> None:
    b = sub.add_parser("batch", help="daily batch: recompute recently active customers; "
                                     "with Bedrock, analyse them in a batch inference job")
    what = b.add_mutually_exclusive_group(required=True)
    what.add_argument("--active-since", metavar="SPAN",
                      help="customers whose state was written within SPAN (30m, 12h, 1d, 2w)")
    what.add_argument("--ingest", metavar="JOB",
                      help="store the answers of a finished batch job (name, id or ARN)")
    b.add_argument("--json", action="store_true")


def _kcl(sub: Sub) -> None:
    k = sub.add_parser("kcl", help="the KCL MultiLangDaemon for our stream (kclpy-ext)")
    k.add_argument("action", choices=["properties", "run"])
    k.add_argument("--application-name", help="lease table name (default: consumer group)")
    k.add_argument("--retrieval-mode", choices=["POLLING", "FANOUT"], default="POLLING")
    k.add_argument("--initial-position", choices=["TRIM_HORIZON", "LATEST"],
                   default="TRIM_HORIZON")


# `caa replay`'s argument types; argparse names a failing one in its message
# ("invalid _positive value: 'x'"), so their names are part of the interface
def _job_name(text: str) -> str:
    if not JOB_NAME.match(text):
        raise argparse.ArgumentTypeError("1-100 letters, digits, '.', '_' or '-'")
    return text


def _timestamp(text: str) -> datetime:
    """ISO 8601 (a time without a zone is UTC) or epoch seconds."""
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _share(text: str) -> float:
    x = float(text)
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError("a fraction in (0, 1]")
    return x


def _replay(sub: Sub) -> None:
    r = sub.add_parser(
        "replay", help="backfill from files, an S3 prefix or the stream, onto the stream or "
                       "straight into the tables (a resumable job)", description=replay.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="files/directories, s3://BUCKET/PREFIX, or kinesis://STREAM")
    r.add_argument("--to", choices=("stream", "direct"), default="stream",
                   help="stream: publish (paced); direct: apply straight into the tables")
    r.add_argument("--format", choices=("auto", *FORMATS), default="auto",
                   help="auto: .csv is csv, names with 'cdnow' are cdnow, the rest json")
    r.add_argument("--since", type=_timestamp,
                   help="kinesis source: records that arrived from this time (ISO 8601 or "
                        "epoch seconds; default: the oldest kept)")
    r.add_argument("--until", type=_timestamp,
                   help="kinesis/S3 sources: up to this time (default: when the job started)")
    r.add_argument("--job", type=_job_name,
                   help="the job's name, to resume it (default: derived from the arguments)")
    r.add_argument("--restart", action="store_true", help="replay the job from the start")
    r.add_argument("--dry-run", action="store_true",
                   help="read and validate everything, write nothing, print the report")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.add_argument("--chunk", type=_positive,
                   help="records per commit (default: 2 s of the stream's capacity, at least "
                        "2,000; direct: 10,000)")
    r.add_argument("--group-size", type=_positive, default=300,
                   help="direct: records per applier batch, whole customers (default 300)")
    r.add_argument("--share", type=_share, default=1.0,
                   help="stream: the fraction of its write capacity to use (default 1; lower "
                        "it to leave room for live producers)")
    r.add_argument("--no-refit", action="store_true",
                   help="direct: skip the refit and prediction rewrite at the end")


def _evaluate(sub: Sub) -> None:
    e = sub.add_parser("evaluate", help="CDNOW holdout evaluation of the forecasts and "
                                        "segments through the pipeline, against batch anchors")
    e.add_argument("--calibration-end", type=date.fromisoformat, default=date(1997, 9, 30),
                   help="last day of the calibration period (default 1997-09-30)")
    e.add_argument("--holdout-weeks", type=int, default=39, help="holdout length (default 39)")
    e.add_argument("--limit-customers", type=int, metavar="N",
                   help="only the first N customers of the log (fast runs)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--by-variant", action="store_true",
                   help="also score each A/B variant's customers (CAA_AB_EXPERIMENT/_VARIANTS)")
    e.add_argument("--customers-csv", type=Path, default=Path("out/evaluation-customers.csv"),
                   help="per-customer predicted and actual holdout purchases, for `caa report`")
    e.add_argument("--keep", action="store_true",
                   help="keep the evaluation's stream and tables (their names go to stderr)")


def _report(sub: Sub) -> None:
    r = sub.add_parser("report", help="write one self-contained HTML report (segments over "
                                      "time, centres, calibration, lift, bench, costs)")
    r.add_argument("--out", type=Path, default=report.DEFAULT_OUT,
                   help=f"the page to write (default {report.DEFAULT_OUT})")
    r.add_argument("--evaluation", type=Path, default=report.DEFAULT_EVALUATION,
                   help=f"per-customer evaluation CSV from `caa evaluate` "
                        f"(default {report.DEFAULT_EVALUATION})")
    r.add_argument("--bench", type=Path, default=report.DEFAULT_BENCH,
                   help=f"benchmark figures from `make bench` (default {report.DEFAULT_BENCH})")


def _serve(sub: Sub) -> None:
    sv = sub.add_parser("serve", help="the HTTP API for downstream services (caa.api.app)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--print-openapi", action="store_true", help="print docs/openapi.json")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caa", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    for group in (_emulator, _pipeline, _customers, _dlq, _ai, _erase, _watch, _batch, _kcl,
                  _replay, _evaluate, _report, _serve):
        group(sub)
    return p


def _on_aws(command: Callable[[Settings, Aws, argparse.Namespace], int]) -> Command:
    """A command on the AWS clients of the settings, made once they are built."""
    return lambda s, a: command(s, Aws(s), a)


COMMANDS: dict[str, Command] = {
    "emulator": lambda s, a: {"start": emulator.start, "stop": emulator.stop,
                              "status": emulator.status}[a.action](s),
    "setup": _on_aws(lambda s, aws, _a: pipeline.setup(s, aws)),
    "publish": _on_aws(lambda s, aws, a: pipeline.publish_dataset(
        s, aws, a.dataset, a.limit, a.customers, a.days, a.seed)),
    "consume": _on_aws(lambda s, aws, a: pipeline.consume_stream(
        s, aws, a.until_idle, a.json, refit=not a.no_refit)),
    "run": lambda s, a: pipeline.run(s, a.limit),  # starts the emulator before its clients
    "show": _on_aws(lambda s, aws, a: customers.show(s, aws, a.customer_id, a.json)),
    "segments": _on_aws(lambda s, aws, a: customers.segments(s, aws, a.json)),
    "dlq": _on_aws(lambda s, aws, a: dlq.dlq_redrive(s, aws, a.dry_run) if a.action == "redrive"
                   else dlq.dlq_list(s, aws, a.all, a.json)),
    "costs": _on_aws(lambda s, aws, a: ai.costs(s, aws, a.json)),
    "history": _on_aws(lambda s, aws, a: ai.history(s, aws, a.customer_id, a.limit, a.json)),
    "analyze": _on_aws(lambda s, aws, a: ai.analyze(s, aws, a.customer_id)),
    "erase": lambda s, a: erase.erase(s, a.customer_id, a.json),
    "watch": _on_aws(lambda s, aws, a: watch.tail(s, aws, a.start, a.json, a.customer, a.limit,
                                                  a.follow)),
    "batch": _on_aws(lambda s, aws, a: daily.batch(s, aws, a.active_since, a.ingest, a.json)),
    "kcl": lambda s, a: (kcl.properties if a.action == "properties" else kcl.run)(
        s, a.application_name, a.retrieval_mode, a.initial_position),
    "replay": lambda s, a: replay.replay(
        s, a.sources, to=a.to, fmt=a.format, since=a.since, until=a.until, job=a.job,
        restart=a.restart, dry_run=a.dry_run, as_json=a.json, chunk=a.chunk,
        group_size=a.group_size, share=a.share, refit=not a.no_refit),
    "evaluate": lambda s, a: evaluate.run_evaluation(
        s, a.calibration_end, a.holdout_weeks, a.limit_customers, a.json, a.by_variant,
        a.customers_csv, a.keep),
    "report": _on_aws(lambda s, aws, a: report.report(s, aws, a.out, a.evaluation, a.bench)),
    "serve": lambda s, a: serve.serve(s, a.host, a.port, a.print_openapi),
}


def dispatch(settings: Settings, args: argparse.Namespace) -> int:
    """Run the parsed command."""
    return COMMANDS[args.command](settings, args)
