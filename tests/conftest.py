from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.emulator import Emulator, launch


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """moto's server as a real process on a free loopback port."""
    log = tmp_path_factory.mktemp("emulator") / "moto.log"
    emu = launch("127.0.0.1", log=log)
    yield emu
    emu.stop()


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
