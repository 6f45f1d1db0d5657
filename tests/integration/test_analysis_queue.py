"""Durable analysis requests on SQS (issue 15 items 1 and 2): moto's server for Kinesis,
DynamoDB and SQS, the Bedrock-protocol test server for Bedrock, all over HTTP with the
production clients; ``caa consume`` as a real process where a crash is the point."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from consumers.analysis.requests import AnalysisRequest, RequestAnalyzer, RequestQueue
from deploy.local.bedrock_server import BedrockServer
from models.prediction import Prediction
from producers.datasets.synthetic import generate
from producers.publisher import Publisher

pytestmark = pytest.mark.integration


def _queued(ai_settings: Callable[..., Settings], **env: str) -> Settings:
    """AI settings with a queue of this test's own, created with its DLQ like `caa setup`."""
    s = ai_settings(analysis_queue=f"q-{uuid.uuid4().hex[:8]}", consent_mode="opt_out",
                    refit_interval_s="0", analysis_active_days="0", **env)
    aws = Aws(s)
    created = wiring.ensure_resources(s, aws.client("kinesis"), aws.client("dynamodb"),
                                      aws.client("sqs"))
    assert any(c.startswith(f"queue {s.analysis_queue}-dlq") for c in created.created), created
    return s


def _scan(s: Settings, table: str) -> list[dict[str, Any]]:
    ddb = Aws(s).client("dynamodb")
    return [i for page in ddb.get_paginator("scan").paginate(TableName=s.table(table))
            for i in page["Items"]]


def _depth(s: Settings, name: str) -> dict[str, int]:
    sqs = Aws(s).client("sqs")
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return {k.removeprefix("ApproximateNumberOfMessages") or "visible": int(v)
            for k, v in attrs.items() if k.startswith("ApproximateNumberOfMessages")}


def _caught_up(s: Settings) -> bool:
    """Every shard checkpointed at its last record."""
    kinesis = Aws(s).client("kinesis")
    last = {}
    for shard in kinesis.list_shards(StreamName=s.stream_name)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=s.stream_name, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        records = kinesis.get_records(ShardIterator=it, Limit=10_000)["Records"]
        if records:
            last[shard["ShardId"]] = records[-1]["SequenceNumber"]
    cps = {i["shard_id"]["S"]: i.get("sequence_number", {}).get("S")
           for i in _scan(s, "checkpoints") if i["shard_id"]["S"].startswith("shardId-")}
    return all(cps.get(k) == v for k, v in last.items())


