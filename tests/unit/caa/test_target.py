"""caa.target: the interactive CLI never falls back to the environment's account silently."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caa.errors import NoTarget
from caa.settings import Settings
from caa.target import check_command, require_target, resolve


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "CAA_PROFILE", "CAA_LOCAL_EMULATOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("CAA_REGION", raising=False)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("CAA_STATE_DIR", str(tmp_path / ".caa"))
    return Settings()


def test_nothing_chosen_is_refused(settings: Settings) -> None:
    assert resolve(settings) is None
    with pytest.raises(NoTarget) as caught:
        require_target(settings)
    assert caught.value.exit_code == 8
    line = caught.value.line()
    assert "caa emulator start" in line and "CAA_LOCAL_EMULATOR=never" in line
    assert "not running" in line


def test_a_dead_record_is_named(settings: Settings) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    settings.emulator_file.parent.mkdir(parents=True)
    settings.emulator_file.write_text(json.dumps(
        {"pid": int(dead.stdout), "endpoint": "http://127.0.0.1:4566", "port": 4566}))
    with pytest.raises(NoTarget, match="no longer running"):
        require_target(settings)


@pytest.mark.parametrize(("env", "endpoint", "reason"), [
    ({"AWS_ENDPOINT_URL": "http://localhost:4576"}, "http://localhost:4576", "AWS_ENDPOINT_URL"),
    ({"AWS_PROFILE": "prod"}, None, "profile 'prod'"),
    ({"CAA_LOCAL_EMULATOR": "never"}, None, "CAA_LOCAL_EMULATOR=never"),
])
def test_chosen_targets(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                        env: dict[str, str], endpoint: str | None, reason: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    target = require_target(Settings())
    assert (target.endpoint, target.reason) == (endpoint, reason)


@pytest.mark.parametrize("argv", [[], ["--help"], ["show", "--help"], ["--version"],
                                  ["emulator", "start"], ["run"], ["kcl", "properties"],
                                  ["serve"], ["evaluate"], ["no-such-command"]])
def test_commands_that_need_no_target(settings: Settings, argv: list[str]) -> None:
    assert check_command(argv, lambda: settings) is None


@pytest.mark.parametrize("argv", [["show", "X"], ["--debug", "segments"], ["dlq", "list"],
                                  ["setup"], ["replay", "--dry-run", "f.jsonl"]])
def test_commands_that_need_one(settings: Settings, argv: list[str]) -> None:
    with pytest.raises(NoTarget):
        check_command(argv, lambda: settings)


def test_mutating_commands_name_the_account_on_real_aws(settings: Settings,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutating commands name their target; on real AWS by an STS call (stubbed here)."""
    monkeypatch.setenv("CAA_LOCAL_EMULATOR", "never")
    said: list[str] = []

    class Sts:
        def get_caller_identity(self) -> dict[str, str]:
            return {"Account": "210987654321", "Arn": "arn:aws:iam::210987654321:user/me"}

    monkeypatch.setattr("caa.aws.Aws.client", lambda _self, _service: Sts())
    s = Settings()
    require_target(s, mutates=True, say=said.append)
    require_target(s, mutates=False, say=said.append)
    assert len(said) == 1
    assert "210987654321" in said[0] and "eu-central-1" in said[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:4576")
    require_target(Settings(), mutates=True, say=said.append)  # no STS call: an endpoint
    assert said[1] == "target: http://localhost:4576 (AWS_ENDPOINT_URL)"
