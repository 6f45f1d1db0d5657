"""A loopback stand-in for Amazon Bedrock's runtime Converse API, for tests and benchmarks.

It speaks the wire protocol botocore uses (restJson1: ``POST /model/{modelId}/converse``,
a SigV4 ``Authorization`` header, errors as ``x-amzn-ErrorType`` + ``{"message": ...}``), so
the real ``boto3``/``aiobotocore`` ``bedrock-runtime`` client reaches it by ``endpoint_url``.
By default every request gets a tool-use answer generated from the forced tool's JSON schema.

Control API (JSON, no auth): ``POST /_control/script`` ``{"steps": [step, ...], "default":
step | null}`` replaces the script: steps are consumed FIFO, one per converse request, then
``default`` applies. Kinds: ``answer`` (``input``?, ``usage``?, ``delay_s``?), ``throttle``,
``error`` (``status``, ``type``, ``message``?), ``slow`` (``delay_s``), ``text``, ``invalid``
(``input``?); ``"times": n`` repeats a step. Denied (unsigned) requests consume no step.
``GET /_control/requests`` lists every converse request since the last reset;
``POST /_control/reset`` clears script and records; ``GET /_control/health`` answers ok.
``python -m deploy.bedrock_server --port 0`` prints ``READY http://host:port`` and serves.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

JsonObj = dict[str, Any]
KINDS = frozenset({"answer", "throttle", "error", "slow", "text", "invalid"})
CONVERSE_PATH = re.compile(r"^/model/([^/]+)/converse$")
TEXT_ANSWER = "I think this customer is likely to buy again soon, but I am not certain."
FORMATS = {"date": "2026-12-01", "date-time": "2026-12-01T00:00:00Z", "time": "00:00:00",
           "email": "sample@example.com", "uri": "https://example.com/sample",
           "uuid": "00000000-0000-4000-8000-000000000000", "duration": "P1D"}
ERRORS = {"throttle": (429, "ThrottlingException", "Too many requests, please wait."),
          "error": (500, "InternalServerException", "Scripted error")}
BOUND_CHECKS = (("minimum", operator.ge), ("exclusiveMinimum", operator.gt),
                ("maximum", operator.le), ("exclusiveMaximum", operator.lt))


def generate(schema: JsonObj, defs: JsonObj | None = None, name: str = "value",
             refs: frozenset[str] = frozenset(), deep: bool = False) -> Any:
    """A deterministic instance valid against ``schema`` (pydantic v2 JSON-schema subset).

    Inside a recursive ``$ref`` (``deep``) only required properties, null if allowed, [].
    """
    if defs is None:
        defs = cast(JsonObj, schema.get("$defs", schema.get("definitions", {})))
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "$ref" in schema:
        ref = str(schema["$ref"])
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        target = {**defs.get(ref.rsplit("/", 1)[-1], {}), **rest}
        return generate(target, defs, name, refs | {ref}, deep or ref in refs)
    if "allOf" in schema:
        merged: JsonObj = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            merged.update(part)
        return generate(merged, defs, name, refs, deep)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        non_null = [b for b in branches if b.get("type") != "null"]
        if deep and len(non_null) < len(branches):
            return None
        return generate(non_null[0] if non_null else branches[0], defs, name, refs, deep)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "default" in schema:
        return schema["default"]
    if kind == "object" or (kind is None and "properties" in schema):
        required = set(schema.get("required", []))
        out: JsonObj = {prop: generate(sub, defs, prop, refs, deep)
                        for prop, sub in schema.get("properties", {}).items()
                        if not deep or prop in required}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not out and not deep:
            out[f"sample_{name}"] = generate(extra, defs, name, refs, deep)
        return out
    if kind == "array":
        prefix = [generate(s, defs, name, refs, deep) for s in schema.get("prefixItems", [])]
        count = max(int(schema.get("minItems", 0)), 0 if deep else 1)
        count = min(count, int(schema.get("maxItems", count))) - len(prefix)
        item = schema.get("items")
        if not isinstance(item, dict):
            return prefix
        return prefix + [generate(item, defs, name, refs, deep) for _ in range(max(count, 0))]
    if kind in ("number", "integer"):
        return _number(schema, integer=kind == "integer")
    return {"boolean": True, "null": None}.get(str(kind), _string(schema, name))


def _fits(value: float, schema: JsonObj) -> bool:
    return all(op(value, schema[k]) for k, op in BOUND_CHECKS if schema.get(k) is not None)


def _number(schema: JsonObj, *, integer: bool) -> int | float:
    """Midpoint of the bounds when bounded on both sides, else 1 (or just inside the bound)."""
    lo = max((schema[k] for k in ("minimum", "exclusiveMinimum") if schema.get(k) is not None),
             default=None)
    hi = min((schema[k] for k in ("maximum", "exclusiveMaximum") if schema.get(k) is not None),
             default=None)
    if lo is not None and hi is not None:
        mid: float = (lo + hi) / 2
        if not integer:
            return mid
        return math.floor(mid) if _fits(math.floor(mid), schema) else math.ceil(mid)
    if _fits(1, schema):
        return 1 if integer else 1.0
    value = lo + 1 if lo is not None else (hi if hi is not None else 2) - 1
    if integer:
        return math.ceil(value) if lo is not None else math.floor(value)
    return float(value)


def _string(schema: JsonObj, name: str) -> str:
    if schema.get("format") in FORMATS:
        return FORMATS[str(schema["format"])]
    text = f"sample {name}".ljust(int(schema.get("minLength", 0)), "x")
    return text[: int(schema.get("maxLength", len(text)))]


def _tokens(text: str | bytes) -> int:
    return math.ceil(len(text) / 4)


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    steps: deque[JsonObj] = field(default_factory=deque)
    default: JsonObj = field(default_factory=lambda: {"kind": "answer"})
    records: list[JsonObj] = field(default_factory=list)
    seq: int = 0

    def load(self, payload: Any) -> None:
        """Replace the script; ``None`` resets the script and forgets the records."""
        reset, payload = payload is None, {} if payload is None else payload
        if not isinstance(payload, dict) or not isinstance(payload.get("steps", []), list):
            raise ValueError("script must be {'steps': [...], 'default': step | null}")
        steps: list[JsonObj] = []
        for step in payload.get("steps", []):
            steps.extend([_checked(step)] * int(step.get("times", 1)))
        default = payload.get("default")
        with self.lock:
            self.steps = deque(steps)
            self.default = _checked(default) if default is not None else {"kind": "answer"}
            if reset:
                self.records.clear()

    def take(self, record: JsonObj, refuse: str | None) -> tuple[JsonObj | None, int]:
        """Record the request; unless refused, pop the step that answers it. Returns its seq."""
        with self.lock:
            step = None if refuse else (self.steps.popleft() if self.steps else self.default)
            kind = "" if step is None else str(step["kind"])
            record["outcome"] = refuse if step is None else (
                f"error:{step.get('type', ERRORS['error'][1])}" if kind == "error" else kind)
            self.records.append(record)
            self.seq += 1
            return step, self.seq


def _checked(step: Any) -> JsonObj:
    if not isinstance(step, dict) or step.get("kind") not in KINDS:
        raise ValueError(f"bad step {step!r}: 'kind' must be one of {sorted(KINDS)}")
    return step


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # client gave up: fine
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def state(self) -> _State:
        return cast(_Server, self.server).state

    def _send(self, status: int, payload: Any, error_type: str | None = None) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            if error_type:
                self.send_header("x-amzn-ErrorType", error_type)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except ConnectionError:
            self.close_connection = True

    def _error(self, status: int, error_type: str, message: str) -> None:
        self._send(status, {"message": message}, error_type)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _route(self) -> None:
        started, raw = time.monotonic(), self._body()
        path = urllib.parse.urlsplit(self.path).path
        match, route = CONVERSE_PATH.match(path), f"{self.command} {path}"
        if route == "GET /_control/health":
            self._send(200, {"ok": True})
        elif route == "GET /_control/requests":
            with self.state.lock:
                records = list(self.state.records)
            self._send(200, {"requests": records})
        elif route in ("POST /_control/script", "POST /_control/reset"):
            try:
                self.state.load(json.loads(raw or b"{}") if path.endswith("script") else None)
            except (ValueError, TypeError) as exc:
                self._error(400, "ValidationException", str(exc))
                return
            self._send(200, {"ok": True})
        elif match and self.command == "POST":
            self._converse(urllib.parse.unquote(match.group(1)), path, raw, started)
        else:
            self._error(404, "UnknownOperationException", f"Unknown operation {route}")

    do_GET = do_POST = do_PUT = do_DELETE = _route

    def _converse(self, model_id: str, path: str, raw: bytes, started: float) -> None:
        authorized = self.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256")
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record: JsonObj = {"model_id": model_id, "path": path, "authorized": authorized,
                           "body": body, "received_at": time.time()}
        refuse = "denied" if not authorized else (
            None if isinstance(body, dict) else "error:ValidationException")
        step, seq = self.state.take(record, refuse)
        if not authorized:
            self._error(403, "AccessDeniedException", "Missing Authentication Token")
            return
        if step is None or not isinstance(body, dict):
            self._error(400, "ValidationException", "Request body is not a JSON object")
            return
        kind = step["kind"]
        if kind in ERRORS:
            status, error_type, message = ERRORS[kind]
            self._error(int(step.get("status", status)), str(step.get("type", error_type)),
                        str(step.get("message", message)))
            return
        time.sleep(float(step.get("delay_s", 0)))  # outside the lock: others go on
        tools = [t.get("toolSpec", {}) for t in body.get("toolConfig", {}).get("tools", [])]
        forced = body.get("toolConfig", {}).get("toolChoice", {}).get("tool", {}).get("name")
        tool = next((t for t in tools if t.get("name") == forced), tools[0] if tools else None)
        content: JsonObj
        if kind == "text" or (tool is None and kind != "invalid"):
            text = json.dumps(step["input"]) if kind != "text" and "input" in step else TEXT_ANSWER
            content, stop, produced = {"text": text}, "end_turn", text
        else:
            schema = (tool or {}).get("inputSchema", {}).get("json", {})
            if kind == "invalid":
                tool_input = step.get("input", {"unexpected": True})
            elif "input" in step or not schema or not isinstance(schema, dict):
                tool_input = step.get("input", {})
            else:
                try:
                    tool_input = generate(schema)
                except (LookupError, TypeError, ValueError, AttributeError, RecursionError) as e:
                    self._error(500, "InternalServerException", f"schema not understood: {e!r}")
                    return
            content = {"toolUse": {"toolUseId": f"tooluse_{seq:022x}",
                                   "name": (tool or {}).get("name", "tool"),
                                   "input": tool_input}}
            stop, produced = "tool_use", json.dumps(tool_input)
        cap = body.get("inferenceConfig", {}).get("maxTokens")
        out_tokens = min(_tokens(produced), cap) if isinstance(cap, int) else _tokens(produced)
        usage = {"inputTokens": _tokens(raw), "outputTokens": out_tokens, **step.get("usage", {})}
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
        self._send(200, {
            "output": {"message": {"role": "assistant", "content": [content]}},
            "stopReason": stop, "usage": usage,
            "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)},
        })


def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Serve on a background thread of this process (stop: ``shutdown(); server_close()``)."""
    server = _Server((host, port), _Handler)
    server.state = _State()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     name="bedrock-server", daemon=True).start()
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    return server, f"http://{shown}:{server.server_address[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bedrock Converse test server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server, endpoint = serve(args.host, args.port)
    print(f"READY {endpoint}", flush=True)
    while not stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    return 0


