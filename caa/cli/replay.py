"""``caa replay SOURCE...``: backfill as a resumable job (see producers.replay.runner).

Sources: files or directories (JSON Lines or Firehose-style concatenated JSON, CSV, the
CDNOW master format; gzipped or not), one ``s3://BUCKET/PREFIX``, or one
``kinesis://STREAM`` (``kinesis://`` alone: CAA_STREAM_NAME) read from ``--since``.
CSV: one row per line item under a header naming event_id, order_id, customer_id,
occurred_at, currency, total, product_id, category, quantity, unit_price (optional:
channel, consent, schema_version); consecutive rows with one event_id are one event.
Targets: ``--to stream`` (CAA_STREAM_NAME, paced to its write capacity) or
``--to direct`` (the consumer's applier on the CAA_TABLE_PREFIX tables, then a refit).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import socket
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from caa.aws import Aws
from caa.settings import Settings
from producers.replay.framing import FORMATS
from producers.replay.sources import FileSource, KinesisSource, S3Source, Source
from producers.replay.tally import ReplayReport

console = Console()
progress_console = Console(stderr=True)
JOB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


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


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser(
        "replay", help="backfill from files, an S3 prefix or the stream, onto the stream or "
                       "straight into the tables (a resumable job)", description=__doc__,
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


@dataclass(frozen=True)
class Spec:
    """The sources as asked for: how to build them, and what names the job."""

    make: Callable[[datetime], Source]
    summary: str
    origin: str  # the dead letters' ``stream``
    key: dict[str, Any]


def spec(settings: Settings, aws: Aws, args: argparse.Namespace) -> Spec:
    s3 = [s for s in args.sources if s.startswith("s3://")]
    streams = [s for s in args.sources if s.startswith("kinesis:")]
    files = [s for s in args.sources if s not in s3 and s not in streams]
    if sum(map(bool, (s3, streams, files))) != 1 or len(s3) > 1 or len(streams) > 1:
        raise SystemExit("caa replay: one kind of source per job: files, one s3:// prefix, "
                         "or one kinesis:// stream")
    key: dict[str, Any] = {"format": args.format, "since": args.since, "until": args.until}
    if s3:
        bucket, _, prefix = s3[0].removeprefix("s3://").partition("/")
        client = aws.client("s3")
        return Spec(lambda started: S3Source(client, bucket, prefix, args.until or started,
                                             args.format),
                    s3[0], "replay", {**key, "s3": s3[0]})
    if streams:
        name = streams[0].removeprefix("kinesis:").removeprefix("//") or settings.stream_name
        kinesis = aws.client("kinesis")
        since = args.since
        return Spec(lambda started: KinesisSource(kinesis, name, since,
                                                  args.until or started),
                    f"kinesis://{name} from {since.isoformat() if since else 'the oldest'}",
                    name, {**key, "kinesis": name})
    paths = [Path(f).resolve() for f in files]
    source = FileSource(paths, args.format)
    first = f"{paths[0]}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
    return Spec(lambda _started: source, first, "replay",
                {**key, "files": [str(p) for p in paths]})


def job_name(args: argparse.Namespace, sp: Spec, target: str) -> str:
    if args.job:
        return str(args.job)
    body = json.dumps({**sp.key, "target": target}, sort_keys=True, default=str)
    return "replay-" + hashlib.sha256(body.encode()).hexdigest()[:12]


class RecordsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        n = int(task.fields.get("records", 0))
        rate = n / task.elapsed if task.elapsed else 0.0
        return Text(f"{n:,} rec {rate:,.0f}/s")


class RichMeter:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress = progress
        self.task = task
        self.records = 0

    def total(self, nbytes: int | None) -> None:
        self.progress.update(self.task, total=nbytes)

    def read(self, nbytes: int) -> None:
        self.progress.advance(self.task, nbytes)

    def sent(self, records: int) -> None:
        self.records += records
        self.progress.update(self.task, records=self.records)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    RecordsColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=progress_console)


def report_table(title: str, rows: list[tuple[str, str]], report: ReplayReport) -> None:
    t = Table(title=title, show_header=False)
    for k, v in rows:
        t.add_row(k, v)
    r = report
    t.add_row("records read", f"{r.records:,}")
    t.add_row("  valid", f"{r.valid:,}" + "".join(f"  {k} {n:,}" for k, n in
                                                  sorted(r.types.items())))
    t.add_row("  invalid", f"{r.invalid_total:,}" + "".join(f"  {k} {n:,}" for k, n in
                                                           sorted(r.invalid.items())))
    t.add_row("customers" + (" (this run)" if r.runs > 1 else ""), f"{len(r.customers):,}")
    t.add_row("event time", f"{r.first_at or '-'} .. {r.last_at or '-'}")
    console.print(t)
    if r.examples:
        ex = Table(title="invalid records (first few of each reason)")
        for col in ("where", "kind", "reason", "sample"):
            ex.add_column(col, overflow="fold")
        for e in r.examples:
            ex.add_row(e.where, e.kind, e.reason, repr(e.sample))
        console.print(ex)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from botocore.exceptions import ClientError

    from consumers.sources.lease import GroupBusy
    from consumers.stores.dynamo import WriteFailed
    from producers.publisher import PublishError
    from producers.replay.framing import FormatError
    from producers.replay.job import JobMismatch
    from producers.replay.runner import dry_run
    from producers.replay.sources import SourceError

    aws = Aws(settings, quiet=args.json)
    try:
        sp = spec(settings, aws, args)
        if args.dry_run:
            with _progress() as progress:
                meter = RichMeter(progress, progress.add_task("checking", total=None))
                started = datetime.now(UTC)
                report = dry_run(sp.make(started), settings.max_event_bytes, meter)
            out: dict[str, Any] = {"dry_run": True, "source": sp.summary,
                                   "report": report.as_dict()}
            if args.json:
                print(json.dumps(out, indent=2, default=str))
            else:
                report_table("caa replay --dry-run (nothing written)",
                             [("source", sp.summary)], report)
            return 0
        out = asyncio.run(_run(settings, aws, args, sp))
    except (SourceError, FormatError, JobMismatch, GroupBusy) as exc:
        print(f"caa replay: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
        print(f"caa replay: {exc}; create the stream and tables first (caa setup)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("caa replay: interrupted; what was acknowledged is committed: run the same "
              "command again to resume", file=sys.stderr)
        return 130
    except (PublishError, WriteFailed) as exc:
        print(f"caa replay: {exc}\nnothing after the last committed chunk counts as sent; "
              "run the same command again to resume", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    return 0


async def _run(settings: Settings, aws: Aws, args: argparse.Namespace,
               sp: Spec) -> dict[str, Any]:
    from caa import wiring
    from consumers.sources.lease import GroupLease
    from producers.replay.job import ReplayJob
    from producers.replay.runner import run
    from producers.replay.targets import DirectTarget, RejectedLog, StreamTarget, Target

    s = settings
    target_name = f"stream:{s.stream_name}" if args.to == "stream" else f"direct:{s.table_prefix}"
    name = job_name(args, sp, target_name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    log: RejectedLog | None = None
    async with aws.clients("dynamodb") as c:
        target: Target
        if args.to == "stream":
            log = RejectedLog(s.state_dir / "replay" / f"{name}.rejected.jsonl")
            target = StreamTarget(aws.client("kinesis"), s.stream_name, share=args.share,
                                  log=log)
        else:
            applier = wiring.applier(s, c["dynamodb"], cache_size=s.state_cache_size)
            lease = GroupLease(applier.customers.db, s.table("checkpoints"), s.consumer_group,
                               owner)
            target = DirectTarget(applier, s.table_prefix, origin=sp.origin, lease=lease,
                                  group_size=args.group_size, refit=not args.no_refit)
        job = ReplayJob(wiring.dynamo(s, c["dynamodb"]), s.table("checkpoints"), name, owner)
        with _progress() as progress:
            meter = RichMeter(progress, progress.add_task("replaying", total=None))
            outcome = await run(job, sp.make, target, summary=f"{sp.summary} -> {target.name}",
                                max_event_bytes=s.max_event_bytes, restart=args.restart,
                                chunk_size=args.chunk,
                                meter=meter, log=log)
    r = outcome.report
    out: dict[str, Any] = {"job": name, "status": outcome.status, "source": sp.summary,
                           "target": target.name, "report": r.as_dict(),
                           "sent_this_run": outcome.sent,
                           "records_per_s": round(outcome.records_per_s, 1)}
    rows = [("job", f"{name} ({outcome.status})"), ("source", sp.summary),
            ("target", target.name)]
    if outcome.status == "already_complete":
        rows.append(("note", "the job was already complete: nothing sent (--restart "
                             "replays it again)"))
    elif isinstance(target, StreamTarget):
        cap = target.capacity_records_per_s
        out.update(capacity_records_per_s=cap, share=args.share,
                   capacity_fraction=round(outcome.records_per_s / cap, 3) if cap else 0.0,
                   rejected_log=str(log.path) if log and r.invalid_total else None)
        rows += [("published", f"{r.published:,} ({r.throttled:,} throttled and retried)"),
                 ("this run", f"{outcome.sent:,} records, {outcome.records_per_s:,.0f}/s = "
                              f"{out['capacity_fraction']:.0%} of {cap:,.0f}/s capacity")]
        if out["rejected_log"]:
            rows.append(("invalid records (all)", str(out["rejected_log"])))
    else:
        rows += [("applied / duplicates", f"{r.applied:,} / {r.duplicates:,}"),
                 ("dead-lettered", f"{r.dead_lettered:,} (caa dlq list)"),
                 ("this run", f"{outcome.sent:,} records, {outcome.records_per_s:,.0f}/s")]
        if outcome.refit is not None:
            out["refit"] = {"customers": outcome.refit.customers,
                            "segments": outcome.refit.segment_sizes,
                            "predictions_rewritten": outcome.refit.predictions_rewritten}
            rows.append(("refit", f"{outcome.refit.customers:,} customers, "
                                  f"{outcome.refit.predictions_rewritten:,} predictions"))
    if not args.json:
        report_table("caa replay", rows, r)
    return out
