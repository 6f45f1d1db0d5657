"""The batch job's native (InvokeModel) request and answer formats, and error branches of
the ingestion that the end-to-end test does not reach; the S3 and Bedrock clients here are
in-process stand-ins (the real path: tests/integration)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from consumers.analysis.analyzer import PriceTable, statistical_patterns
from consumers.analysis.bedrock import BedrockAnalyzer
from consumers.analysis.daily.ingest import analysis_of, ingest
from consumers.analysis.daily.job import BatchConfig
from deploy.local.bedrock_server import serve
from deploy.local.schema_answer import generate, grounding
from models.analysis import TOOL_NAME, input_schema, tool_spec
from models.daily_job import BatchEntry, BatchJob, OutputLine, messages_body, parse_output_line
from models.events import LineItem, PurchaseEvent
from models.prompt import SYSTEM_PROMPT, build_input, render_user
from models.state import CustomerState

NOW = datetime(2024, 6, 1, 2, tzinfo=UTC)
MODEL = "eu.anthropic.claude-haiku-4-5-20251001-v1:0"


def entry() -> BatchEntry:
    state = CustomerState.new("c1")
    state.apply(PurchaseEvent(
        event_id="e1", order_id="o1", customer_id="c1", occurred_at=NOW, currency="EUR",
        items=[LineItem(product_id="rice", category="pantry", quantity=1,
                        unit_price=Decimal("2.00"))], total=Decimal("2.00")))
    x = build_input(state, None, as_of_ts=int(NOW.timestamp()), key=b"k" * 32,
                    reference_order_value=2.0)
    return BatchEntry(customer_id="c1", input=x, signature={})


PRICES = PriceTable.parse({MODEL: (1.1, 5.5)})
ANALYZER = BedrockAnalyzer(None, MODEL, max_tokens=1500, prices=PRICES, temperature=0.3)


def test_the_native_request_is_the_on_demand_request_translated() -> None:
    x = entry().input
    spec = tool_spec()["toolSpec"]
    assert messages_body(ANALYZER.request(x)) == {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 1500, "temperature": 0.3,
        "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": [{"type": "text", "text": render_user(x)}]}],
        "tools": [{"name": TOOL_NAME, "description": spec["description"],
                   "input_schema": input_schema()}],
        "tool_choice": {"type": "tool", "name": TOOL_NAME}}


@pytest.mark.parametrize("change", [
    {"additionalModelRequestFields": {"top_k": 5}},
    {"inferenceConfig": {"maxTokens": 10, "seed": 1}},
    {"toolConfig": {"tools": [tool_spec()], "toolChoice": {"tool": {"name": TOOL_NAME}},
                    "strict": True}},
    {"toolConfig": {"tools": [{"cachePoint": {"type": "default"}}]}},
    {"system": [{"text": "x"}, {"cachePoint": {"type": "default"}}]},
    {"messages": [{"role": "user", "content": [{"image": {}}]}]},
    {"inferenceConfig": {"temperature": 0.2}},  # max_tokens is required natively
])
def test_a_request_the_translation_does_not_know_is_refused_not_dropped(
        change: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"translate|required"):
        messages_body({**ANALYZER.request(entry().input), **change})


def native_line(content: list[dict[str, Any]], stop: str = "tool_use") -> OutputLine:
    """An output line of an InvokeModel-type job, through the real line parser."""
    out = {"id": "msg_1", "type": "message", "role": "assistant", "content": content,
           "stop_reason": stop, "usage": {"input_tokens": 1000, "output_tokens": 200}}
    return parse_output_line(json.dumps({"recordId": "r0000000001", "modelInput": {},
                                         "modelOutput": out}))


def valid_input() -> dict[str, Any]:
    body = messages_body(ANALYZER.request(entry().input))
    return dict(generate(body["tools"][0]["input_schema"], grounded=tuple(grounding(body))))


BILLED = round((1000 * 1.1 + 200 * 5.5) / 1e6 * 0.5, 9)


def test_a_native_tool_use_answer_is_validated_and_priced_at_the_batch_rate() -> None:
    line = native_line([{"type": "text", "text": "Recording."},
                        {"type": "tool_use", "id": "toolu_1", "name": TOOL_NAME,
                         "input": valid_input()}])
    rec = analysis_of(entry(), line, PRICES, MODEL, 0.5, NOW)
    assert (rec.source, rec.fallback_reason, rec.model, rec.trigger) == (
        "bedrock", None, MODEL, "schedule")
    assert (rec.input_tokens, rec.output_tokens, rec.attempts) == (1000, 200, 1)
    assert rec.cost_usd == pytest.approx(BILLED)
    # the consumption patterns are the purchase intervals' (the tool does not ask for them)
    patterns = [p.model_dump(mode="json") for p in statistical_patterns(entry().input)]
    assert rec.analysis.model_dump(mode="json") == {**valid_input(),
                                                    "consumption_patterns": patterns}


@pytest.mark.parametrize("content", [
    [{"type": "text", "text": "They will buy rice again soon."}],  # text only
    [{"type": "tool_use", "id": "toolu_1", "name": "other_tool", "input": {}}],  # wrong tool
    [{"type": "tool_use", "id": "toolu_1", "name": TOOL_NAME, "input": {"narrative": "x"}}],
    [{"toolUse": {"toolUseId": "t", "name": TOOL_NAME, "input": {}}}],  # Converse-shaped
])
def test_an_invalid_native_answer_falls_back_and_is_billed(content: list[Any]) -> None:
    rec = analysis_of(entry(), native_line(content), PRICES, MODEL, 0.5, NOW)
    assert (rec.source, rec.fallback_reason, rec.attempts) == (
        "statistical", "invalid_answer", 1)
    assert (rec.input_tokens, rec.output_tokens) == (1000, 200)
    assert rec.cost_usd == pytest.approx(BILLED)


def test_a_valid_answer_about_an_item_the_customer_never_bought_falls_back() -> None:
    tool_input = valid_input()
    tool_input["recommendations"] = [{"product": "caviar", "reason": "treat",
                                      "urgency": "low"}]
    line = native_line([{"type": "tool_use", "id": "toolu_1", "name": TOOL_NAME,
                         "input": tool_input}])
    rec = analysis_of(entry(), line, PRICES, MODEL, 0.5, NOW)
    assert (rec.source, rec.fallback_reason) == ("statistical", "invalid_answer")


def test_the_test_server_takes_invoke_model_jobs_and_refuses_unknown_types() -> None:
    server, endpoint = serve()
    try:
        client = boto3.client("bedrock", endpoint_url=endpoint, region_name="eu-west-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        job = {"jobName": "j", "roleArn": "arn:aws:iam::1:role/r", "modelId": MODEL,
               "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/i.jsonl"}},
               "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/o/"}}}
        arn = client.create_model_invocation_job(**job, modelInvocationType="InvokeModel",
                                                 clientRequestToken="j")["jobArn"]
        got = client.get_model_invocation_job(jobIdentifier=arn)
        assert (got["status"], got["modelInvocationType"]) == ("Submitted", "InvokeModel")
        with pytest.raises(ClientError, match="modelInvocationType"):
            client.create_model_invocation_job(**job, modelInvocationType="Chat")
    finally:
        server.shutdown()
        server.server_close()


def test_a_line_with_neither_answer_nor_error_falls_back_unbilled() -> None:
    line = OutputLine("malformed", "r0000000001", None, "neither modelOutput nor error")
    rec = analysis_of(entry(), line, PRICES, MODEL, 0.5, NOW)
    assert (rec.source, rec.fallback_reason, rec.cost_usd, rec.trigger) == (
        "statistical", "batch_malformed", 0.0, "schedule")


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.deleted: list[str] = []

    async def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> None:
        if kw.get("IfNoneMatch") == "*" and Key in self.objects:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
        self.objects[Key] = Body

    async def delete_object(self, Bucket: str, Key: str) -> None:
        self.deleted.append(Key)
        self.objects.pop(Key, None)

    def get_paginator(self, name: str) -> Any:
        raise ClientError({"Error": {"Code": "InternalError"}}, "ListObjectsV2")


class FakeBedrock:
    async def get_model_invocation_job(self, jobIdentifier: str) -> dict[str, Any]:
        return {"status": "Completed"}


def test_an_ingestion_that_fails_before_counting_gives_its_claim_back() -> None:
    job = BatchJob(name="caa-batch-x", model_id=MODEL, created_at=NOW,
                   input_uri="s3://b/p/input/caa-batch-x.jsonl",
                   output_uri="s3://b/p/output/caa-batch-x/",
                   record_uri="s3://b/p/jobs/caa-batch-x.json",
                   entries={"r0000000001": entry()}, job_arn="arn:job")
    s3 = FakeS3()
    config = BatchConfig(usage_table="caa-usage", prices=PRICES, price_factor=0.5,
                         model_id=MODEL, bucket="b", prefix="p/", role_arn=None)
    with pytest.raises(ClientError):  # the output could not be listed
        asyncio.run(ingest(config, None, s3, FakeBedrock(), job, NOW))  # type: ignore[arg-type]
    assert s3.deleted == ["p/jobs/caa-batch-x.ingested.json"]
    assert s3.objects == {}  # free to try again
