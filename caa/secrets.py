"""The API keys and the pseudonym key from SSM Parameter Store or Secrets Manager.

In production neither is in the template, an environment variable or the artifact: the
function's environment names where they are kept (``CAA_API_KEYS_PARAMETER``,
``CAA_PSEUDONYM_KEY_PARAMETER``) and they are read here, once per process (a Lambda
environment: while it is warm), with the same boto3 clients as everything else
(:class:`caa.aws.Aws`: only the endpoint differs against the local emulator). The plain
``CAA_API_KEYS`` / ``CAA_PSEUDONYM_KEY`` stay for local use; a reference, when set, is read
and the plain value is not used.

A reference is one of

- an SSM parameter: its name (``/caa/prod/api-keys``), its ARN, or ``ssm:NAME``; read with
  ``GetParameter`` and ``WithDecryption`` (a ``SecureString``);
- a Secrets Manager secret: its ARN (what the template passes), or ``secretsmanager:NAME``;
  read with ``GetSecretValue`` (its ``SecretString``).

The API keys' value is a JSON list, a JSON object (its values are the keys; the names are
labels, e.g. one per downstream service) or keys separated by commas or new lines; the
pseudonym key is the value itself, at least 32 characters. A missing, refused, empty or
malformed secret is a :class:`caa.errors.CaaError` naming the variable and the reference:
one line on the command line, the exception's message in a Lambda function's log.

>>> parse("/caa/prod/api-keys"), parse("secretsmanager:caa-api-keys")
(('ssm', '/caa/prod/api-keys'), ('secretsmanager', 'caa-api-keys'))
>>> parse("arn:aws:secretsmanager:eu-central-1:123456789012:secret:caa-key-AbCdEf")[0]
'secretsmanager'
>>> parse_api_keys('{"orders": "k1", "shop": "k2"}'), parse_api_keys("k1, k2\\nk3")
(['k1', 'k2'], ['k1', 'k2', 'k3'])
"""

from __future__ import annotations

import threading
from typing import Any, Literal

from pydantic import SecretStr

from caa.aws import Aws
from caa.errors import BadInput, CaaError, NoCredentials, NotFound, explain
from caa.settings import Settings, parse_api_keys

__all__ = ["api_keys", "clear_cache", "parse", "parse_api_keys", "pseudonym_key", "read",
           "resolve"]

Service = Literal["ssm", "secretsmanager"]
_KIND = {"ssm": "SSM parameter", "secretsmanager": "Secrets Manager secret"}
_MISSING = frozenset({"ParameterNotFound", "ParameterVersionNotFound",
                      "ResourceNotFoundException"})
#: refused: no permission, or the KMS key cannot decrypt it for us
_REFUSED = frozenset({"AccessDeniedException", "AccessDenied", "DecryptionFailure",
                      "InvalidKeyId", "KMSAccessDeniedException", "KMSDisabledException"})
#: the shortest pseudonym key accepted (as for the generated one in the state directory)
MIN_KEY_CHARS = 32

_cache: dict[tuple[str, str, str | None], str] = {}
_lock = threading.Lock()


def parse(reference: str) -> tuple[Service, str]:
    """(service, the id to ask it for) of a reference; :class:`BadInput` for an ARN of
    another service."""
    ref = reference.strip()
    if ref.startswith("arn:"):
        parts = ref.split(":", 5)
        if len(parts) == 6 and parts[2] == "ssm" and parts[5].startswith("parameter/"):
            return "ssm", ref
        if len(parts) == 6 and parts[2] == "secretsmanager":
            return "secretsmanager", ref
        raise BadInput(f"{ref!r} is not the ARN of an SSM parameter or a Secrets Manager "
                       "secret")
    prefix, sep, rest = ref.partition(":")
    if sep and prefix in ("ssm", "secretsmanager") and rest:
        return ("ssm" if prefix == "ssm" else "secretsmanager"), rest
    return "ssm", ref


def _where(aws: Aws) -> str:
    return aws.endpoint_url or aws.settings.endpoint_url or f"AWS ({aws.settings.region})"


