"""The Lambda path and the local process agree (the acceptance criterion: "the Lambda
consumer and the SQS analyzer handler, driven by events read from the emulator, produce the
same predictions and analyses as the local process on the same events").

One stream on moto's server carries one set of events (orders with their refunds and
cancellations, and consent statements: some customers are not consented and get the
statistical fallback). It is read twice, into two sets of tables (``CAA_TABLE_PREFIX``) with
a queue each (``CAA_ANALYSIS_QUEUE``), both analysing with the Bedrock-protocol test server:

* locally: ``caa consume --until-idle --no-refit`` as a real process, which sends the
  analysis requests to its queue and analyses them with its own worker;
* as Lambda would: the stream's records read back with GetRecords and shaped as the Kinesis
  event source mapping's event, through ``caa.entry.lambda_stream.handler``; then the SQS
  messages it sent, received from the emulator and shaped as the SQS event source mapping's
  event (batches of 10), through ``caa.entry.analyzer_lambda.handler``, deleting what it did
  not report in ``batchItemFailures`` and redriving those once.

Both start from the same model state (one segment model snapshot loaded into both sets of
tables, the purchase model's prior, no refit) and a debounce of 0 s. Then every customer's
prediction (all but its wall-clock stamps), stored analysis (likewise) and the Bedrock
requests (prompts) are the same on both sides.

One shard, read in one batch on both sides: a prediction is made as of its batch's watermark
and the segment model learns each batch's vectors, so the forecasts depend on how the
records are cut into batches (by design); the same cut on both sides is what makes "the same
events" the same input. With more shards the local poller's order of the shards' batches
(the carried watermark, the order of learning) is not fixed.

A warm analyzer function reloads its models when its copy is older than
``CAA_MODEL_REFRESH_S``: until then its prompts' ``reference_order_value`` may lag the segment
model that learned the latest batches (the warm test sets 0).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.entry import analyzer_lambda, lambda_stream
from caa.settings import Settings
from consumers.stores.analyses import record_from_item
from consumers.stores.predictions import prediction_from_item
from deploy.local.bedrock_server import BedrockServer
from models.events import ConsentEvent, PurchaseEvent, StreamEvent
from models.features import rfm
from models.learn.segmentation import SegmentModel
from models.state import CustomerState
from producers.datasets.synthetic import generate, generate_stream
from producers.publisher import Publisher
from tests.integration.test_lambda import kinesis_events

pytestmark = pytest.mark.integration

#: wall-clock stamps: the only fields allowed to differ
PREDICTION_CLOCK = frozenset({"generated_at", "analysis_at"})
ANALYSIS_CLOCK = frozenset({"at", "latency_ms"})
#: the SQS event source mapping's default batch size
SQS_BATCH = 10


# -- the events and the model state ----------------------------------------------------


def stream_events() -> tuple[list[StreamEvent], set[str]]:
    """~30 customers' orders over four weeks (refunds, cancellations), then consent
    statements: a few consented customers withdraw, a few others give it. Returns the
    events and the customers with analysis consent at the end."""
    events: list[StreamEvent] = list(generate_stream(customers=30, days=28, seed=1130))
    last: dict[str, PurchaseEvent] = {}
    for e in events:
        if isinstance(e, PurchaseEvent):
            last[e.customer_id] = e
    consented = {c for c, e in last.items() if e.consent}
    refused = sorted(set(last) - consented)
    withdraw, give = sorted(consented)[:4], refused[:2]
    for i, cid in enumerate([*withdraw, *give]):
        events.append(ConsentEvent(type="consent", event_id=f"consent-{i:03d}", customer_id=cid,
                                   occurred_at=last[cid].occurred_at + timedelta(hours=1),
                                   analysis=cid in give))
    return events, (consented - set(withdraw)) | set(give)


def segment_snapshot(s: Settings) -> dict[str, object]:
    """A segment model fitted on other customers: the fixed starting state of both sides."""
    states: dict[str, CustomerState] = {}
    for e in generate(customers=120, days=60, seed=77):
        states.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    as_of = max(st.last_ts for st in states.values())
    model = SegmentModel(n_clusters=s.n_segments, seed=s.segment_seed, warmup=s.segment_warmup)
    model.refit([rfm(st, as_of, wiring.rates(s)) for st in states.values()])
    return model.to_dict()


async def _install(s: Settings, snapshot: dict[str, object]) -> None:
    async with AsyncExitStack() as stack:
        applier = await wiring.open_applier(s, stack)
        await applier.registry.replace_segmenter(SegmentModel.from_dict(snapshot))


# -- reading back ----------------------------------------------------------------------


def _scan(s: Settings, table: str) -> list[dict[str, Any]]:
    ddb = Aws(s).client("dynamodb")
    return [i for page in ddb.get_paginator("scan").paginate(TableName=s.table(table))
            for i in page["Items"]]


def predictions(s: Settings) -> dict[str, dict[str, Any]]:
    """Each customer's prediction item as written, without its wall-clock stamps."""
    out = {}
    for item in _scan(s, "predictions"):
        p = prediction_from_item(item)
        out[p["customer_id"]] = {k: v for k, v in p.items() if k not in PREDICTION_CLOCK}
    return out


