"""`caa kcl properties`: endpoints follow the standard AWS variables; AWS itself gets none."""

from __future__ import annotations

import pytest

from caa.cli.kcl import render
from caa.settings import Settings


def _render() -> str:
    return render(Settings(), application_name=None, retrieval_mode="FANOUT",
                  initial_position="LATEST")


def _props(text: str) -> dict[str, str]:
    return dict(line.split(" = ", 1) for line in text.splitlines())


def test_local_endpoints_are_passed_on_and_metrics_stay_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4568")
    monkeypatch.setenv("CAA_CONSUMER_GROUP", "orders-app")
    p = _props(_render())
    assert p["kinesisEndpoint"] == "http://127.0.0.1:4568"
    assert p["dynamoDBEndpoint"] == "http://127.0.0.1:4566"
    assert (p["metricsLevel"], p["applicationName"]) == ("NONE", "orders-app")
    assert (p["retrievalMode"], p["initialPositionInStream"]) == ("FANOUT", "LATEST")
    assert p["executableName"].endswith(" -m caa.entry.kcl")


def test_aws_gets_no_endpoints_and_detailed_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CAA_LOCAL_EMULATOR", "never")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    p = _props(_render())
    assert "kinesisEndpoint" not in p and "dynamoDBEndpoint" not in p
    assert (p["metricsLevel"], p["regionName"]) == ("DETAILED", "eu-central-1")
