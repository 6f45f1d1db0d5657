"""The real KCL tier: the Java MultiLangDaemon (KCL 3, from kclpy-ext's jars) runs our
record processor against kinesis-mock (Kinesis) and moto (its lease tables and ours).

One run, stopped with SIGTERM, then a second daemon under the same application name
resumes from the KCL's checkpoints: every event (3 of them in one KPL aggregate) is
applied exactly once, the poison
record is in the dead letters, every shard's KCL checkpoint is its last record, and the
processors' EMF metrics (their stderr) add up to the records applied, with no record
delivered twice. The KCL takes about 100 s to hand out its first leases.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from deploy import kcl
from deploy.local.emulator import Emulator
from models.events import PurchaseEvent
from models.state import CustomerState
from producers.datasets.synthetic import generate
from producers.publisher import Publisher
from tests.unit.consumers.test_records import aggregate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("java") is None, reason="needs Java 17 for the KCL"),
]

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 400.0


async def _read(s: Settings) -> tuple[list[CustomerState], list[dict[str, Any]]]:
    async with Aws(s).clients("dynamodb") as c:
        applier = wiring.applier(s, c["dynamodb"], cache_size=0)
        return await applier.customers.all(), await applier.dead_letters.all()


def _wait(what: str, done: Callable[[], bool], daemon: subprocess.Popen[bytes],
          log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        if daemon.poll() is not None:
            raise AssertionError(f"the daemon exited ({daemon.returncode}) before {what}; "
                                 f"see {log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; see {log}")
        time.sleep(2)


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    os.killpg(daemon.pid, signal.SIGTERM)  # graceful: shutdown_requested, then exit
    try:
        daemon.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        raise


def _emf(log: Path) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith('{"_aws"'):
            blob = json.loads(line)
            for m in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                totals[m["Name"]] += sum(blob[m["Name"]])
    return dict(totals)


def _lower_half(partition_key: str) -> bool:
    """The key hashes into the first of 2 shards (its MD5 below 2**127)."""
    return int.from_bytes(hashlib.md5(partition_key.encode()).digest(), "big") < 2**127


def _expected(events: list[PurchaseEvent]) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        out[e.customer_id][0] += 1
        out[e.customer_id][1] += int(e.total * 100)
    return {k: (v[0], v[1]) for k, v in out.items()}


@pytest.mark.long
def test_multilang_daemon_processes_every_record_once_across_a_restart(
    kinesis_mock: Emulator, emulator: Emulator, fresh_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", kinesis_mock.endpoint)  # DynamoDB: moto
    s = fresh_settings(shard_count="2", refit_interval_s="0")
    kinesis = Aws(s).client("kinesis")
    events = generate(customers=50, days=40, seed=11)
    first, second = events[: 2 * len(events) // 3], events[2 * len(events) // 3:]
    publisher = Publisher(kinesis, s.stream_name)
    # 3 of the first part as one KPL aggregate: the daemon de-aggregates it, the processor
    # checkpoints its last user record (sequence and sub-sequence number), and the second
    # daemon resumes after it (a re-delivered user record would show as a duplicate). Like
    # the KPL, only user records of one shard go together: the KCL drops an aggregate whose
    # user records' hash keys are not all in its shard's range.
    kpl = [e for e in first if _lower_half(e.customer_id)][-3:]
    publisher.publish([e for e in first if e not in kpl])
    pk, blob = aggregate([(e.customer_id, e.to_bytes()) for e in kpl])
    kinesis.put_record(StreamName=s.stream_name, Data=blob, PartitionKey=pk)
    kinesis.put_record(StreamName=s.stream_name, Data=b"{not json", PartitionKey="poison")

    app = f"kcl-{uuid.uuid4().hex[:8]}"
    props = tmp_path / "app.properties"
    props.write_text(kcl.properties(s.stream_name, s.region, kcl.KclOptions(
        app, kinesis_endpoint=kinesis_mock.endpoint, dynamodb_endpoint=emulator.endpoint,
        metrics_level="NONE", idle_between_reads_ms=250, parent_shard_poll_ms=1000,
        failover_ms=5000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    dynamodb = Aws(s).client("dynamodb")

    def purchases() -> int:
        states, _ = asyncio.run(_read(s))
        return sum(x.purchases for x in states)

    def checkpoints() -> dict[str, str]:
        items = dynamodb.scan(TableName=app)["Items"]
        return {i["leaseKey"]["S"]: i["checkpoint"]["S"] for i in items}

    last_by_shard: dict[str, str] = {}
    for shard in kinesis.list_shards(StreamName=s.stream_name)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=s.stream_name, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        records = kinesis.get_records(ShardIterator=it, Limit=10_000)["Records"]
        last_by_shard[shard["ShardId"]] = records[-1]["SequenceNumber"]

    log1 = tmp_path / "daemon-1.log"
    daemon = kcl.launch(props, ROOT, env, log1)
    try:
        _wait("the first part", lambda: purchases() == len(first), daemon, log1)
        _wait("checkpoints at each shard's last record",
              lambda: checkpoints() == last_by_shard, daemon, log1)
    finally:
        _stop(daemon)

    publisher.publish(second)
    log2 = tmp_path / "daemon-2.log"
    daemon = kcl.launch(props, ROOT, env, log2)
    try:
        _wait("every event", lambda: purchases() == len(events), daemon, log2)
        time.sleep(3)  # anything delivered twice would show up in the metrics now
    finally:
        _stop(daemon)

    states, dead = asyncio.run(_read(s))
    assert {x.customer_id: (x.purchases, sum(x.spend_minor.values()))
            for x in states} == _expected(events)
    assert [d["kind"] for d in dead] == ["not_json"]
    m1, m2 = _emf(log1), _emf(log2)
    assert m1.get("records_applied") == len(first)
    assert m1.get("dead_letters") == 1
    assert m2.get("records_applied") == len(second)  # resumed where the first run stopped
    assert m1.get("records_duplicate", 0) + m2.get("records_duplicate", 0) == 0
