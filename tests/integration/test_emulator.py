"""``caa emulator start|status|stop`` tell the truth: a taken port 4566 is named and another
port is used (or, when CAA_EMULATOR_PORT insists on it, refused), a recorded emulator that
died or whose pid now belongs to someone else is not "running", and commands reach our
emulator, never the process squatting on the port."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from deploy.local.emulator import Emulator, port_in_use
from tests.integration.caa_process import caa, clean_env, fake_creds, one_line

pytestmark = pytest.mark.integration

PORT = 4566


class _Squatter(BaseHTTPRequestHandler):
    """Answers everything with 500 "squatter", so a request that reaches it fails at once."""

    def _answer(self) -> None:
        body = b'{"__type": "Squatter", "message": "squatter"}'
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def port_4566_taken() -> Iterator[None]:
    """127.0.0.1:4566 held by a server that is not ours (ours, if it was free; else whatever
    already holds it on this machine: the same situation). The tests that use it take turns
    across processes (``make test`` runs two workers): one's squatter must not go away, nor
    two bind it at once, while another's test runs."""
    with open(Path(tempfile.gettempdir()) / "caa-tests-port-4566.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if port_in_use("127.0.0.1", PORT):
            yield
            return
        server = ThreadingHTTPServer(("127.0.0.1", PORT), _Squatter)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return clean_env(tmp_path, **fake_creds(), CAA_TABLE_PREFIX=f"emu{run}-",
                     CAA_STREAM_NAME=f"emu-{run}", CAA_SHARD_COUNT="1", **extra)


def test_start_with_4566_taken_uses_another_port(port_4566_taken: None,
                                                  tmp_path: Path) -> None:
    env = _env(tmp_path)
    started = caa(env, "emulator", "start", cwd=tmp_path, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        assert f"port {PORT}" in started.stderr and "in use" in started.stderr
        m = re.search(r"started at (http://127\.0\.0\.1:(\d+)) \(pid (\d+)\)", started.stdout)
        assert m, started.stdout
        endpoint, port, pid = m[1], int(m[2]), int(m[3])
        assert port != PORT
        record = json.loads((Path(env["CAA_STATE_DIR"]) / "emulator.json").read_text())
        assert (record["pid"], record["endpoint"], record["port"]) == (pid, endpoint, port)

        status = caa(env, "emulator", "status", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"running at {endpoint} (pid {pid})" in status.stdout

        again = caa(env, "emulator", "start", cwd=tmp_path)
        assert again.returncode == 0 and f"already running at {endpoint}" in again.stdout

        # commands go to our emulator (the squatter answers 500 to everything)
        setup = caa(env, "setup", cwd=tmp_path, timeout=120)
        assert setup.returncode == 0, setup.stderr
        assert f"target: {endpoint} (the local emulator" in setup.stderr
        tables = boto3.client("dynamodb", endpoint_url=endpoint, region_name="eu-central-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        names = tables.list_tables()["TableNames"]
        assert env["CAA_TABLE_PREFIX"] + "predictions" in names
        missing = caa(env, "show", "nobody", cwd=tmp_path)
        assert missing.returncode == 6, missing.stderr  # NotFound: our (empty) tables answered
    finally:
        stopped = caa(env, "emulator", "stop", cwd=tmp_path)
    assert stopped.returncode == 0 and "emulator stopped" in stopped.stdout
    after = caa(env, "emulator", "status", cwd=tmp_path)
    assert after.returncode == 1
    assert "not started" in after.stdout
    assert f"port {PORT} is held by" in after.stdout and "not ours" in after.stdout


def test_start_refuses_a_taken_port_chosen_explicitly(port_4566_taken: None,
                                                      tmp_path: Path) -> None:
    env = _env(tmp_path, CAA_EMULATOR_PORT=str(PORT))
    proc = caa(env, "emulator", "start", cwd=tmp_path)
    line = one_line(proc)
    assert proc.returncode == 9, proc.stderr
    assert f"port {PORT}" in line and "in use" in line
    assert not (Path(env["CAA_STATE_DIR"]) / "emulator.json").exists()


def _record(env: dict[str, str], pid: int, endpoint: str) -> None:
    state = Path(env["CAA_STATE_DIR"])
    state.mkdir(exist_ok=True)
    port = endpoint.rsplit(":", 1)[1]
    (state / "emulator.json").write_text(
        json.dumps({"pid": pid, "endpoint": endpoint, "port": int(port)}))


def test_status_and_stop_with_a_record_whose_pid_is_not_ours(emulator: Emulator,
                                                             tmp_path: Path) -> None:
    """The record's pid is alive but is this test process (a reused pid), and its endpoint
    answers (the test emulator): neither "running" nor signalled by stop."""
    env = _env(tmp_path)
    _record(env, os.getpid(), emulator.endpoint)
    status = caa(env, "emulator", "status", cwd=tmp_path)
    assert status.returncode == 1
    assert "has exited" in status.stdout
    port = emulator.endpoint.rsplit(":", 1)[1]
    assert f"port {port} is held by pid {emulator.pid}" in status.stdout  # not ours
    show = caa(env, "show", "X", cwd=tmp_path)
    assert show.returncode == 8, show.stderr
    stop = caa(env, "emulator", "stop", cwd=tmp_path)
    assert stop.returncode == 0 and "no emulator was running" in stop.stdout
    assert not (Path(env["CAA_STATE_DIR"]) / "emulator.json").exists()


def test_status_when_never_started(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody holds, so no squatter is reported
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = caa(_env(tmp_path, CAA_EMULATOR_PORT=str(port)), "emulator", "status",
               cwd=tmp_path)
    assert proc.returncode == 1
    assert "not started" in proc.stdout and "not ours" not in proc.stdout


def test_run_with_4566_taken(port_4566_taken: None, tmp_path: Path) -> None:
    """`caa run` (what `make run` does) starts the emulator elsewhere and completes."""
    env = _env(tmp_path)
    try:
        proc = caa(env, "run", "--limit", "300", cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"port {PORT}" in proc.stderr
        assert caa(env, "segments", cwd=tmp_path).returncode in (0, 6)
    finally:
        caa(env, "emulator", "stop", cwd=tmp_path)