def _summary(stdout: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(stdout[stdout.index("\n{") + 1:]
                                     if not stdout.startswith("{") else stdout)
    return out


@pytest.mark.long
def test_pending_requests_survive_a_kill_9(ai_settings: Callable[..., Settings],
                                           bedrock_server: BedrockServer) -> None:
    """Killed with every analysis pending (in the debounce window) after the checkpoint
    moved past their purchases, then restarted with no new purchase: every customer gets
    an analysis, and the restart read no record again."""
    s = _queued(ai_settings, analysis_debounce_s="8")
    events = generate(customers=30, days=6, seed=5)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    customers = {e.customer_id for e in events}
    cmd = [sys.executable, "-m", "caa.cli.main", "consume", "--json", "--no-refit"]
    first = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _caught_up(s) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        if not _caught_up(s):
            first.kill()
            _, err = first.communicate()
            pytest.fail(f"not caught up: {err.decode()[-2000:]}")
        pending = _depth(s, str(s.analysis_queue))
    finally:
        first.kill()  # SIGKILL
        first.wait()
    assert sum(pending.values()) >= len(customers), pending
    assert _scan(s, "analyses") == []  # none analysed before the kill: all were pending
    assert len(_scan(s, "predictions")) == len(customers)

    started = time.monotonic()
    done = subprocess.run([*cmd, "--until-idle"], env=os.environ.copy(), capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = _summary(done.stdout.decode())
    print(f"\nrestart analysed {summary['ai']['requests']} in "
          f"{time.monotonic() - started:.1f} s; pending at kill: {pending}")
    assert summary["records_read"] == 0  # no new purchase, nothing re-read
    analysed = {i["customer_id"]["S"] for i in _scan(s, "analyses")}
    assert analysed == customers
    # several batches per customer: the older requests were superseded, one analysis each
    reqs = summary["ai"]["requests"]
    assert reqs["analysed"] == len(customers) and reqs.get("failed", 0) == 0, reqs
    assert sum(_depth(s, str(s.analysis_queue)).values()) == 0


def test_local_worker_lambda_shape_and_superseded(ai_settings: Callable[..., Settings],
                                                  bedrock_server: BedrockServer) -> None:
    """``caa consume``'s worker analyses every customer through the queue; the Lambda's
    handler, given SQS messages read back from the emulator, skips a superseded request
    and analyses a current one; a request with no version is judged by the cache."""
    s = _queued(ai_settings, analysis_debounce_s="0")
    events = generate(customers=12, days=4, seed=9)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    customers = sorted({e.customer_id for e in events})

    async def scenario() -> tuple[dict[str, int], dict[str, Any], dict[str, Any], int]:
        async with Aws(s).clients("kinesis", "dynamodb", "bedrock-runtime", "sqs") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"], bedrock=c["bedrock-runtime"],
                              sqs=c["sqs"])
            assert w.requests is not None and w.applier.requests is not None
            await w.run(until_idle=True, final_refit=False)
            local = w.requests.summary()
            applier, ai = wiring.applier_and_enricher(s, c["dynamodb"], cache_size=0,
                                                      bedrock=c["bedrock-runtime"])
            assert ai is not None
            lam: RequestAnalyzer = wiring.request_analyzer(s, applier, ai, None)
            a, b = customers[0], customers[1]
            states = await applier.customers.load([a, b])
            # b's stored analysis goes: its request must call Bedrock again
            await c["dynamodb"].delete_item(TableName=s.table("analyses"),
                                            Key={"customer_id": {"S": b}})
            queue = RequestQueue(c["sqs"], str(s.analysis_queue), delay_s=0)
            now = time.time()
            stored = await applier.predictions.get(a)
            assert stored is not None
            wm = int(Prediction.model_validate(stored).as_of.timestamp())  # the watermark
            await queue.send([
                AnalysisRequest(a, states[a].version - 1, wm, None, "purchase", now),
                AnalysisRequest(b, states[b].version, wm, None, "purchase", now),
                AnalysisRequest(a, None, wm, None, "schedule", now),
            ])
            calls = len(bedrock_server.requests())
            msgs = await queue.receive(10, 1)
            while len(msgs) < 3:
                msgs += await queue.receive(10, 1)
            event = {"Records": [
                {"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                 "body": m["Body"], "attributes": m.get("Attributes", {}),
                 "eventSource": "aws:sqs", "awsRegion": "eu-central-1"} for m in msgs]}
            answer = await lam.handle_event(event)
            await ai.flush_counters()
            return local, answer, lam.summary(), len(bedrock_server.requests()) - calls

    local, answer, lam, new_calls = asyncio.run(scenario())
    assert local["analysed"] == len(customers) and local.get("failed", 0) == 0, local
    assert {i["customer_id"]["S"] for i in _scan(s, "analyses")} == set(customers)
    assert answer == {"batchItemFailures": []}
    # a: superseded, then a version-less request that hit the cache; b: one Bedrock call
    assert lam == {"analysed": 2, "superseded": 1}
    assert new_calls == 1


def test_a_failing_request_is_retried_then_dead_lettered(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer) -> None:
    """A request that keeps failing is received ``analysis_max_receives`` times (SQS's
    retries after the visibility timeout), then SQS moves it to the dead-letter queue."""
    s = _queued(ai_settings, analysis_debounce_s="0", analysis_max_receives="3",
                analysis_visibility_s="1")
    name = str(s.analysis_queue)
    sqs = Aws(s).client("sqs")
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody='{"v": 1, "customer_id": 42}')  # not a request

    async def scenario() -> dict[str, int]:
        async with Aws(s).clients("dynamodb", "bedrock-runtime", "sqs") as c:
            applier, ai = wiring.applier_and_enricher(s, c["dynamodb"], cache_size=0,
                                                      bedrock=c["bedrock-runtime"])
            assert ai is not None
            analyzer = wiring.request_analyzer(s, applier, ai, wiring.request_queue(s, c["sqs"]))
            stop = asyncio.Event()
            task = asyncio.create_task(analyzer.run(stop))
            deadline = time.monotonic() + 30
            while _depth(s, f"{name}-dlq")["visible"] == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            stop.set()
            await task
            return analyzer.summary()

    counts = asyncio.run(scenario())
    assert counts == {"failed": 3}
    assert _depth(s, f"{name}-dlq")["visible"] == 1
    assert sum(_depth(s, name).values()) == 0


