"""The emulator applies concurrent updates of one DynamoDB item atomically, as DynamoDB
does (deploy/local/moto_server.py): no ``ADD`` is lost when several threads create and
update one item at once. On moto's own server (5.2.5) this pattern lost an update in 1 to 3
rounds of 100 (four runs of 100 and 200 rounds, each failing): the rounds here give such a
server well over even odds of failing; they take about 20 s."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from deploy.local.emulator import Emulator, atomic, free_port, healthy, start, wait_ready

pytestmark = pytest.mark.integration

THREADS = 8
ADDS = 3
ROUNDS = 100


def test_concurrent_adds_of_one_item_all_count(emulator: Emulator) -> None:
    client = boto3.client(
        "dynamodb", endpoint_url=emulator.endpoint, region_name="eu-central-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(max_pool_connections=2 * THREADS))
    table = f"atomic-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "day", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "day", "AttributeType": "S"}])
    short: dict[str, int] = {}
    for n in range(ROUNDS):
        key = {"day": {"S": f"d{n}"}}  # a new item each round: its creation races too
        start = threading.Barrier(THREADS)

        def add(key: dict[str, dict[str, str]] = key, start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(ADDS):
                client.update_item(TableName=table, Key=key, UpdateExpression="ADD calls :one",
                                   ExpressionAttributeValues={":one": {"N": "1"}})

        threads = [threading.Thread(target=add) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        if int(item["calls"]["N"]) != THREADS * ADDS:
            short[f"d{n}"] = int(item["calls"]["N"])
    assert short == {}, f"updates lost (of {THREADS * ADDS} each): {short}"


def test_an_emulator_an_older_version_started_is_named_not_silently_reused(
        tmp_path: Path) -> None:
    """A plain ``moto.server`` recorded by an older version is still ours (status and stop
    work), but ``start`` says its DynamoDB updates are not atomic instead of reusing it
    silently (the usage ledger no longer works around that)."""
    port = free_port()
    log = tmp_path / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        emu = wait_ready("moto server", proc, f"http://127.0.0.1:{port}", healthy, 30.0, log)
        state = tmp_path / "emulator.json"
        state.write_text(json.dumps({"pid": emu.pid, "endpoint": emu.endpoint,
                                     "host": "127.0.0.1", "port": port}))
        said: list[str] = []
        running, started_now = start(state, "127.0.0.1", port, say=said.append)
        assert (running.pid, started_now) == (proc.pid, False)
        assert not atomic(proc.pid) and len(said) == 1
        assert said[0].startswith(f"the emulator running (pid {proc.pid}) is a plain moto "
                                  "server started by an older version")
    finally:
        proc.kill()
        proc.wait()


def test_the_emulator_launched_now_is_the_atomic_one(emulator: Emulator) -> None:
    assert atomic(emulator.pid)
