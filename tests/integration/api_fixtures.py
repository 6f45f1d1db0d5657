"""``caa serve`` as a real uvicorn process on a free loopback port, for the API tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.local.emulator import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn's graceful stop: lifespan ends
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch_api(env: dict[str, str], log: Path, timeout: float = 60.0) -> ApiServer:
    """Start ``python -m caa.cli.main serve`` with ``env`` and wait until it answers HTTP at all
    (``/health`` may say 503: that is for the test to judge)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "caa.cli.main", "serve", "--host", "127.0.0.1", "--port",
             str(port)], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
    server = ApiServer(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"caa serve exited with {proc.returncode}:\n{server.output()}")
        try:
            httpx.get(f"{server.url}/health", timeout=5.0)
            return server
        except httpx.TransportError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"caa serve did not answer within {timeout} s:\n"
                                   f"{server.output()}") from None
            time.sleep(0.1)
