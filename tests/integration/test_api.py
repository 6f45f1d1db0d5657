"""The HTTP API as a real uvicorn process (``caa serve``), reached with httpx over loopback;
DynamoDB on moto's server and Bedrock on the Bedrock-protocol test server, both real
processes too. The data comes from publishing events and running the real consumer."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from consumers.stores.customers import state_from_item
from consumers.stores.predictions import prediction_from_item
from deploy.local.bedrock_server import BedrockServer
from deploy.local.emulator import Emulator, free_port
from models.prediction import Prediction
from models.prompt import pseudonym
from tests.integration.api_fixtures import ROOT, ApiServer, launch_api
from tests.integration.test_analysis import _event, customer_data, run

pytestmark = pytest.mark.integration
KEY = "api-key-for-tests-0123456789"
PSEUDONYM_KEY = "test-key-0123456789abcdef0123456789"
#: customers and their purchase count; every one said yes to analysis (CAA_CONSENT_MODE opt_in)
CUSTOMERS = {"api-pred": 3, "api-cache": 2, "api-rate": 2, "api-hourly": 2, "api-consent": 2,
             "api-throttle": 2, "api-down": 2, "api-erase": 2}
H = {"x-api-key": KEY}


@dataclass
class World:
    settings: Settings
    env: dict[str, str]
    api: ApiServer
    tmp: Path

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.api.url}{path}", headers=kw.pop("headers", H), timeout=30,
                         **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(f"{self.api.url}{path}", headers=kw.pop("headers", H), timeout=30,
                          **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.put(f"{self.api.url}{path}", headers=kw.pop("headers", H), timeout=30,
                         **kw)


@pytest.fixture(scope="module")
def world(emulator: Emulator, bedrock_server: BedrockServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Tables of their own, filled by the real consumer from published events; then the API
    on them, configured by environment like production."""
    tmp, run_id = tmp_path_factory.mktemp("api"), uuid.uuid4().hex[:8]
    env = {
        "AWS_ENDPOINT_URL": emulator.endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-central-1",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_server.endpoint,
        "CAA_STATE_DIR": str(tmp / ".caa"), "CAA_STREAM_NAME": f"stream-{run_id}",
        "CAA_TABLE_PREFIX": f"t{run_id}-", "CAA_POLL_INTERVAL_S": "0.05", "CAA_IDLE_POLLS": "2",
        "CAA_ANALYZER": "bedrock", "CAA_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "CAA_CONSENT_MODE": "opt_in", "CAA_ANALYSIS_DEBOUNCE_S": "0.2",
        "CAA_ANALYSIS_ACTIVE_DAYS": "0", "CAA_BEDROCK_TIMEOUT_S": "2",
        "CAA_BEDROCK_DEADLINE_S": "2", "CAA_BEDROCK_BACKOFF_BASE_S": "0.02",
        "CAA_BREAKER_RESET_S": "60", "CAA_SEGMENT_WARMUP": "10", "CAA_API_KEYS": f"other,{KEY}",
        "CAA_REPORTING_CURRENCY": "EUR",  # the events' currency: amounts are reported as is
    }
    mp = pytest.MonkeyPatch()  # the test process's own clients find the emulator by env too
    mp.delenv("AWS_PROFILE", raising=False)
    for k, v in env.items():
        mp.setenv(k, v)
    try:
        s = Settings()
        ensure_resources(s, Aws(s).client("kinesis"), Aws(s).client("dynamodb"))
        run(s, [_event(cid, 1 + 7 * d, consent=True) for cid, n in CUSTOMERS.items()
                for d in range(n)])
        api = launch_api(dict(os.environ), tmp / "api.log")
        try:
            yield World(s, dict(os.environ), api, tmp)
        finally:
            api.stop()
    finally:
        mp.undo()


