"""The embedded AWS: moto's server mode as a separate process on loopback, with DynamoDB's
item atomicity (:mod:`deploy.local.moto_server`).

``caa emulator start`` launches it (or reuses the one already running), waits until it
answers, and records its pid, host, port and endpoint in ``.caa/emulator.json``;
``caa emulator stop`` stops it. Tests use :func:`launch` directly on a free port.

The emulator owns its port. Before launching, the port is tried: when something else
holds it (LocalStack, another checkout's emulator), :func:`start` picks a free port, says
which and why, and records it; with ``strict`` (an explicitly chosen port) it refuses
with :class:`EmulatorError` instead. "Started" means our process is alive, answers HTTP
and holds the port itself. A recorded emulator counts as running only while its pid is
alive, is a moto server on the recorded port, and answers (:func:`recorded`).
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
from typing import Literal

from consumers.sources.lease import process_alive

#: the module run as the emulator: moto's server with DynamoDB requests one at a time
SERVER = "deploy.local.moto_server"


class EmulatorError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether a listener already holds ``host:port`` (a socket in TIME_WAIT does not)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def healthy(endpoint: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# -- who holds a port (Linux /proc; elsewhere these know nothing and checks are skipped) ----

def _listen_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{f[9]}]")
    return inodes


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
        except OSError:
            continue
    return False


def _cmdline(pid: int) -> list[str] | None:
    """The process's arguments; None when /proc cannot tell (no /proc, or not readable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return [] if Path("/proc/self").exists() else None  # gone / no /proc here
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def port_holder(port: int) -> str:
    """Who listens on ``port``: 'pid N (command)' when /proc tells, else 'another process'."""
    inodes = _listen_inodes(port)
    if inodes:
        for name in os.listdir("/proc"):
            if name.isdigit() and _holds(int(name), inodes):
                args = _cmdline(int(name)) or []
                return f"pid {name} ({' '.join(args)[:80] or '?'})"
    return "another process"


def is_ours(pid: int, port: int) -> bool:
    """Whether ``pid`` is alive and is a moto server started for ``port`` (a reused pid or a
    zombie is not); where /proc is missing, a live pid counts."""
    if not process_alive(pid):
        return False
    args = _cmdline(pid)
    if args is None:
        return True
    return (SERVER in args or "moto.server" in args) and str(port) in args


def atomic(pid: int) -> bool:
    """Whether the emulator ``pid`` is :data:`SERVER` (DynamoDB requests one at a time), not
    a plain ``moto.server`` an older version started; True where /proc is missing."""
    args = _cmdline(pid)
    return args is None or SERVER in args


@dataclass
class Emulator:
    pid: int
    endpoint: str
    process: subprocess.Popen[bytes] | None = None

    def stop(self, timeout: float = 10.0) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
            os.kill(self.pid, signal.SIGCONT)  # a stopped (hung) process handles it now
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None:
                if self.process.poll() is not None:
                    return
            elif not process_alive(self.pid):
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)


def launch(host: str = "127.0.0.1", port: int | None = None, log: Path | None = None,
           timeout: float = 30.0) -> Emulator:
    """Start moto's server (:data:`SERVER`) on ``host:port`` and wait until it answers and
    holds the port."""
    port = port or free_port(host)
    if port_in_use(host, port):
        raise EmulatorError(f"port {port} on {host} is in use by {port_holder(port)}")
    endpoint = f"http://{host}:{port}"
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", SERVER, "-H", host, "-p", str(port)],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    emu = wait_ready("moto server", proc, endpoint, healthy, timeout, log)
    inodes = _listen_inodes(port)
    if proc.poll() is not None or (inodes and not _holds(proc.pid, inodes)):
        emu.stop()
        raise EmulatorError(f"moto server (pid {proc.pid}) did not get {host}:{port}: it is "
                            f"held by {port_holder(port)}" + (f"; see {log}" if log else ""))
    return emu


