"""The embedded AWS: moto's server mode as a separate process on loopback.

``caa emulator start`` launches it (or reuses the one already running),
waits until it answers, and records its pid and endpoint in
``.caa/emulator.json``; ``caa emulator stop`` stops it. Tests use
:func:`launch` directly on a free port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class EmulatorError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def healthy(endpoint: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Emulator:
    pid: int
    endpoint: str
    process: subprocess.Popen[bytes] | None = None

    def stop(self, timeout: float = 10.0) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None:
                if self.process.poll() is not None:
                    return
            else:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)


def launch(host: str = "127.0.0.1", port: int | None = None, log: Path | None = None,
           timeout: float = 30.0) -> Emulator:
    """Start ``moto.server`` on ``host:port`` and wait until it answers."""
    port = port or free_port(host)
    endpoint = f"http://{host}:{port}"
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    return wait_ready("moto server", proc, endpoint, healthy, timeout, log)


def wait_ready(name: str, proc: subprocess.Popen[bytes], endpoint: str,
               check: Callable[[str], bool], timeout: float, log: Path | None) -> Emulator:
    """Wait until the server process ``proc`` answers ``check(endpoint)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorError(f"{name} exited with code {proc.returncode}"
                                + (f"; see {log}" if log else ""))
        if check(endpoint):
            return Emulator(proc.pid, endpoint, proc)
        time.sleep(0.1)
    proc.kill()
    raise EmulatorError(f"{name} did not answer on {endpoint} within {timeout:.0f} s")


def start(state_file: Path, host: str, port: int) -> tuple[Emulator, bool]:
    """Start the recorded emulator if it is not running; returns (emulator, started_now)."""
    running = recorded(state_file)
    if running is not None:
        return running, False
    state_file.parent.mkdir(parents=True, exist_ok=True)
    emu = launch(host, port, log=state_file.with_suffix(".log"))
    state_file.write_text(json.dumps({"pid": emu.pid, "endpoint": emu.endpoint}))
    return emu, True


def recorded(state_file: Path) -> Emulator | None:
    try:
        info = json.loads(state_file.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    emu = Emulator(int(info["pid"]), str(info["endpoint"]))
    return emu if healthy(emu.endpoint) else None


def stop(state_file: Path) -> bool:
    emu = recorded(state_file)
    state_file.unlink(missing_ok=True)
    if emu is None:
        return False
    emu.stop()
    return True
