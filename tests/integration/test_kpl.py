"""KPL aggregation end to end: one Kinesis record holding 3 purchases of 2 customers (built
with aws-kinesis-agg's aggregator, as the KPL builds it), then a corrupt aggregate, then a
plain record, put on the stream and consumed by the poller (moto), enhanced fan-out
(kinesis-mock) and the Lambda handler: the 3 purchases are applied exactly once, the corrupt
aggregate is one ``bad_aggregate`` dead letter with its reason, and the shard goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from caa.aws import Aws
from caa.entry import lambda_stream
from caa.settings import Settings
from tests.integration import test_fanout
from tests.integration.test_dlq import _run
from tests.integration.test_fanout import run_worker as run_fanout_worker
from tests.integration.test_lambda import kinesis_events, totals
from tests.integration.test_poller import run_worker as run_poller_worker
from tests.unit.consumers.test_records import PURCHASES, aggregate, corrupt, purchase

pytestmark = pytest.mark.integration

efo_settings = test_fanout.efo_settings  # the fixture: fanout mode on kinesis-mock

#: (purchases, spend in cents) per customer after the aggregate and the plain record
EXPECTED = {"c1": (2, 375), "c2": (2, 1300)}


def put_example(s: Settings) -> list[str]:
    """The aggregate, a corrupt copy, a plain purchase; their sequence numbers."""
    kinesis = Aws(s).client("kinesis")
    pk, blob = aggregate(PURCHASES)
    seqs = []
    for key, data in ((pk, blob), (pk, corrupt(blob)), ("c2", purchase("e4", "c2", 300))):
        seqs.append(kinesis.put_record(StreamName=s.stream_name, Data=data,
                                       PartitionKey=key)["SequenceNumber"])
    return seqs


def dead_letters(s: Settings) -> list[dict[str, Any]]:
    return list(Aws(s).client("dynamodb").scan(TableName=s.table("dead-letters"))["Items"])


def assert_one_bad_aggregate(s: Settings, seq: str) -> None:
    (dead,) = dead_letters(s)
    assert dead["kind"]["S"] == "bad_aggregate" and "MD5" in dead["reason"]["S"]
    assert dead["sequence_number"]["S"] == seq
    assert dead["id"]["S"].endswith(f"/{seq}")  # the whole record: no sub-sequence number


def checkpoint_of(s: Settings) -> dict[str, str]:
    items = Aws(s).client("dynamodb").scan(TableName=s.table("checkpoints"))["Items"]
    return {i["shard_id"]["S"]: i["sequence_number"]["S"] for i in items
            if "shard_id" in i and "sequence_number" in i}


def test_the_poller_de_aggregates(fresh_settings: Callable[..., Settings]) -> None:
    s = fresh_settings(shard_count="1")
    seqs = put_example(s)
    w, _ = asyncio.run(run_poller_worker(s, {}))
    t = w.applier.totals
    assert (t.applied, t.duplicate, t.rejected) == (4, 0, 1)
    assert totals(s) == EXPECTED
    assert_one_bad_aggregate(s, seqs[1])
    assert list(checkpoint_of(s).values()) == [seqs[2]]  # the Kinesis sequence number
    w2, _ = asyncio.run(run_poller_worker(s, {}))  # a restart re-reads nothing
    assert w2.applier.totals.records == 0 and totals(s) == EXPECTED


def test_fanout_de_aggregates(efo_settings: Callable[..., Settings]) -> None:
    s = efo_settings(shard_count="1")
    seqs = put_example(s)
    run = asyncio.run(run_fanout_worker(s))
    t = run.worker.applier.totals
    assert (t.applied, t.duplicate, t.rejected) == (4, 0, 1)
    assert dict(run.applied) == {"c1": ["e1", "e3"], "c2": ["e2", "e4"]}
    assert run.states == EXPECTED == totals(s)
    assert run.spy.get_records_records == 0  # every record came by SubscribeToShard
    assert_one_bad_aggregate(s, seqs[1])


def test_the_lambda_handler_de_aggregates(
    fresh_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = fresh_settings(shard_count="1")
    seqs = put_example(s)
    monkeypatch.setattr(lambda_stream, "_runtime", [])
    (event,) = kinesis_events(s)
    assert len(event["Records"]) == 3
    try:
        for _ in range(2):  # Lambda delivers at least once: the second changes nothing
            assert lambda_stream.handler(event) == {"batchItemFailures": []}
            assert totals(s) == EXPECTED
            assert_one_bad_aggregate(s, seqs[1])
    finally:
        lambda_stream._runtime[0].close()


def test_redrive_recovers_an_aggregate_dead_lettered_before_de_aggregation(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(shard_count="1", refit_interval_s="0")
    pk, blob = aggregate(PURCHASES)
    ddb = Aws(s).client("dynamodb")
    old = {"id": f"{s.stream_name}/shardId-000000000000/1", "stream": s.stream_name,
           "shard_id": "shardId-000000000000", "sequence_number": "1", "partition_key": pk,
           "kind": "not_utf8", "reason": "not_utf8: invalid UTF-8 at byte 0",
           "received_at": "2024-01-01T00:00:00+00:00", "status": "open"}
    ddb.put_item(TableName=s.table("dead-letters"),
                 Item={**{k: {"S": v} for k, v in old.items()}, "payload": {"B": blob}})
    bad = {**old, "id": f"{s.stream_name}/shardId-000000000000/2", "sequence_number": "2"}
    ddb.put_item(TableName=s.table("dead-letters"),
                 Item={**{k: {"S": v} for k, v in bad.items()},
                       "payload": {"B": corrupt(blob)}})

    assert _run(capsys, "dlq", "redrive", "--json") == {
        "checked": 2, "redriven": 1, "still_rejected": {"bad_aggregate": 1}, "dry_run": False,
        "kept": {}, "other_streams": 0}
    letters = {i["id"]["S"]: i for i in dead_letters(s)}
    redriven_to = letters[old["id"]]["redriven_to"]["S"].split(",")
    assert len(redriven_to) == 3  # its user records, put back one by one as plain records
    assert letters[bad["id"]]["status"]["S"] == "open"
    assert letters[bad["id"]]["kind"]["S"] == "bad_aggregate"

    out = _run(capsys, "consume", "--until-idle", "--json", "--no-refit")
    assert isinstance(out, dict) and (out["applied"], out["rejected"]) == (3, 0)
    assert totals(s) == {"c1": (2, 375), "c2": (1, 1000)}


def test_a_nested_aggregate_stays_a_dead_letter_through_redrive(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    """An aggregate whose user record is itself an aggregate: the consumer refuses the inner
    one (``bad_aggregate``, nested); redrive judges its letter the same way, so it stays
    open and the next consume applies nothing from it (it used to de-aggregate the inner
    aggregate and put its purchases back, which were then applied)."""
    s = fresh_settings(shard_count="1", refit_interval_s="0")
    inner_pk, inner = aggregate(PURCHASES)
    pk, outer = aggregate([(inner_pk, inner), ("c2", purchase("e4", "c2", 300))])
    Aws(s).client("kinesis").put_record(StreamName=s.stream_name, Data=outer, PartitionKey=pk)

    out = _run(capsys, "consume", "--until-idle", "--json", "--no-refit")
    assert isinstance(out, dict) and (out["applied"], out["rejected"]) == (1, 1)
    (dead,) = dead_letters(s)
    assert dead["kind"]["S"] == "bad_aggregate" and "nested" in dead["reason"]["S"]

    assert _run(capsys, "dlq", "redrive", "--json") == {
        "checked": 1, "redriven": 0, "still_rejected": {"bad_aggregate": 1}, "dry_run": False,
        "kept": {}, "other_streams": 0}
    out = _run(capsys, "consume", "--until-idle", "--json", "--no-refit")
    assert isinstance(out, dict) and (out["applied"], out["rejected"]) == (0, 0)
    assert totals(s) == {"c2": (1, 300)}