def analyses(s: Settings) -> dict[str, dict[str, Any]]:
    """Each customer's latest stored analysis record, without its wall-clock stamps."""
    out = {}
    for item in _scan(s, "analyses"):
        rec = record_from_item(item).model_dump(mode="json")
        out[rec["customer_id"]] = {k: v for k, v in rec.items() if k not in ANALYSIS_CLOCK}
    return out


def history_counts(s: Settings) -> Counter[str]:
    return Counter(i["customer_id"]["S"] for i in _scan(s, "analysis-history"))


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where ``a`` and ``b`` differ (floats within 1e-9)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only on one side" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{path}[{i}]")]
    numbers = (int, float)
    if (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool)):
        return [] if math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9) else [f"{path}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


# -- the two paths ---------------------------------------------------------------------


def run_local(s: Settings) -> dict[str, Any]:
    """``caa consume`` as a real process on ``s``'s tables and queue, until idle."""
    env = {**os.environ, "CAA_TABLE_PREFIX": s.table_prefix,
           "CAA_ANALYSIS_QUEUE": str(s.analysis_queue)}
    done = subprocess.run(
        [sys.executable, "-m", "caa.cli.main", "consume", "--until-idle", "--no-refit", "--json"],
        env=env, capture_output=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = done.stdout.decode()
    summary: dict[str, Any] = json.loads(out[out.index("{"):])
    return summary


def _sqs_records(s: Settings, sqs: Any, url: str, arn: str) -> list[dict[str, Any]]:
    """Every message visible on the queue, shaped as the SQS event source mapping's."""
    out: list[dict[str, Any]] = []
    empty = 0
    while empty < 2:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=SQS_BATCH,
                                  WaitTimeSeconds=1, AttributeNames=["All"],
                                  MessageAttributeNames=["All"]).get("Messages", [])
        empty = 0 if got else empty + 1
        out += [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"],
                 "body": m["Body"], "attributes": m.get("Attributes", {}),
                 "messageAttributes": m.get("MessageAttributes", {}),
                 "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs",
                 "eventSourceARN": arn, "awsRegion": s.region} for m in got]
    return out


