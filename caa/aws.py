"""AWS clients for the whole program, sync (boto3) and async (aiobotocore).

Endpoints come from the standard variables, which botocore reads itself
(``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_KINESIS``, ...), so the same code runs
against AWS, LocalStack or the embedded emulator by environment alone. The one
convenience: with ``CAA_LOCAL_EMULATOR=auto`` (the default) and no
``AWS_ENDPOINT_URL``, a running emulator started by ``caa emulator start`` is used.
This module never refuses a target: the interactive command line does, before building
clients (:func:`caa.target.require_target`); the Lambda/KCL entry points and the API do not.

LocalStack (:func:`localstack_host`) is recognised by ``AWS_ENDPOINT_URL`` alone: port 4576
(docker-compose.yml's host port), host ``localstack`` (the compose service name, port 4566
inside the compose network) or a ``*.localstack.cloud`` host. Its sync clients then come
from ``localstack_client``'s session, its async ones from the endpoint ``localstack_client``
resolves for the service; without credentials it gets LocalStack's ``test``/``test``.
``localstack_client`` is imported only then: it is a local-only dependency, left out of the
Lambda artifacts (deploy/package.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import boto3
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from caa.settings import Settings

#: Requests are built by our own typed code, so botocore's per-call parameter validation
#: (a third of the client's CPU on large batches) is switched off. A connection is given
#: 5 s (botocore's default is 60: five attempts at a silent address took minutes).
_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 5},
    max_pool_connections=64,
    parameter_validation=False,
    connect_timeout=5,
)
_DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
#: LocalStack's conventional credentials (account 000000000000)
_LOCALSTACK_DUMMY = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
#: docker-compose.yml publishes LocalStack's edge port 4566 on this host port (4566 is ours)
LOCALSTACK_COMPOSE_PORT = 4576
#: attempts of a call to an endpoint that has never answered this client (see _FailFast)
_UNREACHED_ATTEMPTS = 2


class _FailFast:
    """A ``needs-retry`` handler, first in line: until its client has had one answer from
    the endpoint, a connection failure is retried only once (then raised), so a wrong or
    dead endpoint is reported in a second or two instead of after botocore's backoff. Once
    the endpoint has answered, retries are botocore's own, unchanged."""

    def __init__(self) -> None:
        self.reached = False

    def __call__(self, attempts: int = 1, response: object = None,
                 caught_exception: BaseException | None = None, **_: Any) -> None:
        if response is not None:
            self.reached = True
        elif (not self.reached and isinstance(caught_exception, EndpointConnectionError)
              and attempts >= _UNREACHED_ATTEMPTS):
            raise caught_exception


def _fail_fast(client: Any) -> Any:
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register_first(f"needs-retry.{service}", _FailFast())
    return client


def local_emulator_endpoint(settings: Settings) -> str | None:
    """The endpoint of our running emulator, if one is recorded, alive, ours and answering."""
    from deploy.local import emulator

    found = emulator.recorded(settings.emulator_file)
    return found.endpoint if found else None


