"""``caa kcl properties|run``: the KCL MultiLangDaemon for our stream (see deploy.kcl).

``properties`` prints the daemon's properties for the current settings; ``run`` writes them
to the state directory and runs the daemon in the foreground (Ctrl-C or SIGTERM stops it
gracefully: each processor checkpoints what it applied). Local endpoints (the emulator,
``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_KINESIS`` / ``_DYNAMODB``) are passed on to the
Java KCL, whose metrics then stay off (no CloudWatch there).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated, Literal

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.settings import Settings


def _local(endpoint: str) -> str | None:
    return None if endpoint.endswith(".amazonaws.com") or ".amazonaws.com." in endpoint \
        else endpoint


def render(settings: Settings, application_name: str | None, retrieval_mode: str,
           initial_position: str, aws: Aws | None = None) -> str:
    """The daemon's properties; ``application_name`` (the lease table) defaults to the
    consumer group."""
    from deploy import kcl

    aws = aws or Aws(settings, quiet=True)
    kinesis = _local(aws.client("kinesis").meta.endpoint_url)
    dynamodb = _local(aws.client("dynamodb").meta.endpoint_url)
    return kcl.properties(settings.stream_name, settings.region, kcl.KclOptions(
        application_name or settings.consumer_group, retrieval_mode=retrieval_mode,
        initial_position=initial_position, kinesis_endpoint=kinesis,
        dynamodb_endpoint=dynamodb,
        metrics_level="NONE" if kinesis or dynamodb else "DETAILED"))


def properties(settings: Settings, application_name: str | None, retrieval_mode: str,
               initial_position: str, aws: Aws | None = None) -> int:
    """``caa kcl properties``: print them."""
    print(render(settings, application_name, retrieval_mode, initial_position, aws), end="")
    return 0


def run(settings: Settings, application_name: str | None, retrieval_mode: str,
        initial_position: str, aws: Aws | None = None) -> int:
    """``caa kcl run``: write them to the state directory and run the daemon in the
    foreground; its exit code (130 on Ctrl-C)."""
    from deploy import kcl

    text = render(settings, application_name, retrieval_mode, initial_position, aws)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / "kcl.properties"
    path.write_text(text)
    print(f"KCL MultiLangDaemon with {path}", file=sys.stderr)
    try:
        return subprocess.call(kcl.command(path))
    except KeyboardInterrupt:
        return 130


kcl_app = typer.Typer(help="The KCL MultiLangDaemon for our stream (kclpy-ext).",
                      no_args_is_help=True)
ApplicationName = Annotated[str | None, typer.Option(
    help="The KCL application, which names its lease table (default: the consumer group, "
         "CAA_CONSUMER_GROUP).")]
RetrievalMode = Annotated[Literal["POLLING", "FANOUT"], typer.Option(
    help="POLLING: GetRecords; FANOUT: enhanced fan-out (SubscribeToShard).")]
InitialPosition = Annotated[Literal["TRIM_HORIZON", "LATEST"], typer.Option(
    help="Where a shard without a checkpoint starts: its oldest record or new ones only.")]


@kcl_app.command("properties", help="Print the daemon's properties for the current settings.")
def _properties(ctx: typer.Context, application_name: ApplicationName = None,
                retrieval_mode: RetrievalMode = "POLLING",
                initial_position: InitialPosition = "TRIM_HORIZON") -> int:
    inv = current(ctx)
    return properties(inv.settings, application_name, retrieval_mode, initial_position,
                      inv.aws(quiet=True))


@kcl_app.command("run", help="Write the properties to the state directory and run the daemon "
                             "in the foreground (Ctrl-C or SIGTERM stops it after each "
                             "processor checkpoints).")
def _run(ctx: typer.Context, application_name: ApplicationName = None,
         retrieval_mode: RetrievalMode = "POLLING",
         initial_position: InitialPosition = "TRIM_HORIZON") -> int:
    inv = current(ctx)
    return run(inv.settings, application_name, retrieval_mode, initial_position,
               inv.aws(quiet=True))


def register(app: typer.Typer) -> None:
    app.add_typer(kcl_app, name="kcl", rich_help_panel=output.LOCAL)
