"""The Bedrock analyzer: Converse with a forced tool call, validated, retried, priced.

One call sends the system prompt, the customer's features as a data block
(:func:`models.prompt.render_user`) and one tool whose input schema is the
:class:`~models.analysis.Analysis` model, with ``toolChoice`` forcing it and
``maxTokens`` always set. The answer is validated against the model and
:meth:`~models.analysis.Analysis.problems` (no sensitive inference, products
only from the customer's items); an invalid answer is sent back once as a tool
error (or, for a text answer, a reminder to call the tool) and then fails as
``invalid_answer``.

The daily batch sends this same request in the model's native format
(:func:`models.daily_job.messages_body`; batch jobs support tool use only with InvokeModel)
and reads its answers with :func:`parse_native_answer`, through the same validation.

Throttling, service-unavailable, internal errors (and any other 429 or 5xx answer), model
timeouts and transport failures are retried with exponential backoff and full jitter
(:mod:`consumers.retry`, ``backoff_base_s`` doubling per attempt to at most ``backoff_cap_s``)
while the deadline allows; botocore's own retries are off (the client is built with one
attempt), so every attempt is counted here. Every failure is returned as data:
the caller falls back to the statistical analyzer.

The caller's :class:`~consumers.analysis.analyzer.Calls` hears of every call that failed on
the service's side (the retryable errors above, timeouts, transport failures; not a request
rejected as invalid) and of every answer, so the circuit breaker counts calls, not analyses;
it is asked before each retry (no retry once the breaker is open), and its stop event ends
the backoff at once: no call starts after a stop, the analysis ends as ``stopped``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from pydantic import ValidationError

from consumers.analysis.analyzer import (
    FREE,
    AnalyzerResult,
    Calls,
    FailureKind,
    PriceTable,
    with_statistical_patterns,
)
from consumers.retry import Backoff
from models.analysis import TOOL_NAME, Analysis, tool_spec
from models.prompt import SYSTEM_PROMPT, AnalysisInput, render_user

#: attempts that may be billed (answered, or timed out on our side) per analysis: the first
#: call and one correction; the budget reserves for both (see worst_case_tokens)
MAX_BILLABLE = 2

#: error code -> failure kind, for the errors worth another attempt
RETRYABLE: dict[str, FailureKind] = {
    "ThrottlingException": "throttled",
    "ServiceQuotaExceededException": "throttled",
    "TooManyRequestsException": "throttled",
    "ServiceUnavailableException": "unavailable",
    "InternalServerException": "unavailable",
    "ModelNotReadyException": "unavailable",
    "ModelTimeoutException": "timeout",
}


def _by_status(resp: Mapping[str, Any]) -> FailureKind | None:
    """An error code not named above, by its HTTP status: 429 throttled, 5xx unavailable."""
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if status == 429:
        return "throttled"
    return "unavailable" if isinstance(status, int) and status >= 500 else None


#: the header the local test server (deploy.local.bedrock_server) answers with
TEST_SERVER_HEADER = "x-caa-test-server"
AWS_DOMAINS = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")


def is_aws(url: str) -> bool:
    """Is ``url`` one of AWS's own endpoints (regional, FIPS, VPC, China)?"""
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith(AWS_DOMAINS)


def endpoint(client: Any, headers: Mapping[str, str] | None = None) -> str | None:
    """What answered when it was not AWS: ``"test server at URL (canned answers)"`` when the
    response says it came from the local test server, the endpoint URL when it is not
    AWS's, None for AWS's own endpoint (or a client that does not say where it goes)."""
    url = getattr(getattr(client, "meta", None), "endpoint_url", None)
    said = (headers or {}).get(TEST_SERVER_HEADER)
    if isinstance(said, str) and said:
        return f"test server at {url if isinstance(url, str) else 'an unknown URL'} ({said})"
    return url if isinstance(url, str) and not is_aws(url) else None


def _validated(uses: list[dict[str, Any]], stop: str,
               ) -> tuple[Analysis | None, str, dict[str, Any] | None]:
    use = next((u for u in uses if u.get("name") == TOOL_NAME), None)
    if use is None:
        return None, f"no {TOOL_NAME} tool call ({stop})", None
    answer = use.get("input")
    if isinstance(answer, dict):  # not asked for (models.analysis.input_schema): filled later
        answer = {"consumption_patterns": [], **answer}
    try:
        return Analysis.model_validate(answer), "", use
    except ValidationError as exc:
        errors = exc.errors(include_url=False)[:5]
        why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in errors)
        return None, why, use


