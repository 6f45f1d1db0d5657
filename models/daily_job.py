"""Bedrock batch inference for the daily batch: the job record and its JSONL lines (pure).

The job has the ``InvokeModel`` invocation type: Converse-type batch jobs do not support tool
use (records with ``toolConfig`` fail with a 400 error), so every record is the model's native
request. An input line is ``{"recordId", "modelInput"}`` where ``modelInput`` is the Anthropic
Messages body (:func:`messages_body`) translated from the very Converse request the on-demand
analyzer sends (``BedrockAnalyzer.request``): the same system text, user content, tool, tool
choice, token cap and temperature; the job names the model. The translation refuses anything
it does not know, so the two cannot drift apart silently. Record ids are opaque (``r`` + 10
digits); only the job record, kept apart from the input, maps them back to customers. An output
line is the input line plus ``modelOutput`` (an Anthropic Messages response) or ``error``.

>>> parse_since("1d"), parse_since("36h"), parse_since("90m")
(datetime.timedelta(days=1), datetime.timedelta(days=1, seconds=43200), \
datetime.timedelta(seconds=5400))
>>> json.loads(input_line(record_id(7), {"modelId": "m", "system": [{"text": "Be brief."}],
...     "messages": [{"role": "user", "content": [{"text": "hi"}]}],
...     "inferenceConfig": {"maxTokens": 10}}))
{'recordId': 'r0000000007', 'modelInput': {'anthropic_version': 'bedrock-2023-05-31', \
'max_tokens': 10, 'system': 'Be brief.', 'messages': [{'role': 'user', 'content': \
[{'type': 'text', 'text': 'hi'}]}]}}
>>> parse_output_line('{"recordId": "r1", "modelInput": {}, "modelOutput": {"usage": {}}}')
OutputLine(kind='output', record_id='r1', output={'usage': {}}, error=None)
>>> parse_output_line('{"recordId": "r2", "error": {"errorCode": 400, "errorMessage": "no"}}')
OutputLine(kind='error', record_id='r2', output=None, error='400: no')
>>> parse_output_line('{"recordId": "r3", "modelOutp').kind
'malformed'
>>> split_s3_uri("s3://bucket/a/b.jsonl")
('bucket', 'a/b.jsonl')
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from models.prompt import AnalysisInput

BATCH_JOB_SCHEMA_VERSION: Literal[1] = 1
_SINCE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
#: the job's invocation type: the model's native request per record (Converse-type jobs do
#: not support tool use)
INVOCATION_TYPE = "InvokeModel"
#: the Anthropic Messages API version Bedrock's InvokeModel expects in the body
ANTHROPIC_VERSION = "bedrock-2023-05-31"
#: Converse inferenceConfig -> Anthropic Messages parameters
_CONFIG = {"maxTokens": "max_tokens", "temperature": "temperature", "topP": "top_p",
           "stopSequences": "stop_sequences"}


def parse_since(text: str) -> timedelta:
    """``30m``, ``12h``, ``1d``, ``2w`` -> the span; ValueError for anything else."""
    found = _SINCE.match(text)
    if not found or int(found.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a span like 30m, 12h, 1d or 2w")
    return timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])


def record_id(n: int) -> str:
    return f"r{n:010d}"


def _text_blocks(blocks: Any, where: str) -> list[dict[str, Any]]:
    """Converse ``[{"text"}]`` content -> Anthropic ``[{"type": "text", "text"}]``."""
    if not isinstance(blocks, list) or not all(
            isinstance(b, dict) and set(b) == {"text"} and isinstance(b["text"], str)
            for b in blocks):
        raise ValueError(f"{where}: only text blocks can be translated, got {blocks!r:.200}")
    return [{"type": "text", "text": b["text"]} for b in blocks]


def _tool(entry: Any) -> dict[str, Any]:
    """Converse ``{"toolSpec": {name, description, inputSchema.json}}`` -> Anthropic
    ``{name, description, input_schema}``."""
    spec = entry.get("toolSpec") if isinstance(entry, dict) and len(entry) == 1 else None
    schema = spec.get("inputSchema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict) or set(schema) != {"json"} or not isinstance(
            spec, dict) or set(spec) - {"name", "description", "inputSchema"}:
        raise ValueError(f"toolConfig.tools: cannot translate {entry!r:.200}")
    described = {"description": spec["description"]} if "description" in spec else {}
    return {"name": spec["name"], **described, "input_schema": schema["json"]}


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice in ({"auto": {}}, {"any": {}}):
        return {"type": next(iter(choice))}
    if isinstance(choice, dict) and set(choice) == {"tool"} and isinstance(choice["tool"], dict) \
            and set(choice["tool"]) == {"name"}:
        return {"type": "tool", "name": choice["tool"]["name"]}
    raise ValueError(f"toolConfig.toolChoice: cannot translate {choice!r:.200}")


def messages_body(request: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic Messages body (InvokeModel on Bedrock) equivalent to a Converse request,
    without the model id; ValueError for anything it cannot translate exactly."""
    config, tools = request.get("inferenceConfig", {}), request.get("toolConfig", {})
    unknown = sorted(
        [*(set(request) - {"modelId", "system", "messages", "inferenceConfig", "toolConfig"}),
         *(f"inferenceConfig.{k}" for k in set(config) - set(_CONFIG)),
         *(f"toolConfig.{k}" for k in set(tools) - {"tools", "toolChoice"})])
    if unknown:
        raise ValueError(f"cannot translate {', '.join(unknown)} to the native request")
    if not isinstance(config.get("maxTokens"), int):
        raise ValueError("inferenceConfig.maxTokens is required (max_tokens is)")
    body: dict[str, Any] = {"anthropic_version": ANTHROPIC_VERSION,
                            **{_CONFIG[k]: v for k, v in config.items()}}
    if request.get("system"):
        system = _text_blocks(request["system"], "system")
        body["system"] = system[0]["text"] if len(system) == 1 else system
    messages = request.get("messages")
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and set(m) == {"role", "content"} for m in messages):
        raise ValueError(f"messages: cannot translate {messages!r:.200}")
    body["messages"] = [{"role": m["role"], "content": _text_blocks(m["content"], "messages")}
                        for m in messages]
    if "tools" in tools:
        body["tools"] = [_tool(t) for t in tools["tools"]]
    if "toolChoice" in tools:
        body["tool_choice"] = _tool_choice(tools["toolChoice"])
    return body


