"""Secrets from SSM Parameter Store and Secrets Manager (caa/secrets.py), read from moto's
server over HTTP with the same boto3 clients production uses (only the endpoint differs)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from caa import secrets, wiring
from caa.cli import main as cli
from caa.errors import BadInput, NoCredentials, NotFound
from caa.settings import Settings

KEY = "pseudonym-key-0123456789abcdef-0123456789"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    secrets.clear_cache()
    yield
    secrets.clear_cache()


@pytest.fixture
def names(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An SSM SecureString and a Secrets Manager secret of this test's own on the emulator."""
    for var in ("CAA_API_KEYS", "CAA_PSEUDONYM_KEY", "CAA_API_KEYS_PARAMETER",
                "CAA_PSEUDONYM_KEY_PARAMETER"):
        monkeypatch.delenv(var, raising=False)
    run = uuid.uuid4().hex[:8]
    ssm = boto3.client("ssm", region_name="eu-central-1")
    sm = boto3.client("secretsmanager", region_name="eu-central-1")
    ssm.put_parameter(Name=f"/caa-{run}/api-keys", Type="SecureString",
                      Value=json.dumps({"orders": "k-orders", "shop": "k-shop"}))
    ssm.put_parameter(Name=f"/caa-{run}/pseudonym-key", Type="SecureString", Value=KEY)
    arn = sm.create_secret(Name=f"caa-{run}-pseudonym-key", SecretString=KEY)["ARN"]
    sm.create_secret(Name=f"caa-{run}-api-keys", SecretString="k1, k2\nk3")
    return {"ssm_keys": f"/caa-{run}/api-keys", "ssm_key": f"/caa-{run}/pseudonym-key",
            "sm_key_arn": arn, "sm_keys": f"secretsmanager:caa-{run}-api-keys", "run": run}


@pytest.mark.integration
def test_ssm_secure_strings_fill_the_settings(names: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAA_API_KEYS", "plain-local-key")  # a reference wins over it
    monkeypatch.setenv("CAA_API_KEYS_PARAMETER", names["ssm_keys"])
    monkeypatch.setenv("CAA_PSEUDONYM_KEY_PARAMETER", names["ssm_key"])
    s = secrets.resolve(Settings())
    assert [k.get_secret_value() for k in s.api_keys] == ["k-orders", "k-shop"]
    assert s.pseudonym_key is not None and s.pseudonym_key.get_secret_value() == KEY
    assert s.api_keys_parameter is None and s.pseudonym_key_parameter is None  # resolved
    assert secrets.resolve(s) is s  # nothing left to read
    assert KEY not in repr(s) and "k-shop" not in repr(s)


@pytest.mark.integration
def test_secrets_manager_by_arn_and_by_name(names: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAA_API_KEYS_PARAMETER", names["sm_keys"])
    monkeypatch.setenv("CAA_PSEUDONYM_KEY_PARAMETER", names["sm_key_arn"])
    s = secrets.resolve(Settings())
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2", "k3"]
    assert s.pseudonym_key is not None and s.pseudonym_key.get_secret_value() == KEY


@pytest.mark.integration
def test_the_key_is_read_once_per_process_and_the_wiring_uses_it(
        names: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAA_PSEUDONYM_KEY_PARAMETER", names["ssm_key"])
    s = Settings()
    assert wiring.pseudonym_key(s) == KEY.encode()  # not the random key of the state dir
    boto3.client("ssm", region_name="eu-central-1").delete_parameter(Name=names["ssm_key"])
    assert wiring.pseudonym_key(s) == KEY.encode()  # cached: no second call
    secrets.clear_cache()
    with pytest.raises(NotFound, match="CAA_PSEUDONYM_KEY_PARAMETER"):
        wiring.pseudonym_key(s)


@pytest.mark.integration
@pytest.mark.parametrize("which", ["ssm", "secretsmanager"])
def test_a_missing_secret_is_one_line(names: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                      which: str) -> None:
    ref = "/caa-none/api-keys" if which == "ssm" else "secretsmanager:caa-none-api-keys"
    monkeypatch.setenv("CAA_API_KEYS_PARAMETER", ref)
    with pytest.raises(NotFound) as err:
        secrets.resolve(Settings())
    line = err.value.line()
    assert line.startswith("CAA_API_KEYS_PARAMETER: the ")
    assert "caa-none" in line and "does not exist" in line and "\n" not in line


@pytest.mark.integration
def test_the_command_line_prints_it_as_one_line(names: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CAA_API_KEYS_PARAMETER", "/caa-none/api-keys")
    assert cli.main(["serve", "--port", "1"]) == NotFound.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("caa: CAA_API_KEYS_PARAMETER: the SSM parameter "
                                               "'/caa-none/api-keys' does not exist")


@pytest.mark.integration
def test_bad_values_are_refused(names: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    ssm = boto3.client("ssm", region_name="eu-central-1")
    run = names["run"]
    ssm.put_parameter(Name=f"/caa-{run}/short", Type="SecureString", Value="too-short")
    ssm.put_parameter(Name=f"/caa-{run}/blank", Type="SecureString", Value=" , ,")
    ssm.put_parameter(Name=f"/caa-{run}/json", Type="SecureString", Value='{"a": 1}')
    monkeypatch.setenv("CAA_PSEUDONYM_KEY_PARAMETER", f"/caa-{run}/short")
    with pytest.raises(BadInput, match="shorter than 32"):
        secrets.resolve(Settings())
    monkeypatch.delenv("CAA_PSEUDONYM_KEY_PARAMETER")
    for name, message in (("blank", "holds no API key"), ("json", "does not hold API keys")):
        monkeypatch.setenv("CAA_API_KEYS_PARAMETER", f"/caa-{run}/{name}")
        with pytest.raises(BadInput, match=message):
            secrets.resolve(Settings())


def test_a_refusal_names_the_permission() -> None:
    """What AWS answers a role without the grant (moto's server does not enforce IAM)."""
    denied = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}},
                         "GetParameter")
    found = secrets._refused(denied, "CAA_PSEUDONYM_KEY_PARAMETER", "ssm", "/caa/k", "AWS")
    assert isinstance(found, NoCredentials)
    assert found.line() == ("CAA_PSEUDONYM_KEY_PARAMETER: the SSM parameter '/caa/k' cannot be "
                            "read at AWS (AccessDeniedException): the role or user needs "
                            "ssm:GetParameter (and kms:Decrypt with a customer managed key) "
                            "on it")


def test_references() -> None:
    assert secrets.parse("ssm:caa-keys") == ("ssm", "caa-keys")
    arn = "arn:aws:ssm:eu-central-1:123456789012:parameter/caa/prod/api-keys"
    assert secrets.parse(arn) == ("ssm", arn)
    with pytest.raises(BadInput, match="not the ARN"):
        secrets.parse("arn:aws:s3:::bucket")
    assert secrets.parse_api_keys('["a", " b ", ""]') == ["a", "b"]
    with pytest.raises(ValueError, match="string"):
        secrets.parse_api_keys("[1]")


def test_without_references_nothing_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CAA_API_KEYS_PARAMETER", "CAA_PSEUDONYM_KEY_PARAMETER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CAA_API_KEYS", "local")
    s = Settings()
    assert secrets.resolve(s) is s
    assert [k.get_secret_value() for k in secrets.api_keys(s)] == ["local"]
