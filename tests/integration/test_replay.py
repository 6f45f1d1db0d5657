"""`caa replay` sources and targets against moto's server (and kinesis-mock for a closed
shard): JSON Lines (gzip) and CSV files, an S3 prefix of Firehose-style objects and the
stream from a timestamp; onto the stream (paced, garbage never published) and straight
into the processor (dead letters); dry runs that write nothing."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from caa.aws import Aws
from caa.settings import Settings
from deploy.local.emulator import Emulator
from models.events import PurchaseEvent
from producers.datasets.synthetic import generate
from producers.publisher import Publisher
from tests.integration.replay_fixtures import (
    cdnow_slice,
    consume,
    counts,
    expected,
    replay,
    tables,
    write_jsonl_gz,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings(segment_warmup="50", refit_interval_s="0")


def test_jsonl_gz_to_the_stream_is_consumed_exactly_and_garbage_is_never_published(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    events = cdnow_slice()
    lines = [e.to_bytes() for e in events]
    bad = {10: b"{not json", 200: b'{"schema_version": 1, "event_id": "x"}',
           500: b"\xff\xfe not utf-8"}
    for at, line in sorted(bad.items()):
        lines.insert(at, line)
    path = write_jsonl_gz(tmp_path / "events.jsonl.gz", lines)

    out = replay(capsys, str(path))
    r = out["report"]
    assert out["status"] == "complete"
    assert (r["records"], r["valid"], r["published"]) == (len(lines), len(events), len(events))
    assert r["invalid"] == {"not_json": 1, "schema": 1, "not_utf8": 1}
    assert out["capacity_records_per_s"] == 4 * 1000.0  # four shards
    logged = [json.loads(x) for x in Path(out["rejected_log"]).read_text().splitlines()]
    assert [(e["line"], e["kind"]) for e in logged] == [
        (11, "not_json"), (201, "schema"), (501, "not_utf8")]
    assert logged[0]["data"] == "{not json" and "data_base64" in logged[2]

    totals = consume(settings)
    assert (totals.applied, totals.rejected) == (len(events), 0)  # nothing bad was sent
    assert counts(tables(settings).states) == expected(events)


def csv_text(events: list[PurchaseEvent]) -> str:
    rows = ["event_id,order_id,customer_id,occurred_at,currency,total,channel,consent,"
            "product_id,category,quantity,unit_price"]
    for e in events:
        d = json.loads(e.to_bytes())
        consent = "" if e.consent is None else str(e.consent).lower()
        rows += [",".join([e.event_id, e.order_id, e.customer_id, d["occurred_at"],
                           e.currency, d["total"], e.channel, consent, i["product_id"],
                           i["category"], str(i["quantity"]), i["unit_price"]])
                 for i in d["items"]]
    return "\n".join(rows) + "\n"


def test_csv_backfilled_directly_with_bad_rows_dead_lettered(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    events = generate(customers=30, days=40, seed=11)  # several line items per order
    good = csv_text(events).splitlines(keepends=True)
    e0 = events[0]
    bad = [f"{e0.event_id}-x,o,{e0.customer_id}\n",  # too few fields
           f"bad-total,o,{e0.customer_id},2024-01-01T00:00:00Z,EUR,9.99,web,,p,c,1,1.00\n",
           f"bad-qty,o,{e0.customer_id},2024-01-01T00:00:00Z,EUR,1.00,web,,p,c,two,1.00\n"]
    path = tmp_path / "orders.csv"
    path.write_text("".join([good[0], *bad, *good[1:]]))

    out = replay(capsys, str(path), "--to", "direct")
    r = out["report"]
    assert (r["valid"], r["applied"], r["duplicates"]) == (len(events), len(events), 0)
    assert r["invalid"] == {"csv": 1, "schema": 2} and r["dead_lettered"] == 3
    assert out["refit"]["customers"] == 30
    t = tables(settings)
    assert counts(t.states) == expected(events)
    assert set(t.predictions) == {e.customer_id for e in events}
    assert sorted(d["kind"] for d in t.dead) == ["csv", "schema", "schema"]
    for d in t.dead:  # keyed by position; the customer's key kept (caa erase finds them)
        assert d["stream"] == "replay" and d["shard_id"] == str(path.resolve())
        assert d["id"] == f"replay/{path.resolve()}/{d['sequence_number']}"
    assert {d["partition_key"] for d in t.dead if d["kind"] == "schema"} == {e0.customer_id}


def test_s3_prefix_of_firehose_objects_backfilled_directly(
    settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    events = cdnow_slice()
    thirds = [events[: len(events) // 3], events[len(events) // 3: 2 * len(events) // 3],
              events[2 * len(events) // 3:]]
    s3 = Aws(settings).client("s3")
    bucket = settings.table_prefix.strip("-").lower() + "-archive"
    s3.create_bucket(Bucket=bucket,
                     CreateBucketConfiguration={"LocationConstraint": settings.region})
    objects = {
        # Firehose with GZIP: records back to back, no separator
        "fh/2024/01/01/00/part-1.gz": gzip.compress(b"".join(e.to_bytes() for e in thirds[0])),
        # plain JSON Lines
        "fh/2024/01/01/01/part-2": b"".join(e.to_bytes() + b"\n" for e in thirds[1]),
        # two gzip members, as two appended buffers make
        "fh/2024/01/01/02/part-3.gz": gzip.compress(
            b"".join(e.to_bytes() for e in thirds[2][:50]))
        + gzip.compress(b"".join(e.to_bytes() for e in thirds[2][50:])),
        "fh/2024/01/01/03/part-4.gz": b"\x1f\x8b not really gzip",  # corrupt
        "elsewhere/part-9": b"{not under the prefix",
    }
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    out = replay(capsys, f"s3://{bucket}/fh/", "--to", "direct")
    r = out["report"]
    assert (r["valid"], r["applied"]) == (len(events), len(events))
    assert r["invalid"] == {"corrupt": 1}
    t = tables(settings)
    assert counts(t.states) == expected(events)
    (dead,) = t.dead
    assert dead["kind"] == "corrupt" and dead["shard_id"] == f"s3://{bucket}/fh/2024/01/01/03/part-4.gz"


def test_stream_from_a_timestamp_backfilled_directly(
    settings: Settings, capsys: pytest.CaptureFixture[str],
) -> None:
    events = cdnow_slice()
    before, after = events[:400], events[400:]
    kinesis = Aws(settings).client("kinesis")
    Publisher(kinesis, settings.stream_name).publish(before)
    time.sleep(0.05)  # arrival times are kept to the millisecond: keep the halves apart
    since = datetime.now(UTC)
    time.sleep(0.05)
    Publisher(kinesis, settings.stream_name).publish(after)

    out = replay(capsys, "kinesis://", "--since", since.isoformat(), "--to", "direct")
    assert out["report"]["valid"] == len(after) == out["report"]["applied"]
    assert counts(tables(settings).states) == expected(after)


def _open(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    return [s for s in kinesis.list_shards(StreamName=stream)["Shards"]
            if "EndingSequenceNumber" not in s["SequenceNumberRange"]]


def test_stream_source_reads_closed_shards_too(
    kinesis_mock: Emulator, fresh_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """On kinesis-mock (moto never closes a split parent): records before a split stay in
    the closed parent; an AT_TIMESTAMP replay reads parent and children."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock.endpoint)  # DynamoDB: moto
    s = fresh_settings(shard_count="1", refit_interval_s="0", segment_warmup="50")
    kinesis = Aws(s).client("kinesis")
    events = cdnow_slice()
    old, in_parent, in_children = events[:100], events[100:400], events[400:]
    publisher = Publisher(kinesis, s.stream_name)
    publisher.publish(old)
    time.sleep(0.05)
    since = datetime.now(UTC)
    time.sleep(0.05)
    publisher.publish(in_parent)
    (parent,) = _open(kinesis, s.stream_name)
    hi = int(parent["HashKeyRange"]["EndingHashKey"])
    kinesis.split_shard(StreamName=s.stream_name, ShardToSplit=parent["ShardId"],
                        NewStartingHashKey=str(hi // 2))
    kinesis.get_waiter("stream_exists").wait(StreamName=s.stream_name,
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    publisher.publish(in_children)
    assert parent["ShardId"] not in {x["ShardId"] for x in _open(kinesis, s.stream_name)}

    out = replay(capsys, "kinesis://", "--since", since.isoformat(), "--to", "direct")
    assert out["report"]["applied"] == len(in_parent) + len(in_children)
    assert counts(tables(s).states) == expected(in_parent + in_children)


def test_dry_run_reports_and_writes_nothing(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    events = cdnow_slice()
    lines = [e.to_bytes() for e in events]
    lines[7] = b"{broken"
    lines[8] = lines[8].replace(b'"currency":"USD"', b'"currency":"usd"')
    path = write_jsonl_gz(tmp_path / "slice.jsonl.gz", lines)

    out = replay(capsys, str(path), "--dry-run", expect=1)  # invalid records: exit 1
    r = out["report"]
    assert out["dry_run"] is True
    assert (r["records"], r["valid"], r["invalid"]) == (len(lines), len(lines) - 2,
                                                        {"not_json": 1, "schema": 1})
    assert [(e["where"].rsplit(":", 1)[1], e["kind"]) for e in r["examples"]] == [
        ("8", "not_json"), ("9", "schema")]
    assert "currency" in r["examples"][1]["reason"]
    kept = [e for i, e in enumerate(events) if i not in (7, 8)]
    assert r["customers"] == len({e.customer_id for e in kept})
    assert r["first_at"] == min(e.occurred_at for e in kept).isoformat()
    assert r["last_at"] == max(e.occurred_at for e in kept).isoformat()

    aws = Aws(settings)
    ddb = aws.client("dynamodb")
    for table in ("customers", "predictions", "dead-letters", "checkpoints", "models"):
        assert ddb.scan(TableName=settings.table(table))["Count"] == 0, table
    kinesis = aws.client("kinesis")
    for shard in kinesis.list_shards(StreamName=settings.stream_name)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=settings.stream_name,
                                        ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        assert kinesis.get_records(ShardIterator=it)["Records"] == []
    assert not (settings.state_dir / "replay").exists()