def input_line(rid: str, request: dict[str, Any]) -> str:
    """One JSONL line of the job's input: the on-demand Converse request, as the model's
    native request (:func:`messages_body`)."""
    return json.dumps({"recordId": rid, "modelInput": messages_body(request)},
                      ensure_ascii=True, separators=(",", ":"))


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an S3 object URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key


@dataclass(frozen=True, slots=True)
class OutputLine:
    """One line of a job's output: an answer, an error, or a line that cannot be read."""

    kind: Literal["output", "error", "malformed"]
    record_id: str | None
    output: dict[str, Any] | None
    error: str | None


def parse_output_line(line: str) -> OutputLine:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        return OutputLine("malformed", None, None, f"not JSON: {exc}"[:300])
    if not isinstance(obj, dict):
        return OutputLine("malformed", None, None, "not a JSON object")
    rid = obj.get("recordId") if isinstance(obj.get("recordId"), str) else None
    if "error" in obj:
        err = obj["error"]
        text = (f"{err.get('errorCode', '?')}: {err.get('errorMessage', '')}"
                if isinstance(err, dict) else str(err))
        return OutputLine("error", rid, None, text[:300])
    out = obj.get("modelOutput")
    if not isinstance(out, dict):
        return OutputLine("malformed", rid, None, "neither modelOutput nor error")
    return OutputLine("output", rid, out, None)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BatchEntry(_Frozen):
    """What one record of the job was about: the customer, the features sent, and the
    signature the change-aware cache keeps with the analysis."""

    customer_id: str
    input: AnalysisInput
    signature: dict[str, Any]


class BatchJob(_Frozen):
    """The job record, kept in S3 beside (not inside) the input Bedrock reads."""

    schema_version: Literal[1] = BATCH_JOB_SCHEMA_VERSION
    name: str
    model_id: str
    created_at: datetime
    input_uri: str
    output_uri: str
    record_uri: str
    entries: dict[str, BatchEntry]
    job_arn: str | None = None
    submit_error: str | None = None

    @property
    def input_name(self) -> str:
        return self.input_uri.rsplit("/", 1)[-1]

    def summary(self) -> dict[str, Any]:
        return {"job": self.name, "job_arn": self.job_arn, "records": len(self.entries),
                "model": self.model_id, "input_uri": self.input_uri,
                "output_uri": self.output_uri, "record_uri": self.record_uri,
                **({"submit_error": self.submit_error} if self.submit_error else {})}
