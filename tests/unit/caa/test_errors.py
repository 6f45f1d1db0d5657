"""caa.errors.explain: botocore, aiobotocore and aiohttp failures, also wrapped, become the
one-line errors with their exit codes; anything else stays a bug (None)."""

from __future__ import annotations

import asyncio

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from caa.errors import (
    BadInput,
    Busy,
    CaaError,
    EmulatorError,
    NoCredentials,
    NotFound,
    NotSetUp,
    Unreachable,
    explain,
)


def _client_error(code: str, op: str = "GetItem", message: str = "boom") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


URL = "http://127.0.0.1:4566"


@pytest.mark.parametrize(("exc", "kind", "code"), [
    (_client_error("ResourceNotFoundException"), NotSetUp, 3),
    (NoCredentialsError(), NoCredentials, 4),
    (ProfileNotFound(profile="x"), NoCredentials, 4),
    (_client_error("UnrecognizedClientException"), NoCredentials, 4),
    (EndpointConnectionError(endpoint_url=URL + "/"), Unreachable, 5),
    (ConnectTimeoutError(endpoint_url=URL + "/"), Unreachable, 5),
    (ReadTimeoutError(endpoint_url=URL + "/"), Unreachable, 5),
    (_client_error("404", "GetItem", ""), Unreachable, 5),
    (_client_error("ResourceNotFoundException", "GetModelInvocationJob"), NotFound, 6),
    (_client_error("404", "HeadObject", "Not Found"), NotFound, 6),
    (_client_error("NoSuchBucket", "ListObjectsV2"), NotFound, 6),
    (_client_error("ValidationException"), BadInput, 7),
])
def test_explained(exc: BaseException, kind: type[CaaError], code: int) -> None:
    err = explain(exc, URL)
    assert isinstance(err, kind)
    assert err.exit_code == code
    assert "\n" not in err.line()


def test_unreachable_names_the_endpoint() -> None:
    err = explain(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/"), None)
    assert err is not None and "http://127.0.0.1:9/" in err.line()


def test_aiohttp_connector_error_by_class_name() -> None:
    class ClientConnectionError(Exception):  # aiohttp's hierarchy, by name
        pass

    class ClientConnectorError(ClientConnectionError):
        pass

    assert isinstance(explain(ClientConnectorError("refused"), URL), Unreachable)


def test_the_emulator_launchers_error() -> None:
    from deploy.local.emulator import EmulatorError as LaunchError

    err = explain(LaunchError("port 4566 on 127.0.0.1 is in use by pid 1 (x)"))
    assert isinstance(err, EmulatorError) and err.exit_code == 9


def test_wrapped_in_groups_gathers_and_causes() -> None:
    async def fail(exc: BaseException) -> None:
        raise exc

    async def group() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fail(_client_error("ResourceNotFoundException")))
            tg.create_task(fail(_client_error("ResourceNotFoundException", "Scan")))

    with pytest.raises(BaseExceptionGroup) as caught:
        asyncio.run(group())
    assert isinstance(explain(caught.value), NotSetUp)
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [NoCredentialsError()])])
    assert isinstance(explain(nested), NoCredentials)
    try:
        try:
            raise EndpointConnectionError(endpoint_url=URL)
        except EndpointConnectionError as inner:
            raise RuntimeError("publishing failed") from inner
    except RuntimeError as outer:
        assert isinstance(explain(outer), Unreachable)


def test_tenacity_retry_error() -> None:
    import tenacity

    @tenacity.retry(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    def call() -> None:
        raise _client_error("ResourceNotFoundException")

    with pytest.raises(tenacity.RetryError) as caught:
        call()
    assert isinstance(explain(caught.value), NotSetUp)


def test_bugs_stay_bugs() -> None:
    assert explain(KeyError("x")) is None
    assert explain(_client_error("InternalServerError")) is None
    mixed = ExceptionGroup("g", [NoCredentialsError(), ValueError("bug")])
    assert explain(mixed) is None  # a bug among them keeps its traceback


def test_a_busy_consumer_group_is_one_line_with_its_own_code() -> None:
    """A second ``caa consume`` of the same group printed a traceback of GroupBusy."""
    from consumers.sources.lease import GroupBusy, LeaseLost

    for exc in (GroupBusy("consumer group 'g' is held by another live worker; stop it"),
                LeaseLost("lease of 'g' lost")):
        err = explain(exc, URL)
        assert isinstance(err, Busy) and err.exit_code == 10
        assert err.line() == str(exc)


@pytest.mark.parametrize("exc", [IsADirectoryError(21, "Is a directory", "/tmp/out"),
                                 PermissionError(13, "Permission denied", "/root/x.html"),
                                 FileNotFoundError(2, "No such file or directory", "/no/x")])
def test_a_file_that_cannot_be_read_or_written_is_one_line(exc: OSError) -> None:
    """`caa report --out DIR` printed the IsADirectoryError traceback."""
    err = explain(exc, URL)
    assert isinstance(err, BadInput) and err.exit_code == 7
    assert err.line().startswith(f"{exc.filename}: {exc.strerror}")
    assert explain(ConnectionRefusedError(111, "Connection refused"), URL) is not None