def localstack_host(endpoint_url: str | None) -> str | None:
    """``host:port`` of LocalStack when ``endpoint_url`` (``AWS_ENDPOINT_URL``) is one, else
    None: port 4576 (docker-compose.yml), host ``localstack`` (the compose network) or a
    ``*.localstack.cloud`` host.

    >>> localstack_host("http://localhost:4576"), localstack_host("http://localstack:4566")
    ('localhost:4576', 'localstack:4566')
    >>> localstack_host("http://127.0.0.1:4566") is None  # the embedded emulator's port
    True
    """
    if not endpoint_url:
        return None
    parts = urlsplit(endpoint_url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    if (port == LOCALSTACK_COMPOSE_PORT or host in {"localstack", "localstack.cloud"}
            or host.endswith(".localstack.cloud")):
        return f"{host}:{port}"
    return None


def _service_endpoint_set(service: str) -> bool:
    """``AWS_ENDPOINT_URL_<SERVICE>`` is set: botocore's own choice then stands."""
    return bool(os.environ.get("AWS_ENDPOINT_URL_" + service.upper().replace("-", "_")))


class Aws:
    """Client factory bound to one settings object. It prints nothing: the command line
    names the target before commands that change something (:mod:`caa.target`), and error
    lines name the endpoint; ``quiet`` is accepted for its callers and has no effect."""

    def __init__(self, settings: Settings, quiet: bool = False) -> None:
        from caa.target import before_clients

        before_clients()  # the command line's target check (caa.target.checked), else nothing
        self.settings = settings
        self.endpoint_url: str | None = None
        if settings.endpoint_url is None and settings.local_emulator == "auto":
            self.endpoint_url = local_emulator_endpoint(settings)
        self._session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
        self._needs_dummy = self._session.get_credentials() is None and (
            self.endpoint_url is not None or settings.endpoint_url is not None
        )
        #: ``host:port`` when the target is LocalStack (see :func:`localstack_host`)
        self.localstack = localstack_host(settings.endpoint_url)

    def _localstack_for(self, service: str) -> str | None:
        """LocalStack's ``host:port`` for this service's client, or None (not LocalStack,
        Bedrock, or a service-specific endpoint variable)."""
        if (self.localstack is None or service in ("bedrock", "bedrock-runtime")
                or _service_endpoint_set(service)):
            return None
        return self.localstack

    def _localstack_client(self, service: str) -> Any:
        """A sync client from ``localstack_client``'s session (LocalStack's endpoint, its
        region and credentials), or None when that session does not know the service."""
        from localstack_client import config as ls_config
        from localstack_client.session import Session as LocalStackSession

        if service not in ls_config.get_service_endpoints(self.localstack):
            return None
        creds = self._session.get_credentials()
        keys = ({"aws_access_key_id": creds.access_key, "aws_secret_access_key": creds.secret_key,
                 "aws_session_token": creds.token} if creds is not None
                else {**_LOCALSTACK_DUMMY, "aws_session_token": None})
        session = LocalStackSession(region_name=self.settings.region,
                                    localstack_host=self.localstack, **keys)
        return session.client(service, config=_CONFIG)

    def _localstack_endpoint(self, service: str) -> str | None:
        """The endpoint ``localstack_client`` resolves for ``service`` (async clients)."""
        from localstack_client import config as ls_config

        endpoint: str | None = ls_config.get_service_endpoint(service, self.localstack)
        return endpoint

    def _kwargs(self, service: str = "") -> dict[str, Any]:
        s = self.settings
        if service == "bedrock-runtime":
            return self._bedrock_kwargs()
        kw: dict[str, Any] = {"region_name": s.region, "config": _CONFIG}
        if service == "bedrock":  # control plane (batch jobs) in Bedrock's region; never the
            # local emulator, which has no model invocation jobs: AWS_ENDPOINT_URL_BEDROCK applies
            kw["region_name"] = s.bedrock_region or s.region
        elif self.endpoint_url:
            kw["endpoint_url"] = self.endpoint_url
        elif self._localstack_for(service) and (found := self._localstack_endpoint(service)):
            kw["endpoint_url"] = found
            if self._session.get_credentials() is None:
                kw.update(_LOCALSTACK_DUMMY)
            return kw
        if self._needs_dummy:
            kw.update(_DUMMY)
        return kw

    def _bedrock_kwargs(self) -> dict[str, Any]:
        """Bedrock: one attempt per call (the analyzer retries within its deadline) and its
        own read timeout. The emulator recorded by ``caa emulator start`` is not used (it
        has no Converse); the endpoint is botocore's choice, so
        ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME`` (or else ``AWS_ENDPOINT_URL``) applies."""
        s = self.settings
        kw: dict[str, Any] = {
            "region_name": s.bedrock_region or s.region,
            "config": Config(retries={"total_max_attempts": 1}, read_timeout=s.bedrock_timeout_s,
                             connect_timeout=5, max_pool_connections=2 * s.bedrock_concurrency),
        }
        if s.bedrock_endpoint_url:
            kw["endpoint_url"] = s.bedrock_endpoint_url
        if self._session.get_credentials() is None and (
            s.bedrock_endpoint_url or s.endpoint_url
        ):
            kw.update(_DUMMY)
        return kw

    def client(self, service: str) -> Any:
        if self._localstack_for(service):
            local = self._localstack_client(service)
            if local is not None:
                return _fail_fast(local)
        kw = self._kwargs(service)
        return _fail_fast(self._session.client(service, **kw))  # type: ignore[call-overload]

    @asynccontextmanager
    async def clients(self, *services: str) -> AsyncIterator[dict[str, Any]]:
        """Async clients sharing one aiobotocore session, closed on exit."""
        session = get_session()
        if self.settings.profile:
            session.set_config_variable("profile", self.settings.profile)
        async with AsyncExitStack() as stack:
            out = {}
            for s in services:
                out[s] = _fail_fast(await stack.enter_async_context(
                    session.create_client(s, **self._kwargs(s))
                ))
            yield out
