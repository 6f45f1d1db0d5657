"""``caa kcl properties|run``: the KCL MultiLangDaemon for our stream (see deploy.kcl).

``properties`` prints the daemon's properties for the current settings; ``run`` writes them
to the state directory and runs the daemon in the foreground (Ctrl-C or SIGTERM stops it
gracefully: each processor checkpoints what it applied). Local endpoints (the emulator,
``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_KINESIS`` / ``_DYNAMODB``) are passed on to the
Java KCL, whose metrics then stay off (no CloudWatch there).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from caa.aws import Aws
from caa.settings import Settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("kcl", help="the KCL MultiLangDaemon for our stream (kclpy-ext)")
    k.add_argument("action", choices=["properties", "run"])
    k.add_argument("--application-name", help="lease table name (default: consumer group)")
    k.add_argument("--retrieval-mode", choices=["POLLING", "FANOUT"], default="POLLING")
    k.add_argument("--initial-position", choices=["TRIM_HORIZON", "LATEST"],
                   default="TRIM_HORIZON")


def _local(endpoint: str) -> str | None:
    return None if endpoint.endswith(".amazonaws.com") or ".amazonaws.com." in endpoint \
        else endpoint


def render(settings: Settings, args: argparse.Namespace) -> str:
    from deploy import kcl

    aws = Aws(settings, quiet=True)
    kinesis = _local(aws.client("kinesis").meta.endpoint_url)
    dynamodb = _local(aws.client("dynamodb").meta.endpoint_url)
    return kcl.properties(settings.stream_name, settings.region, kcl.KclOptions(
        args.application_name or settings.consumer_group, retrieval_mode=args.retrieval_mode,
        initial_position=args.initial_position, kinesis_endpoint=kinesis,
        dynamodb_endpoint=dynamodb,
        metrics_level="NONE" if kinesis or dynamodb else "DETAILED"))


def cmd_kcl(settings: Settings, args: argparse.Namespace) -> int:
    from deploy import kcl

    text = render(settings, args)
    if args.action == "properties":
        print(text, end="")
        return 0
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / "kcl.properties"
    path.write_text(text)
    print(f"KCL MultiLangDaemon with {path}", file=sys.stderr)
    try:
        return subprocess.call(kcl.command(path))
    except KeyboardInterrupt:
        return 130
