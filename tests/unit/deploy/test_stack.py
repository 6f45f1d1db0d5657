"""`make deploy`: the plan it prints, and the deployment itself on the emulator's CloudFormation
(moto's server, the one the integration tests use; never a real account)."""

from __future__ import annotations

import uuid
import zipfile
from pathlib import Path

import boto3
import pytest

from deploy import stack
from deploy.packaging import catalogue


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A stand-in for build/lambda: a tiny zip per artifact (the real one is 49 MB)."""
    for artifact in catalogue.ARTIFACTS:
        with zipfile.ZipFile(tmp_path / artifact.zip_name, "w") as zf:
            zf.writestr("caa/entry/lambda_stream.py", "def handler(event, context=None):\n"
                                                      "    return {}\n")
    return tmp_path


def test_the_key_follows_the_content(out: Path) -> None:
    path = out / catalogue.CONSUMER.zip_name
    first = stack.content_key(path)
    assert first.startswith("caa-consumer-") and first.endswith(".zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("extra.py", "")
    assert stack.content_key(path) != first


def test_missing_artifacts_send_you_to_make_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make package"):
        stack.uploads(tmp_path)


@pytest.mark.integration
def test_it_prints_the_plan_and_deploys_only_when_confirmed(
        aws_env: str, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"caa-t{uuid.uuid4().hex[:6]}"
    prefix = name[4:] + "-"
    session = boto3.Session(region_name="eu-central-1")
    # the secrets exist before the stack (SecureString parameters, passed by name)
    for secret in ("api-keys", "pseudonym-key"):
        session.client("ssm").put_parameter(Name=f"/{name}/{secret}", Type="SecureString",
                                            Value=uuid.uuid4().hex * 2)
    argv = ["--stack", name, "--out", str(out), "--param", f"Prefix={prefix}",
            "--param", "StreamMode=PROVISIONED", "--param", "ShardCount=1",
            "--param", f"ApiKeysParameter=/{name}/api-keys",
            "--param", f"PseudonymKeyParameter=/{name}/pseudonym-key"]

    # not confirmed (no --yes, stdin is no terminal): the plan, and nothing created
    assert stack.main(argv, session=session) == 1
    printed = capsys.readouterr().out
    assert f"create stack '{name}' on endpoint {aws_env}" in printed
    assert f"s3://{name}-artifacts-123456789012-eu-central-1/ (bucket created first)" in printed
    assert "consumer: caa-consumer.zip -> caa-consumer-" in printed
    for line in (f"AWS::Kinesis::Stream             PurchaseStream  {prefix}purchases",
                 f"AWS::Lambda::Function            ConsumerFunction  {prefix}consumer"
                 "  [if WithFunction]",
                 "AWS::IAM::Role                   ConsumerRole  (generated)"):
        assert line in printed
    assert "resources (50 of 50)" in printed
    cf = session.client("cloudformation")
    assert not [s for s in cf.list_stacks()["StackSummaries"] if s["StackName"] == name]

    # confirmed: bucket, upload, stack
    assert stack.main([*argv, "--yes"], session=session) == 0
    printed = capsys.readouterr().out
    assert f"deploy: {name} CREATE_COMPLETE" in printed
    assert f"StreamName: {prefix}purchases" in printed
    fn = session.client("lambda").get_function(FunctionName=f"{prefix}consumer")
    assert fn["Configuration"]["Handler"] == "caa.entry.lambda_stream.handler"
    api = session.client("lambda").get_function(FunctionName=f"{prefix}api")["Configuration"]
    assert api["Handler"] == "caa.entry.api_lambda.handler"
    # both functions name the same pseudonym key; no secret value is in their environment
    env = api["Environment"]["Variables"]
    assert env["CAA_PSEUDONYM_KEY_PARAMETER"] == f"/{name}/pseudonym-key"
    assert fn["Configuration"]["Environment"]["Variables"][
        "CAA_PSEUDONYM_KEY_PARAMETER"] == env["CAA_PSEUDONYM_KEY_PARAMETER"]
    assert env["CAA_API_KEYS_PARAMETER"] == f"/{name}/api-keys"
    assert not {"CAA_API_KEYS", "CAA_PSEUDONYM_KEY"} & set(env)
    params = {p["ParameterKey"]: p["ParameterValue"]
              for p in cf.describe_stacks(StackName=name)["Stacks"][0]["Parameters"]}
    key = stack.content_key(out / catalogue.CONSUMER.zip_name)
    assert params["CodeKey"] == key
    session.client("s3").head_object(Bucket=params["CodeBucket"], Key=key)

    # again: an update of the existing stack, the bucket reused
    assert stack.main([*argv, "--yes", "--param", "DeployFunction=false"], session=session) == 0
    printed = capsys.readouterr().out
    assert f"update stack '{name}'" in printed and "bucket created first" not in printed
    assert "ConsumerFunction  " in printed and "(skipped: condition false)" in printed


def test_no_region_is_refused(monkeypatch: pytest.MonkeyPatch, out: Path,
                              tmp_path: Path) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert stack.main(["--stack", "x", "--out", str(out)]) == 2
