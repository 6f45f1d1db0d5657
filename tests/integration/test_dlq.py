"""Dead letters: listed with their position and reason, redriven after a fix, counted once."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from models.events import LineItem, PurchaseEvent
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _big_order(like: PurchaseEvent) -> PurchaseEvent:
    """A valid order of 60 lines: about 5 kB encoded."""
    items = [LineItem(product_id=f"sku-{i:04d}", category="box set", quantity=1,
                      unit_price=Decimal("1.25")) for i in range(60)]
    return PurchaseEvent(event_id="big-order-1", order_id="big-order-1",
                         customer_id=like.customer_id, occurred_at=like.occurred_at,
                         currency="USD", items=items, total=Decimal("75.00"))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert cli.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def _customer(s: Settings, cid: str) -> tuple[int, int]:
    item = Aws(s).client("dynamodb").get_item(TableName=s.table("customers"),
                                              Key={"customer_id": {"S": cid}})["Item"]
    return int(item["purchases"]["N"]), sum(int(v["N"]) for v in item["spend"]["M"].values())


def test_redrive_after_a_fix_applies_the_record_once(
    fresh_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(max_event_bytes="2048", refit_interval_s="0")
    events = time_ordered(load_events(limit=300))
    big = _big_order(events[0])
    assert len(big.to_bytes()) > 2048
    cid = big.customer_id
    before = [e for e in events if e.customer_id == cid]
    kinesis = Aws(s).client("kinesis")
    Publisher(kinesis, s.stream_name).publish([*events, big])
    kinesis.put_record(StreamName=s.stream_name, Data=b"{oops", PartitionKey="bad-1")

    # an event id used again for another order: the state refuses it, no fix can change that
    reused = events[1].model_copy(update={
        "order_id": "other-order", "occurred_at": events[1].occurred_at + timedelta(hours=1)})
    kinesis.put_record(StreamName=s.stream_name, Data=reused.to_bytes(),
                       PartitionKey=reused.customer_id)

    first = _run(capsys, "consume", "--until-idle", "--json", "--no-refit")
    assert isinstance(first, dict) and first["rejected"] == 3
    assert _customer(s, cid) == (len(before), sum(int(e.total * 100) for e in before))
    # a letter of another stream sharing the table (its own redrive puts it back there), and
    # one of a replay straight from a file (no stream: this stream's redrive takes it)
    table = s.table("dead-letters")
    elsewhere = f"{s.stream_name}-elsewhere"
    kinesis.create_stream(StreamName=elsewhere, ShardCount=1)
    other = big.model_copy(update={"event_id": "big-order-2", "order_id": "big-order-2"})
    for stream, shard, event in ((elsewhere, "shardId-0", big),
                                 ("replay", "/data/orders#2.csv", other)):
        Aws(s).client("dynamodb").put_item(TableName=table, Item={
            "id": {"S": f"{stream}/{shard}/1"}, "stream": {"S": stream},
            "shard_id": {"S": shard}, "sequence_number": {"S": "1"},
            "partition_key": {"S": cid}, "payload": {"B": event.to_bytes()},
            "kind": {"S": "oversized"}, "reason": {"S": "oversized"},
            "received_at": {"S": "2026-01-01T00:00:00.000+00:00"}, "status": {"S": "open"}})

    listed = _run(capsys, "dlq", "list", "--json")
    assert isinstance(listed, list)
    assert sorted(d["kind"] for d in listed) == ["event_id_reused", "not_json", "oversized",
                                                 "oversized", "oversized"]
    listed = [d for d in listed if d["stream"] == s.stream_name]
    for d in listed:
        assert d["shard_id"].startswith("shardId-")
        assert d["sequence_number"] and d["received_at"] and d["status"] == "open"
        assert d["payload"] > 0  # its size: the raw payload is kept
        assert d["arrival_ts"] > 1.7e9  # epoch seconds as stored (it was shown as 0)
    oversized = next(d for d in listed if d["kind"] == "oversized")
    assert "exceeds the limit of 2048" in oversized["reason"]

    # Before the fix nothing decodes: nothing is re-sent; the reused id is never re-sent
    # (it would come back as a new letter on every redrive), the other stream's is left
    assert _run(capsys, "dlq", "redrive", "--json") == {
        "checked": 3, "redriven": 0, "still_rejected": {"not_json": 1, "oversized": 2},
        "dry_run": False, "kept": {"event_id_reused": 1}, "other_streams": 1}

    monkeypatch.setenv("CAA_MAX_EVENT_BYTES", "65536")  # the fix
    dry = _run(capsys, "dlq", "redrive", "--dry-run", "--json")
    assert dry == {"checked": 3, "redriven": 2, "still_rejected": {"not_json": 1},
                   "dry_run": True, "kept": {"event_id_reused": 1}, "other_streams": 1}
    assert _run(capsys, "dlq", "redrive", "--json") == {**dry, "dry_run": False}
    # An interrupted redrive (put done, mark lost) re-sends it on the next redrive.
    Aws(s).client("dynamodb").update_item(
        TableName=s.table("dead-letters"), Key={"id": {"S": oversized["id"]}},
        UpdateExpression="SET #s = :o", ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":o": {"S": "open"}})
    assert _run(capsys, "dlq", "redrive", "--json")["redriven"] == 1  # type: ignore[index]

    second = _run(capsys, "consume", "--until-idle", "--json", "--no-refit")
    assert isinstance(second, dict)
    # the oversized order (twice: once a duplicate) and the replayed file's
    assert (second["applied"], second["duplicates"], second["rejected"]) == (2, 1, 0)
    assert _customer(s, cid) == (len(before) + 2,
                                 sum(int(e.total * 100) for e in before) + 2 * 7500)
    still = _run(capsys, "dlq", "list", "--json")
    assert isinstance(still, list)
    assert sorted(d["kind"] for d in still) == ["event_id_reused", "not_json", "oversized"]
    assert sorted(d["kind"] for d in still if d["stream"] == s.stream_name) == [
        "event_id_reused", "not_json"]
    everything = _run(capsys, "dlq", "list", "--all", "--json")
    assert isinstance(everything, list)
    redriven = [d for d in everything if d["status"] == "redriven"]
    assert sorted(d["id"] for d in redriven) == sorted(
        [oversized["id"], "replay//data/orders#2.csv/1"])
    assert redriven[0]["redriven_to"].startswith("shardId-")
