"""``caa audience`` against moto's server: a CDNOW slice published and consumed by the real
consumer, then audiences exported to CSV, JSONL and S3 and checked against a full read of
the predictions table (every exported customer matches, every matching one is exported)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import statistics
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from consumers.ops.audience import COLUMNS, due_keys, upload
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from producers.publisher import Publisher
from tests.integration.test_pipeline import cdnow_slice

pytestmark = pytest.mark.integration


def _predictions(s: Settings) -> dict[str, dict[str, Any]]:
    """Every prediction in the table (one plain scan), by customer."""
    async def run() -> list[dict[str, Any]]:
        async with Aws(s).clients("dynamodb") as c:
            return await PredictionStore(Dynamo(c["dynamodb"]), s.tables.predictions).all()

    return {p["customer_id"]: p for p in asyncio.run(run())}


@pytest.fixture
def consumed(fresh_settings: Callable[..., Settings]) -> tuple[Settings,
                                                                dict[str, dict[str, Any]]]:
    """A CDNOW slice (400 customers) consumed until idle: the settings and the predictions."""
    s = fresh_settings(segment_warmup="50", refit_interval_s="0")
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(cdnow_slice())
    assert cli.main(["consume", "--until-idle", "--json"]) == 0
    preds = _predictions(s)
    assert len(preds) > 100
    return s, preds


def _export(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, int]:
    """Run ``caa audience argv``: (written, scanned) from its last stderr line."""
    capsys.readouterr()
    assert cli.main(["audience", *argv]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    words = last.replace(",", "").split()
    assert words[0] == "wrote" and words[2:4] == ["customers", "of"], last
    return int(words[1]), int(words[4])


def _csv(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(COLUMNS)
    return list(csv.DictReader(io.StringIO(text)))


def _jsonl(text: str) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in text.splitlines()]
    assert all(tuple(r) == COLUMNS for r in rows)
    return rows


def _same_as_table(row: dict[str, Any], p: dict[str, Any]) -> None:
    """One exported row says what the customer's prediction says."""
    assert row["segment"] == p["segment"]["name"]
    assert float(row["p_alive"]) == pytest.approx(p["p_alive"])
    assert float(row["spend"]) == pytest.approx(p["spend"])
    if p.get("clv") is not None:
        assert float(row["clv"]) == pytest.approx(p["clv"])
        assert row["churn_band"] == p["churn_band"]
    assert (row["due_items"] or "") == ";".join(due_keys(p))


