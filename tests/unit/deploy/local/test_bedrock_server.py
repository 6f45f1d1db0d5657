"""The Bedrock Converse test server, driven by the real boto3 / aiobotocore clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from pydantic import BaseModel, ConfigDict, Field

from deploy.local.bedrock_server import (
    CANNED,
    TEST_SERVER_HEADER,
    BedrockServer,
    generate,
    launch,
    serve,
)

MODEL_ID = "eu.anthropic.claude-haiku-4-5-20251001-v1:0"
REGION = "eu-central-1"


class Tier(StrEnum):
    GOLD = "gold"
    SILVER = "silver"


class Driver(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: str = Field(min_length=20, max_length=40)
    weight: float = Field(ge=0.0, le=1.0)
    direction: Literal["up", "down"]


class Forecast(BaseModel):
    model_config = ConfigDict(extra="forbid")
    horizon_days: int = Field(gt=0, le=365)
    expected_purchases: float = Field(ge=0)
    p_alive: float = Field(gt=0, lt=1)


class CustomerAnalysis(BaseModel):
    """What the LLM is asked to produce about one customer."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["customer_analysis"]
    customer_id: str
    segment: Literal["champion", "loyal", "at_risk", "lost"]
    tier: Tier
    churn_risk: float = Field(ge=0, le=1)
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)]
    drivers: list[Driver] = Field(min_length=2, max_length=4)
    forecast: Forecast
    previous: Forecast | None = None
    next_purchase: date | None
    analysed_at: datetime
    headline: str = Field(max_length=8)
    tags: list[str] = Field(default_factory=list, max_length=3)
    scores: dict[str, float] = Field(default_factory=dict)
    priority: int = Field(default=3, ge=1, le=5)
    notes: str | None = None
    pair: tuple[int, str]


class Node(BaseModel):
    name: str
    children: list[Node] = []
    parent: Node | None = None


def tool_config(model: type[BaseModel], name: str = "record_analysis") -> dict[str, Any]:
    spec = {"name": name, "description": "Record the analysis.",
            "inputSchema": {"json": model.model_json_schema()}}
    return {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": name}}}


def converse(client: Any, prompt: str = "Analyse customer c-1.", max_tokens: int = 2000,
             model_id: str = MODEL_ID) -> dict[str, Any]:
    result: dict[str, Any] = client.converse(
        modelId=model_id,
        system=[{"text": "You are a customer analyst."}],
        messages=[{"role": "user", "content": [{"text": prompt}]}],
        inferenceConfig={"maxTokens": max_tokens, "temperature": 0.0},
        toolConfig=tool_config(CustomerAnalysis),
    )
    return result


def tool_use(result: dict[str, Any]) -> dict[str, Any]:
    (block,) = result["output"]["message"]["content"]
    use: dict[str, Any] = block["toolUse"]
    return use


@pytest.fixture(scope="module")
def server() -> Iterator[BedrockServer]:
    srv = launch()
    yield srv
    srv.stop()
    assert srv.process.returncode == 0  # SIGTERM is a clean exit


@pytest.fixture(autouse=True)
def _fresh(server: BedrockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.reset()
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)  # would replace SigV4


@pytest.fixture
def make_client(server: BedrockServer) -> Callable[..., Any]:
    def make(read_timeout: float = 5.0) -> Any:
        return boto3.client(
            "bedrock-runtime", endpoint_url=server.endpoint, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, read_timeout=read_timeout,
                          connect_timeout=2),
        )

    return make


@pytest.fixture
def client(make_client: Callable[..., Any]) -> Any:
    return make_client()


def test_schema_generated_answer_validates(client: Any) -> None:
    result = converse(client)
    assert result["stopReason"] == "tool_use"
    use = tool_use(result)
    assert use["name"] == "record_analysis"
    assert use["toolUseId"].startswith("tooluse_")
    analysis = CustomerAnalysis.model_validate(use["input"])
    assert set(use["input"]) == set(CustomerAnalysis.model_fields)  # optional ones too
    assert analysis.kind == "customer_analysis" and analysis.segment == "champion"
    assert analysis.tier is Tier.GOLD
    assert analysis.churn_risk == 0.5 and analysis.confidence == 0.75
    assert len(analysis.drivers) == 2 and analysis.previous is not None
    assert analysis.next_purchase == date(2026, 12, 1)
    assert analysis.analysed_at.isoformat().startswith("2026-12-01T00:00:00")
    assert analysis.headline == "sample h" and analysis.priority == 3  # no room to say more
    # free text says it is canned, and so does every response
    assert analysis.customer_id == f"{CANNED} sample customer_id"
    assert analysis.tags == [f"{CANNED} sample tags"]
    header, value = TEST_SERVER_HEADER
    assert result["ResponseMetadata"]["HTTPHeaders"][header] == value
    assert len(analysis.drivers[0].factor) == 20 and len(analysis.tags) == 1
    assert converse(client)["output"]["message"]["content"][0]["toolUse"]["input"] == use[
        "input"]  # deterministic


