"""`make deploy STACK=name`: the template and the built artifacts onto an AWS account.

    python -m deploy.stack --stack NAME [--bucket B] [--param Key=Value ...] [--yes]

First it prints what it will do, touching nothing but read-only calls (STS
GetCallerIdentity, DescribeStacks, HeadBucket): the account and region (or the endpoint when
``AWS_ENDPOINT_URL`` is set), create or update, the bucket and keys the artifacts go to with
their sizes, and every resource of the template with its name and condition. Then, only with
``--yes`` (``CONFIRM=1``) or a ``y`` typed at the prompt, it creates the bucket if missing,
uploads each zip under a content-addressed key (so an update always takes the new code),
creates or updates the stack (``CAPABILITY_IAM``) and waits for it, printing its outputs.
Credentials, region and endpoint are boto3's usual ones (``AWS_PROFILE``, ``AWS_REGION``,
``AWS_ENDPOINT_URL``); ``caa``'s settings are not involved.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.packaging import catalogue
from deploy.packaging import template as cfn

MB = 1_000_000
_DONE = ("CREATE_COMPLETE", "UPDATE_COMPLETE")


@dataclass(frozen=True)
class Upload:
    artifact: str
    path: Path
    key: str
    size: int


@dataclass(frozen=True)
class Plan:
    stack: str
    target: str
    region: str
    exists: bool
    bucket: str
    bucket_exists: bool
    uploads: list[Upload]
    parameters: dict[str, str]
    #: (logical id, type, name, condition, created)
    resources: list[tuple[str, str, str, str, bool]]


def content_key(path: Path) -> str:
    """``caa-consumer-<sha256 prefix>.zip``: a new key whenever the code changes."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{path.stem}-{digest}.zip"