def test_lambda_consumer_sends_and_the_analyzer_lambda_analyses(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both handlers on events read back from the emulator: the Kinesis consumer's batch
    sends one request per customer to SQS; the analyzer's handler, given those SQS messages
    as Lambda delivers them, analyses every customer (Bedrock, stored); a redelivery of the
    same messages is superseded or hits the cache (no new Bedrock call)."""
    from caa.entry import analyzer_lambda, lambda_stream
    from tests.integration.test_lambda import kinesis_events

    s = _queued(ai_settings, analysis_debounce_s="0")
    events = generate(customers=10, days=3, seed=21)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    customers = {e.customer_id for e in events}
    monkeypatch.setattr(lambda_stream, "_runtime", [])  # cold starts, settings from env
    monkeypatch.setattr(analyzer_lambda, "_runtime", [])
    for event in kinesis_events(s):
        assert lambda_stream.handler(event) == {"batchItemFailures": []}

    sqs = Aws(s).client("sqs")
    url = sqs.get_queue_url(QueueName=str(s.analysis_queue))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while len(records) < len(customers) and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                     AttributeNames=["All"]).get("Messages", []):
            records.append({"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                            "body": m["Body"], "attributes": m.get("Attributes", {}),
                            "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
                            "eventSource": "aws:sqs", "eventSourceARN": arn,
                            "awsRegion": "eu-central-1"})
    assert {json.loads(r["body"])["customer_id"] for r in records} == customers
    try:
        for i in range(0, len(records), 4):  # batches of 4, as an event source mapping would
            assert analyzer_lambda.handler({"Records": records[i:i + 4]}) == {
                "batchItemFailures": []}
        assert {i["customer_id"]["S"] for i in _scan(s, "analyses")} == customers
        calls = len(bedrock_server.requests())
        assert calls > 0
        assert analyzer_lambda.handler({"Records": records}) == {"batchItemFailures": []}
        assert len(bedrock_server.requests()) == calls  # the redelivery: cache hits
        preds = {i["customer_id"]["S"]: i for i in _scan(s, "predictions")}
        assert all("analysis" in preds[c] for c in customers)
    finally:
        for rt in analyzer_lambda._runtime:
            rt.close()
        for lrt in lambda_stream._runtime:
            lrt.close()


def test_sigterm_with_bedrock_calls_in_flight_exits_fast_and_loses_no_request(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer) -> None:
    """Bedrock answers slowly (20 s): a SIGTERM while calls are in flight exits within 5 s;
    the requests cut short go back to the queue at once, so a restart analyses every
    customer."""
    s = _queued(ai_settings, analysis_debounce_s="0", bedrock_timeout_s="30",
                bedrock_deadline_s="45")
    bedrock_server.script([], default={"kind": "slow", "delay_s": 20})
    events = generate(customers=12, days=3, seed=33)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    customers = {e.customer_id for e in events}
    cmd = [sys.executable, "-m", "caa.cli.main", "consume", "--json", "--no-refit"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not bedrock_server.requests() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            time.sleep(0.05)
        assert bedrock_server.requests(), "no Bedrock call started"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    print(f"\nSIGTERM with {len(bedrock_server.requests())} Bedrock call(s) in flight: "
          f"exit in {took:.2f} s")
    assert took < 5.0
    reqs = _summary(out.decode())["ai"]["requests"]
    assert reqs.get("stopped", 0) >= 1, reqs
    assert _scan(s, "analyses") == [] or len(_scan(s, "analyses")) < len(customers)

    bedrock_server.reset()  # Bedrock answers at once again
    done = subprocess.run([*cmd, "--until-idle"], env=os.environ.copy(), capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert {i["customer_id"]["S"] for i in _scan(s, "analyses")} == customers


def test_a_bounded_run_does_not_wait_for_a_failed_request(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer) -> None:
    """``drain`` (``caa consume --until-idle``) ends once nothing is visible or delayed: a
    failed request is left to come back after the visibility timeout, not waited for."""
    s = _queued(ai_settings, analysis_debounce_s="0")
    sqs = Aws(s).client("sqs")
    url = sqs.get_queue_url(QueueName=str(s.analysis_queue))["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="not a request")

    async def scenario() -> tuple[dict[str, int], float]:
        async with Aws(s).clients("dynamodb", "bedrock-runtime", "sqs") as c:
            applier, ai = wiring.applier_and_enricher(s, c["dynamodb"], cache_size=0,
                                                      bedrock=c["bedrock-runtime"])
            assert ai is not None
            analyzer = wiring.request_analyzer(s, applier, ai, wiring.request_queue(s, c["sqs"]))
            started = time.monotonic()
            await asyncio.wait_for(analyzer.drain(), 30)
            return analyzer.summary(), time.monotonic() - started

    counts, took = asyncio.run(scenario())
    assert counts == {"failed": 1} and took < 10, (counts, took)
    assert _depth(s, str(s.analysis_queue))["NotVisible"] == 1  # back in 120 s
