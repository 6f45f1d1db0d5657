"""The one error tree for what a user can get wrong or meet, each a line and an exit code.

Every expected failure of a ``caa`` command is a :class:`CaaError`: the command line prints
``caa: <message>`` (one line, to stderr) and exits with the class's ``exit_code``;
``--debug`` prints the traceback instead. Anything else is a bug and keeps its traceback.

Exit codes (distinct per kind, so scripts can tell them apart):

====  =====================  ==========================================================
code  class                  meaning
====  =====================  ==========================================================
1     (the work failed)      the command ran but what it did was not a success
2     (usage)                bad flag or value (click's own usage error)
3     :class:`NotSetUp`      a table or the stream does not exist: run ``caa setup``
4     :class:`NoCredentials` no AWS credentials were found
5     :class:`Unreachable`   the endpoint does not answer (the endpoint is named)
6     :class:`NotFound`      no such customer / job / item
7     :class:`BadInput`      an argument the service or our checks refused
8     :class:`NoTarget`      no AWS target chosen: refusing to fall back to a real account
9     :class:`EmulatorError` the local emulator could not be started or is not ours
10    :class:`Busy`          another live worker holds the consumer group (or took it)
====  =====================  ==========================================================

:func:`explain` turns the botocore, aiobotocore and aiohttp exceptions behind these into the
tree, looking through exception groups (``asyncio.TaskGroup``), tenacity's ``RetryError``
and ``raise ... from``. Unreachable endpoints are reported quickly because
:mod:`caa.aws` gives a connection 5 s and retries a connection failure once until the
endpoint has answered.

>>> explain(RuntimeError("x")) is None
True
>>> e = NotFound("customer 'c9' has no prediction yet")
>>> e.exit_code, e.line()
(6, "customer 'c9' has no prediction yet")
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["BadInput", "Busy", "CaaError", "EmulatorError", "NoCredentials", "NoTarget", "NotFound",
           "NotSetUp", "Unreachable", "explain"]


class CaaError(Exception):
    """An expected failure, shown to the user as one line; ``exit_code`` per subclass."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The one line printed for this error (message, then the hint, if any)."""
        return f"{self.message}: {self.hint}" if self.hint else self.message


class NotSetUp(CaaError):
    exit_code = 3


class NoCredentials(CaaError):
    exit_code = 4


class Unreachable(CaaError):
    exit_code = 5


class NotFound(CaaError):
    exit_code = 6


class BadInput(CaaError):
    exit_code = 7


class NoTarget(CaaError):
    exit_code = 8


class EmulatorError(CaaError):
    exit_code = 9


class Busy(CaaError):
    exit_code = 10


#: botocore / aiobotocore / aiohttp / SSO classes (matched by name anywhere in the class's
#: MRO, so subclasses count and nothing here imports the libraries)
_NO_CREDENTIALS = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "NoRegionError",
    "UnauthorizedSSOTokenError", "SSOTokenLoadError", "TokenRetrievalError", "SSOError",
    "CredentialRetrievalError", "InvalidConfigError"})
_UNREACHABLE = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError",
    "ClientConnectorError", "ClientConnectionError", "ServerDisconnectedError",
    "ServerTimeoutError", "ConnectionRefusedError", "ReadTimeoutError",
    "ConnectionClosedError"})
_REFUSED_CREDENTIALS = frozenset({
    "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException",
    "ExpiredToken", "InvalidSignatureException", "SignatureDoesNotMatch",
    "AccessDeniedException", "AccessDenied", "AuthFailure"})
_ENDPOINT_HINT = ("check AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>: an http:// or https:// "
                  "URL with a host")
#: "not found" codes that are about an item or job, not about missing setup
_ITEM_OPERATIONS = frozenset({"GetModelInvocationJob", "StopModelInvocationJob"})