def _refused(exc: BaseException, variable: str, service: Service, ident: str,
             where: str) -> CaaError | None:
    response = getattr(exc, "response", None)
    error = (response.get("Error") or {}) if isinstance(response, dict) else {}
    code = str(error.get("Code") or "")
    what = f"{variable}: the {_KIND[service]} {ident!r}"
    if code in _MISSING or (service == "secretsmanager" and code == "InvalidRequestException"):
        # InvalidRequestException: the secret is scheduled for deletion
        return NotFound(f"{what} does not exist at {where} ({code})",
                        "create it, or point the variable at the right one")
    if code in _REFUSED:
        action = ("ssm:GetParameter (and kms:Decrypt with a customer managed key)"
                  if service == "ssm" else "secretsmanager:GetSecretValue")
        return NoCredentials(f"{what} cannot be read at {where} ({code})",
                             f"the role or user needs {action} on it")
    found = explain(exc, None if where.startswith("AWS") else where)
    if found is not None:
        return type(found)(f"{what}: {found.message}", found.hint)
    return None


def read(aws: Aws, reference: str, variable: str) -> str:
    """The value a reference names, read once per process (cached by reference, region and
    endpoint); ``variable`` is named in errors."""
    service, ident = parse(reference)
    key = (reference, aws.settings.region, aws.endpoint_url or aws.settings.endpoint_url)
    with _lock:
        if key in _cache:
            return _cache[key]
    where = _where(aws)
    try:
        client = aws.client(service)
        if service == "ssm":
            value: Any = client.get_parameter(Name=ident, WithDecryption=True)[
                "Parameter"]["Value"]
        else:
            value = client.get_secret_value(SecretId=ident).get("SecretString")
    except CaaError:
        raise
    except Exception as exc:
        found = _refused(exc, variable, service, ident, where)
        if found is None:
            raise
        raise found from exc
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{variable}: the {_KIND[service]} {ident!r} at {where} is empty "
                       "(or binary)", "put the value in as a string")
    with _lock:
        _cache[key] = value
    return value


def clear_cache() -> None:
    """Forget what was read (tests; a process reads each secret once otherwise)."""
    with _lock:
        _cache.clear()


def api_keys(settings: Settings, aws: Aws | None = None) -> list[SecretStr]:
    """``CAA_API_KEYS_PARAMETER``'s keys, or ``CAA_API_KEYS`` when no reference is set."""
    ref = settings.api_keys_parameter
    if ref is None:
        return list(settings.api_keys)
    variable = "CAA_API_KEYS_PARAMETER"
    text = read(aws or Aws(settings, quiet=True), ref, variable)
    try:
        keys = parse_api_keys(text)
    except ValueError as exc:
        raise BadInput(f"{variable}: {ref!r} does not hold API keys ({exc})",
                       "a JSON list, a JSON object of keys, or keys separated by commas"
                       ) from None
    if not keys:
        raise BadInput(f"{variable}: {ref!r} holds no API key")
    return [SecretStr(k) for k in keys]


def pseudonym_key(settings: Settings, aws: Aws | None = None) -> SecretStr | None:
    """``CAA_PSEUDONYM_KEY_PARAMETER``'s key, or ``CAA_PSEUDONYM_KEY`` (None: the random key
    in the state directory, :func:`caa.wiring.pseudonym_key`) when no reference is set."""
    ref = settings.pseudonym_key_parameter
    if ref is None:
        return settings.pseudonym_key
    variable = "CAA_PSEUDONYM_KEY_PARAMETER"
    key = read(aws or Aws(settings, quiet=True), ref, variable).strip()
    if len(key) < MIN_KEY_CHARS:
        raise BadInput(f"{variable}: {ref!r} holds a key shorter than {MIN_KEY_CHARS} "
                       "characters")
    return SecretStr(key)


def resolve(settings: Settings, aws: Aws | None = None) -> Settings:
    """``settings`` with the referenced secrets read into ``api_keys`` and ``pseudonym_key``
    and the references cleared (resolved); the same object when none is set. The entry
    points call it once, when they build their settings."""
    if settings.api_keys_parameter is None and settings.pseudonym_key_parameter is None:
        return settings
    clients = aws or Aws(settings, quiet=True)
    update: dict[str, Any] = {}
    if settings.api_keys_parameter is not None:
        update |= {"api_keys": api_keys(settings, clients), "api_keys_parameter": None}
    if settings.pseudonym_key_parameter is not None:
        update |= {"pseudonym_key": pseudonym_key(settings, clients),
                   "pseudonym_key_parameter": None}
    return settings.model_copy(update=update)