def calls_for(bedrock_server: BedrockServer, cid: str) -> int:
    """Converse requests the test server received about this customer (by pseudonym)."""
    subject = pseudonym(PSEUDONYM_KEY.encode(), cid)
    return sum(1 for r in bedrock_server.requests()
               if isinstance(r["body"], dict) and customer_data(r)["subject"] == subject)


ROUTES = [("get", "/customers/{}/prediction"), ("get", "/customers/{}/history"),
          ("post", "/customers/{}/analyze"), ("put", "/customers/{}/consent")]


def call(w: World, method: str, path: str, headers: dict[str, str] = H) -> httpx.Response:
    body = {"analysis": True} if method == "put" else None
    return httpx.request(method, f"{w.api.url}{path}", headers=headers, timeout=30, json=body)


def test_every_route_but_health_needs_a_valid_key(world: World) -> None:
    for method, path in [*ROUTES, ("get", "/segments")]:
        for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": ""}, {"x-api-key": KEY[:-1]}):
            r = call(world, method, path.format("api-pred"), headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json() == {"detail": "missing or wrong x-api-key"}
    assert call(world, "get", "/segments", {"x-api-key": "other"}).status_code == 200
    health = world.get("/health", headers={})
    assert (health.status_code, health.json()) == (200, {"status": "ok", "dynamodb": "ok"})


def test_malformed_ids_are_400_and_unknown_customers_404(world: World) -> None:
    for method, path in ROUTES:
        for bad in ("bad%20id", "semi%3Bcolon", "x" * 65, "%C3%A9t%C3%A9"):
            r = call(world, method, path.format(bad))
            assert r.status_code == 400, (method, path, bad, r.text)
            assert "customer_id" in r.json()["detail"]
        r = call(world, method, path.format("nobody-" + "x" * 57))  # 64 characters: well formed
        assert r.status_code == 404, (method, path, r.text)
    assert world.get("/customers/api-pred/history", params={"limit": 0}).status_code == 400


def test_the_prediction_is_the_one_the_consumer_wrote(world: World) -> None:
    r = world.get("/customers/api-pred/prediction")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["customer_id"], body["purchases"], body["spend"], body["currency"],
            body["unconverted"]) == ("api-pred", 3, 6.0, "EUR", [])
    assert body["source"] == "bedrock" and body["analysis"] is not None  # merged in by the run
    item = Aws(world.settings).client("dynamodb").get_item(
        TableName=world.settings.table("predictions"), Key={"customer_id": {"S": "api-pred"}},
    )["Item"]
    assert body == Prediction.model_validate(prediction_from_item(item)).model_dump(mode="json")

    segments = world.get("/segments").json()
    assert segments["version"] >= 1 and len(segments["segments"]) == world.settings.n_segments
    assert sum(seg["customers"] for seg in segments["segments"]) == len(CUSTOMERS)


def test_analyze_bypasses_the_cache_each_time(world: World,
                                              bedrock_server: BedrockServer) -> None:
    before = calls_for(bedrock_server, "api-cache")
    assert before >= 1  # the purchases' analysis; nothing changed since: the cache would hold
    answers = [world.post("/customers/api-cache/analyze") for _ in range(2)]
    for r in answers:
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["source"], body["trigger"], body["fallback_reason"]) == (
            "bedrock", "on_demand", None)
        assert body["input_tokens"] > 0 and "signature" not in body
    assert calls_for(bedrock_server, "api-cache") == before + 2
    history = world.get("/customers/api-cache/history").json()
    assert [h["trigger"] for h in history] == ["on_demand", "on_demand"] + ["purchase"] * before
    assert [h["at"] for h in history[:2]] == [a.json()["at"] for a in reversed(answers)]
    assert world.get("/customers/api-cache/prediction").json()["analysis_at"] is not None


