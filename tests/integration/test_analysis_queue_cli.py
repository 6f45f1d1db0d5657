"""The scheduled re-analysis, ``caa analyze`` and ``caa analyzer`` on the analysis queue
(issue 15 item 1: "the scheduled re-analysis and `caa analyze` use the same queue"): moto's
server for Kinesis, DynamoDB and SQS, the Bedrock-protocol test server, the production
handlers and the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from deploy.local.bedrock_server import BedrockServer
from producers.datasets.synthetic import generate
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _settings(ai_settings: Callable[..., Settings], **env: str) -> Settings:
    s = ai_settings(analysis_queue=f"q-{uuid.uuid4().hex[:8]}", consent_mode="opt_out",
                    refit_interval_s="0", analysis_debounce_s="0", **env)
    aws = Aws(s)
    wiring.ensure_resources(s, aws.client("kinesis"), aws.client("dynamodb"), aws.client("sqs"))
    return s


def _bodies(s: Settings, delete: bool = False) -> list[dict[str, Any]]:
    """Every message on the queue, received and left to come back (visibility 1 s), or
    deleted."""
    sqs = Aws(s).client("sqs")
    url = sqs.get_queue_url(QueueName=str(s.analysis_queue))["QueueUrl"]
    out: dict[str, dict[str, Any]] = {}
    for _ in range(5):
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                     VisibilityTimeout=1).get("Messages", []):
            out[m["MessageId"]] = json.loads(m["Body"])
            if delete:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return list(out.values())


def _analyses(s: Settings) -> dict[str, dict[str, Any]]:
    ddb = Aws(s).client("dynamodb")
    items = [i for page in ddb.get_paginator("scan").paginate(TableName=s.table("analyses"))
             for i in page["Items"]]
    return {i["customer_id"]["S"]: i for i in items}


def _consume_with_lambda(s: Settings, monkeypatch: pytest.MonkeyPatch, seed: int) -> set[str]:
    """Publish, then run the Lambda consumer over the records read back: predictions written
    and one purchase request per customer sent; nobody analyses them. The queue is then
    purged so what follows is only what the step under test sends."""
    from caa.entry import lambda_stream
    from tests.integration.test_lambda import kinesis_events

    events = generate(customers=8, days=3, seed=seed)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    monkeypatch.setattr(lambda_stream, "_runtime", [])
    try:
        for event in kinesis_events(s):
            if not event["Records"]:  # a shard none of these customers hashed to
                continue
            assert lambda_stream.handler(event) == {"batchItemFailures": []}
    finally:
        for rt in lambda_stream._runtime:
            rt.close()
    sqs = Aws(s).client("sqs")
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=str(s.analysis_queue))["QueueUrl"])
    return {e.customer_id for e in events}


def test_the_scheduled_refit_queues_reanalyses_and_caa_analyzer_runs_them(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The refit function, with a queue, sends one ``schedule`` request per active customer
    (due at once, with the state's version); ``caa analyzer --until-empty`` analyses every
    one through Bedrock, the records say ``schedule``; run again on the same customers with
    nothing new, the change-aware cache answers (no Bedrock call)."""
    from caa.entry import refit_lambda

    s = _settings(ai_settings, analysis_active_days="3650")
    customers = _consume_with_lambda(s, monkeypatch, seed=31)
    summary = refit_lambda.handler({"job": "refit"})
    assert summary["status"] == "refitted", summary
    bodies = _bodies(s)
    assert sorted(b["customer_id"] for b in bodies) == sorted(customers)
    assert {b["trigger"] for b in bodies} == {"schedule"}
    assert all(isinstance(b["version"], int) for b in bodies)

    time.sleep(1.2)  # the receives above: visible again
    calls = len(bedrock_server.requests())
    capsys.readouterr()  # what the handlers printed (their metrics and summaries)
    assert cli.main(["analyzer", "--until-empty", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == {"analysed": len(customers)}, out
    found = _analyses(s)
    assert set(found) == customers
    assert {i["trigger"]["S"] for i in found.values()} == {"schedule"}
    assert len(bedrock_server.requests()) - calls == len(customers)

    assert refit_lambda.handler({"job": "refit"})["status"] == "refitted"
    calls = len(bedrock_server.requests())
    capsys.readouterr()
    assert cli.main(["analyzer", "--until-empty", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["requests"] == {"analysed": len(customers)}, again
    assert again["ai"]["cache_hits"] == len(customers), again["ai"]
    assert len(bedrock_server.requests()) == calls


def test_caa_analyze_goes_through_the_queue_to_a_running_analyzer(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With a queue, ``caa analyze`` sends an on-demand request and prints the analysis the
    running ``caa analyzer`` (a real process, stopped by SIGTERM) made for it: Bedrock was
    called although nothing changed (on demand bypasses the cache). With no analyzer
    running it says so and exits 75 once its wait is over."""
    s = _settings(ai_settings)
    customers = _consume_with_lambda(s, monkeypatch, seed=32)
    cid = sorted(customers)[0]
    capsys.readouterr()
    assert cli.main(["analyze", cid, "--wait", "1"]) == 75
    assert "no analysis came within 1 s" in capsys.readouterr().err
    left = _bodies(s, delete=True)  # the request stays for whoever reads the queue next
    assert [(b["customer_id"], b["trigger"]) for b in left] == [(cid, "on_demand")]

    proc = subprocess.Popen([sys.executable, "-m", "caa.cli.main", "analyzer", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        calls = len(bedrock_server.requests())
        assert cli.main(["analyze", cid, "--json", "--wait", "30"]) == 0
        first = json.loads(capsys.readouterr().out)
        assert (first["customer_id"], first["trigger"], first["source"]) == (
            cid, "on_demand", "bedrock")
        assert len(bedrock_server.requests()) == calls + 1
        calls = len(bedrock_server.requests())
        assert cli.main(["analyze", cid, "--json", "--wait", "30"]) == 0
        second = json.loads(capsys.readouterr().out)
        assert second["at"] > first["at"]
        assert len(bedrock_server.requests()) == calls + 1  # no cache for on demand
    finally:
        timer = threading.Timer(20, proc.kill)
        timer.start()
        proc.terminate()
        stdout, stderr = proc.communicate()
        timer.cancel()
    assert proc.returncode == 0, stderr
    counts = json.loads(stdout)["requests"]
    assert counts["analysed"] >= 2 and not counts.get("failed"), counts
