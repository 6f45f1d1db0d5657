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

import asyncio
import hashlib
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
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
from producers.replay.sources import FileSource, KinesisSource, S3Source, Source
from producers.replay.tally import ReplayReport

console = Console()
progress_console = Console(stderr=True)


@dataclass(frozen=True)
class Options:
    """What one ``caa replay`` is asked for (see :func:`replay`)."""

    sources: tuple[str, ...]
    to: str
    format: str
    since: datetime | None
    until: datetime | None
    job: str | None
    restart: bool
    dry_run: bool
    json: bool
    chunk: int | None
    group_size: int
    share: float
    refit: bool


@dataclass(frozen=True)
class Spec:
    """The sources as asked for: how to build them, and what names the job."""

    make: Callable[[datetime], Source]
    summary: str
    origin: str  # the dead letters' ``stream``
    key: dict[str, Any]


def spec(settings: Settings, aws: Aws, opts: Options) -> Spec:
    s3 = [s for s in opts.sources if s.startswith("s3://")]
    streams = [s for s in opts.sources if s.startswith("kinesis:")]
    files = [s for s in opts.sources if s not in s3 and s not in streams]
    if sum(map(bool, (s3, streams, files))) != 1 or len(s3) > 1 or len(streams) > 1:
        raise SystemExit("caa replay: one kind of source per job: files, one s3:// prefix, "
                         "or one kinesis:// stream")
    key: dict[str, Any] = {"format": opts.format, "since": opts.since, "until": opts.until}
    if s3:
        bucket, _, prefix = s3[0].removeprefix("s3://").partition("/")
        client = aws.client("s3")
        return Spec(lambda started: S3Source(client, bucket, prefix, opts.until or started,
                                             opts.format),
                    s3[0], "replay", {**key, "s3": s3[0]})
    if streams:
        name = streams[0].removeprefix("kinesis:").removeprefix("//") or settings.stream_name
        kinesis = aws.client("kinesis")
        since = opts.since
        return Spec(lambda started: KinesisSource(kinesis, name, since,
                                                  opts.until or started),
                    f"kinesis://{name} from {since.isoformat() if since else 'the oldest'}",
                    name, {**key, "kinesis": name})
    paths = [Path(f).resolve() for f in files]
    source = FileSource(paths, opts.format)
    first = f"{paths[0]}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")
    return Spec(lambda _started: source, first, "replay",
                {**key, "files": [str(p) for p in paths]})


def job_name(opts: Options, sp: Spec, target: str) -> str:
    if opts.job:
        return str(opts.job)
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


def replay(settings: Settings, sources: Sequence[str], *, to: str, fmt: str,
           since: datetime | None, until: datetime | None, job: str | None, restart: bool,
           dry_run: bool, as_json: bool, chunk: int | None, group_size: int, share: float,
           refit: bool) -> int:
    """``caa replay``: ``sources`` (files and directories, one ``s3://`` prefix or one
    ``kinesis://`` stream) in ``fmt`` onto the stream (``to="stream"``, using ``share`` of its
    write capacity) or straight into the tables (``"direct"``, ``group_size`` records a batch,
    then a refit unless not ``refit``), ``chunk`` records a commit, as the resumable job
    ``job`` (default: named after the arguments). 2 on bad input, 1 when writing failed,
    130 when interrupted."""
    return _replay(settings, Options(
        tuple(sources), to=to, format=fmt, since=since, until=until, job=job, restart=restart,
        dry_run=dry_run, json=as_json, chunk=chunk, group_size=group_size, share=share,
        refit=refit))


def _replay(settings: Settings, opts: Options) -> int:
    from botocore.exceptions import ClientError

    from consumers.sources.lease import GroupBusy
    from consumers.stores.dynamo import WriteFailed
    from producers.publisher import PublishError
    from producers.replay.framing import FormatError
    from producers.replay.job import JobMismatch
    from producers.replay.runner import dry_run
    from producers.replay.sources import SourceError

    aws = Aws(settings, quiet=opts.json)
    try:
        sp = spec(settings, aws, opts)
        if opts.dry_run:
            with _progress() as progress:
                meter = RichMeter(progress, progress.add_task("checking", total=None))
                started = datetime.now(UTC)
                report = dry_run(sp.make(started), settings.max_event_bytes, meter)
            out: dict[str, Any] = {"dry_run": True, "source": sp.summary,
                                   "report": report.as_dict()}
            if opts.json:
                print(json.dumps(out, indent=2, default=str))
            else:
                report_table("caa replay --dry-run (nothing written)",
                             [("source", sp.summary)], report)
            return 0
        out = asyncio.run(_run(settings, aws, opts, sp))
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
    if opts.json:
        print(json.dumps(out, indent=2, default=str))
    return 0


async def _run(settings: Settings, aws: Aws, opts: Options,
               sp: Spec) -> dict[str, Any]:
    from caa import wiring
    from consumers.sources.lease import GroupLease
    from producers.replay.job import ReplayJob
    from producers.replay.runner import run
    from producers.replay.targets import DirectTarget, RejectedLog, StreamTarget, Target

    s = settings
    target_name = f"stream:{s.stream_name}" if opts.to == "stream" else f"direct:{s.table_prefix}"
    name = job_name(opts, sp, target_name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    log: RejectedLog | None = None
    async with aws.clients("dynamodb") as c:
        target: Target
        if opts.to == "stream":
            log = RejectedLog(s.state_dir / "replay" / f"{name}.rejected.jsonl")
            target = StreamTarget(aws.client("kinesis"), s.stream_name, share=opts.share,
                                  log=log)
        else:
            applier = wiring.applier(s, c["dynamodb"], cache_size=s.state_cache_size)
            lease = GroupLease(applier.customers.db, s.table("checkpoints"), s.consumer_group,
                               owner)
            target = DirectTarget(applier, s.table_prefix, origin=sp.origin, lease=lease,
                                  group_size=opts.group_size, refit=opts.refit)
        job = ReplayJob(wiring.dynamo(s, c["dynamodb"]), s.table("checkpoints"), name, owner)
        with _progress() as progress:
            meter = RichMeter(progress, progress.add_task("replaying", total=None))
            outcome = await run(job, sp.make, target, summary=f"{sp.summary} -> {target.name}",
                                max_event_bytes=s.max_event_bytes, restart=opts.restart,
                                chunk_size=opts.chunk,
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
        out.update(capacity_records_per_s=cap, share=opts.share,
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
    if not opts.json:
        report_table("caa replay", rows, r)
    return out
