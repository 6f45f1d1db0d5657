"""``caa audience``'s core without AWS: the filter expression, the Python predicate, row
shaping, the parallel scan over a paged stand-in client, CSV/JSONL writing, the S3 upload
(one put or a multipart upload) and the command's one-line refusals of bad input."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import zlib
from datetime import date
from typing import Any

import pytest

from caa.cli import main as cli
from caa.cli.audience import chosen_format, destination, resolve_segments
from caa.errors import BadInput
from consumers.ops.audience import (
    COLUMNS,
    AudienceFilter,
    RowWriter,
    ScanStats,
    audience_row,
    scan_audience,
    upload,
)
from consumers.progress import RecordedProgress
from consumers.stores.dynamo import Item
from consumers.stores.predictions import prediction_from_item, prediction_to_item
from models.prediction import (
    Churn,
    LastEvent,
    NextPurchase,
    Prediction,
    SegmentRef,
    Timing,
    Value,
)


def _next(key: str, status: str, kind: str = "product") -> NextPurchase:
    return NextPurchase.model_validate({
        "kind": kind, "key": key, "expected_date": "2024-05-08", "avg_days_between": 7.0,
        "purchases": 4, "confidence": 0.8, "status": status})


def pred(cid: str, segment: str = "Loyal", clv: float | None = 120.0, band: str = "low",
         nexts: tuple[NextPurchase, ...] = (), p_alive: float = 0.9) -> Prediction:
    """A prediction with (``clv`` not None) or without the value, churn and timing parts."""
    extra: dict[str, Any] = {}
    if clv is not None:
        extra = {
            "clv": clv, "churn_band": band,
            "value": Value(clv=clv, clv_low=clv * 0.5, clv_high=clv * 1.5,
                           expected_order_value=25.0, historic=80.0, months=12,
                           monthly_discount_rate=0.01),
            "churn": Churn(p_no_purchase_30d=0.3, p_no_purchase_90d=0.1, band=band),
            "timing": Timing(avg_days_between=30.0, next_order_50=date(2024, 5, 20),
                             next_order_80=date(2024, 6, 10))}
    return Prediction.model_validate({
        "customer_id": cid, "segment": SegmentRef(id=1, name=segment), "p_alive": p_alive,
        "expected_purchases_30d": 0.5, "expected_purchases_90d": 1.4,
        "next_purchases": list(nexts), "alerts": [], "recommendations": [],
        "confidence": 0.6, "data_quality": "B", "data_quality_reason": "ok", "purchases": 4,
        "spend": 80.0, "model_versions": {"bgnbd": 1}, "as_of": "2024-05-01T00:00:00Z",
        "generated_at": "2024-05-01T10:00:00Z",
        "last_event": LastEvent(event_id="e4", occurred_at="2024-05-01T09:00:00Z"), **extra})


def stored(p: Prediction) -> dict[str, Any]:
    """The prediction as a reader gets it back from the table."""
    return prediction_from_item(prediction_to_item(p))


# -- the filter -----------------------------------------------------------------------------

def test_no_condition_no_expression_and_everyone_matches() -> None:
    flt = AudienceFilter()
    assert flt.expression() is None
    assert flt.matches(stored(pred("1", clv=None)))


def test_expression_names_every_flat_condition_with_placeholders() -> None:
    flt = AudienceFilter(segments=("Loyal", "At risk"), churn_bands=("high",), clv_min=5,
                         clv_max=50.5, min_p_alive=0.2, due=True)
    e = flt.expression()
    assert e is not None
    assert e.text == ("#seg IN (:seg0, :seg1) AND #band IN (:band0) AND #clv >= :clv_min "
                      "AND #clv <= :clv_max AND #pa >= :min_p_alive AND contains(#detail, :due)")
    assert e.names == {"#seg": "segment_name", "#band": "churn_band", "#clv": "clv",
                       "#pa": "p_alive", "#detail": "detail"}
    assert e.values == {":seg0": {"S": "Loyal"}, ":seg1": {"S": "At risk"},
                        ":band0": {"S": "high"}, ":clv_min": {"N": "5.0"},
                        ":clv_max": {"N": "50.5"}, ":min_p_alive": {"N": "0.2"},
                        ":due": {"S": '"status":"due"'}}
    args = e.scan_args()
    assert args["FilterExpression"] == e.text
    # every placeholder the text uses is declared, and nothing else is
    assert {w for w in e.text.replace("(", " ").replace(")", " ").replace(",", " ").split()
            if w[0] in "#:"} == set(e.names) | set(e.values)


def test_the_due_mark_is_in_the_stored_detail_exactly_when_something_is_due() -> None:
    due = prediction_to_item(pred("1", nexts=(_next("milk", "due"),)))
    later = prediction_to_item(pred("2", nexts=(_next("milk", "upcoming"),)))
    assert '"status":"due"' in due["detail"]["S"]
    assert '"status":"due"' not in later["detail"]["S"]


@pytest.mark.parametrize(("flt", "wanted"), [
    (AudienceFilter(segments=("Loyal",)), {"a", "c", "e"}),
    (AudienceFilter(churn_bands=("high",)), {"b"}),
    (AudienceFilter(clv_min=100), {"a", "c"}),
    (AudienceFilter(clv_max=100), {"b"}),
    (AudienceFilter(clv_min=50, clv_max=150), {"a"}),
    (AudienceFilter(min_p_alive=0.5), {"a", "b", "c", "e"}),
    (AudienceFilter(due=True), {"a", "b"}),
    (AudienceFilter(due_items=("bread",)), {"b"}),
    (AudienceFilter(due_items=("milk", "bread")), {"a", "b"}),
    (AudienceFilter(due_items=("eggs",)), set()),  # eggs is upcoming, not due
    (AudienceFilter(segments=("Loyal",), due=True), {"a"}),
])
def test_matches(flt: AudienceFilter, wanted: set[str]) -> None:
    preds = [pred("a", clv=120.0, nexts=(_next("milk", "due"), _next("eggs", "upcoming"))),
             pred("b", segment="At risk", clv=20.0, band="high",
                  nexts=(_next("bread", "due", "category"),)),
             pred("c", clv=400.0, nexts=(_next("eggs", "upcoming"),)),
             pred("d", segment="Hibernating", p_alive=0.1, clv=None),
             pred("e", clv=None)]  # no CLV yet: left out by any CLV bound
    assert {p.customer_id for p in preds if flt.matches(stored(p))} == wanted


@pytest.mark.parametrize(("flt", "says"), [
    (AudienceFilter(churn_bands=("hgih",)), "unknown churn band 'hgih'"),
    (AudienceFilter(clv_min=10, clv_max=1), "--clv-min 10 is above --clv-max 1"),
    (AudienceFilter(min_p_alive=1.5), "--min-p-alive 1.5 is not between 0 and 1"),
    # DynamoDB refuses nan (moto answered HTTP 500, read as the endpoint's fault)
    (AudienceFilter(clv_min=float("nan")), "--clv-min nan is not a finite number"),
    (AudienceFilter(clv_max=float("inf")), "--clv-max inf is not a finite number"),
    (AudienceFilter(min_p_alive=float("nan")), "--min-p-alive nan is not a finite number"),
])
def test_problems(flt: AudienceFilter, says: str) -> None:
    assert len(flt.problems()) == 1 and says in flt.problems()[0]


# -- rows -----------------------------------------------------------------------------------

def test_row_has_every_column_from_the_flat_attributes_and_the_detail() -> None:
    p = pred("00042", clv=120.0, band="medium",
             nexts=(_next("milk", "due"), _next("dairy", "due", "category"),
                    _next("milk", "due", "category"), _next("eggs", "later")))
    row = audience_row(stored(p))
    assert tuple(row) == COLUMNS
    assert row == {"customer_id": "00042", "segment": "Loyal", "p_alive": 0.9,
                   "churn_band": "medium", "p_no_purchase_90d": 0.1, "clv": 120.0,
                   "clv_low": 60.0, "clv_high": 180.0, "expected_order_value": 25.0,
                   "spend": 80.0, "currency": "USD", "unconverted": "",
                   "next_order_date": "2024-05-20", "due_items": "milk;dairy"}
    # orders in currencies without a rate are named: a spend of 0 is not a customer who
    # spent nothing (the export dropped it: only `caa show` said so)
    left_out = p.model_copy(update={"unconverted": ["EUR", "JPY"], "spend": 0.0})
    assert audience_row(stored(left_out))["unconverted"] == "EUR;JPY"


def test_row_without_value_parts_has_nones() -> None:
    row = audience_row(stored(pred("7", clv=None)))
    assert row["clv"] is None and row["churn_band"] is None and row["next_order_date"] is None
    assert row["due_items"] == ""


# -- the scan -------------------------------------------------------------------------------

class PagedScan:
    """A DynamoDB client answering Scan only: items split over the segments by a hash of
    the key, ``page`` items per page, the filter ignored (the reader's check decides)."""

    def __init__(self, items: list[Item], page: int = 3,
                 fail_segment: int | None = None) -> None:
        self.items = items
        self.page = page
        self.fail_segment = fail_segment
        self.calls: list[dict[str, Any]] = []

    async def scan(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw)
        await asyncio.sleep(0)
        if kw["Segment"] == self.fail_segment:
            raise RuntimeError("segment broke")
        mine = [i for i in self.items
                if zlib.crc32(i["customer_id"]["S"].encode()) % kw["TotalSegments"]
                == kw["Segment"]]
        start = int(kw.get("ExclusiveStartKey", {}).get("i", 0))
        page = mine[start:start + self.page]
        resp: dict[str, Any] = {"Items": page, "Count": len(page), "ScannedCount": len(page)}
        if start + self.page < len(mine):
            resp["LastEvaluatedKey"] = {"i": start + self.page}
        return resp


async def _collect(client: Any, flt: AudienceFilter, segments: int,
                   progress: RecordedProgress, stats: ScanStats) -> list[dict[str, Any]]:
    return [r async for r in scan_audience(client, "preds", flt, segments, progress, stats)]


def test_parallel_scan_reads_every_segment_page_by_page_and_filters() -> None:
    preds = [pred(f"{i:05d}", segment="Loyal" if i % 3 else "At risk", clv=float(i))
             for i in range(40)]
    client = PagedScan([prediction_to_item(p) for p in preds])
    progress, stats = RecordedProgress(), ScanStats()
    progress.phase("scanning")
    flt = AudienceFilter(segments=("At risk",), clv_min=10)
    rows = asyncio.run(_collect(client, flt, 4, progress, stats))

    assert sorted(r["customer_id"] for r in rows) == [
        p.customer_id for p in preds if p.segment.name == "At risk" and (p.clv or 0) >= 10]
    assert stats.scanned == 40 and stats.matched == len(rows)
    assert progress.done["scanning"] == 40
    assert {c["Segment"] for c in client.calls} == {0, 1, 2, 3}
    assert all(c["TotalSegments"] == 4 for c in client.calls)
    assert stats.pages == len(client.calls) > 4  # paged
    first = client.calls[0]
    assert first["FilterExpression"].startswith("#seg IN (:seg0)")
    projected = {first["ExpressionAttributeNames"][n]
                 for n in first["ProjectionExpression"].split(", ")}
    assert projected == {"customer_id", "segment_id", "segment_name", "p_alive", "clv",
                         "churn_band", "spend", "detail"}


def test_a_failing_segment_stops_the_scan() -> None:
    client = PagedScan([prediction_to_item(pred(f"{i}")) for i in range(30)], fail_segment=2)
    with pytest.raises(RuntimeError, match="segment broke"):
        asyncio.run(_collect(client, AudienceFilter(), 3, RecordedProgress(), ScanStats()))


def test_segments_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        asyncio.run(_collect(PagedScan([]), AudienceFilter(), 0, RecordedProgress(),
                             ScanStats()))


# -- writing --------------------------------------------------------------------------------

def _rows() -> list[dict[str, Any]]:
    return [audience_row(stored(pred("1", nexts=(_next("milk", "due"),)))),
            audience_row(stored(pred("2", segment='Big, "odd" spenders', clv=None)))]


def test_csv_has_a_header_and_round_trips() -> None:
    buf = io.StringIO(newline="")
    w = RowWriter(buf, "csv")
    for r in _rows():
        w.write(r)
    assert w.written == 2
    lines = buf.getvalue().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    back = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [b["customer_id"] for b in back] == ["1", "2"]
    assert back[0]["due_items"] == "milk" and float(back[0]["clv"]) == 120.0
    assert back[1]["segment"] == 'Big, "odd" spenders' and back[1]["clv"] == ""


def test_jsonl_is_one_object_a_line() -> None:
    buf = io.StringIO()
    w = RowWriter(buf, "jsonl")
    for r in _rows():
        w.write(r)
    back = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert back == _rows()
    assert back[1]["clv"] is None


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        RowWriter(io.StringIO(), "xml")  # type: ignore[arg-type]


class FakeS3:
    def __init__(self, fail_part: int | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.parts: dict[int, bytes] = {}
        self.calls: list[str] = []
        self.fail_part = fail_part

    async def put_object(self, Bucket: str, Key: str, Body: bytes, **_: Any) -> dict[str, Any]:
        self.calls.append("put_object")
        self.objects[Key] = Body
        return {}

    async def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        self.calls.append("create")
        return {"UploadId": "u1"}

    async def upload_part(self, PartNumber: int, Body: bytes, **_: Any) -> dict[str, Any]:
        self.calls.append(f"part {PartNumber}")
        if PartNumber == self.fail_part:
            raise RuntimeError("part failed")
        self.parts[PartNumber] = Body
        return {"ETag": f"e{PartNumber}"}

    async def complete_multipart_upload(self, Key: str, MultipartUpload: dict[str, Any],
                                        **_: Any) -> dict[str, Any]:
        self.calls.append("complete")
        assert [p["PartNumber"] for p in MultipartUpload["Parts"]] == sorted(self.parts)
        self.objects[Key] = b"".join(self.parts[n] for n in sorted(self.parts))
        return {}

    async def abort_multipart_upload(self, **_: Any) -> dict[str, Any]:
        self.calls.append("abort")
        return {}


@pytest.mark.parametrize(("size", "calls"), [
    (0, ["put_object"]), (10, ["put_object"]), (16, ["put_object"]),
    (17, ["create", "part 1", "part 2", "complete"]),
    (40, ["create", "part 1", "part 2", "part 3", "complete"]),
])
def test_upload_puts_small_files_and_sends_big_ones_in_parts(size: int,
                                                            calls: list[str]) -> None:
    s3 = FakeS3()
    data = bytes(range(size))
    sent = asyncio.run(upload(s3, io.BytesIO(data), "b", "k.csv", "text/csv", part_bytes=16))
    assert s3.calls == calls and sent == size and s3.objects["k.csv"] == data


def test_a_failed_part_aborts_the_upload() -> None:
    s3 = FakeS3(fail_part=2)
    with pytest.raises(RuntimeError, match="part failed"):
        asyncio.run(upload(s3, io.BytesIO(bytes(40)), "b", "k", "text/csv", part_bytes=16))
    assert s3.calls[-1] == "abort" and "k" not in s3.objects


# -- the command's checks -------------------------------------------------------------------

def test_destination_and_format() -> None:
    assert destination("s3://b/x/y.jsonl").bucket == "b"
    assert chosen_format(destination("s3://b/x/y.JSONL"), None) == "jsonl"
    assert chosen_format(destination("out.csv"), None) == "csv"
    assert chosen_format(destination("out.txt"), "JSONL") == "jsonl"
    for bad in ("s3://b", "s3://b/", "s3:///k.csv", "/no/such/dir/x.csv"):
        with pytest.raises(BadInput):
            destination(bad)
    with pytest.raises(BadInput, match="cannot tell the format"):
        chosen_format(destination("out.txt"), None)
    with pytest.raises(BadInput, match="unknown format"):
        chosen_format(destination("out.csv"), "xml")


def test_segment_names_are_resolved_or_refused_with_the_known_ones() -> None:
    assert resolve_segments(["at RISK", "At risk"], ["Loyal", "At risk"]) == ("At risk",)
    with pytest.raises(BadInput) as err:
        resolve_segments(["Loyl"], ["Loyal", "At risk"])
    assert err.value.line() == "unknown segment 'Loyl': known segments: At risk, Loyal"


@pytest.mark.parametrize(("argv", "says"), [
    (["--clv-min", "10", "--clv-max", "1"], "--clv-min 10 is above --clv-max 1"),
    (["--churn-band", "hot"], "unknown churn band 'hot'"),
    (["-o", "out.txt"], "cannot tell the format"),
    (["-o", "s3://bucket-only"], "s3://BUCKET/KEY"),
])
def test_bad_input_is_one_line_and_exit_7_before_any_aws(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)
    if "-o" not in argv:
        argv = [*argv, "-o", "out.csv"]
    assert cli.main(["audience", *argv]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("caa: ") and says in err[0]
    assert not (tmp_path / "out.csv").exists()