def run_lambda(s: Settings, monkeypatch: pytest.MonkeyPatch, warm: bool) -> dict[str, Any]:
    """Both functions' handlers on what the emulator holds, with ``s``'s tables and queue
    in the environment they build their settings from: cold starts, or (``warm``) the
    analyzer function's environment already started before the stream's batch (as one
    is after earlier traffic: invoked once, with no message)."""
    monkeypatch.setenv("CAA_TABLE_PREFIX", s.table_prefix)
    monkeypatch.setenv("CAA_ANALYSIS_QUEUE", str(s.analysis_queue))
    monkeypatch.setattr(lambda_stream, "_runtime", [])
    monkeypatch.setattr(analyzer_lambda, "_runtime", [])
    sqs = Aws(s).client("sqs")
    url = sqs.get_queue_url(QueueName=str(s.analysis_queue))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    report: dict[str, Any] = {"kinesis_records": 0, "messages": 0, "failed_first": 0}
    try:
        if warm:  # an environment started by earlier traffic
            assert analyzer_lambda.handler({"Records": []}, None) == {"batchItemFailures": []}
        for event in kinesis_events(s):
            report["kinesis_records"] += len(event["Records"])
            assert lambda_stream.handler(event, None) == {"batchItemFailures": []}
        records = _sqs_records(s, sqs, url, arn)
        report["messages"] = len(records)
        report["customers_requested"] = sorted({json.loads(r["body"])["customer_id"]
                                                for r in records})
        for attempt in range(2):  # the first delivery, then the failed ones once more
            failed: list[dict[str, Any]] = []
            for i in range(0, len(records), SQS_BATCH):
                batch = records[i:i + SQS_BATCH]
                answer = analyzer_lambda.handler({"Records": batch}, None)
                bad = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
                done = [r for r in batch if r["messageId"] not in bad]
                if done:  # what Lambda does with the rest of the batch
                    resp = sqs.delete_message_batch(QueueUrl=url, Entries=[
                        {"Id": str(n), "ReceiptHandle": r["receiptHandle"]}
                        for n, r in enumerate(done)])
                    assert not resp.get("Failed"), resp
                failed += [r for r in batch if r["messageId"] in bad]
            if attempt == 0:
                report["failed_first"] = len(failed)
            if not failed:
                break
            for r in failed:  # visible again now rather than after the visibility timeout
                sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=r["receiptHandle"],
                                              VisibilityTimeout=0)
            records = _sqs_records(s, sqs, url, arn)
        report["failed_after_redrive"] = len(failed)
        report["requests"] = dict(analyzer_lambda._runtime[0].analyzer.summary())
    finally:
        for rt in analyzer_lambda._runtime:
            rt.close()
        for lrt in lambda_stream._runtime:
            lrt.close()
    return report


# -- the scenario ----------------------------------------------------------------------


@dataclass
class Sides:
    settings: tuple[Settings, Settings]  # local, Lambda
    customers: set[str]
    consented: set[str]
    local_summary: dict[str, Any]
    lambda_report: dict[str, Any]
    calls: tuple[list[dict[str, Any]], list[dict[str, Any]]]  # Bedrock requests, each side
    seconds: float


def run_both(ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
             monkeypatch: pytest.MonkeyPatch, warm: bool) -> Sides:
    started = time.monotonic()
    run = uuid.uuid4().hex[:8]
    base = ai_settings(shard_count="1", consent_mode="opt_in", analysis_debounce_s="0",
                       refit_interval_s="0", analysis_active_days="0", bedrock_tpm="1000000",
                       reporting_currency="EUR", analysis_queue=f"q-local-{run}")
    local = base.model_copy(update={"table_prefix": f"loc{run}-"})
    lam = base.model_copy(update={"table_prefix": f"lam{run}-",
                                  "analysis_queue": f"q-lambda-{run}"})
    snapshot = segment_snapshot(base)
    for s in (local, lam):
        aws = Aws(s)
        wiring.ensure_resources(s, aws.client("kinesis"), aws.client("dynamodb"),
                                aws.client("sqs"))
        asyncio.run(_install(s, snapshot))

    events, consented = stream_events()
    Publisher(Aws(base).client("kinesis"), base.stream_name).publish(events)
    customers = {e.customer_id for e in events}
    assert len(events) >= 200 and len(customers) == 30
    assert 0 < len(consented) < len(customers)

    summary = run_local(local)
    local_calls = bedrock_server.requests()
    report = run_lambda(lam, monkeypatch, warm)
    lam_calls = bedrock_server.requests()[len(local_calls):]

    # both sides did the work: every record read, one request per customer, all analysed
    assert summary["records_read"] == len(events) and summary["batches"] == 1, summary
    reqs = summary["ai"]["requests"]
    assert reqs.get("analysed") == len(customers) and not reqs.get("failed"), reqs
    assert report["kinesis_records"] == len(events), report
    assert report["customers_requested"] == sorted(customers), report
    assert report["failed_after_redrive"] == 0, report
    assert report["requests"].get("analysed") == len(customers), report
    sides = Sides((local, lam), customers, consented, summary, report, (local_calls, lam_calls),
                  time.monotonic() - started)
    print(f"\nlocal: {reqs}, {len(local_calls)} Bedrock calls; lambda: {report['requests']}, "
          f"{report['messages']} messages, {report['failed_first']} failed at first, "
          f"{len(lam_calls)} Bedrock calls; {sides.seconds:.1f} s")
    return sides


