"""``caa emulator start|stop|status``: the local AWS emulator (moto server, see
deploy.local.emulator)."""

from __future__ import annotations

import typer
from rich.console import Console

from caa.cli import output
from caa.cli.context import current
from caa.settings import Settings

console = Console(stderr=False)


def start(settings: Settings) -> int:
    """Start the emulator (or find it running). A taken port: a free one is used and named,
    unless CAA_EMULATOR_PORT chose the port (then :class:`~caa.errors.EmulatorError`)."""
    from caa.errors import EmulatorError
    from deploy.local import emulator

    try:
        emu, started = emulator.start(settings.emulator_file, settings.emulator_host,
                                      settings.emulator_port,
                                      strict="emulator_port" in settings.model_fields_set)
    except emulator.EmulatorError as exc:
        raise EmulatorError(f"the emulator did not start: {exc}") from exc
    console.print(f"emulator {'started' if started else 'already running'} at "
                  f"{emu.endpoint} (pid {emu.pid})", markup=False, highlight=False, soft_wrap=True)
    return 0


def stop(settings: Settings) -> int:
    """Stop the recorded emulator if it is alive and ours; a stale record is removed."""
    from deploy.local import emulator

    if settings.emulator_file.exists():
        console.print("stopping the emulator (its data, kept in memory, is discarded) ...",
                      markup=False, highlight=False)
    console.print("emulator stopped" if emulator.stop(settings.emulator_file)
                  else "no emulator was running")
    return 0


def status(settings: Settings) -> int:
    """0 when the recorded emulator is running (alive, ours, answering), else 1; says whether
    something else holds the port."""
    from deploy.local import emulator

    found = emulator.status(settings.emulator_file, settings.emulator_host,
                            settings.emulator_port)
    console.print(found.line(settings.emulator_file), markup=False, highlight=False,
                  soft_wrap=True)
    return 0 if found.state == "running" else 1


# the declarations of `caa emulator start|stop|status`
emulator_app = typer.Typer(
    help="The local AWS emulator (moto server; its state is under .caa/).", no_args_is_help=True)


@emulator_app.command("start", help="Start the emulator on CAA_EMULATOR_HOST:CAA_EMULATOR_PORT "
                                    "(127.0.0.1:4566), or find it running.")
def _start(ctx: typer.Context) -> int:
    return start(current(ctx).settings)


@emulator_app.command("stop", help="Stop the recorded emulator.")
def _stop(ctx: typer.Context) -> int:
    return stop(current(ctx).settings)


@emulator_app.command("status",
                      help="Whether the recorded emulator runs (exit 0) or not (exit 1).")
def _status(ctx: typer.Context) -> int:
    return status(current(ctx).settings)


def register(app: typer.Typer) -> None:
    app.add_typer(emulator_app, name="emulator", rich_help_panel=output.LOCAL)
