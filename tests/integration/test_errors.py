"""Expected failures through the real ``caa`` process: one line ``caa: ...`` on stderr and
the exit code of :mod:`caa.errors` (3 not set up, 4 no credentials, 5 unreachable, 7 bad
input, 8 no target), never a traceback, never a long wait."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from caa.settings import Settings
from deploy.local.emulator import Emulator, free_port
from tests.integration.caa_process import TIMEOUT_S, caa, clean_env, fake_creds, one_line
from tests.integration.poison_cases import good

pytestmark = pytest.mark.integration

NO_TABLES = [("show", "X"), ("segments",), ("dlq", "list"), ("costs",), ("history", "X"),
             ("watch",), ("report", "--out", "report.html")]


@pytest.mark.parametrize("argv", NO_TABLES, ids=lambda a: a[0])
def test_no_tables_says_run_setup(argv: tuple[str, ...], emulator: Emulator,
                                  tmp_path: Path) -> None:
    env = clean_env(tmp_path, **fake_creds(emulator.endpoint),
                    CAA_TABLE_PREFIX=f"none{uuid.uuid4().hex[:8]}-",
                    CAA_STREAM_NAME=f"none-{uuid.uuid4().hex[:8]}")
    proc = caa(env, *argv, cwd=tmp_path)
    line = one_line(proc)
    assert proc.returncode == 3, proc.stderr
    assert "run `caa setup` first" in line
    assert emulator.endpoint in line


def test_empty_customer_id_is_bad_input(fresh_settings: Callable[..., Settings],
                                        emulator: Emulator, tmp_path: Path) -> None:
    s = fresh_settings()
    env = clean_env(tmp_path, **fake_creds(emulator.endpoint), CAA_TABLE_PREFIX=s.table_prefix,
                    CAA_STREAM_NAME=s.stream_name)
    proc = caa(env, "show", "", cwd=tmp_path)
    one_line(proc)
    assert proc.returncode == 7, proc.stderr


@pytest.mark.parametrize("extra", [{"CAA_LOCAL_EMULATOR": "never"},
                                   {"AWS_PROFILE": "no-such-profile"}],
                         ids=["never", "missing-profile"])
def test_no_credentials(extra: dict[str, str], tmp_path: Path) -> None:
    proc = caa(clean_env(tmp_path, **extra), "show", "X", cwd=tmp_path)
    line = one_line(proc)
    assert proc.returncode == 4, proc.stderr
    assert "credentials" in line


@pytest.mark.parametrize("argv", [("show", "X"), ("segments",), ("history", "X"), ("watch",),
                                  ("erase", "X")], ids=lambda a: a[0])
def test_unreachable_endpoint_is_named_quickly(argv: tuple[str, ...], tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    started = time.monotonic()
    proc = caa(clean_env(tmp_path, **fake_creds(endpoint)), *argv, cwd=tmp_path,
               timeout=TIMEOUT_S)
    if argv[0] == "erase":  # it changes things, so it names its target first
        target, *rest = proc.stderr.splitlines()
        assert target == f"target: {endpoint} (AWS_ENDPOINT_URL)"
        proc.stderr = "\n".join(rest)
    line = one_line(proc)
    assert proc.returncode == 5, proc.stderr
    assert f"127.0.0.1:{endpoint.rsplit(':', 1)[1]}" in line
    assert time.monotonic() - started < TIMEOUT_S


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_no_target_when_the_emulator_was_never_started(tmp_path: Path) -> None:
    proc = caa(clean_env(tmp_path, **fake_creds()), "segments", cwd=tmp_path)
    line = one_line(proc)
    assert proc.returncode == 8, proc.stderr
    for way in ("caa emulator start", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                "CAA_LOCAL_EMULATOR=never"):
        assert way in line


def test_no_target_when_the_recorded_emulator_is_gone(emulator: Emulator,
                                                      tmp_path: Path) -> None:
    """The record names a live server (the test emulator) but a dead pid: not ours, not used."""
    env = clean_env(tmp_path, **fake_creds())
    state = Path(env["CAA_STATE_DIR"])
    state.mkdir()
    (state / "emulator.json").write_text(
        f'{{"pid": {_dead_pid()}, "endpoint": "{emulator.endpoint}"}}')
    for argv in (("show", "X"), ("setup",), ("dlq", "list")):
        proc = caa(env, *argv, cwd=tmp_path)
        line = one_line(proc)
        assert proc.returncode == 8, proc.stderr
        assert "no longer running" in line


@pytest.mark.parametrize("argv", [("--help",), ("show", "--help"), ("--version",),
                                  ("kcl", "properties"), ("emulator", "status")],
                         ids=" ".join)
def test_no_target_needed(argv: tuple[str, ...], tmp_path: Path) -> None:
    proc = caa(clean_env(tmp_path, **fake_creds()), *argv, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr  # status: 1 = not running
    assert "no AWS target" not in proc.stderr


def test_a_dry_run_of_files_needs_no_target(tmp_path: Path) -> None:
    """Checking a file talks to no AWS, so it runs with none chosen; publishing it does not."""
    path = tmp_path / "orders.jsonl"
    path.write_bytes(good("e1") + b"\n" + b"{broken\n")
    env = clean_env(tmp_path, **fake_creds())
    proc = caa(env, "replay", str(path), "--dry-run", "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # one invalid record
    assert "no AWS target" not in proc.stderr
    assert json.loads(proc.stdout)["report"]["invalid"] == {"not_json": 1}
    proc = caa(env, "replay", str(path), cwd=tmp_path)
    assert proc.returncode == 8, proc.stderr
    assert "no AWS target" in one_line(proc)


def test_never_uses_aws_and_names_the_account_before_creating(emulator: Emulator,
                                                              tmp_path: Path) -> None:
    """CAA_LOCAL_EMULATOR=never is real AWS: no refusal, and `setup` names the account and
    region first (STS, DynamoDB and Kinesis are the emulator here, by botocore's per-service
    variables, so nothing leaves the machine)."""
    env = clean_env(tmp_path, **fake_creds(), CAA_LOCAL_EMULATOR="never",
                    AWS_ENDPOINT_URL_STS=emulator.endpoint,
                    AWS_ENDPOINT_URL_DYNAMODB=emulator.endpoint,
                    AWS_ENDPOINT_URL_KINESIS=emulator.endpoint,
                    CAA_TABLE_PREFIX=f"never{uuid.uuid4().hex[:8]}-",
                    CAA_STREAM_NAME=f"never-{uuid.uuid4().hex[:8]}", CAA_SHARD_COUNT="1")
    proc = caa(env, "setup", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = next(line for line in proc.stderr.splitlines() if line.strip())
    assert "account 123456789012" in first and "eu-central-1" in first
    proc = caa(env, "segments", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "account" not in proc.stderr  # reading names nothing
