"""An audience for a marketer: the customers whose prediction matches a filter, one row each,
read by a parallel Scan of the predictions table (never a read per customer).

:class:`AudienceFilter` says who is wanted. The conditions on the flat attributes of the
predictions item (``segment_name``, ``churn_band``, ``clv``, ``p_alive``; see
:mod:`consumers.stores.predictions`) become a DynamoDB ``FilterExpression``, so the rows
that do not match never leave DynamoDB; "has a due next purchase" lives in the JSON
attribute ``detail`` and is checked here (``contains(detail, '"status":"due"')`` only
narrows the scan first). :meth:`AudienceFilter.matches` is the whole predicate in Python,
applied to every row the scan returns, so the expression can only narrow, never decide.

:func:`scan_audience` yields :data:`Row` values, shaped by :func:`audience_row`:

=====================  ======================================================================
column                 meaning (money in ``currency``, major units)
=====================  ======================================================================
customer_id            the customer
segment                the segment's name
p_alive                P(the customer is still active), 0..1
churn_band             low / medium / high (models.learn.churn)
p_no_purchase_90d      P(no purchase in the next 90 days), 0..1
clv, clv_low,          expected discounted value of the next months and its 80% interval
clv_high
expected_order_value   the Gamma-Gamma expected value of one order
spend                  spend so far, net of refunds
currency               the reporting currency (ISO 4217)
unconverted            the currencies of orders left out of the money columns for want of an
                       exchange rate, joined by ";" (empty: none; else a spend of 0 is not
                       a customer who spent nothing)
next_order_date        the date by which a next order has a 50% probability (ISO date)
due_items              keys of the next purchases whose status is "due", joined by ";"
=====================  ======================================================================

A value the prediction does not have (say ``clv`` before the value model ran) is None: an
empty CSV cell, a JSON ``null``. :class:`RowWriter` writes CSV (with a header) or JSONL;
:func:`upload` puts a finished export file to S3 (one PutObject, or a multipart upload in
:data:`PART_BYTES` parts for a big one), reading it part by part.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal

from consumers.progress import NO_PROGRESS, Progress
from consumers.stores.dynamo import Item, to_attr
from consumers.stores.predictions import prediction_from_item

__all__ = ["BANDS", "COLUMNS", "FORMATS", "PART_BYTES", "AudienceFilter", "Expression",
           "Format", "Row", "RowWriter", "ScanStats", "audience_row", "due_keys",
           "scan_audience", "upload"]

Format = Literal["csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")
#: the churn bands of :class:`models.prediction.Churn`
BANDS: tuple[str, ...] = ("low", "medium", "high")
#: the exported columns, in order (the CSV header)
COLUMNS: tuple[str, ...] = (
    "customer_id", "segment", "p_alive", "churn_band", "p_no_purchase_90d", "clv", "clv_low",
    "clv_high", "expected_order_value", "spend", "currency", "unconverted", "next_order_date",
    "due_items")
#: one exported customer: a value per :data:`COLUMNS` entry (None: not known)
Row = dict[str, str | float | None]
#: the predictions attributes a row is made from (what the Scan projects)
PROJECTED: tuple[str, ...] = ("customer_id", "segment_id", "segment_name", "p_alive", "clv",
                              "churn_band", "spend", "detail")
#: ``detail`` of a prediction with a due next purchase contains this (compact JSON, and
#: only :class:`models.prediction.NextPurchase` has a ``status``)
_DUE_MARK = '"status":"due"'
#: the size of each part of a multipart upload (S3's minimum is 5 MiB), bytes
PART_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Expression:
    """A Scan's ``FilterExpression`` with its placeholders (``#name``/``:value``)."""

    text: str
    names: dict[str, str]
    values: dict[str, Item]

    def scan_args(self) -> dict[str, Any]:
        """The Scan keyword arguments that apply it."""
        out: dict[str, Any] = {"FilterExpression": self.text,
                               "ExpressionAttributeNames": self.names}
        if self.values:
            out["ExpressionAttributeValues"] = self.values
        return out