def _names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _error(exc: BaseException) -> tuple[str | None, str]:
    """(code, message) of a botocore ``ClientError``; (None, str(exc)) for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = error.get("Code")
        return (str(code) if code else None), str(error.get("Message") or exc)
    return None, str(exc)


def _causes(exc: BaseException) -> list[BaseException]:
    """What ``exc`` wraps: the members of an exception group, tenacity's last attempt, the
    explicit ``raise ... from`` cause."""
    if isinstance(exc, BaseExceptionGroup):
        return list(exc.exceptions)
    last = getattr(exc, "last_attempt", None)  # tenacity.RetryError
    if last is not None and callable(getattr(last, "exception", None)):
        inner = last.exception()
        if isinstance(inner, BaseException):
            return [inner]
    return [exc.__cause__] if exc.__cause__ is not None else []


def explain(exc: BaseException, endpoint: str | None = None) -> CaaError | None:
    """The :class:`CaaError` an exception stands for, or None when it is not an expected one.

    ``endpoint`` (the URL in use, None for AWS's own) is named in the line where it helps.
    Wrappers are looked through: an ``ExceptionGroup`` (``asyncio.TaskGroup``) is explained
    when every member is (cancellations aside), by its first member; a tenacity
    ``RetryError`` by its last attempt; ``raise X from Y`` by Y when X itself is not
    expected.
    """
    own = _explain_one(exc, endpoint)
    if own is not None:
        return own
    if isinstance(exc, BaseExceptionGroup):
        members = [e for e in exc.exceptions if not _names(e) & {"CancelledError"}]
        found = [explain(e, endpoint) for e in members]
        if found and all(f is not None for f in found):
            return found[0]
        return None
    for inner in _causes(exc):
        if inner is not exc:
            return explain(inner, endpoint)
    return None


def _explain_one(exc: BaseException, endpoint: str | None) -> CaaError | None:
    if isinstance(exc, CaaError):
        return exc
    where = endpoint or "AWS"
    names = _names(exc)
    if names & _NO_CREDENTIALS:
        return NoCredentials(f"no usable AWS credentials for {where} ({exc})",
                             "set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                             "or start the local emulator with `caa emulator start`")
    if names & _UNREACHABLE:
        url = getattr(exc, "kwargs", {}).get("endpoint_url") or where
        what = ("did not answer in time" if "ReadTimeoutError" in names
                else "closed the connection" if "ConnectionClosedError" in names
                else None)
        hint = ("check the network and AWS_REGION" if endpoint is None else
                "is the emulator or server there running? (`caa emulator status` for the "
                "local emulator; AWS_ENDPOINT_URL chooses another)")
        return Unreachable(f"{url} {what}" if what else f"cannot reach {url}", hint)
    if "EmulatorError" in names:  # deploy.local.emulator's, which cannot import this module
        return EmulatorError(str(exc))
    if isinstance(exc, OSError) and exc.filename and exc.strerror and not names & _UNREACHABLE:
        # a file we were told to read or write: a directory, a missing folder, no permission
        return BadInput(f"{exc.filename}: {exc.strerror}",
                        "give a path to a file that can be read or written")
    if "OtherStream" in names:  # consumers.stores.checkpoints': a group of another stream
        return BadInput(str(exc))
    if "GroupBusy" in names:  # consumers.sources.lease's (LeaseLost too)
        return Busy(str(exc))  # its message says what to do
    # the settings check AWS_ENDPOINT_URL and the region; botocore reads the per-service
    # endpoints (AWS_ENDPOINT_URL_<SERVICE>) and the shared config itself
    if isinstance(exc, ValueError) and str(exc).startswith("Invalid endpoint:"):
        return BadInput(f"bad endpoint URL ({exc})", _ENDPOINT_HINT)
    if "HTTPClientError" in names:
        return Unreachable(f"cannot call {where}: {exc}", _ENDPOINT_HINT)
    if "InvalidRegionError" in names:
        return BadInput(str(exc), "check AWS_REGION, or the region of AWS_PROFILE's config")
    code, message = _error(exc)
    operation = getattr(exc, "operation_name", None)
    if code in {"404", "403"} and str(operation).startswith("Head"):  # S3 HEADs have no body
        code = {"404": "NoSuchKey", "403": "AccessDenied"}[code]
    if code in {"NoSuchKey", "NoSuchBucket"} or (
            code == "ResourceNotFoundException" and operation in _ITEM_OPERATIONS):
        return NotFound(f"{where}: {message}")
    if code == "ResourceNotFoundException":
        return NotSetUp(f"the stream or a table does not exist at {where} "
                        f"({operation or 'call'}: {message})", "run `caa setup` first")
    if code in {"ValidationException", "InvalidArgumentException"}:
        return BadInput(f"refused by {where}: {message}")
    if code is not None and code.isdigit():  # an HTTP status and no AWS error: not AWS
        return Unreachable(f"{where} answered HTTP {code} to {operation or 'a call'}, not as "
                           "an AWS service does", "is the endpoint an AWS API (or the local "
                           "emulator: `caa emulator status`)?")
    if code in _REFUSED_CREDENTIALS:
        return NoCredentials(f"{where} refused the credentials ({code})",
                             "check AWS_PROFILE or the access keys in use")
    return None