def _control(endpoint: str, method: str, path: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"{endpoint}/_control/{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"bedrock test server: {exc.code} {exc.read().decode()}") from exc


@dataclass
class BedrockServer:
    """A running ``deploy.bedrock_server`` subprocess and its control API."""

    endpoint: str
    process: subprocess.Popen[bytes]

    def script(self, steps: list[dict[str, Any]], default: dict[str, Any] | None = None) -> None:
        _control(self.endpoint, "POST", "script", {"steps": steps, "default": default})

    def requests(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], _control(self.endpoint, "GET", "requests")["requests"])

    def reset(self) -> None:
        _control(self.endpoint, "POST", "reset", {})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def launch(host: str = "127.0.0.1", timeout: float = 15.0) -> BedrockServer:
    """Start the server as a subprocess on a free port and wait for its READY line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.bedrock_server", "--host", host, "--port", "0"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    assert proc.stdout is not None
    deadline, line = time.monotonic() + timeout, b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready = left > 0 and select.select([proc.stdout], [], [], left)[0]
        chunk = os.read(proc.stdout.fileno(), 256) if ready else b""
        if not chunk:
            why = "exited" if ready else f"timed out after {timeout} s"  # ready + b"": EOF
            BedrockServer("", proc).stop()
            raise RuntimeError(f"bedrock test server {why} before READY "
                               f"(rc={proc.returncode}, output={line!r})")
        line += chunk
    if not line.startswith(b"READY http"):
        BedrockServer("", proc).stop()
        raise RuntimeError(f"bedrock test server said {line!r} instead of READY")
    return BedrockServer(line.decode().strip().removeprefix("READY "), proc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