def uploads(out: Path) -> list[Upload]:
    found = []
    for artifact in catalogue.ARTIFACTS:
        path = out / artifact.zip_name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make package` first")
        found.append(Upload(artifact.name, path, content_key(path), path.stat().st_size))
    return found


def plan(session: Any, stack: str, template_path: Path, out: Path, bucket: str | None,
         overrides: dict[str, str]) -> Plan:
    """What a deployment would do; only read-only calls."""
    endpoint = session.client("sts").meta.endpoint_url
    region = session.region_name or "us-east-1"
    who = session.client("sts").get_caller_identity()
    account = str(who["Account"])
    target = f"AWS account {account}, region {region} ({who['Arn']})"
    if "amazonaws.com" not in endpoint:
        target = f"endpoint {endpoint} (account {account}, region {region})"
    cf = session.client("cloudformation")
    try:
        status = cf.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
        exists = status != "REVIEW_IN_PROGRESS"
    except cf.exceptions.ClientError as exc:
        if "does not exist" not in str(exc):
            raise
        exists = False
    bucket = bucket or f"{stack}-artifacts-{account}-{region}".lower()
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
        bucket_exists = True
    except s3.exceptions.ClientError:
        bucket_exists = False
    ups = uploads(out)
    tpl = cfn.load(template_path)
    params = {**cfn.parameter_defaults(tpl), **overrides, "CodeBucket": bucket}
    for up in ups:
        artifact = next(a for a in catalogue.ARTIFACTS if a.name == up.artifact)
        params[artifact.code_key_parameter] = up.key
    params = {k: v for k, v in params.items() if k in (tpl.get("Parameters") or {})}
    conds = cfn.conditions(tpl, params)
    rows = []
    for res in cfn.resources(tpl):
        made = res.condition is None or conds.get(res.condition) is not False
        name = cfn.render(res.name, params) if res.name is not None else "(generated)"
        rows.append((res.logical_id, res.type, name, res.condition or "", made))
    return Plan(stack, target, region, exists, bucket, bucket_exists, ups, params, rows)


def show(p: Plan, say: Callable[[str], None] = print) -> None:
    say(f"deploy: {'update' if p.exists else 'create'} stack {p.stack!r} on {p.target}")
    say(f"  artifacts to s3://{p.bucket}/"
        + ("" if p.bucket_exists else " (bucket created first)"))
    for up in p.uploads:
        say(f"    {up.artifact}: {up.path.name} -> {up.key} ({up.size / MB:.1f} MB)")
    say("  parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(p.parameters.items())))
    made = [r for r in p.resources if r[4]]
    say(f"  resources ({len(made)} of {len(p.resources)}"
        + (", existing ones updated in place or replaced as CloudFormation decides):"
           if p.exists else "):"))
    width = max((len(r[1]) for r in p.resources), default=0)
    for logical_id, type_, name, condition, created in p.resources:
        extra = f"  [if {condition}]" if condition else ""
        mark = "+" if created else "-"
        say(f"    {mark} {type_:<{width}}  {logical_id}  {name}{extra}"
            + ("" if created else "  (skipped: condition false)"))


def confirmed(yes: bool, ask: Callable[[str], str] = input) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        print("deploy: not confirmed: run with CONFIRM=1 (or --yes) to deploy", file=sys.stderr)
        return False
    return ask("deploy this? [y/N] ").strip().lower() in ("y", "yes")


def apply(session: Any, p: Plan, template_path: Path, timeout_s: float = 1800,
          say: Callable[[str], None] = print) -> dict[str, str]:
    """Bucket, uploads, stack; waits for the stack and returns its outputs."""
    s3 = session.client("s3")
    if not p.bucket_exists:
        kw: dict[str, Any] = {"Bucket": p.bucket}
        if p.region != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": p.region}
        s3.create_bucket(**kw)
        say(f"deploy: created bucket {p.bucket}")
    for up in p.uploads:
        s3.upload_file(str(up.path), p.bucket, up.key)
        say(f"deploy: uploaded s3://{p.bucket}/{up.key}")
    cf = session.client("cloudformation")
    args = {"StackName": p.stack, "TemplateBody": template_path.read_text(),
            "Capabilities": ["CAPABILITY_IAM"],
            "Parameters": [{"ParameterKey": k, "ParameterValue": v}
                           for k, v in sorted(p.parameters.items())]}
    if p.exists:
        try:
            cf.update_stack(**args)
        except cf.exceptions.ClientError as exc:
            if "No updates are to be performed" not in str(exc):
                raise
            say("deploy: no changes")
    else:
        cf.create_stack(**args)
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cf.describe_stacks(StackName=p.stack)["Stacks"][0]
        status = stack["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {p.stack} still {status} after {timeout_s:.0f} s")
        time.sleep(1.0)
    if status not in _DONE:
        raise RuntimeError(f"stack {p.stack}: {status} {stack.get('StackStatusReason', '')}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    say(f"deploy: {p.stack} {status}")
    for key, value in sorted(outputs.items()):
        say(f"  {key}: {value}")
    return outputs


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"not Key=Value: {text!r}")
    return key, value


def main(argv: list[str] | None = None, session: Any = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stack", required=True)
    ap.add_argument("--bucket", help="artifact bucket (default: STACK-artifacts-ACCOUNT-REGION)")
    ap.add_argument("--param", type=_param, action="append", default=[],
                    help="template parameter Key=Value (repeatable)")
    ap.add_argument("--out", type=Path, default=catalogue.OUT)
    ap.add_argument("--template", type=Path, default=catalogue.TEMPLATE)
    ap.add_argument("--region", help="default: AWS_REGION, AWS_DEFAULT_REGION, the profile's")
    ap.add_argument("--yes", action="store_true", help="deploy without asking (CONFIRM=1)")
    args = ap.parse_args(argv)
    if session is None:
        import boto3

        session = boto3.Session(region_name=args.region or os.environ.get("AWS_REGION") or None)
    if not session.region_name:
        print("deploy: no region: set AWS_REGION or REGION=...", file=sys.stderr)
        return 2
    p = plan(session, args.stack, args.template, args.out, args.bucket, dict(args.param))
    show(p)
    if not confirmed(args.yes):
        return 1
    apply(session, p, args.template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
