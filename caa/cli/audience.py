"""``caa audience``: export the customers a marketer asks for (segment, churn band, CLV
range, due next purchases) as CSV or JSONL, to a file, stdout or S3.

The predictions table is read by a parallel Scan whose filter DynamoDB applies
(:mod:`consumers.ops.audience`); nothing is read per customer. A file is written beside its
destination and renamed into place when complete (no half-written export under the
asked-for name); an ``s3://`` export is written to a temporary file, then uploaded (a
multipart upload when large), so memory stays bounded either way. Progress (items scanned)
goes to stderr, then one line: ``wrote N customers of M scanned to DEST``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from botocore.exceptions import ClientError

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.errors import BadInput, NotFound
from caa.settings import Settings
from consumers.ops.audience import (
    BANDS,
    FORMATS,
    AudienceFilter,
    Format,
    Row,
    RowWriter,
    ScanStats,
    scan_audience,
    upload,
)
from consumers.progress import Progress

#: the file suffixes that choose a format when ``--format`` is not given
SUFFIXES: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CONTENT_TYPES: dict[Format, str] = {"csv": "text/csv; charset=utf-8",
                                    "jsonl": "application/x-ndjson; charset=utf-8"}
#: the fallback name of a segment when the segment model names none (consumers.refit)
_NUMBERED = re.compile(r"segment \d+")


@dataclass(frozen=True)
class Destination:
    """Where the export goes: ``-`` (stdout), a local path, or ``s3://bucket/key``."""

    text: str
    bucket: str | None = None
    key: str | None = None

    @property
    def stdout(self) -> bool:
        return self.text == "-"

    @property
    def path(self) -> Path:
        return Path(self.text)

    @property
    def suffix(self) -> str:
        return Path(self.key or self.text).suffix.lower()


def destination(text: str) -> Destination:
    """``--output`` parsed; :class:`BadInput` for an ``s3://`` URL without bucket or key, or
    a local path whose directory does not exist.

    >>> destination("s3://exports/spring/loyal.csv").key
    'spring/loyal.csv'
    """
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        if not bucket or not key or key.endswith("/"):
            raise BadInput(f"--output {text!r}: an S3 destination is s3://BUCKET/KEY, "
                           "with a file name at the end")
        return Destination(text, bucket, key)
    if text != "-":
        path = Path(text)
        if not path.parent.is_dir():
            raise BadInput(f"--output {text!r}: no directory {str(path.parent)!r}")
        if path.is_dir():
            raise BadInput(f"--output {text!r} is a directory: name a file")
    return Destination(text)


def chosen_format(dest: Destination, fmt: str | None) -> Format:
    """``--format`` if given, else the destination's suffix (stdout: CSV).

    >>> chosen_format(destination("s3://b/a.jsonl"), None), chosen_format(destination("-"), None)
    ('jsonl', 'csv')
    """
    if fmt is not None:
        for f in FORMATS:
            if f == fmt.lower():
                return f
        raise BadInput(f"unknown format {fmt!r}", f"one of {', '.join(FORMATS)}")
    if dest.stdout:
        return "csv"
    found = SUFFIXES.get(dest.suffix)
    if found is None:
        raise BadInput(f"cannot tell the format of {dest.text!r} from its suffix",
                       f"name it .csv or .jsonl, or give --format {'|'.join(FORMATS)}")
    return found


def resolve_segments(asked: Collection[str], known: Collection[str]) -> tuple[str, ...]:
    """The asked segment names spelled as the predictions spell them (case does not
    matter); :class:`BadInput` naming the known ones for a name that is none of them.
    ``segment N`` (a segment the model left unnamed) is taken as it is.

    >>> resolve_segments(["loyal", "segment 3"], ["Loyal", "At risk"])
    ('Loyal', 'segment 3')
    """
    by_lower = {k.lower(): k for k in known}
    out: list[str] = []
    for name in asked:
        found = by_lower.get(name.strip().lower())
        if found is None and _NUMBERED.fullmatch(name.strip()):
            found = name.strip()
        if found is None:
            raise BadInput(f"unknown segment {name!r}",
                           f"known segments: {', '.join(sorted(known))}")
        out.append(found)
    return tuple(dict.fromkeys(out))


async def known_segments(db: Any, settings: Settings) -> list[str]:
    """The segment names in use (the last refit's sizes, as ``caa segments`` shows them)
    and every name the segment model can give."""
    from consumers.refit import SIZES
    from consumers.stores.dynamo import Dynamo
    from consumers.stores.model_snapshots import ModelStore
    from models.learn.segment_names import SEGMENT_NAMES

    sized = await ModelStore(Dynamo(db), settings.tables.models).load(SIZES)
    in_use = list(sized[1].get("sizes", {})) if sized else []
    return list(dict.fromkeys([*in_use, *SEGMENT_NAMES]))


async def _approx_items(db: Any, table: str) -> int | None:
    """DynamoDB's item count of ``table`` (refreshed about every six hours), or None when
    it is unknown or zero: the progress bar's total, an estimate."""
    try:
        resp = await db.describe_table(TableName=table)
    except ClientError:
        return None  # no DescribeTable permission: progress without a total
    count = int(resp.get("Table", {}).get("ItemCount") or 0)
    return count or None


