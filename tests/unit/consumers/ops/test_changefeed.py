"""The change feed's shard handling where moto cannot go (it never closes or splits a stream
shard, nor expires iterators): an in-process stand-in for the dynamodbstreams client."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from consumers.ops.changefeed import ChangeFeed, FeedProblem, StartAt
from deploy.resources import STREAMS
from tests.unit.deploy.test_template import template


def _rec(seq: int, cid: str) -> dict[str, Any]:
    return {"eventID": f"e{seq}", "eventName": "MODIFY", "dynamodb": {
        "SequenceNumber": str(seq), "Keys": {"customer_id": {"S": cid}},
        "ApproximateCreationDateTime": datetime(2024, 1, 1, tzinfo=UTC)}}


class FakeStreams:
    """Shard ``p`` (closed) split into ``c1`` and ``c2`` (open); ``x`` is an unrelated open
    shard. ``fail`` maps a shard to the error its first GetRecords raises."""

    def __init__(self, fail: dict[str, str] | None = None) -> None:
        self.shards = [
            {"ShardId": "c1", "ParentShardId": "p",
             "SequenceNumberRange": {"StartingSequenceNumber": "20"}},
            {"ShardId": "c2", "ParentShardId": "p",
             "SequenceNumberRange": {"StartingSequenceNumber": "30"}},
            {"ShardId": "p", "SequenceNumberRange": {"StartingSequenceNumber": "10",
                                                      "EndingSequenceNumber": "12"}},
            {"ShardId": "x", "SequenceNumberRange": {"StartingSequenceNumber": "40"}},
        ]
        self.data = {"p": [_rec(10, "a"), _rec(11, "b"), _rec(12, "a")],
                     "c1": [_rec(20, "a")], "c2": [_rec(30, "b")], "x": [_rec(40, "z")]}
        self.fail = dict(fail or {})
        self.iterators: list[tuple[str, str]] = []

    async def describe_stream(self, StreamArn: str, **kw: Any) -> dict[str, Any]:
        start = kw.get("ExclusiveStartShardId")
        i = 0 if start is None else [s["ShardId"] for s in self.shards].index(start) + 1
        page: dict[str, Any] = {"Shards": self.shards[i:i + 1]}  # one shard a page
        if i + 1 < len(self.shards):
            page["LastEvaluatedShardId"] = self.shards[i]["ShardId"]
        return {"StreamDescription": page}

    async def get_shard_iterator(self, StreamArn: str, ShardId: str, ShardIteratorType: str,
                                 SequenceNumber: str | None = None) -> dict[str, Any]:
        self.iterators.append((ShardId, ShardIteratorType))
        recs = self.data[ShardId]
        pos = {"TRIM_HORIZON": 0, "LATEST": len(recs)}.get(ShardIteratorType)
        if pos is None:
            pos = next(i for i, r in enumerate(recs)
                       if int(r["dynamodb"]["SequenceNumber"]) > int(str(SequenceNumber)))
        return {"ShardIterator": f"{ShardId}:{pos}"}

    async def get_records(self, ShardIterator: str, Limit: int) -> dict[str, Any]:
        sid, pos = ShardIterator.split(":")
        if sid in self.fail:
            code = self.fail.pop(sid)
            raise ClientError({"Error": {"Code": code, "Message": code}}, "GetRecords")
        recs = self.data[sid][int(pos):int(pos) + 2]  # two records a page
        end = int(pos) + len(recs)
        closed = sid == "p"
        out: dict[str, Any] = {"Records": recs}
        if not (closed and end >= len(self.data[sid])):
            out["NextShardIterator"] = f"{sid}:{end}"
        return out


def read(client: FakeStreams, start: StartAt = "trim_horizon") -> list[Any]:
    async def go() -> list[Any]:
        feed = ChangeFeed(client, "arn", start=start, limit=2, poll_interval_s=0,
                          idle_polls=2)
        return [r async for r in feed.records()]

    return asyncio.run(go())


def seqs(items: list[Any]) -> list[int]:
    return [int(r["dynamodb"]["SequenceNumber"]) for r in items if isinstance(r, dict)]


def test_a_split_shard_is_read_to_its_end_before_its_children() -> None:
    got = seqs(read(FakeStreams()))
    assert sorted(got) == [10, 11, 12, 20, 30, 40]
    assert max(got.index(10), got.index(11), got.index(12)) < min(got.index(20), got.index(30))


def test_latest_skips_closed_shards_and_history() -> None:
    client = FakeStreams()
    assert read(client, "latest") == []
    assert ("p", "TRIM_HORIZON") not in client.iterators
    assert {s for s, kind in client.iterators if kind == "LATEST"} == {"c1", "c2", "x"}


def test_an_expired_iterator_is_renewed_and_nothing_is_lost() -> None:
    client = FakeStreams(fail={"x": "ExpiredIteratorException"})
    assert sorted(seqs(read(client))) == [10, 11, 12, 20, 30, 40]
    assert client.iterators.count(("x", "TRIM_HORIZON")) == 2


def test_records_lost_to_retention_are_reported_not_fatal() -> None:
    items = read(FakeStreams(fail={"c1": "TrimmedDataAccessException"}))
    problems = [i for i in items if isinstance(i, FeedProblem)]
    assert len(problems) == 1 and "expired unread" in problems[0].reason
    assert sorted(seqs(items)) == [10, 11, 12, 20, 30, 40]


def test_the_template_streams_the_predictions_table_and_the_reader_policy_is_narrow() -> None:
    res = template()["Resources"]
    spec = res["PredictionsTable"]["Properties"]["StreamSpecification"]
    assert spec == {"StreamViewType": STREAMS["predictions"]}
    policy = res["ChangeFeedReaderPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    granted = {(a, r["Fn::GetAtt"][0] + "." + r["Fn::GetAtt"][1])
               for st in policy for a in (st["Action"] if isinstance(st["Action"], list)
                                           else [st["Action"]])
               for r in [st["Resource"]]}
    assert granted == {("dynamodb:DescribeStream", "PredictionsTable.StreamArn"),
                       ("dynamodb:GetShardIterator", "PredictionsTable.StreamArn"),
                       ("dynamodb:GetRecords", "PredictionsTable.StreamArn"),
                       ("dynamodb:DescribeTable", "PredictionsTable.Arn")}