def test_rate_limits_per_customer(world: World) -> None:
    limit = world.settings.api_customer_requests_per_minute
    for i in range(limit):
        path = "/customers/api-rate/" + ("history" if i % 2 else "prediction")
        assert world.get(path).status_code == 200
    for path in ("/customers/api-rate/prediction", "/customers/api-rate/history"):
        r = world.get(path)
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert world.post("/customers/api-rate/analyze").status_code == 429
    assert world.put("/customers/api-rate/consent", json={"analysis": True}).status_code == 202
    assert world.get("/customers/api-pred/history").status_code == 200  # others unaffected

    hourly = world.settings.api_analyses_per_hour
    for _ in range(hourly):
        assert world.post("/customers/api-hourly/analyze").status_code == 200
    r = world.post("/customers/api-hourly/analyze")
    assert r.status_code == 429, r.text
    assert 60 < int(r.headers["Retry-After"]) <= 3600  # the hourly window, not the minute's
    assert world.get("/customers/api-hourly/prediction").status_code == 200  # 6 of 10


def test_consent_withdrawn_by_the_api_holds_for_the_next_analysis(
    world: World, bedrock_server: BedrockServer,
) -> None:
    cid, before = "api-consent", calls_for(bedrock_server, "api-consent")
    r = world.put(f"/customers/{cid}/consent", json={"analysis": False})
    assert r.status_code == 202, r.text
    assert (r.json()["customer_id"], r.json()["analysis"]) == (cid, False)
    assert r.json()["event_id"] and r.json()["sequence_number"]
    run(world.settings, [])  # the consumer, the single writer of states, applies it
    item = Aws(world.settings).client("dynamodb").get_item(
        TableName=world.settings.table("customers"), Key={"customer_id": {"S": cid}})["Item"]
    state = state_from_item(item)
    assert (state.consent, state.purchases) == (False, 2)  # where the events' consent lives

    r = world.post(f"/customers/{cid}/analyze")
    assert r.status_code == 200, r.text
    assert (r.json()["source"], r.json()["fallback_reason"]) == ("statistical", "no_consent")
    assert calls_for(bedrock_server, cid) == before  # nothing about them reached Bedrock

    assert world.put(f"/customers/{cid}/consent", json={"analysis": True}).status_code == 202
    run(world.settings, [])  # the consumer may analyse them itself now consent is back
    granted = calls_for(bedrock_server, cid)
    r = world.post(f"/customers/{cid}/analyze")
    assert (r.status_code, r.json()["source"]) == (200, "bedrock")
    assert calls_for(bedrock_server, cid) == granted + 1
    for bad in ({"analysis": "no"}, {}, {"analysis": True, "extra": 1}, [True]):
        assert world.put(f"/customers/{cid}/consent", json=bad).status_code == 400, bad
    # a key twice: parsers disagree on which counts (it was taken as the last, true)
    twice = world.put(f"/customers/{cid}/consent", content=b'{"analysis": false, '
                      b'"analysis": true}', headers={**H, "Content-Type": "application/json"})
    assert twice.status_code == 400 and "appears more than once" in twice.text


def test_a_body_over_the_limit_is_413_before_it_is_read(world: World) -> None:
    """``caa serve`` read a 50 MB body whole before it answered 400; a declared length over
    the limit is now refused unread, a chunked body once it passes the limit, and the
    server goes on answering."""
    from caa.api.body_limit import MAX_BODY_BYTES

    path, json_type = "/customers/api-consent/consent", {**H, "Content-Type": "application/json"}
    declared = world.put(path, content=b" " * (50 * 1024 * 1024), headers=json_type)
    assert declared.status_code == 413
    assert declared.json() == {"detail": f"request body over {MAX_BODY_BYTES:,} bytes"}
    # the declared length alone: answered with no byte of the body sent
    host, port = world.api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nx-api-key: {H['x-api-key']}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
                     .encode())
        assert conn.recv(4096).startswith(b"HTTP/1.1 413 ")

    def chunks() -> Iterator[bytes]:
        yield b'{"analysis": true, "pad": "'
        for _ in range(64):
            yield b"x" * 4096
        yield b'"}'

    chunked = world.put(path, content=chunks(), headers=json_type)
    assert chunked.status_code == 413
    ok = world.put(path, content=b'{"analysis": true}' + b" " * (MAX_BODY_BYTES - 18),
                   headers=json_type)  # at the limit: read, and answered as before
    assert ok.status_code == 202, ok.text