def parse_answer(resp: dict[str, Any]) -> tuple[Analysis | None, str, dict[str, Any] | None]:
    """(analysis, why it is invalid, the tool-use block) from a Converse response."""
    content = resp.get("output", {}).get("message", {}).get("content", [])
    uses = [c["toolUse"] for c in content if isinstance(c, dict) and "toolUse" in c]
    return _validated(uses, f"stopReason {resp.get('stopReason')}")


def parse_native_answer(resp: dict[str, Any],
                        ) -> tuple[Analysis | None, str, dict[str, Any] | None]:
    """The same from an Anthropic Messages response (InvokeModel, as batch jobs answer):
    ``content`` blocks of ``type`` ``tool_use`` with ``name`` and ``input``."""
    content = resp.get("content")
    uses = [c for c in content if isinstance(c, dict) and c.get("type") == "tool_use"] \
        if isinstance(content, list) else []
    return _validated(uses, f"stop_reason {resp.get('stop_reason')}")


class BedrockAnalyzer:
    def __init__(
        self,
        client: Any,
        model: str,
        *,
        max_tokens: int,
        prices: PriceTable,
        deadline_s: float = 30.0,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 8.0,
        temperature: float = 0.2,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.prices = prices
        self.deadline_s = deadline_s
        self.backoff = Backoff(base=backoff_base_s, cap=backoff_cap_s)
        self.temperature = temperature
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        #: where the answers come from when not from AWS (None: AWS's endpoint); learnt
        #: from the endpoint URL and the test server's header (see :func:`endpoint`)
        self.endpoint = endpoint(client)
        prices.cost(model, 0, 0)  # fail at start-up, not per call, when the model has no price

    def request(self, x: AnalysisInput) -> dict[str, Any]:
        return {
            "modelId": self.model,
            "system": [{"text": SYSTEM_PROMPT}],
            "messages": [{"role": "user", "content": [{"text": render_user(x)}]}],
            "inferenceConfig": {"maxTokens": self.max_tokens, "temperature": self.temperature},
            "toolConfig": {"tools": [tool_spec()], "toolChoice": {"tool": {"name": TOOL_NAME}}},
        }

    def input_tokens_bound(self, x: AnalysisInput) -> int:
        """An upper bound of one request's input tokens (2 characters a token, plus the
        tool-use preamble Bedrock adds)."""
        return int(len(json.dumps(self.request(x))) / 2) + 600

    def worst_case_tokens(self, x: AnalysisInput) -> tuple[int, int]:
        """(input, output) tokens of every billable attempt one analysis may make: the
        first call and one correction, which re-sends the conversation and the answer."""
        first = self.input_tokens_bound(x)
        return 2 * first + self.max_tokens + 300, 2 * self.max_tokens

    async def analyze(self, x: AnalysisInput, calls: Calls = FREE) -> AnalyzerResult:
        req = self.request(x)
        items = {i.name for i in (*x.products, *x.categories)} | {
            h.name for h in x.statistical_next}
        start = self._clock()
        deadline = start + self.deadline_s
        attempts = billable = tokens_in = tokens_out = 0
        bound_in = self.input_tokens_bound(x)

        def result(analysis: Analysis | None, failure: FailureKind | None = None,
                   detail: str = "") -> AnalyzerResult:
            return AnalyzerResult(
                analysis, "bedrock", self.model, failure, detail, tokens_in, tokens_out,
                self.prices.cost(self.model, tokens_in, tokens_out), attempts,
                round((self._clock() - start) * 1000.0, 1), self.endpoint,
            )

        while True:
            attempts += 1
            remaining = deadline - self._clock()
            failure: FailureKind
            try:
                resp = await asyncio.wait_for(self.client.converse(**req), timeout=remaining)
            except ClientError as exc:
                self._heard(exc.response)
                err = exc.response.get("Error", {})
                code = str(err.get("Code", "Unknown"))
                detail = f"{code}: {err.get('Message', '')}".strip()
                retry_as = RETRYABLE.get(code) or _by_status(exc.response)
                if retry_as is None:  # the request's fault: says nothing of the service
                    return result(None, "rejected", detail)
                failure = retry_as
            except (ReadTimeoutError, TimeoutError) as exc:
                # The model may have answered (and billed) after we stopped waiting: count
                # the worst case, so the budget still holds.
                billable += 1
                tokens_in += bound_in
                tokens_out += self.max_tokens
                failure, detail = "timeout", f"{type(exc).__name__}: {exc}"
            except (ConnectTimeoutError, EndpointConnectionError, ConnectionClosedError,
                    HTTPClientError, aiohttp.ClientError) as exc:
                failure, detail = "unavailable", f"{type(exc).__name__}: {exc}"
            except BotoCoreError as exc:
                return result(None, "rejected", f"{type(exc).__name__}: {exc}")
            else:
                billable += 1
                calls.answered()
                self._heard(resp)
                usage = resp.get("usage", {})
                tokens_in += int(usage.get("inputTokens", 0))
                tokens_out += int(usage.get("outputTokens", 0))
                analysis, why, use = parse_answer(resp)
                if analysis is not None:
                    problems = analysis.problems(items)
                    if not problems:
                        return result(with_statistical_patterns(analysis, x))
                    why = "; ".join(problems[:5])
                if billable >= MAX_BILLABLE or self._clock() >= deadline:
                    return result(None, "invalid_answer", why)
                if calls.stopped():
                    return result(None, "stopped", f"stopped before correcting: {why}")
                req = self._correction(req, resp, why, use)
                continue
            calls.failed()  # here only when the call failed on the service's side
            if billable >= MAX_BILLABLE:
                return result(None, failure, f"{detail} (after {billable} billable attempts)")
            end = await self._backoff(failure, detail, attempts, deadline, calls)
            if end is not None:
                return result(None, *end)

    async def _backoff(self, failure: FailureKind, detail: str, attempts: int, deadline: float,
                       calls: Calls) -> tuple[FailureKind, str] | None:
        """Wait before the next attempt; or why there is none (the deadline, the breaker,
        a stop): the failure to end with and its detail."""
        delay = self.backoff.delay(attempts - 1, self._rng)
        if self._clock() + delay >= deadline:
            return failure, (f"{detail} (gave up after {attempts} attempt(s) within the "
                             f"{self.deadline_s:g} s deadline)")
        refused = f"{detail} (no retry after {attempts} attempt(s): the breaker is open)"
        if not calls.may_retry():
            return failure, refused
        if calls.stopped() or await self._pause(delay, calls.stop):
            return "stopped", f"{detail} (stopped after {attempts} attempt(s))"
        if not calls.may_retry():  # opened while this one waited
            return failure, refused
        return None

    async def _pause(self, seconds: float, stop: asyncio.Event | None) -> bool:
        """Sleep ``seconds`` (the injected sleep), or less when ``stop`` is set first;
        True when it is set."""
        if stop is None:
            await self._sleep(seconds)
            return False
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeping, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            stopping.cancel()
        return stop.is_set()

    def _heard(self, resp: Mapping[str, Any]) -> None:
        """Learn from a response (an answer or an error) whether the test server sent it."""
        headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        if TEST_SERVER_HEADER in headers:
            self.endpoint = endpoint(self.client, headers)

    @staticmethod
    def _correction(req: dict[str, Any], resp: dict[str, Any], why: str,
                    use: dict[str, Any] | None) -> dict[str, Any]:
        """The same conversation plus the invalid answer and what was wrong with it."""
        said = resp.get("output", {}).get("message", {}).get("content") or [{"text": "(empty)"}]
        if use is not None:
            reply: list[dict[str, Any]] = [{"toolResult": {
                "toolUseId": use.get("toolUseId", "invalid"),
                "content": [{"text": f"Invalid input, call the tool again: {why}"[:1000]}],
                "status": "error",
            }}]
        else:
            reply = [{"text": f"Answer only by calling the tool {TOOL_NAME}."}]
        messages = [*req["messages"], {"role": "assistant", "content": said},
                    {"role": "user", "content": reply}]
        return {**req, "messages": messages}