def test_generate_edge_cases() -> None:
    node = generate(Node.model_json_schema())
    Node.model_validate(node)  # recursion ends
    assert node["children"] == [{"name": f"{CANNED} sample name"}]
    assert generate({"type": "integer", "exclusiveMinimum": 1, "maximum": 2}) == 2
    assert generate({"type": "integer", "minimum": 7}) == 8
    assert generate({"type": "number", "exclusiveMaximum": 0}) == -1.0
    assert generate({"type": "number"}) == 1.0
    assert generate({"type": "array", "items": {"type": "string"}, "minItems": 3,
                     "maxItems": 5}, name="tag") == [f"{CANNED} sample tag"] * 3
    assert generate({"type": "string", "maxLength": 12}, name="tag") == "sample tag"
    assert generate({"type": "array", "items": {"type": "boolean"}, "maxItems": 0}) == []
    assert generate({"type": ["null", "string"], "format": "date-time"}) == (
        "2026-12-01T00:00:00Z")
    assert generate({"anyOf": [{"type": "null"}, {"const": 3}]}) == 3
    assert generate({"default": {"x": 1}}) == {"x": 1}


def test_model_id_path_round_trip_and_full_body_recorded(
        client: Any, server: BedrockServer) -> None:
    converse(client, prompt="Customer c-42 spent EUR 1234 (secret-marker-xyz).")
    (record,) = server.requests()
    assert record["model_id"] == MODEL_ID
    assert record["path"] == "/model/eu.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
    assert record["authorized"] is True and record["outcome"] == "answer"
    assert abs(record["received_at"] - time.time()) < 30
    assert "secret-marker-xyz" in json.dumps(record["body"])
    body = record["body"]
    assert body["system"] == [{"text": "You are a customer analyst."}]
    assert body["inferenceConfig"]["maxTokens"] == 2000
    schema = body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]
    assert schema == CustomerAnalysis.model_json_schema()


def test_usage_counts_and_max_tokens_cap(client: Any, server: BedrockServer) -> None:
    result = converse(client)
    usage = result["usage"]
    sent = json.dumps(server.requests()[0]["body"])
    assert usage["inputTokens"] >= math.ceil(len(sent) / 4) - 5  # raw bytes vs re-dumped
    assert usage["outputTokens"] == math.ceil(len(json.dumps(tool_use(result)["input"])) / 4)
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert isinstance(result["metrics"]["latencyMs"], int)

    capped = converse(client, max_tokens=10)
    assert capped["usage"]["outputTokens"] == 10  # the long answer is still sent whole
    CustomerAnalysis.model_validate(tool_use(capped)["input"])

    server.script([{"kind": "answer", "input": {"a": 1},
                    "usage": {"inputTokens": 7, "outputTokens": 3}}])
    scripted = converse(client)
    assert tool_use(scripted)["input"] == {"a": 1}
    assert scripted["usage"] == {"inputTokens": 7, "outputTokens": 3, "totalTokens": 10}


@pytest.mark.parametrize(("step", "code", "status"), [
    ({"kind": "throttle"}, "ThrottlingException", 429),
    ({"kind": "error", "status": 503, "type": "ServiceUnavailableException"},
     "ServiceUnavailableException", 503),
    ({"kind": "error", "status": 500, "type": "InternalServerException"},
     "InternalServerException", 500),
    ({"kind": "error", "status": 408, "type": "ModelTimeoutException"},
     "ModelTimeoutException", 408),
    ({"kind": "error", "status": 400, "type": "ValidationException", "message": "too long"},
     "ValidationException", 400),
])
def test_errors_map_to_modeled_exceptions(client: Any, server: BedrockServer,
                                          step: dict[str, Any], code: str, status: int) -> None:
    server.script([step])
    with pytest.raises(getattr(client.exceptions, code)) as caught:
        converse(client)
    assert isinstance(caught.value, botocore.exceptions.ClientError)
    response = caught.value.response
    assert response["Error"]["Code"] == code
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["Error"]["Message"] == step.get("message", response["Error"]["Message"])
    assert server.requests()[0]["outcome"] == ("throttle" if code == "ThrottlingException"
                                               else f"error:{code}")
    converse(client)  # the queue is empty again: default answer


def test_slow_answer_hits_client_read_timeout(make_client: Callable[..., Any],
                                              server: BedrockServer) -> None:
    server.script([{"kind": "slow", "delay_s": 1.0}])
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        converse(make_client(read_timeout=0.3))
    assert server.requests()[0]["outcome"] == "slow"


