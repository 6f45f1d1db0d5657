from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from deploy.local.bedrock_server import BedrockServer
from deploy.local.bedrock_server import launch as launch_bedrock
from deploy.local.emulator import Emulator, launch
from deploy.local.kinesis_mock import PACKAGE as KINESIS_MOCK
from deploy.local.kinesis_mock import launch as launch_kinesis_mock


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``long`` first (otherwise in collection order): in a parallel run
    (``make test``: two workers, ``--dist worksteal``) the first worker starts on them while
    the other takes the short ones and then steals from the end of the first's queue, so no
    worker ends the run alone on a minutes-long daemon test."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """moto's server as a real process on a free loopback port."""
    log = tmp_path_factory.mktemp("emulator") / "moto.log"
    emu = launch("127.0.0.1", log=log)
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def kinesis_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """kinesis-mock (npm kinesis-local) as a real process: Kinesis as AWS validates it."""
    log = tmp_path_factory.mktemp("kinesis-mock") / "kinesis-mock.log"
    root = Path(__file__).resolve().parent.parent
    km = launch_kinesis_mock(root / KINESIS_MOCK, log=log)
    yield km
    km.stop()


@pytest.fixture
def aws_env(emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path) -> str:
    """Point every client at the emulator the way production is pointed at AWS: by env."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("CAA_STATE_DIR", str(tmp_path / ".caa"))
    return emulator.endpoint


@pytest.fixture
def fresh_settings(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Settings from env for a stream and tables of this test's own, created on the emulator."""

    def make(**env: str) -> Settings:
        run = uuid.uuid4().hex[:8]
        monkeypatch.setenv("CAA_STREAM_NAME", f"stream-{run}")
        monkeypatch.setenv("CAA_TABLE_PREFIX", f"t{run}-")
        monkeypatch.setenv("CAA_POLL_INTERVAL_S", "0.05")
        monkeypatch.setenv("CAA_IDLE_POLLS", "2")
        for key, value in env.items():
            monkeypatch.setenv(f"CAA_{key.upper()}", value)
        s = Settings()
        assert s.endpoint_url == aws_env  # taken from the standard variable
        aws = Aws(s)
        ensure_resources(s, aws.client("kinesis"), aws.client("dynamodb"))
        return s

    return make


@pytest.fixture(scope="session")
def bedrock_server() -> Iterator[BedrockServer]:
    """The Bedrock-protocol test server as a real process on a free loopback port."""
    server = launch_bedrock()
    yield server
    server.stop()


@pytest.fixture
def ai_settings(fresh_settings: Callable[..., Settings], bedrock_server: BedrockServer,
                monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """Fresh settings with the Bedrock analyzer pointed at the test server by the standard
    ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` variable."""
    bedrock_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock_server.endpoint)

    def make(**env: str) -> Settings:
        defaults = {"analyzer": "bedrock", "pseudonym_key": "test-key-0123456789abcdef0123456789",
                    "analysis_debounce_s": "0.2", "bedrock_timeout_s": "2",
                    "bedrock_deadline_s": "3", "bedrock_backoff_base_s": "0.02",
                    "breaker_reset_s": "60", "segment_warmup": "20"}
        return fresh_settings(**{**defaults, **env})

    return make
