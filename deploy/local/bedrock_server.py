"""A loopback stand-in for Amazon Bedrock's runtime Converse API, for tests and benchmarks.

It speaks the wire protocol botocore uses (restJson1: ``POST /model/{modelId}/converse``,
a SigV4 ``Authorization`` header, errors as ``x-amzn-ErrorType`` + ``{"message": ...}``), so
the real ``boto3``/``aiobotocore`` ``bedrock-runtime`` client reaches it by ``endpoint_url``.
By default every request gets a tool-use answer generated from the forced tool's JSON schema,
its free text beginning ``[canned answer from the local Bedrock test server]``; every response
carries the header ``x-caa-test-server: canned answers``, so nobody mistakes it for a model.

Control API (JSON, no auth): ``POST /_control/script`` ``{"steps": [step, ...], "default":
step | null}`` replaces the script: steps are consumed FIFO, one per converse request, then
``default`` applies. Kinds: ``answer`` (``input``?, ``usage``?, ``delay_s``?), ``throttle``,
``error`` (``status``, ``type``, ``message``?), ``slow`` (``delay_s``), ``text``, ``invalid``
(``input``?); ``"times": n`` repeats a step. Denied (unsigned) requests consume no step.
``GET /_control/requests`` lists every converse request since the last reset;
``POST /_control/reset`` clears script and records; ``GET /_control/health`` answers ok.
Batch inference (control plane, for ``caa batch``): ``POST /model-invocation-job``
(CreateModelInvocationJob; ``modelInvocationType``, when given, ``InvokeModel`` or
``Converse``) records the job as ``Submitted`` and ``GET
/model-invocation-job/{id or ARN}`` describes it; nothing runs. ``GET /_control/jobs`` lists
the jobs, ``POST /_control/job-status`` ``{"status", "jobArn"?}`` moves them on.
``python -m deploy.local.bedrock_server --port 0`` prints ``READY http://host:port`` and serves.
"""

from __future__ import annotations

import argparse
import json
import math
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

from deploy.local.schema_answer import CANNED, JsonObj, generate, grounding

__all__ = ["CANNED", "TEST_SERVER_HEADER", "BedrockServer", "generate", "launch", "main",
           "serve"]

KINDS = frozenset({"answer", "throttle", "error", "slow", "text", "invalid"})
CONVERSE_PATH = re.compile(r"^/model/([^/]+)/converse$")
JOBS_PATH = "/model-invocation-job"
_JOB_FIELDS = ("jobName", "roleArn", "modelId", "inputDataConfig", "outputDataConfig")
INVOCATION_TYPES = frozenset({"InvokeModel", "Converse"})  # the API's modelInvocationType
TEXT_ANSWER = f"{CANNED} I think this customer is likely to buy again soon, but I am not sure."
#: sent with every response, so a client can tell the answers are canned (see
#: consumers.analysis.bedrock.answered_by)
TEST_SERVER_HEADER = ("x-caa-test-server", "canned answers")
ERRORS = {"throttle": (429, "ThrottlingException", "Too many requests, please wait."),
          "error": (500, "InternalServerException", "Scripted error")}


def _tokens(text: str | bytes) -> int:
    return math.ceil(len(text) / 4)


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    steps: deque[JsonObj] = field(default_factory=deque)
    default: JsonObj = field(default_factory=lambda: {"kind": "answer"})
    records: list[JsonObj] = field(default_factory=list)
    seq: int = 0
    jobs: dict[str, JsonObj] = field(default_factory=dict)  # batch jobs by job id
    tokens: dict[str, str] = field(default_factory=dict)  # clientRequestToken -> job id

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
                self.jobs.clear()
                self.tokens.clear()

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
            self.send_header(*TEST_SERVER_HEADER)
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
        elif route == "GET /_control/jobs":
            with self.state.lock:
                jobs = list(self.state.jobs.values())
            self._send(200, {"jobs": jobs})
        elif route == "POST /_control/job-status":
            change = json.loads(raw or b"{}")
            with self.state.lock:
                for job in self.state.jobs.values():
                    if change.get("jobArn") in (None, job["jobArn"]):
                        job.update(status=change["status"], lastModifiedTime=time.time())
            self._send(200, {"ok": True})
        elif path == JOBS_PATH or path.startswith(JOBS_PATH + "/"):
            self._job(path, raw)
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
                    tool_input = generate(schema, grounded=tuple(grounding(body)))
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


    def _job(self, path: str, raw: bytes) -> None:
        """CreateModelInvocationJob / GetModelInvocationJob (bedrock control plane): jobs are
        recorded, never run; a test writes the output and sets the status (control API)."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256"):
            self._error(403, "AccessDeniedException", "Missing Authentication Token")
            return
        if self.command == "GET":
            ident = urllib.parse.unquote(path.removeprefix(JOBS_PATH + "/")).rsplit("/", 1)[-1]
            with self.state.lock:
                found = dict(self.state.jobs[ident]) if ident in self.state.jobs else None
            if found is None:
                self._error(404, "ResourceNotFoundException", f"no job {ident}")
            else:
                self._send(200, found)
            return
        try:
            body = json.loads(raw)
            missing = [k for k in _JOB_FIELDS if not body.get(k)]
        except (ValueError, AttributeError):
            body, missing = {}, ["a JSON object"]
        invocation = body.get("modelInvocationType", "InvokeModel")  # optional in the API
        if missing or invocation not in INVOCATION_TYPES:
            self._error(400, "ValidationException", f"missing {', '.join(missing)}" if missing
                        else f"modelInvocationType must be one of {sorted(INVOCATION_TYPES)}")
            return
        scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/", auth)
        region = scope.group(1) if scope else "us-east-1"
        with self.state.lock:
            job_id = self.state.tokens.get(str(body.get("clientRequestToken")))
            if job_id is None:  # a repeated token is the same job (idempotency)
                job_id = uuid.uuid4().hex[:12]
                now = time.time()
                self.state.jobs[job_id] = {
                    **body, "status": "Submitted", "submitTime": now, "lastModifiedTime": now,
                    "jobArn": f"arn:aws:bedrock:{region}:123456789012:model-invocation-job/"
                              f"{job_id}"}
                self.state.tokens[str(body.get("clientRequestToken", job_id))] = job_id
            arn = self.state.jobs[job_id]["jobArn"]
        self._send(200, {"jobArn": arn})


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
    """A running ``deploy.local.bedrock_server`` subprocess and its control API."""

    endpoint: str
    process: subprocess.Popen[bytes]

    def script(self, steps: list[dict[str, Any]], default: dict[str, Any] | None = None) -> None:
        _control(self.endpoint, "POST", "script", {"steps": steps, "default": default})

    def requests(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], _control(self.endpoint, "GET", "requests")["requests"])

    def jobs(self) -> list[dict[str, Any]]:
        """The batch inference jobs created since the last reset."""
        return cast(list[dict[str, Any]], _control(self.endpoint, "GET", "jobs")["jobs"])

    def set_job_status(self, status: str, job_arn: str | None = None) -> None:
        _control(self.endpoint, "POST", "job-status", {"status": status, "jobArn": job_arn})

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
        [sys.executable, "-m", "deploy.local.bedrock_server", "--host", host, "--port", "0"],
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