def test_an_erased_customer_is_not_found(world: World) -> None:
    from caa.cli import main as cli

    cid = "api-erase"
    assert world.get(f"/customers/{cid}/prediction").status_code == 200
    assert world.post(f"/customers/{cid}/analyze").status_code == 200  # history and cache
    assert world.get(f"/customers/{cid}/history").json()
    assert cli.main(["erase", cid]) == 0
    for path in ("prediction", "history"):
        assert world.get(f"/customers/{cid}/{path}").status_code == 404, path
    assert world.put(f"/customers/{cid}/consent", json={"analysis": True}).status_code == 404
    run(world.settings, [])  # the consumer applies the erasure event: still not found
    assert world.get(f"/customers/{cid}/prediction").status_code == 404


def _statistical_503(r: httpx.Response, reason: str) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert (body["source"], body["fallback_reason"]) == ("statistical", reason)
    assert body["analysis"]["narrative"] and body["analysis"]["next_best_action"]


def test_bedrock_unavailable_is_503_with_the_statistical_answer(
    world: World, bedrock_server: BedrockServer,
) -> None:
    bedrock_server.script([], default={"kind": "throttle"})
    try:
        _statistical_503(world.post("/customers/api-throttle/analyze"), "throttled")
    finally:
        bedrock_server.script([])

    env = {**world.env, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": f"http://127.0.0.1:{free_port()}",
           "CAA_BREAKER_FAILURES": "1", "CAA_BEDROCK_DEADLINE_S": "0.5"}
    down = launch_api(env, world.tmp / "api-down.log")
    try:
        first = httpx.post(f"{down.url}/customers/api-down/analyze", headers=H, timeout=30)
        _statistical_503(first, "unavailable")  # nothing listens there
        second = httpx.post(f"{down.url}/customers/api-down/analyze", headers=H, timeout=30)
        _statistical_503(second, "circuit_open")  # the breaker outlives a request
    finally:
        down.stop()
    history = world.get("/customers/api-down/history").json()
    assert [h["fallback_reason"] for h in history[:2]] == ["circuit_open", "unavailable"]


def test_health_is_503_when_dynamodb_is_unreachable(world: World) -> None:
    env = {**world.env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
           "CAA_API_HEALTH_TIMEOUT_S": "1"}
    down = launch_api(env, world.tmp / "api-no-dynamodb.log")
    try:
        r = httpx.get(f"{down.url}/health", timeout=30)
    finally:
        down.stop()
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"


def test_the_served_spec_is_the_checked_in_one(world: World) -> None:
    served = world.get("/openapi.json", headers={}).json()
    assert served == json.loads((ROOT / "docs" / "openapi.json").read_text())


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_its_spec(world: World, mode: GenerationMode) -> None:
    """Schemathesis on the served spec: valid requests (positive) and requests that break the
    spec (negative), every operation; no 5xx but the documented 503s, every documented answer
    as the spec says. (Its pytest loader ``from_fixture`` breaks on pytest 9, hence the
    Python API and one Hypothesis run per operation here.)"""
    schema = schemathesis.openapi.from_url(f"{world.api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()
                  if isinstance(result, Ok)]
    assert len(operations) == 6
    if mode == GenerationMode.NEGATIVE:  # /segments and /health take nothing to break
        operations = [op for op in operations if "{customer_id}" in op.path]

    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=10, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(base_url=world.api.url, headers=H,
                                   checks=[not_a_server_error, response_schema_conformance])

        check()
