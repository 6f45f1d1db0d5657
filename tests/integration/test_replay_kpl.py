"""`caa replay kinesis://` reads KPL aggregates as the consumers do (moto's server): a
backfill from the stream applies every order an aggregate holds (it used to decode the
aggregate whole and dead-letter it as a "nested" bad_aggregate, losing its orders), resumes
inside an aggregate at the user record after its cursor, and never reopens a dead letter
that was redriven (replay letters of a stream's records are keyed as the consumer's)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from caa.aws import Aws
from caa.settings import Settings
from producers.replay.sources import KinesisSource, Part
from tests.integration.replay_fixtures import consume, counts, replay, tables
from tests.integration.test_kpl import dead_letters
from tests.unit.consumers.test_records import PURCHASES, aggregate, corrupt, purchase

pytestmark = pytest.mark.integration

#: (purchases, cents) per customer: the aggregate's three purchases and the plain one
EXPECTED = {"c1": (2, 375), "c2": (1, 1000), "c3": (1, 300)}


def test_a_replay_of_the_stream_de_aggregates_and_resumes_inside_an_aggregate(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(shard_count="1", refit_interval_s="0")
    kinesis = Aws(s).client("kinesis")
    pk, blob = aggregate(PURCHASES)
    seq = kinesis.put_record(StreamName=s.stream_name, Data=blob,
                             PartitionKey=pk)["SequenceNumber"]
    plain = kinesis.put_record(StreamName=s.stream_name, Data=purchase("e4", "c3", 300),
                               PartitionKey="c3")["SequenceNumber"]

    out = replay(capsys, "kinesis://", "--to", "direct")
    assert (out["report"]["valid"], out["report"]["applied"]) == (4, 4)
    assert out["report"]["invalid"] == {}
    assert counts(tables(s).states) == EXPECTED and tables(s).dead == []

    shard = kinesis.list_shards(StreamName=s.stream_name)["Shards"][0]["ShardId"]
    source = KinesisSource(kinesis, s.stream_name, None, datetime.max.replace(tzinfo=UTC),
                           sleep=lambda _: None)

    def after(cursor: str | None) -> list[str]:
        return [r.position for r in source.read(Part(shard), cursor, lambda _: None)]

    assert after(None) == [f"{seq}/0", f"{seq}/1", f"{seq}/2", plain]
    assert after(f"{seq}/0") == [f"{seq}/1", f"{seq}/2", plain]
    assert after(f"{seq}/2") == [plain]
    assert after(plain) == []
    (first, *_) = source.read(Part(shard), f"{seq}/0", lambda _: None)
    assert (first.sequence_number, first.sub_sequence_number, first.key) == (seq, 1, "c2")


def test_a_replay_never_reopens_a_redriven_dead_letter(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(shard_count="1", refit_interval_s="0")
    kinesis = Aws(s).client("kinesis")
    pk, blob = aggregate(PURCHASES)
    kinesis.put_record(StreamName=s.stream_name, Data=corrupt(blob), PartitionKey=pk)
    kinesis.put_record(StreamName=s.stream_name, Data=blob, PartitionKey=pk)
    assert consume(s).rejected == 1
    (letter,) = dead_letters(s)
    ddb = Aws(s).client("dynamodb")
    ddb.update_item(TableName=s.table("dead-letters"), Key={"id": letter["id"]},
                    UpdateExpression="SET #s = :r, redriven_to = :p",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":r": {"S": "redriven"}, ":p": {"S": "x/1"}})

    out = replay(capsys, "kinesis://", "--to", "direct")
    assert out["report"]["invalid"] == {"bad_aggregate": 1}
    assert out["report"]["applied"] == 0 and out["report"]["duplicates"] == 3
    (after,) = dead_letters(s)
    assert after["id"] == letter["id"]
    assert (after["status"]["S"], after["redriven_to"]["S"]) == ("redriven", "x/1")
    assert counts(tables(s).states) == {"c1": (2, 375), "c2": (1, 1000)}