def test_a_segment_exports_to_csv_and_jsonl_exactly_its_customers(
    consumed: tuple[Settings, dict[str, dict[str, Any]]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _s, preds = consumed
    sizes = Counter(p["segment"]["name"] for p in preds.values())
    name, size = sizes.most_common()[-1] if len(sizes) > 1 else sizes.most_common(1)[0]
    wanted = {c for c, p in preds.items() if p["segment"]["name"] == name}
    assert len(wanted) == size > 0

    out = tmp_path / "audience.csv"
    written, scanned = _export(capsys, "--segment", name, "--output", str(out))
    rows = _csv(out)
    assert {r["customer_id"] for r in rows} == wanted
    assert written == len(rows) == size and scanned == len(preds)
    for r in rows:
        _same_as_table(r, preds[r["customer_id"]])

    # JSONL by suffix, the name in another case, and the same audience
    out = tmp_path / "audience.jsonl"
    _export(capsys, "--segment", name.upper(), "-o", str(out), "--segments", "3")
    jrows = _jsonl(out.read_text(encoding="utf-8"))
    assert {r["customer_id"] for r in jrows} == wanted
    for r in jrows:
        _same_as_table(r, preds[r["customer_id"]])
    assert not list(tmp_path.glob(".*partial"))  # the partial files were renamed

    # two segments: both sets
    if len(sizes) > 1:
        other = sizes.most_common(1)[0][0]
        _export(capsys, "--segment", name, "--segment", other, "-o", str(out))
        got = {r["customer_id"] for r in _jsonl(out.read_text(encoding="utf-8"))}
        assert got == {c for c, p in preds.items() if p["segment"]["name"] in {name, other}}


def test_churn_band_clv_range_and_due_filters_match_the_table(
    consumed: tuple[Settings, dict[str, dict[str, Any]]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _s, preds = consumed
    valued = [p for p in preds.values() if p.get("clv") is not None]
    # the forecaster fills clv / churn_band: without them these filters cannot be checked
    assert len(valued) > len(preds) // 2, "predictions carry no clv / churn_band"
    out = tmp_path / "a.jsonl"

    bands = Counter(p["churn_band"] for p in valued)
    band = bands.most_common(1)[0][0]
    _export(capsys, "--churn-band", band, "-o", str(out))
    got = {r["customer_id"] for r in _jsonl(out.read_text())}
    assert got == {p["customer_id"] for p in valued if p["churn_band"] == band} != set()

    clvs = sorted(float(p["clv"]) for p in valued)
    lo, hi = statistics.quantiles(clvs, n=4)[0], statistics.quantiles(clvs, n=4)[2]
    _export(capsys, "--clv-min", repr(lo), "--clv-max", repr(hi), "-o", str(out))
    rows = _jsonl(out.read_text())
    expected = {p["customer_id"] for p in valued if lo <= float(p["clv"]) <= hi}
    assert {r["customer_id"] for r in rows} == expected != set()
    assert all(lo <= r["clv"] <= hi for r in rows)

    # all of them at once: the intersection
    _export(capsys, "--churn-band", band, "--clv-min", repr(lo), "-o", str(out))
    got = {r["customer_id"] for r in _jsonl(out.read_text())}
    assert got == {p["customer_id"] for p in valued
                   if p["churn_band"] == band and float(p["clv"]) >= lo}

    # due next purchases, any or of one key (CDNOW: category "music", product "cdnow-cd")
    _export(capsys, "--due", "-o", str(out))
    rows = _jsonl(out.read_text())
    assert {r["customer_id"] for r in rows} == {c for c, p in preds.items() if due_keys(p)}
    assert rows and all(r["due_items"] for r in rows)
    key = Counter(k for p in preds.values() for k in due_keys(p)).most_common(1)[0][0]
    _export(capsys, "--due-item", key, "--segment", rows[0]["segment"], "-o", str(out))
    got = {r["customer_id"] for r in _jsonl(out.read_text())}
    assert got == {c for c, p in preds.items()
                   if key in due_keys(p) and p["segment"]["name"] == rows[0]["segment"]} != set()


def test_an_audience_goes_to_s3_or_stdout_and_bad_input_is_one_line(
    consumed: tuple[Settings, dict[str, dict[str, Any]]], capsys: pytest.CaptureFixture[str],
) -> None:
    s, preds = consumed
    s3 = Aws(s).client("s3")
    bucket = s.table_prefix.strip("-").lower() + "-exports"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": s.region})
    name = next(iter(preds.values()))["segment"]["name"]
    wanted = {c for c, p in preds.items() if p["segment"]["name"] == name}

    written, _ = _export(capsys, "--segment", name, "-o", f"s3://{bucket}/spring/a.jsonl")
    body = s3.get_object(Bucket=bucket, Key="spring/a.jsonl")["Body"].read().decode()
    assert {r["customer_id"] for r in _jsonl(body)} == wanted and written == len(wanted)

    _export(capsys, "-o", f"s3://{bucket}/all.csv")
    body = s3.get_object(Bucket=bucket, Key="all.csv")["Body"].read().decode()
    assert {r["customer_id"] for r in csv.DictReader(io.StringIO(body))} == set(preds)

    capsys.readouterr()
    assert cli.main(["audience", "--segment", "Nobody", "-o", f"s3://{bucket}/x.csv"]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown segment 'Nobody'" in err[0] and name in err[0]
    assert cli.main(["audience", "-o", f"s3://{bucket}-missing/x.csv"]) == 6
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("caa: no S3 bucket") and len(err) == 1

    # stdout: the rows alone on stdout, the note on stderr
    assert cli.main(["audience", "--churn-band", "high", "--churn-band", "LOW",
                     "--format", "jsonl", "-o", "-"]) == 0
    captured = capsys.readouterr()
    got = {r["customer_id"] for r in _jsonl(captured.out)}
    assert got == {c for c, p in preds.items() if p["churn_band"] in {"high", "low"}} != set()
    assert captured.err.strip().splitlines()[-1] == (
        f"wrote {len(got):,} customers of {len(preds):,} scanned to stdout")


def test_a_big_export_is_a_multipart_upload(fresh_settings: Callable[..., Settings]) -> None:
    """upload() against the emulator's S3: parts of S3's 5 MiB minimum, the object whole."""
    s = fresh_settings()
    bucket = s.table_prefix.strip("-").lower() + "-big"
    Aws(s).client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": s.region})
    data = os.urandom(11 * 1024 * 1024 + 17)

    async def run() -> int:
        async with Aws(s).clients("s3") as c:
            with tempfile.TemporaryFile() as fh:
                fh.write(data)
                return await upload(c["s3"], fh, bucket, "big.csv", "text/csv",
                                    part_bytes=5 * 1024 * 1024)

    assert asyncio.run(run()) == len(data)
    got = Aws(s).client("s3").get_object(Bucket=bucket, Key="big.csv")
    assert got["Body"].read() == data and got["ContentType"] == "text/csv"
    assert got.get("ETag", "").strip('"').endswith("-3")  # three parts
