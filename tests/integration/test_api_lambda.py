"""The API function's handler (caa.entry.api_lambda) driven with the event JSON a Lambda
function URL sends (payload format 2.0, as an API Gateway HTTP API's), against tables on
moto's server filled by the real consumer, its secrets in the emulator's SSM Parameter
Store and Secrets Manager (named by environment, as deploy/template.yaml does)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from caa import secrets
from caa.aws import Aws
from caa.entry import api_lambda
from caa.settings import Settings
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from models.prediction import Prediction
from tests.integration.test_analysis import _event, run

pytestmark = pytest.mark.integration
KEY = "k-orders-service-0123456789"
PSEUDONYM_KEY = "pseudonym-key-0123456789abcdef-0123456789"


def url_event(method: str, path: str, headers: dict[str, str] | None = None,
              body: str | None = None, query: str = "") -> dict[str, Any]:
    """A request as a Lambda function URL hands it to the function (payload format 2.0)."""
    now = time.time()
    prefix = "abcdefghijklmnopqrstuvwxyz012345"
    domain = f"{prefix}.lambda-url.eu-central-1.on.aws"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {"host": domain, "x-forwarded-proto": "https", "x-forwarded-port": "443",
                    "x-forwarded-for": "203.0.113.7", "x-amzn-trace-id": "Root=1-abc-def",
                    "accept": "application/json", "user-agent": "orders-service/1.0",
                    **(headers or {})},
        "requestContext": {
            "accountId": "anonymous", "apiId": prefix, "domainName": domain,
            "domainPrefix": prefix,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "203.0.113.7", "userAgent": "orders-service/1.0"},
            "requestId": str(uuid.uuid4()), "routeKey": "$default", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000)},
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    if body is not None:
        event["body"] = base64.b64encode(body.encode()).decode()
        event["isBase64Encoded"] = True
        event["headers"]["content-type"] = "application/json"
    return event


def answer(response: dict[str, Any]) -> Any:
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body) if body else None


@pytest.fixture
def deployed(fresh_settings: Callable[..., Settings],
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Tables filled by the consumer; the API keys in an SSM SecureString and the pseudonym
    key in Secrets Manager; the function's environment names them, no value in it."""
    s = fresh_settings(SEGMENT_WARMUP="10", REPORTING_CURRENCY="EUR")
    run(s, [_event(cid, 1 + 7 * d) for cid in ("fn-a", "fn-b") for d in range(3)])
    tag = uuid.uuid4().hex[:8]
    boto3.client("ssm", region_name="eu-central-1").put_parameter(
        Name=f"/caa-{tag}/api-keys", Type="SecureString",
        Value=json.dumps({"orders": KEY, "shop": "k-shop-0123456789"}))
    secret = boto3.client("secretsmanager", region_name="eu-central-1").create_secret(
        Name=f"caa-{tag}-pseudonym-key", SecretString=PSEUDONYM_KEY)
    for var in ("CAA_API_KEYS", "CAA_PSEUDONYM_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CAA_API_KEYS_PARAMETER", f"/caa-{tag}/api-keys")
    monkeypatch.setenv("CAA_PSEUDONYM_KEY_PARAMETER", secret["ARN"])
    monkeypatch.setenv("CAA_LOCAL_EMULATOR", "never")
    secrets.clear_cache()
    monkeypatch.setattr(api_lambda, "_runtime", [])  # a cold environment
    try:
        yield s
    finally:
        for rt in api_lambda._runtime:
            rt.close()
        secrets.clear_cache()


def stored_prediction(s: Settings, cid: str) -> Prediction:
    async def get() -> dict[str, Any] | None:
        async with Aws(s).clients("dynamodb") as c:
            return await PredictionStore(Dynamo(c["dynamodb"]), s.table("predictions")).get(cid)

    found = asyncio.run(get())
    assert found is not None
    return Prediction.model_validate(found)


def test_a_function_url_request_gets_the_prediction(deployed: Settings) -> None:
    r = api_lambda.handler(url_event("GET", "/customers/fn-a/prediction",
                                     {"x-api-key": KEY}), None)
    assert r["statusCode"] == 200, r
    assert r["headers"]["content-type"] == "application/json"
    got = Prediction.model_validate(answer(r))
    assert got == stored_prediction(deployed, "fn-a")
    assert got.customer_id == "fn-a"

    # the same warm environment: settings, secrets, clients and limits kept
    runtime = api_lambda._runtime[0]
    r = api_lambda.handler(url_event("GET", "/customers/fn-b/prediction",
                                     {"x-api-key": "k-shop-0123456789"}), None)
    assert r["statusCode"] == 200 and answer(r)["customer_id"] == "fn-b"
    assert api_lambda._runtime == [runtime]


def test_keys_limits_and_errors_through_the_adapter(deployed: Settings) -> None:
    path = "/customers/fn-a/prediction"
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": PSEUDONYM_KEY}):
        r = api_lambda.handler(url_event("GET", path, headers), None)
        assert r["statusCode"] == 401 and r["headers"]["www-authenticate"] == "ApiKey"
    r = api_lambda.handler(url_event("GET", "/customers/nobody/prediction",
                                     {"x-api-key": KEY}), None)
    assert r["statusCode"] == 404
    r = api_lambda.handler(url_event("GET", "/customers/fn-a/history",
                                     {"x-api-key": KEY}, query="limit=0"), None)
    assert r["statusCode"] == 400 and "limit" in answer(r)["detail"]
    r = api_lambda.handler(url_event("GET", "/health"), None)  # no key needed
    assert (r["statusCode"], answer(r)) == (200, {"status": "ok", "dynamodb": "ok"})
    # the per-customer window holds across invocations of one environment (10 a minute)
    codes = [api_lambda.handler(url_event("GET", "/customers/fn-b/prediction",
                                          {"x-api-key": KEY}), None)["statusCode"]
             for _ in range(11)]
    assert codes == [200] * 10 + [429]


def test_on_demand_analysis_uses_the_key_from_secrets_manager(deployed: Settings) -> None:
    """The statistical analysis (CAA_ANALYZER unset, as in the template) is built from the
    pseudonymised features: the key came from Secrets Manager, not the state directory."""
    r = api_lambda.handler(url_event("POST", "/customers/fn-a/analyze", {"x-api-key": KEY},
                                     body=""), None)
    assert r["statusCode"] == 200, r
    assert answer(r)["customer_id"] == "fn-a" and answer(r)["source"] == "statistical"
    assert not (deployed.state_dir / "pseudonym.key").exists()


def test_a_missing_secret_fails_the_cold_start_clearly(deployed: Settings,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAA_API_KEYS_PARAMETER", "/caa-none/api-keys")
    with pytest.raises(Exception, match=r"CAA_API_KEYS_PARAMETER: the SSM parameter "
                                        r"'/caa-none/api-keys' does not exist"):
        api_lambda.handler(url_event("GET", "/health"), None)
    assert api_lambda._runtime == []  # the next invocation tries again
