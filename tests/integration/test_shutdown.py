"""SIGTERM: the batch in flight finishes, is checkpointed, and the process exits in 10 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from caa.aws import Aws
from caa.settings import Settings
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _summary(stdout: str) -> dict[str, Any]:
    """The JSON summary ``caa consume --json`` prints last."""
    summary: dict[str, Any] = json.loads(stdout[stdout.index("\n{") + 1:]
                                         if not stdout.startswith("{") else stdout)
    return summary


def _checkpoints(s: Settings) -> int:
    ddb = Aws(s).client("dynamodb")
    items = ddb.scan(TableName=s.table("checkpoints"))["Items"]
    return sum(1 for i in items if i["shard_id"]["S"].startswith("shardId-"))


@pytest.mark.long
def test_sigterm_finishes_and_checkpoints_the_batch_in_flight(
    fresh_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    s = fresh_settings(get_records_limit="100", refit_interval_s="0")
    events = time_ordered(load_events(limit=6000))
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    cmd = [sys.executable, "-m", "caa.cli.main", "consume", "--json", "--no-refit"]
    log = tmp_path / "first.err"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _checkpoints(s) < 2 and time.monotonic() < deadline:  # mid-stream
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"still running 10 s after SIGTERM; stderr: {log.read_text()[-2000:]}")
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert "poller stopped after finishing the batches in flight" in log.read_text()
    first = _summary(out.decode())
    assert 0 < first["records_read"] < len(events)  # stopped mid-stream

    # A restart resumes exactly where the stopped consumer checkpointed: every record it
    # read was checkpointed (none re-read), every other record is read now.
    done = subprocess.run([*cmd, "--until-idle"], env=os.environ.copy(), capture_output=True,
                          check=True, timeout=300)
    second = _summary(done.stdout.decode())
    assert second["duplicates"] == 0
    assert first["records_read"] + second["records_read"] == len(events)
    ddb = Aws(s).client("dynamodb")
    purchases = sum(int(i["purchases"]["N"]) for page in ddb.get_paginator("scan").paginate(
        TableName=s.table("customers")) for i in page["Items"])
    assert purchases == len(events)