@dataclass(frozen=True)
class AudienceFilter:
    """Who is in the audience: every condition given must hold (an empty one: everyone).

    ``segments``: segment names (any of them); ``churn_bands``: any of :data:`BANDS`;
    ``clv_min``/``clv_max``: bounds on ``clv`` (inclusive, reporting currency, major
    units; a customer without a CLV is left out by either); ``min_p_alive``: 0..1;
    ``due``: at least one next purchase with status "due", and with ``due_items`` one of
    those keys (a product or a category key; ``due_items`` implies ``due``).
    """

    segments: tuple[str, ...] = ()
    churn_bands: tuple[str, ...] = ()
    clv_min: float | None = None
    clv_max: float | None = None
    min_p_alive: float | None = None
    due: bool = False
    due_items: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """What is wrong with the filter itself (empty: nothing), one phrase each."""
        out = [f"unknown churn band {b!r} (one of {', '.join(BANDS)})"
               for b in self.churn_bands if b not in BANDS]
        odd = [f"{flag} {value:g} is not a finite number"  # DynamoDB takes no nan or inf
               for flag, value in (("--clv-min", self.clv_min), ("--clv-max", self.clv_max),
                                   ("--min-p-alive", self.min_p_alive))
               if value is not None and not math.isfinite(value)]
        if odd:  # the comparisons below mean nothing with them
            return out + odd
        if self.clv_min is not None and self.clv_max is not None \
                and self.clv_min > self.clv_max:
            out.append(f"--clv-min {self.clv_min:g} is above --clv-max {self.clv_max:g}")
        if self.min_p_alive is not None and not 0.0 <= self.min_p_alive <= 1.0:
            out.append(f"--min-p-alive {self.min_p_alive:g} is not between 0 and 1")
        return out

    @property
    def wants_due(self) -> bool:
        return self.due or bool(self.due_items)

    def expression(self) -> Expression | None:
        """The ``FilterExpression`` of the conditions DynamoDB can check (None: none).

        >>> e = AudienceFilter(segments=("Loyal",), clv_min=10.0).expression()
        >>> e.text, e.names, e.values
        ('#seg IN (:seg0) AND #clv >= :clv_min', {'#seg': 'segment_name', '#clv': 'clv'}, \
{':seg0': {'S': 'Loyal'}, ':clv_min': {'N': '10.0'}})
        """
        parts: list[str] = []
        names: dict[str, str] = {}
        values: dict[str, Item] = {}

        def any_of(name: str, attr: str, wanted: Collection[str]) -> None:
            if not wanted:
                return
            names[f"#{name}"] = attr
            ph = [f":{name}{i}" for i in range(len(wanted))]
            values.update({p: {"S": w} for p, w in zip(ph, wanted, strict=True)})
            parts.append(f"#{name} IN ({', '.join(ph)})")

        def bound(name: str, attr: str, op: str, label: str, v: float | None) -> None:
            if v is None:
                return
            names[f"#{name}"] = attr
            values[f":{label}"] = to_attr(float(v))
            parts.append(f"#{name} {op} :{label}")

        any_of("seg", "segment_name", self.segments)
        any_of("band", "churn_band", self.churn_bands)
        bound("clv", "clv", ">=", "clv_min", self.clv_min)
        bound("clv", "clv", "<=", "clv_max", self.clv_max)
        bound("pa", "p_alive", ">=", "min_p_alive", self.min_p_alive)
        if self.wants_due:  # narrows only: matches() decides
            names["#detail"] = "detail"
            values[":due"] = {"S": _DUE_MARK}
            parts.append("contains(#detail, :due)")
        return Expression(" AND ".join(parts), names, values) if parts else None

    def matches(self, pred: Mapping[str, Any]) -> bool:
        """Whether a prediction (the :func:`prediction_from_item` shape) is in the audience."""
        if self.segments and (pred.get("segment") or {}).get("name") not in self.segments:
            return False
        if self.churn_bands and pred.get("churn_band") not in self.churn_bands:
            return False
        clv = _num(pred.get("clv"))
        if self.clv_min is not None and (clv is None or clv < self.clv_min):
            return False
        if self.clv_max is not None and (clv is None or clv > self.clv_max):
            return False
        if self.min_p_alive is not None and float(pred.get("p_alive") or 0.0) \
                < self.min_p_alive:
            return False
        if self.wants_due:
            keys = due_keys(pred)
            return bool(set(keys) & set(self.due_items)) if self.due_items else bool(keys)
        return True


def due_keys(pred: Mapping[str, Any]) -> list[str]:
    """The keys of the prediction's next purchases whose status is "due", in its order,
    each once."""
    keys = [str(n["key"]) for n in pred.get("next_purchases") or ()
            if n.get("status") == "due"]
    return list(dict.fromkeys(keys))


def audience_row(pred: Mapping[str, Any]) -> Row:
    """The exported row of a prediction (see the module docstring for the columns)."""
    value = pred.get("value") or {}
    churn = pred.get("churn") or {}
    timing = pred.get("timing") or {}
    clv = pred.get("clv")
    return {
        "customer_id": str(pred["customer_id"]),
        "segment": str((pred.get("segment") or {}).get("name") or ""),
        "p_alive": _num(pred.get("p_alive")),
        "churn_band": pred.get("churn_band") or churn.get("band"),
        "p_no_purchase_90d": _num(churn.get("p_no_purchase_90d")),
        "clv": _num(clv if clv is not None else value.get("clv")),
        "clv_low": _num(value.get("clv_low")),
        "clv_high": _num(value.get("clv_high")),
        "expected_order_value": _num(value.get("expected_order_value")),
        "spend": _num(pred.get("spend")),
        "currency": pred.get("currency"),
        "unconverted": ";".join(map(str, pred.get("unconverted") or ())),
        "next_order_date": timing.get("next_order_50"),
        "due_items": ";".join(due_keys(pred)),
    }


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass
class ScanStats:
    """How far a :func:`scan_audience` got: items DynamoDB read (``scanned``, its
    ``ScannedCount``), rows yielded (``matched``) and Scan pages (``pages``)."""

    scanned: int = 0
    matched: int = 0
    pages: int = 0


