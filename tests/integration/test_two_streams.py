"""Two streams sharing one set of tables: the checkpoints of a consumer group are its
stream's. Shard ids repeat from stream to stream, so a second stream read under the first
one's group started from the first one's sequence numbers and skipped its records without a
word (``records read this run: 0``); now the consumer refuses, in one line, and the second
stream under a group of its own applies every record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from models.events import LineItem, PurchaseEvent
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _orders(prefix: str, n: int) -> list[PurchaseEvent]:
    at = datetime.now(UTC) - timedelta(days=3)
    return [PurchaseEvent(event_id=f"{prefix}-e{i}", order_id=f"{prefix}-o{i}",
                          customer_id=f"{prefix}{i % 4}", occurred_at=at + timedelta(hours=i),
                          currency="EUR", items=[LineItem(product_id="tea", category="drinks",
                                                          quantity=1, unit_price=Decimal("2"))],
                          total=Decimal("2")) for i in range(n)]


def _consume() -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caa.cli.main", "consume", "--until-idle",
                           "--json", "--no-refit"], env=os.environ.copy(), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, check=False, timeout=600)


def test_a_group_reads_one_stream_and_says_so(
        fresh_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    first = fresh_settings()
    Publisher(Aws(first).client("kinesis"), first.stream_name).publish(_orders("a", 40))
    run = _consume()
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["applied"] == 40
    # as rows were written before they named their stream (an ended parent's, an idle
    # shard's, are never written again): the first reader of its group tags them
    ddb = Aws(first).client("dynamodb")
    table = first.table("checkpoints")
    rows = ddb.scan(TableName=table)["Items"]
    shards = [r for r in rows if r["shard_id"]["S"].startswith("shardId-")]
    assert shards and all(r["stream"] == {"S": first.stream_name} for r in shards)
    for r in shards:
        ddb.update_item(TableName=table, Key={"group": r["group"], "shard_id": r["shard_id"]},
                        UpdateExpression="REMOVE #st", ExpressionAttributeNames={"#st": "stream"})
    assert _consume().returncode == 0  # nothing new; the rows are tagged again
    rows = ddb.scan(TableName=table)["Items"]
    assert all(r["stream"] == {"S": first.stream_name} for r in rows
               if r["shard_id"]["S"].startswith("shardId-"))

    other = f"{first.stream_name}-2"
    monkeypatch.setenv("CAA_STREAM_NAME", other)  # the same tables, the same group
    second = Settings()
    aws = Aws(second)
    ensure_resources(second, aws.client("kinesis"), aws.client("dynamodb"))
    Publisher(aws.client("kinesis"), other).publish(_orders("b", 12))
    refused = _consume()
    assert refused.returncode == 7 and "Traceback" not in refused.stderr
    (line,) = [ln for ln in refused.stderr.splitlines() if ln.startswith("caa: ")]
    assert f"holds the checkpoints of stream {first.stream_name!r}, not of {other!r}" in line
    assert "CAA_CONSUMER_GROUP" in line

    monkeypatch.setenv("CAA_CONSUMER_GROUP", "second-stream")
    run = _consume()
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["applied"] == 12