def wait_ready(name: str, proc: subprocess.Popen[bytes], endpoint: str,
               check: Callable[[str], bool], timeout: float, log: Path | None) -> Emulator:
    """Wait until the server process ``proc`` answers ``check(endpoint)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmulatorError(f"{name} exited with code {proc.returncode}"
                                + (f"; see {log}" if log else ""))
        if check(endpoint) and proc.poll() is None:
            return Emulator(proc.pid, endpoint, proc)
        time.sleep(0.1)
    proc.kill()
    raise EmulatorError(f"{name} did not answer on {endpoint} within {timeout:.0f} s")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def start(state_file: Path, host: str, port: int, *, strict: bool = False,
          say: Callable[[str], None] = _stderr) -> tuple[Emulator, bool]:
    """Start the recorded emulator if it is not running; returns (emulator, started_now).

    When ``port`` is held by something else, a free port is used instead (``say`` is told
    which and why), or, with ``strict``, :class:`EmulatorError` is raised."""
    running = recorded(state_file)
    if running is not None:
        if not atomic(running.pid):
            say(f"the emulator running (pid {running.pid}) is a plain moto server started by an "
                "older version: its DynamoDB updates of one item are not atomic, and "
                "concurrent ones can be lost; `caa emulator stop` and start it again (its "
                "tables are in memory and go with it)")
        return running, False
    rec = _record(state_file)
    if rec is not None and is_ours(rec[0], rec[2]):  # ours, alive, but not answering
        say(f"the recorded emulator (pid {rec[0]}) does not answer on {rec[1]}: stopping it")
        Emulator(rec[0], rec[1]).stop()
    if port_in_use(host, port):
        holder = port_holder(port)
        if strict:
            raise EmulatorError(f"port {port} on {host} is in use by {holder}; stop it, or "
                                f"unset CAA_EMULATOR_PORT to let the emulator pick a free port")
        chosen = free_port(host)
        say(f"port {port} on {host} is in use by {holder}: the emulator uses port {chosen} "
            f"instead (recorded in {state_file})")
        port = chosen
    state_file.parent.mkdir(parents=True, exist_ok=True)
    emu = launch(host, port, log=state_file.with_suffix(".log"))
    state_file.write_text(json.dumps({"pid": emu.pid, "endpoint": emu.endpoint, "host": host,
                                      "port": port}))
    return emu, True


def _record(state_file: Path) -> tuple[int, str, int] | None:
    """(pid, endpoint, port) as recorded, or None when nothing (readable) is recorded."""
    try:
        info = json.loads(state_file.read_text())
        endpoint = str(info["endpoint"])
        return int(info["pid"]), endpoint, int(info.get("port") or endpoint.rsplit(":", 1)[1])
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def recorded(state_file: Path) -> Emulator | None:
    """The recorded emulator when it is alive, ours and answering; else None."""
    rec = _record(state_file)
    if rec is None or not is_ours(rec[0], rec[2]):
        return None
    emu = Emulator(rec[0], rec[1])
    return emu if healthy(emu.endpoint) else None


State = Literal["running", "not answering", "gone", "not started"]


@dataclass(frozen=True)
class Status:
    """What ``caa emulator status`` reports: our emulator's state and who holds the port."""

    state: State
    pid: int | None
    endpoint: str | None
    #: the port looked at: the recorded one, else the configured one
    port: int
    #: who else listens on the port the emulator would use (None: nobody, or ours)
    squatter: str | None

    def line(self, state_file: Path) -> str:
        if self.state == "running":
            text = f"running at {self.endpoint} (pid {self.pid})"
        elif self.state == "not answering":
            text = (f"not answering: pid {self.pid} is our emulator but {self.endpoint} does "
                    f"not answer (`caa emulator stop` stops it)")
        elif self.state == "gone":
            text = (f"not running: the emulator recorded in {state_file} (pid {self.pid}, "
                    f"{self.endpoint}) has exited; `caa emulator start` starts a new one")
        else:
            text = f"not started (nothing recorded in {state_file})"
        if self.squatter:
            text += f"; port {self.port} is held by {self.squatter}, which is not ours"
        return text


def status(state_file: Path, host: str, port: int) -> Status:
    """The truth about the recorded emulator, and whether something else holds ``port``
    (the recorded port when there is a record, else the configured one)."""
    rec = _record(state_file)
    if rec is None:
        state: State = "not started"
        pid, endpoint = None, None
    else:
        pid, endpoint, port = rec
        if not is_ours(pid, port):
            state = "gone"
        else:
            state = "running" if healthy(endpoint) else "not answering"
    squatter = None
    if state not in ("running", "not answering") and port_in_use(host, port):
        squatter = port_holder(port)
    return Status(state, pid, endpoint, port, squatter)


def stop(state_file: Path) -> bool:
    """Stop the recorded emulator if it is ours and alive (a reused pid is never signalled);
    the record is removed either way. True when one was stopped."""
    rec = _record(state_file)
    state_file.unlink(missing_ok=True)
    if rec is None or not is_ours(rec[0], rec[2]):
        return False
    Emulator(rec[0], rec[1]).stop()
    return True