@dataclass
class _Done:
    """A scan segment finished (``error``: it failed)."""

    error: BaseException | None = None


async def scan_audience(client: Any, table: str, flt: AudienceFilter, segments: int = 4,
                        progress: Progress = NO_PROGRESS,
                        stats: ScanStats | None = None) -> AsyncIterator[Row]:
    """The audience's rows, read by a parallel Scan of ``table`` (an aiobotocore DynamoDB
    ``client``) in ``segments`` segments, each paged on its own; the rows come in no
    particular order. At most a few pages (1 MB each) wait at any time, so memory stays
    bounded however big the table. ``progress`` advances by the items scanned; ``stats``
    (when given) counts as it goes. A failing segment stops the others and raises."""
    if segments < 1:
        raise ValueError(f"segments must be at least 1, not {segments}")
    stats = stats if stats is not None else ScanStats()
    names = {f"#p{i}": a for i, a in enumerate(PROJECTED)}
    base: dict[str, Any] = {"TableName": table, "TotalSegments": segments,
                            "ProjectionExpression": ", ".join(names)}
    expr = flt.expression()
    if expr is not None:
        base.update(expr.scan_args())
        base["ExpressionAttributeNames"] = {**expr.names, **names}
    else:
        base["ExpressionAttributeNames"] = names
    queue: asyncio.Queue[list[Item] | _Done] = asyncio.Queue(2 * segments)

    async def part(seg: int) -> None:
        args = {**base, "Segment": seg}
        try:
            while True:
                resp = await client.scan(**args)
                stats.scanned += int(resp.get("ScannedCount", 0))
                stats.pages += 1
                progress.advance(int(resp.get("ScannedCount", 0)))
                await queue.put(resp.get("Items", []))
                if "LastEvaluatedKey" not in resp:
                    break
                args["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            await queue.put(_Done(exc))
            return
        await queue.put(_Done())

    tasks = [asyncio.create_task(part(s)) for s in range(segments)]
    try:
        running = segments
        while running:
            got = await queue.get()
            if isinstance(got, _Done):
                if got.error is not None:
                    raise got.error
                running -= 1
                continue
            for item in got:
                pred = prediction_from_item(item)
                if flt.matches(pred):
                    stats.matched += 1
                    yield audience_row(pred)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class RowWriter:
    """Rows to a text file ``fh`` (opened with ``newline=""``) as CSV (a header, then one
    line per row; None is an empty cell) or JSONL (one JSON object per line; None is
    null); ``written`` counts the rows."""

    def __init__(self, fh: IO[str], fmt: Format) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
        self.fh = fh
        self.fmt = fmt
        self.written = 0
        self._csv: csv.DictWriter[str] | None = None
        if fmt == "csv":
            self._csv = csv.DictWriter(fh, COLUMNS, lineterminator="\n")
            self._csv.writeheader()

    def write(self, row: Row) -> None:
        if self._csv is not None:
            self._csv.writerow({k: "" if v is None else v for k, v in row.items()})
        else:
            self.fh.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.written += 1


async def upload(s3: Any, fh: IO[bytes], bucket: str, key: str, content_type: str,
                 part_bytes: int = PART_BYTES) -> int:
    """Put the file ``fh`` (read from its start) to ``s3://bucket/key`` with an aiobotocore
    S3 client: one PutObject when it fits in one part, else a multipart upload of
    ``part_bytes`` parts (aborted when a part fails). Reads one part at a time; returns
    the bytes uploaded."""
    fh.seek(0)
    first = fh.read(part_bytes)
    nxt = fh.read(part_bytes)
    if not nxt:
        await s3.put_object(Bucket=bucket, Key=key, Body=first, ContentType=content_type)
        return len(first)
    started = await s3.create_multipart_upload(Bucket=bucket, Key=key,
                                               ContentType=content_type)
    upload_id = started["UploadId"]
    done: list[dict[str, Any]] = []
    total = 0
    try:
        chunk = first
        while chunk:
            n = len(done) + 1
            resp = await s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                        PartNumber=n, Body=chunk)
            done.append({"PartNumber": n, "ETag": resp["ETag"]})
            total += len(chunk)
            chunk, nxt = nxt, (fh.read(part_bytes) if nxt else b"")
        await s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                           MultipartUpload={"Parts": done})
    except BaseException:
        await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    return total