async def _check_bucket(s3: Any, bucket: str) -> None:
    """:class:`NotFound` before the scan when the bucket is not there."""
    try:
        await s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in {"404", "NoSuchBucket"}:
            raise NotFound(f"no S3 bucket {bucket!r}", "create it, or check the name") from None
        raise


async def _write(rows: AsyncIterator[Row], fh: IO[str], fmt: Format) -> int:
    writer = RowWriter(fh, fmt)
    async for row in rows:
        writer.write(row)
    fh.flush()
    return writer.written


async def export(settings: Settings, aws: Aws, flt: AudienceFilter, dest: Destination,
                 fmt: Format, segments: int, progress: Progress) -> ScanStats:
    """Scan, filter and write the audience to ``dest``: how many were scanned and written."""
    table = settings.tables.predictions
    async with aws.clients("dynamodb", *(["s3"] if dest.bucket else [])) as c:
        db = c["dynamodb"]
        if flt.segments:
            flt = replace(flt, segments=resolve_segments(
                flt.segments, await known_segments(db, settings)))
        if dest.bucket:
            await _check_bucket(c["s3"], dest.bucket)
        progress.phase("scanning predictions", total=await _approx_items(db, table))
        stats = ScanStats()
        rows = scan_audience(db, table, flt, segments, progress, stats)
        if dest.stdout:
            await _write(rows, sys.stdout, fmt)
        elif dest.bucket and dest.key:
            with tempfile.TemporaryFile() as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                try:
                    await _write(rows, text, fmt)
                finally:
                    text.detach()  # keep ``raw`` open for the upload
                progress.phase("uploading to S3")
                await upload(c["s3"], raw, dest.bucket, dest.key, CONTENT_TYPES[fmt])
        else:
            part = dest.path.with_name(f".{dest.path.name}.{os.getpid()}.partial")
            try:
                with part.open("w", encoding="utf-8", newline="") as fh:
                    await _write(rows, fh, fmt)
                part.replace(dest.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
    return stats


def audience(settings: Settings, connect: Callable[[], Aws], flt: AudienceFilter,
             output_to: str, fmt: str | None, segments: int) -> int:
    """``caa audience``: :class:`BadInput` for a filter or destination that cannot work,
    before any AWS client is built (``connect`` builds them)."""
    problems = flt.problems()
    if problems:
        raise BadInput("; ".join(problems))
    dest = destination(output_to)
    chosen = chosen_format(dest, fmt)
    aws = connect()
    with output.progress() as progress:
        stats = asyncio.run(export(settings, aws, flt, dest, chosen, segments, progress))
    where = "stdout" if dest.stdout else dest.text
    output.note(f"wrote {stats.matched:,} customers of {stats.scanned:,} scanned to {where}")
    return 0


def _audience(
    ctx: typer.Context,
    output_to: Annotated[str, typer.Option(
        "--output", "-o", metavar="PATH|s3://BUCKET/KEY|-",
        help="Where to write: a file, s3://BUCKET/KEY, or - for stdout.",
        show_default=False)],
    segment: Annotated[list[str] | None, typer.Option(
        "--segment", metavar="NAME",
        help="Only this segment (repeat for several; see `caa segments`).")] = None,
    churn_band: Annotated[list[str] | None, typer.Option(
        "--churn-band", metavar="|".join(BANDS),
        help="Only this churn band (repeat for several).")] = None,
    clv_min: Annotated[float | None, typer.Option(
        "--clv-min", metavar="AMOUNT",
        help="Only customers whose CLV is at least this (reporting currency).")] = None,
    clv_max: Annotated[float | None, typer.Option(
        "--clv-max", metavar="AMOUNT",
        help="Only customers whose CLV is at most this (reporting currency).")] = None,
    min_p_alive: Annotated[float | None, typer.Option(
        "--min-p-alive", metavar="P",
        help="Only customers at least this likely to be still active (0 to 1).")] = None,
    due: Annotated[bool, typer.Option(
        "--due", help="Only customers with a next purchase that is due now.")] = False,
    due_item: Annotated[list[str] | None, typer.Option(
        "--due-item", metavar="KEY",
        help="Only customers for whom this product or category is due (repeat for "
             "several; implies --due).")] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", metavar="|".join(FORMATS),
        help="The file format (default: from the output's suffix; stdout: csv).",
        show_default=False)] = None,
    segments: Annotated[int, typer.Option(
        "--segments", min=1, max=64, metavar="N",
        help="Parallel scan segments (more: faster on a big table, more read capacity "
             "at once).")] = 4,
) -> int:
    inv = current(ctx)
    flt = AudienceFilter(
        segments=tuple(segment or ()), churn_bands=tuple(b.lower() for b in churn_band or ()),
        clv_min=clv_min, clv_max=clv_max, min_p_alive=min_p_alive, due=due,
        due_items=tuple(due_item or ()))
    return audience(inv.settings, inv.aws, flt, output_to, fmt, segments)


def register(app: typer.Typer) -> None:
    app.command("audience", rich_help_panel=output.CUSTOMERS,
                help="Export an audience: the customers of given segments, churn bands, CLV "
                     "range or due purchases, as CSV or JSONL to a file or S3. Every option "
                     "given must hold; a repeated one matches any of its values.")(_audience)