def check_predictions_and_analyses(sides: Sides) -> None:
    local, lam = sides.settings
    customers, consented = sides.customers, sides.consented
    # predictions: the same customers, every field but the wall-clock stamps
    p_local, p_lam = predictions(local), predictions(lam)
    assert len(p_local) == len(customers) and set(p_local) == set(p_lam)
    diff = {c: d for c in sorted(p_local) if (d := differences(p_local[c], p_lam[c]))}
    assert not diff, diff
    # not a trivial model state: several segments, real spend
    assert len({p["segment"]["id"] for p in p_local.values()}) > 1
    assert all(p["spend"] > 0 and p["currency"] == "EUR" for p in p_local.values())

    # analyses: the same customers analysed, the same source, reason and content
    a_local, a_lam = analyses(local), analyses(lam)
    assert set(a_local) == set(a_lam) == customers
    diff = {c: d for c in sorted(a_local) if (d := differences(a_local[c], a_lam[c]))}
    assert not diff, diff
    sources = Counter((a["source"], a["fallback_reason"]) for a in a_local.values())
    assert sources == {("bedrock", None): len(consented),
                       ("statistical", "no_consent"): len(customers) - len(consented)}, sources
    assert {c for c, a in a_local.items() if a["source"] == "bedrock"} == consented
    assert history_counts(local) == history_counts(lam) == Counter(dict.fromkeys(customers, 1))
    for side_p, side_a in ((p_local, a_local), (p_lam, a_lam)):  # merged into the prediction
        for c, p in side_p.items():
            assert (p["analysis"], p["source"], p["fallback_reason"]) == (
                side_a[c]["analysis"], side_a[c]["source"], side_a[c]["fallback_reason"])


class PromptsDiffer(AssertionError):
    """The two sides asked Bedrock different questions."""


def by_subject(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each Bedrock request's body keyed by the (pseudonymous) subject, the customer data
    block parsed."""
    out = {}
    for call in calls:
        body = json.loads(json.dumps(call["body"]))
        content = body["messages"][0]["content"][0]
        text = content["text"]
        data = json.loads(text[text.index("<customer_data>") + len("<customer_data>"):
                               text.index("</customer_data>")])
        content["text"] = data
        assert data["subject"] not in out, "one call per customer"
        out[data["subject"]] = body
    return out


def check_prompts(sides: Sides, ignore: frozenset[str] = frozenset()) -> None:
    """One Bedrock call per consented customer on each side, with the same request (but
    the customer data's fields in ``ignore``); :class:`PromptsDiffer` when not."""
    local_calls, lam_calls = sides.calls
    assert len(local_calls) == len(lam_calls) == len(sides.consented)
    a, b = by_subject(local_calls), by_subject(lam_calls)
    assert set(a) == set(b)
    for body in (*a.values(), *b.values()):
        data = body["messages"][0]["content"][0]["text"]
        for field in ignore:
            data.pop(field)
    diff = {c: d for c in sorted(a) if (d := differences(a[c], b[c]))}
    if diff:
        raise PromptsDiffer(diff)


# -- the tests -------------------------------------------------------------------------


def test_lambda_handlers_match_the_local_process(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold starts of both functions (the analyzer's after the stream's batch): the same
    predictions, analyses and Bedrock requests as ``caa consume``."""
    sides = run_both(ai_settings, bedrock_server, monkeypatch, warm=False)
    check_predictions_and_analyses(sides)
    check_prompts(sides)


def test_a_warm_analyzer_function_prompts_with_the_models_as_they_stand(
        ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The analyzer function's environment started before the batch (one earlier
    invocation): it reloads the models when its copy is older than ``CAA_MODEL_REFRESH_S``
    (0 here; 60 s by default), so its prompts' ``reference_order_value`` comes from the
    segment model that learned the batch, as ``caa consume``'s does (it was found to keep
    the models of its cold start for ever)."""
    monkeypatch.setenv("CAA_MODEL_REFRESH_S", "0")
    sides = run_both(ai_settings, bedrock_server, monkeypatch, warm=True)
    check_predictions_and_analyses(sides)
    check_prompts(sides)
