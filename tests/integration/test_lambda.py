"""The Lambda adapter with real Kinesis event JSON built from records read back from the
emulator's stream: poison goes to the dead letters while the batch is applied; effects that
cannot be written put every record in ``batchItemFailures``; a redelivery counts once."""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from caa.aws import Aws
from caa.entry import lambda_stream
from caa.settings import Settings
from consumers.sources.lambda_handler import failed_sequence_numbers
from consumers.stores.dynamo import WriteFailed
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def kinesis_events(s: Settings) -> list[dict[str, Any]]:
    """One event source mapping event per shard, exactly as Lambda delivers them."""
    kinesis = Aws(s).client("kinesis")
    arn = kinesis.describe_stream_summary(StreamName=s.stream_name)[
        "StreamDescriptionSummary"]["StreamARN"]
    out = []
    for shard in kinesis.list_shards(StreamName=s.stream_name)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=s.stream_name, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        records = kinesis.get_records(ShardIterator=it, Limit=10_000)["Records"]
        out.append({"Records": [{
            "kinesis": {
                "kinesisSchemaVersion": "1.0", "partitionKey": r["PartitionKey"],
                "sequenceNumber": r["SequenceNumber"],
                "data": base64.b64encode(r["Data"]).decode(),
                "approximateArrivalTimestamp": r["ApproximateArrivalTimestamp"].timestamp(),
            },
            "eventSource": "aws:kinesis", "eventVersion": "1.0",
            "eventID": f"{shard['ShardId']}:{r['SequenceNumber']}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/caa-consumer",
            "awsRegion": s.region, "eventSourceARN": arn,
        } for r in records]})
    return out


def totals(s: Settings) -> dict[str, tuple[int, int]]:
    ddb = Aws(s).client("dynamodb")
    return {i["customer_id"]["S"]: (int(i["purchases"]["N"]),
                                    sum(int(v["N"]) for v in i["spend"]["M"].values()))
            for page in ddb.get_paginator("scan").paginate(TableName=s.table("customers"))
            for i in page["Items"]}


@pytest.fixture
def published(fresh_settings: Callable[..., Settings]) -> tuple[Settings, dict[str, Any]]:
    s = fresh_settings(shard_count="2")
    events = time_ordered(load_events(limit=400))
    kinesis = Aws(s).client("kinesis")
    Publisher(kinesis, s.stream_name).publish(events[:200])
    kinesis.put_record(StreamName=s.stream_name, Data=b"\xff not utf-8", PartitionKey="x")
    Publisher(kinesis, s.stream_name).publish(events[200:])
    spend: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for e in events:
        count[e.customer_id] += 1
        spend[e.customer_id] += int(e.total * 100)
    return s, {c: (count[c], spend[c]) for c in count}


def emf_totals(stdout: str) -> Counter[str]:
    """The EMF metrics the handler printed, summed by name (dimension: the stream)."""
    out: Counter[str] = Counter()
    for line in stdout.splitlines():
        if line.startswith('{"_aws"'):
            blob = json.loads(line)
            (directive,) = blob["_aws"]["CloudWatchMetrics"]
            assert directive["Namespace"] == "CustomerAIAnalytics"
            assert directive["Dimensions"] == [["Stream"]]
            for m in directive["Metrics"]:
                out[m["Name"]] += int(sum(blob[m["Name"]]))
    return out


def test_handler_applies_the_batch_and_dead_letters_poison(
    published: tuple[Settings, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s, expected = published
    monkeypatch.setattr(lambda_stream, "_runtime", [])  # a cold start, settings from env
    events = kinesis_events(s)
    assert sum(len(e["Records"]) for e in events) == 401
    for event in events:
        assert lambda_stream.handler(event) == {"batchItemFailures": []}
    assert totals(s) == expected
    dead = Aws(s).client("dynamodb").scan(TableName=s.table("dead-letters"))["Items"]
    assert [(d["kind"]["S"], d["payload"]["B"]) for d in dead] == [
        ("not_utf8", b"\xff not utf-8")]
    assert dead[0]["stream"]["S"] == s.stream_name
    assert dead[0]["shard_id"]["S"].startswith("shardId-")
    assert emf_totals(capsys.readouterr().out) == {"records_applied": 400, "dead_letters": 1}

    for event in events:  # Lambda delivers at least once: a redelivery changes nothing
        assert lambda_stream.handler(event) == {"batchItemFailures": []}
    assert totals(s) == expected
    # the dead letter is rewritten on redelivery (same key) and reported again
    assert emf_totals(capsys.readouterr().out) == {"records_duplicate": 400, "dead_letters": 1}
    lambda_stream._runtime[0].close()


class Unwritable:
    """The real DynamoDB client whose writes never get through: every batch item comes back
    unprocessed and every (conditional) put is throttled, as under persistent throttling."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.exceptions = client.exceptions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def batch_write_item(self, RequestItems: dict[str, Any], **kw: Any) -> Any:
        return {"UnprocessedItems": RequestItems}

    async def put_item(self, **kw: Any) -> Any:
        cls = self._client.exceptions.ProvisionedThroughputExceededException
        raise cls({"Error": {"Code": "ProvisionedThroughputExceededException",
                             "Message": "injected"}}, "PutItem")


def test_unwritten_effects_report_every_record_and_the_retry_counts_once(
    published: tuple[Settings, dict[str, Any]], capsys: pytest.CaptureFixture[str],
) -> None:
    s, expected = published
    s = s.model_copy(update={"max_write_attempts": 2})
    events = kinesis_events(s)

    def deliver(broken: bool) -> list[list[str]]:
        rt = lambda_stream.runtime(s, wrap_dynamodb=Unwritable if broken else None)
        try:
            out = [failed_sequence_numbers(rt.handle(event)) for event in events]
            assert isinstance(rt.processor.failure, WriteFailed) if broken \
                else rt.processor.failure is None
            return out
        finally:
            rt.close()

    failed = deliver(broken=True)
    assert failed == [[r["kinesis"]["sequenceNumber"] for r in e["Records"]] for e in events]
    assert totals(s) == {}  # nothing written, nothing checkpointed past
    assert emf_totals(capsys.readouterr().out) == {"shard_write_failures": len(events)}
    assert deliver(broken=False) == [[] for _ in events]
    assert totals(s) == expected
