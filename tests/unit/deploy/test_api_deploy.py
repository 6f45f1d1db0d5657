"""The API deployable: its function, URL and role in deploy/template.yaml, no secret in plain
text anywhere in the template, and its artifact in the packaging catalogue."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

from deploy.packaging import build, catalogue

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "deploy" / "template.yaml"
#: names that would hold a secret's value
SECRETISH = re.compile(r"key|secret|password|token|credential", re.IGNORECASE)


def template() -> dict[str, Any]:
    tpl, problems = decode(str(TEMPLATE))
    assert not problems and tpl is not None
    return dict(tpl)


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def _functions(tpl: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: r["Properties"] for n, r in tpl["Resources"].items()
            if r["Type"] == "AWS::Lambda::Function"}


def test_no_secret_in_plain_text() -> None:
    tpl = template()
    params = tpl["Parameters"]
    secret_params = {"ApiKeysParameter", "PseudonymKeyParameter"}
    for name in secret_params:  # names of SecureString parameters, no default
        assert "Default" not in params[name], name
        assert params[name]["AllowedPattern"].startswith("^/"), name  # an SSM name
    for name, p in params.items():  # nothing else that looks like a secret has a default
        if SECRETISH.search(name) and name not in {"CodeKey", "ApiCodeKey"}:
            assert name in secret_params and "Default" not in p, name
    for name, props in _functions(tpl).items():
        env = props.get("Environment", {}).get("Variables", {})
        for var, value in env.items():
            if SECRETISH.search(var):  # only references: a parameter's name, never a value
                assert var.endswith("_PARAMETER"), (name, var)
                assert value in ({"Ref": "ApiKeysParameter"}, {"Ref": "PseudonymKeyParameter"})
            assert isinstance(value, dict) or not SECRETISH.search(str(value)), (name, var)
    # no resource property carries a literal secret
    for res in tpl["Resources"].values():
        for key in ("SecretString", "Value", "ZipFile"):
            assert key not in res.get("Properties", {}), res


#: functions that never build a prompt, so never pseudonymise (the scheduled refit keeps the
#: stored analyses and calls no model)
BUILDS_NO_PROMPT = {"RefitFunction"}


def test_every_function_that_pseudonymises_reads_the_same_key() -> None:
    fns = _functions(template())
    refs = {n: p["Environment"]["Variables"].get("CAA_PSEUDONYM_KEY_PARAMETER")
            for n, p in fns.items() if n not in BUILDS_NO_PROMPT}
    assert refs == {"ConsumerFunction": {"Ref": "PseudonymKeyParameter"},
                    "AnalyzerFunction": {"Ref": "PseudonymKeyParameter"},
                    "ApiFunction": {"Ref": "PseudonymKeyParameter"},
                    "BatchFunction": {"Ref": "PseudonymKeyParameter"}}
    assert fns["ApiFunction"]["Environment"]["Variables"]["CAA_API_KEYS_PARAMETER"] == {
        "Ref": "ApiKeysParameter"}


def _policy(tpl: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [st for p in tpl["Resources"][role]["Properties"]["Policies"]
            for st in p["PolicyDocument"]["Statement"]]


def _arn(param: str) -> dict[str, str]:
    return {"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:"
                       "parameter${" + param + "}"}


def test_each_role_reads_exactly_its_secrets() -> None:
    tpl = template()
    for role, params in (("ConsumerRole", ["PseudonymKeyParameter"]),
                         ("AnalyzerRole", ["PseudonymKeyParameter"]),
                         ("ApiRole", ["ApiKeysParameter", "PseudonymKeyParameter"]),
                         ("BatchRole", ["PseudonymKeyParameter"])):
        ssm = [st for st in _policy(tpl, role)
               if any(a.startswith(("ssm:", "secretsmanager:", "kms:"))
                      for a in _list(st["Action"]))]
        assert len(ssm) == 1, role
        assert _list(ssm[0]["Action"]) == ["ssm:GetParameter"]
        assert _list(ssm[0]["Resource"]) == [_arn(p) for p in params]


def test_the_api_role_reads_what_the_api_shows_and_writes_only_consent() -> None:
    stmts = _policy(template(), "ApiRole")
    actions = {a for st in stmts for a in _list(st["Action"])}
    assert actions == {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query",
                       "dynamodb:DescribeTable", "kinesis:PutRecord", "ssm:GetParameter",
                       "logs:CreateLogStream", "logs:PutLogEvents"}
    read = next(st for st in stmts if "dynamodb:GetItem" in _list(st["Action"]))
    assert {r["Fn::GetAtt"][0] for r in read["Resource"]} == {
        "CustomersTable", "PredictionsTable", "ModelsTable", "AnalysisHistoryTable"}
    put = next(st for st in stmts if "kinesis:PutRecord" in _list(st["Action"]))
    assert put["Resource"] == {"Fn::GetAtt": ["PurchaseStream", "Arn"]}


def test_the_api_function_is_behind_a_function_url() -> None:
    res = template()["Resources"]
    fn = res["ApiFunction"]["Properties"]
    assert fn["Handler"] == "caa.entry.api_lambda.handler"
    assert (fn["Runtime"], fn["Architectures"]) == ("python3.12", ["arm64"])
    assert fn["Role"] == {"Fn::GetAtt": ["ApiRole", "Arn"]}
    assert fn["Code"]["S3Key"] == {"Ref": "ApiCodeKey"}
    url = res["ApiUrl"]["Properties"]
    assert url["TargetFunctionArn"] == {"Fn::GetAtt": ["ApiFunction", "Arn"]}
    assert url["AuthType"] == "NONE"  # the app checks x-api-key itself
    grants = {r["Properties"]["Action"]: r["Properties"] for r in res.values()
              if r["Type"] == "AWS::Lambda::Permission"
              and r["Properties"]["FunctionName"] == {"Ref": "ApiFunction"}}
    assert grants["lambda:InvokeFunctionUrl"]["FunctionUrlAuthType"] == "NONE"
    assert grants["lambda:InvokeFunction"]["InvokedViaFunctionUrl"] is True


def test_the_api_artifact() -> None:
    api = catalogue.artifact_for("caa.entry.api_lambda.handler")
    assert api is catalogue.API and api.code_key_parameter == "ApiCodeKey"
    assert "caa/api" not in api.source_excluded and "caa/cli" in api.source_excluded
    assert {"uvicorn", "typer", "moto", "pandas"} <= set(api.forbidden)
    assert "fastapi" not in api.forbidden and "starlette" not in api.forbidden
    shared, own = build.pins(catalogue.REQUIREMENTS), build.pins(api.requirements)
    assert shared.items() <= own.items()  # the consumer's pins, unchanged
    assert {"fastapi", "starlette", "mangum", "anyio"} <= set(own) - set(shared)
    assert "uvicorn" not in own


def test_the_artifact_holds_no_secret_file(tmp_path: Path) -> None:
    build.add_source(ROOT, tmp_path, catalogue.API.packages, catalogue.API.source_excluded)
    files = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert "caa/entry/api_lambda.py" in files and "caa/api/app.py" in files
    assert not [f for f in files if f.endswith((".key", ".env", ".pem")) or "/.caa/" in f
                or f.startswith(("caa/cli/", "deploy/local/"))]


def test_the_api_handler_imports_no_server_or_local_tool() -> None:
    code = ("import sys, caa.entry.api_lambda; print(' '.join(sorted("
            "{m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    imported = set(done.stdout.split())
    assert {"fastapi", "mangum"} <= imported
    assert not imported & {"uvicorn", "pandas", "sklearn", "matplotlib", "moto",
                           "localstack_client", "typer", "pytest"}
