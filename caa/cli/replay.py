"""``caa replay SOURCE...``: backfill as a resumable job (see producers.replay.runner).

Sources: files or directories (JSON Lines or Firehose-style concatenated JSON, CSV, the
CDNOW master format; gzipped or not), one ``s3://BUCKET/PREFIX``, or one
``kinesis://STREAM`` (``kinesis://`` alone: CAA_STREAM_NAME) read from ``--since``.
CSV: one row per line item under a header naming event_id, order_id, customer_id,
occurred_at, currency, total, product_id, category, quantity, unit_price (optional:
channel, consent, schema_version, type, amount); consecutive rows with one event_id are
one event. JSON carries every event type of the wire schema; in CSV a ``type`` of
``refund`` (with ``amount``, no ``total``) or ``cancellation`` makes the rows a refund's
returned lines or a cancellation's lines (a row with empty product columns: none).
The report counts valid records by type: purchase, refund, cancellation, consent, erasure.
Targets: ``--to stream`` (CAA_STREAM_NAME, paced to its write capacity) or
``--to direct`` (the consumer's applier on the CAA_TABLE_PREFIX tables, then a refit).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.errors import BadInput, CaaError, NotFound
from caa.settings import Settings
from producers.replay.sources import FileSource, KinesisSource, S3Source, Source
from producers.replay.tally import ReplayReport


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


def spec(settings: Settings, aws: Callable[[], Aws], opts: Options) -> Spec:
    """The job's source; ``aws()`` is called only for an S3 or Kinesis one (files need no
    AWS: a dry run of files runs with no target chosen)."""
    s3 = [s for s in opts.sources if s.startswith("s3://")]
    streams = [s for s in opts.sources if s.startswith("kinesis:")]
    files = [s for s in opts.sources if s not in s3 and s not in streams]
    if sum(map(bool, (s3, streams, files))) != 1 or len(s3) > 1 or len(streams) > 1:
        raise BadInput("replay: one kind of source per job: files, one s3:// prefix, "
                       "or one kinesis:// stream")
    key: dict[str, Any] = {"format": opts.format, "since": opts.since, "until": opts.until}
    if s3:
        bucket, _, prefix = s3[0].removeprefix("s3://").partition("/")
        client = aws().client("s3")
        return Spec(lambda started: S3Source(client, bucket, prefix, opts.until or started,
                                             opts.format),
                    s3[0], "replay", {**key, "s3": s3[0]})
    if streams:
        name = streams[0].removeprefix("kinesis:").removeprefix("//") or settings.stream_name
        kinesis = aws().client("kinesis")
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


def report_table(title: str, rows: list[tuple[str, str]], report: ReplayReport) -> None:
    r = report
    output.pairs(title, [
        *rows,
        ("records read", f"{r.records:,}"),
        ("  valid", f"{r.valid:,}" + "".join(f"  {k} {n:,}" for k, n in
                                             sorted(r.types.items()))),
        ("  invalid", f"{r.invalid_total:,}" + "".join(f"  {k} {n:,}" for k, n in
                                                      sorted(r.invalid.items()))),
        ("customers" + (" (this run)" if r.runs > 1 else ""), f"{len(r.customers):,}"),
        ("event time", f"{r.first_at or '-'} .. {r.last_at or '-'}")])
    if r.examples:
        output.table("invalid records (first few of each reason)",
                     ("where", "kind", "reason", "sample"),
                     [(e.where, e.kind, e.reason, repr(e.sample)) for e in r.examples])


def replay(settings: Settings, sources: Sequence[str], *, to: str, fmt: str,
           since: datetime | None, until: datetime | None, job: str | None, restart: bool,
           dry_run: bool, as_json: bool, chunk: int | None, group_size: int, share: float,
           refit: bool, aws: Callable[[], Aws] | None = None) -> int:
    """``caa replay``: ``sources`` (files and directories, one ``s3://`` prefix or one
    ``kinesis://`` stream) in ``fmt`` onto the stream (``to="stream"``, using ``share`` of its
    write capacity) or straight into the tables (``"direct"``, ``group_size`` records a batch,
    then a refit unless not ``refit``), ``chunk`` records a commit, as the resumable job
    ``job`` (default: named after the arguments); ``aws`` gives the client factory, called only
    when AWS is needed (not by a dry run of files). :mod:`caa.errors` on bad input, 1 when
    writing failed or a dry run found invalid records, 130 when interrupted."""
    return _replay(settings, Options(
        tuple(sources), to=to, format=fmt, since=since, until=until, job=job, restart=restart,
        dry_run=dry_run, json=as_json, chunk=chunk, group_size=group_size, share=share,
        refit=refit), aws)


def _replay(settings: Settings, opts: Options, aws: Callable[[], Aws] | None = None) -> int:
    from caa import wiring
    from consumers.sources.lease import GroupBusy
    from consumers.stores.dynamo import WriteFailed
    from producers.publisher import PublishError
    from producers.replay.framing import FormatError
    from producers.replay.job import JobMismatch
    from producers.replay.runner import ProgressMeter, dry_run
    from producers.replay.sources import SourceError

    # built on first use (the command line's target check runs with it), then kept
    clients = functools.cache(aws or (lambda: Aws(settings, quiet=opts.json)))
    try:
        sp = spec(settings, clients, opts)
        if opts.dry_run:
            with output.progress() as progress:  # on stderr: `--json` stays parseable
                meter = ProgressMeter(progress, "checking (bytes read)")
                started = datetime.now(UTC)
                report = dry_run(sp.make(started), settings.max_event_bytes, meter,
                                 wiring.time_rule(settings))
            out: dict[str, Any] = {"dry_run": True, "source": sp.summary,
                                   "report": report.as_dict()}
            if opts.json:
                output.print_json(out)
            else:
                report_table("caa replay --dry-run (nothing written)",
                             [("source", sp.summary)], report)
            if report.invalid_total:
                output.note(f"caa replay: {report.invalid_total:,} invalid record(s)")
                return 1
            return 0
        out = asyncio.run(_run(settings, clients(), opts, sp))
    except SourceError as exc:
        raise NotFound(str(exc)) from exc
    except (FormatError, JobMismatch) as exc:
        raise BadInput(str(exc)) from exc
    except GroupBusy as exc:
        raise CaaError(str(exc)) from exc
    except KeyboardInterrupt:
        output.note("caa replay: interrupted; what was acknowledged is committed: run the "
                    "same command again to resume")
        return 130
    except (PublishError, WriteFailed) as exc:
        raise CaaError(f"replay: {exc}", "nothing after the last committed chunk counts "
                       "as sent; run the same command again to resume") from exc
    if opts.json:
        output.print_json(out)
    return 0


async def _run(settings: Settings, aws: Aws, opts: Options,
               sp: Spec) -> dict[str, Any]:
    from caa import wiring
    from consumers.sources.lease import GroupLease
    from producers.replay.job import ReplayJob
    from producers.replay.runner import ProgressMeter, run
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
        with output.progress() as progress:  # the bytes read, then the refit's phases
            outcome = await run(job, sp.make, target, summary=f"{sp.summary} -> {target.name}",
                                max_event_bytes=s.max_event_bytes, restart=opts.restart,
                                chunk_size=opts.chunk, meter=ProgressMeter(progress), log=log,
                                progress=progress, times=wiring.time_rule(s))
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
        rows += [("applied / duplicates / duplicate orders",
                  f"{r.applied:,} / {r.duplicates:,} / {r.duplicate_orders:,}"),
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


# the options' checks: a bad value is a usage error (exit 2) naming the option
def _job_name(text: str | None) -> str | None:
    if text is not None and not JOB_NAME.match(text):
        raise typer.BadParameter("1-100 letters, digits, '.', '_' or '-'")
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
        raise typer.BadParameter(f"not a time: {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _share(x: float) -> float:
    if not 0 < x <= 1:
        raise typer.BadParameter("a fraction in (0, 1]")
    return x


JOB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
Format = Literal["auto", "json", "csv", "cdnow"]  # "auto" and producers.replay.framing.FORMATS


def _replay_command(
    ctx: typer.Context,
    sources: Annotated[list[str], typer.Argument(
        metavar="SOURCE...", show_default=False,
        help="Files or directories, one s3://BUCKET/PREFIX, or one kinesis://STREAM.")],
    to: Annotated[Literal["stream", "direct"], typer.Option(
        help="stream: publish (paced to its capacity); direct: apply straight into the "
             "tables.")] = "stream",
    fmt: Annotated[Format, typer.Option(
        "--format",
        help="auto: .csv is csv, names with 'cdnow' are cdnow, the rest json.")
    ] = "auto",
    since: Annotated[datetime | None, typer.Option(
        parser=_timestamp, metavar="TIME",
        help="kinesis source: records that arrived from this time (ISO 8601 or epoch "
             "seconds; default: the oldest kept).")] = None,
    until: Annotated[datetime | None, typer.Option(
        parser=_timestamp, metavar="TIME",
        help="kinesis/S3 sources: up to this time (default: when the job started).")] = None,
    job: Annotated[str | None, typer.Option(
        callback=_job_name, metavar="NAME",
        help="The job's name, to resume it (default: derived from the arguments).")] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", help="Replay the job from the start.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run",
        help="Read and validate everything, write nothing, print the report; exit 1 if "
             "any record is invalid.")] = False,
    as_json: JsonFlag = False,
    chunk: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Records per commit (default: 2 s of the stream's "
                                 "capacity, at least 2,000; direct: 10,000).")] = None,
    group_size: Annotated[int, typer.Option(
        min=1, metavar="N", help="direct: records per applier batch, whole customers.")] = 300,
    share: Annotated[float, typer.Option(
        callback=_share, metavar="F", help="stream: the fraction in (0, 1] of its write "
                                           "capacity to use (leave room for live producers).")
    ] = 1.0,
    no_refit: Annotated[bool, typer.Option(
        "--no-refit",
        help="direct: skip the refit and prediction rewrite at the end.")] = False,
) -> int:
    inv = current(ctx)
    return replay(inv.settings, sources, to=to, fmt=fmt, since=since, until=until, job=job,
                  restart=restart, dry_run=dry_run, as_json=as_json, chunk=chunk,
                  group_size=group_size, share=share, refit=not no_refit,
                  aws=lambda: inv.aws(quiet=as_json))


EPILOG = "\n\n".join((
    "Sources: files or directories (JSON Lines or Firehose-style concatenated JSON, CSV, the "
    "CDNOW master format; gzipped or not), one s3://BUCKET/PREFIX, or one kinesis://STREAM "
    "(kinesis:// alone: CAA_STREAM_NAME) read from --since.",
    "CSV: one row per line item under a header naming event_id, order_id, customer_id, "
    "occurred_at, currency, total, product_id, category, quantity, unit_price (optional: "
    "channel, consent, schema_version, type, amount); consecutive rows with one event_id "
    "are one event. A type of refund (with amount, no total) or cancellation makes the rows "
    "its lines (empty product columns: none); JSON carries every event type.",
    "Targets: --to stream (CAA_STREAM_NAME, paced to its write capacity) or --to direct (the "
    "consumer's applier on the CAA_TABLE_PREFIX tables, then a refit)."))


def register(app: typer.Typer) -> None:
    app.command("replay", rich_help_panel=output.DATA, epilog=EPILOG,
                help="Backfill from files, an S3 prefix or the stream, onto the stream or "
                     "straight into the tables: a resumable, idempotent job.")(_replay_command)
