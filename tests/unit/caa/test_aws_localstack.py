"""caa.aws: LocalStack targets get their clients through ``localstack_client``; others do not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from caa.aws import Aws, localstack_host
from caa.settings import Settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS", "AWS_PROFILE", "CAA_PROFILE",
                "LOCALSTACK_HOST", "USE_SSL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("CAA_LOCAL_EMULATOR", "never")
    monkeypatch.setenv("CAA_STATE_DIR", str(tmp_path / ".caa"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    return monkeypatch


@pytest.mark.parametrize(("url", "expected"), [
    ("http://localhost:4576", "localhost:4576"),          # docker-compose.yml, from the host
    ("http://127.0.0.1:4576/", "127.0.0.1:4576"),
    ("http://localstack:4566", "localstack:4566"),        # inside the compose network
    ("https://localhost.localstack.cloud:4566", "localhost.localstack.cloud:4566"),
    ("http://127.0.0.1:4566", None),                      # the embedded moto emulator
    ("http://localhost:5000", None),
    ("https://kinesis.eu-central-1.amazonaws.com", None),
    (None, None),
    ("http://localhost:notaport", None),
])
def test_localstack_is_recognised_by_its_endpoint(url: str | None, expected: str | None) -> None:
    assert localstack_host(url) == expected


def _spy_sessions(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    from localstack_client import session as ls_session

    made: list[dict[str, Any]] = []
    real = ls_session.Session

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            made.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(ls_session, "Session", Spy)
    return made


def test_localstack_clients_come_from_localstack_client(env: pytest.MonkeyPatch) -> None:
    env.setenv("AWS_ENDPOINT_URL", "http://localhost:4576")
    made = _spy_sessions(env)
    aws = Aws(Settings())
    assert aws.localstack == "localhost:4576"
    for service in ("kinesis", "dynamodb", "sts", "sqs"):
        client = aws.client(service)
        assert client.meta.endpoint_url == "http://localhost:4576"
        assert client.meta.region_name == "eu-central-1"
        creds = client._request_signer._credentials
        assert (creds.access_key, creds.secret_key) == ("test", "test")
    assert len(made) == 4
    assert {m["localstack_host"] for m in made} == {"localhost:4576"}
    assert {m["region_name"] for m in made} == {"eu-central-1"}


def test_localstack_keeps_the_environment_credentials(env: pytest.MonkeyPatch) -> None:
    env.setenv("AWS_ENDPOINT_URL", "http://localstack:4566")
    env.setenv("AWS_ACCESS_KEY_ID", "AKIDLOCAL")
    env.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    client = Aws(Settings()).client("dynamodb")
    assert client.meta.endpoint_url == "http://localstack:4566"
    assert client._request_signer._credentials.access_key == "AKIDLOCAL"


def test_other_endpoints_do_not_use_localstack_client(env: pytest.MonkeyPatch) -> None:
    env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    made = _spy_sessions(env)
    aws = Aws(Settings())
    assert aws.localstack is None
    assert aws.client("kinesis").meta.endpoint_url == "http://127.0.0.1:4566"
    assert made == []


def test_a_service_endpoint_variable_still_wins(env: pytest.MonkeyPatch) -> None:
    env.setenv("AWS_ENDPOINT_URL", "http://localhost:4576")
    env.setenv("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:4999")
    made = _spy_sessions(env)
    aws = Aws(Settings())
    assert aws.client("kinesis").meta.endpoint_url == "http://127.0.0.1:4999"
    assert aws.client("dynamodb").meta.endpoint_url == "http://localhost:4576"
    assert len(made) == 1


def test_bedrock_never_goes_to_localstack(env: pytest.MonkeyPatch) -> None:
    env.setenv("AWS_ENDPOINT_URL", "http://localhost:4576")
    made = _spy_sessions(env)
    Aws(Settings()).client("bedrock-runtime")
    assert made == []


def test_async_clients_use_the_endpoint_localstack_client_resolves(
        env: pytest.MonkeyPatch) -> None:
    env.setenv("AWS_ENDPOINT_URL", "http://localhost:4576")
    from localstack_client import config as ls_config

    asked: list[tuple[str, str | None]] = []
    real = ls_config.get_service_endpoint

    def spy(service: str, localstack_host: str | None = None) -> str | None:
        asked.append((service, localstack_host))
        found: str | None = real(service, localstack_host)
        return found

    env.setattr(ls_config, "get_service_endpoint", spy)

    async def endpoints() -> dict[str, Any]:
        async with Aws(Settings()).clients("kinesis", "dynamodb") as clients:
            return {name: c.meta.endpoint_url for name, c in clients.items()}

    assert asyncio.run(endpoints()) == {"kinesis": "http://localhost:4576",
                                        "dynamodb": "http://localhost:4576"}
    assert asked == [("kinesis", "localhost:4576"), ("dynamodb", "localhost:4576")]


@pytest.mark.integration
def test_localstack_clients_talk_to_the_server(aws_env: str, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """The emulator (moto's server) stands in for LocalStack: its port is taken for
    docker-compose's, so the sync and async clients come through ``localstack_client``."""
    from urllib.parse import urlsplit

    import caa.aws

    monkeypatch.setattr(caa.aws, "LOCALSTACK_COMPOSE_PORT", urlsplit(aws_env).port)
    made = _spy_sessions(monkeypatch)
    aws = Aws(Settings())
    assert aws.localstack is not None
    table = f"ls-{tmp_path.name[-8:]}"
    aws.client("dynamodb").create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])
    assert made

    async def described() -> str:  # (list_tables pages at 100: other tests' tables)
        async with aws.clients("dynamodb") as c:
            return str((await c["dynamodb"].describe_table(TableName=table))["Table"]["TableName"])

    assert asyncio.run(described()) == table
