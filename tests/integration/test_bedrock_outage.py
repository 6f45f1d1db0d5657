"""Bedrock down, end to end: a real ``caa consume`` process, Kinesis and DynamoDB on moto's
server, Bedrock on the Bedrock-protocol test server answering every call with a 503
(``ServiceUnavailableException``), all over HTTP with the production clients.

The contract (issue 15, "Breaker and stop"): the breaker counts every failed call, so an outage
opens it in under 10 s; a SIGTERM cancels the retries and waits at most
:data:`consumers.analysis.enricher.STOP_GRACE_S` for calls in flight, so the process exits in
under 5 s. These are correctness bounds with room for a loaded 2-core machine, not
benchmarks; the figures are printed (``pytest -s``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from caa.aws import Aws
from caa.settings import Settings
from deploy.local.bedrock_server import BedrockServer
from producers.datasets.synthetic import generate
from producers.publisher import Publisher

pytestmark = pytest.mark.integration

OUTAGE = {"kind": "error", "status": 503, "type": "ServiceUnavailableException"}
#: the issue's bounds
OPEN_WITHIN_S = 10.0
EXIT_WITHIN_S = 5.0
#: production's retry settings (the test fixture's are shorter): a 45 s deadline per analysis,
#: 0.25 s backoff base, 30 s read timeout, the breaker's defaults
PRODUCTION = {"consent_mode": "opt_out", "analysis_debounce_s": "0", "bedrock_timeout_s": "30",
              "bedrock_deadline_s": "45", "bedrock_backoff_base_s": "0.25",
              "breaker_failures": "5", "breaker_reset_s": "30", "refit_interval_s": "0",
              "analysis_active_days": "0"}


def _start(s: Settings, log: Path, customers: int = 120) -> subprocess.Popen[bytes]:
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(
        generate(customers=customers, days=20, seed=11))
    cmd = [sys.executable, "-m", "caa.cli.main", "consume", "--json", "--no-refit"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    threading.Thread(target=_stamp, args=(proc, log), daemon=True).start()
    return proc


def _stamp(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Copy the process's stderr to ``log``, each line after the monotonic time it came
    (where a slow shutdown spends its time)."""
    assert proc.stderr is not None
    with log.open("a") as out:
        for line in proc.stderr:
            out.write(f"{time.monotonic():.3f} {line.decode(errors='replace')}")
            out.flush()


def _wait_for(what: str, check: Callable[[], Any], proc: subprocess.Popen[bytes], log: Path,
              timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (got := check()):
            return got
        if proc.poll() is not None:
            pytest.fail(f"caa consume exited ({proc.returncode}) before {what}: "
                        f"{log.read_text()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {what} within {timeout:g} s; stderr: {log.read_text()[-2000:]}")


def _refused(s: Settings) -> bool:
    """Has an analysis fallen back because the breaker is open (seen in the predictions)?"""
    page = Aws(s).client("dynamodb").scan(
        TableName=s.table("predictions"), FilterExpression="fallback_reason = :f",
        ExpressionAttributeValues={":f": {"S": "circuit_open"}}, Select="COUNT")
    return int(page["Count"]) > 0


def _sigterm(proc: subprocess.Popen[bytes], log: Path) -> tuple[float, dict[str, Any]]:
    """SIGTERM; seconds until the process has exited, and its JSON summary."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    try:
        proc.wait(timeout=60)  # the summary is a few kB: the pipe never fills
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 60 s after SIGTERM; stderr: {log.read_text()[-2000:]}")
    took = time.monotonic() - sent
    out = proc.stdout.read()
    with log.open("a") as note:
        note.write(f"{sent:.3f} (SIGTERM sent)\n{sent + took:.3f} (exited)\n")
    assert proc.returncode == 0, log.read_text()[-2000:]
    text = out.decode()
    summary: dict[str, Any] = json.loads(text[text.index("{"):])
    return took, summary


def test_an_outage_opens_the_breaker_within_seconds_and_sigterm_exits_at_once(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer, tmp_path: Path,
) -> None:
    bedrock_server.script([], default=OUTAGE)
    s = ai_settings(**PRODUCTION)
    log = tmp_path / "consume.err"
    proc = _start(s, log)
    first = _wait_for("Bedrock call", bedrock_server.requests, proc, log)[0]["received_at"]
    _wait_for("circuit_open fallback", lambda: _refused(s), proc, log)
    opened = time.time()
    calls_before = sum(1 for r in bedrock_server.requests() if r["received_at"] <= opened)
    time.sleep(2.0)  # the breaker stays open (30 s cool-down): no call, analyses fall back
    calls_after = len(bedrock_server.requests()) - calls_before
    took, summary = _sigterm(proc, log)
    ai = summary["ai"]
    print(f"\noutage: breaker open {opened - first:.2f} s after the first failed call, "
          f"{calls_before} calls before it opened, {calls_after} in the 2 s after; "
          f"SIGTERM to exit {took:.2f} s; {ai['analyses']} analyses stored "
          f"({ai['fallback_reasons']}), {ai.get('pending_at_stop', '?')} pending at stop")
    assert opened - first < OPEN_WITHIN_S
    assert calls_after <= 2  # at most a straggler that was in flight when it opened
    assert ai["breaker_opened"] == 1 and ai["fallback_reasons"].get("circuit_open", 0) > 0
    assert took < EXIT_WITHIN_S
    assert "circuit breaker open" in log.read_text()


@pytest.mark.parametrize("mode", ["retrying 503s", "hung calls"])
def test_sigterm_cancels_retries_and_waits_briefly_for_calls_in_flight(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer, tmp_path: Path,
    mode: str,
) -> None:
    """The breaker kept closed (a high threshold), so every analysis slot is busy when the
    signal comes: retrying with backoff inside its 45 s deadline, or waiting on a call that
    would answer only after a minute."""
    bedrock_server.script([], default=OUTAGE if mode == "retrying 503s"
                          else {"kind": "slow", "delay_s": 60.0})
    s = ai_settings(**{**PRODUCTION, "breaker_failures": "100000"})
    log = tmp_path / "consume.err"
    proc = _start(s, log)
    want = 12 if mode == "retrying 503s" else 4  # every slot retried a few times / is waiting
    _wait_for(f"{want} Bedrock calls", lambda: len(bedrock_server.requests()) >= want, proc, log)
    time.sleep(0.5)
    calls = len(bedrock_server.requests())
    took, summary = _sigterm(proc, log)
    ai = summary["ai"]
    later = len(bedrock_server.requests()) - calls
    print(f"\n{mode}: SIGTERM to exit {took:.2f} s with {s.bedrock_concurrency} analyses in "
          f"flight; {calls} calls before it, {later} after; {ai['analyses']} analyses stored, "
          f"{ai.get('pending_at_stop', '?')} pending at stop")
    assert took < EXIT_WITHIN_S
    assert ai["pending_at_stop"] > 0  # said, not lost silently
    assert "not analysed" in log.read_text()