def test_slow_request_does_not_block_others(make_client: Callable[..., Any],
                                            server: BedrockServer) -> None:
    server.script([{"kind": "answer", "delay_s": 0.6, "input": {"slow": True}}])
    results: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: results.append(converse(make_client())))
    worker.start()
    while not server.requests():
        time.sleep(0.01)
    started = time.monotonic()
    assert tool_use(converse(make_client()))["input"]["kind"] == "customer_analysis"
    assert time.monotonic() - started < 0.4
    worker.join()
    assert tool_use(results[0])["input"] == {"slow": True}


def test_text_and_invalid_answers(client: Any, server: BedrockServer) -> None:
    server.script([{"kind": "text"}, {"kind": "invalid", "input": {"segment": 42}},
                   {"kind": "invalid"}])
    text = converse(client)
    assert text["stopReason"] == "end_turn"
    assert text["output"]["message"]["content"][0]["text"].startswith(
        f"{CANNED} I think this customer")
    assert all("toolUse" not in block for block in text["output"]["message"]["content"])
    assert tool_use(converse(client))["input"] == {"segment": 42}
    assert tool_use(converse(client))["input"] == {"unexpected": True}
    assert [r["outcome"] for r in server.requests()] == ["text", "invalid", "invalid"]


def test_times_fifo_then_default(client: Any, server: BedrockServer) -> None:
    server.script([{"kind": "throttle", "times": 2}, {"kind": "answer", "input": {"n": 1}}],
                  default={"kind": "answer", "input": {"n": 0}})
    for _ in range(2):
        with pytest.raises(client.exceptions.ThrottlingException):
            converse(client)
    inputs = [tool_use(converse(client))["input"]["n"] for _ in range(3)]
    assert inputs == [1, 0, 0]
    assert [r["outcome"] for r in server.requests()] == ["throttle"] * 2 + ["answer"] * 3
    server.reset()
    assert server.requests() == []
    assert tool_use(converse(client))["input"]["kind"] == "customer_analysis"


def test_unsigned_request_denied_and_recorded(client: Any, server: BedrockServer) -> None:
    server.script([{"kind": "answer", "input": {"kept": True}}])
    req = urllib.request.Request(f"{server.endpoint}/model/m%3A1/converse", method="POST",
                                 data=b'{"messages": []}',
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    assert caught.value.code == 403
    assert caught.value.headers["x-amzn-ErrorType"] == "AccessDeniedException"
    assert json.loads(caught.value.read()) == {"message": "Missing Authentication Token"}
    (record,) = server.requests()
    assert record["outcome"] == "denied" and record["authorized"] is False
    assert record["model_id"] == "m:1" and record["body"] == {"messages": []}
    assert tool_use(converse(client))["input"] == {"kept": True}  # no step was consumed


def test_keep_alive_unknown_path_and_bad_script(server: BedrockServer) -> None:
    conn = http.client.HTTPConnection(server.endpoint.removeprefix("http://"), timeout=5)
    try:
        for _ in range(2):  # one connection, several framed requests
            conn.request("POST", "/model/x/invoke", body=b"{}")
            resp = conn.getresponse()
            assert resp.status == 404
            assert resp.getheader("x-amzn-ErrorType") == "UnknownOperationException"
            assert "message" in json.loads(resp.read())
            conn.request("GET", "/_control/health")
            assert json.loads(conn.getresponse().read()) == {"ok": True}
    finally:
        conn.close()
    with pytest.raises(RuntimeError, match="kind"):
        server.script([{"kind": "nonsense"}])


def test_aiobotocore_converse(server: BedrockServer) -> None:
    from aiobotocore.session import get_session

    async def run() -> dict[str, Any]:
        session = get_session()
        async with session.create_client(
            "bedrock-runtime", endpoint_url=server.endpoint, region_name=REGION,
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, read_timeout=5),
        ) as aclient:
            first = await converse_async(aclient)
            with pytest.raises(aclient.exceptions.ThrottlingException):
                await converse_async(aclient)
            return first

    async def converse_async(aclient: Any) -> dict[str, Any]:
        result: dict[str, Any] = await aclient.converse(
            modelId=MODEL_ID, messages=[{"role": "user", "content": [{"text": "hi"}]}],
            inferenceConfig={"maxTokens": 500}, toolConfig=tool_config(CustomerAnalysis))
        return result

    server.script([{"kind": "answer"}, {"kind": "throttle"}])
    result = asyncio.run(run())
    CustomerAnalysis.model_validate(tool_use(result)["input"])
    assert [r["model_id"] for r in server.requests()] == [MODEL_ID, MODEL_ID]


def test_serve_in_process() -> None:
    httpd, endpoint = serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"{endpoint}/_control/health", timeout=5) as resp:
            assert json.loads(resp.read()) == {"ok": True}
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_launch_reports_a_dead_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(RuntimeError, match="exited before READY"):
        launch(timeout=5)
