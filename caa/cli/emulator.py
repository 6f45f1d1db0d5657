"""``caa emulator start|stop|status``: the local AWS emulator (moto server, see
deploy.local.emulator)."""

from __future__ import annotations

from rich.console import Console

from caa.settings import Settings

console = Console(stderr=False)


def start(settings: Settings) -> int:
    from deploy.local import emulator

    emu, started = emulator.start(settings.emulator_file, settings.emulator_host,
                                  settings.emulator_port)
    console.print(f"emulator {'started' if started else 'already running'} at "
                  f"{emu.endpoint} (pid {emu.pid})")
    return 0


def stop(settings: Settings) -> int:
    from deploy.local import emulator

    console.print("emulator stopped" if emulator.stop(settings.emulator_file)
                  else "no emulator was running")
    return 0


def status(settings: Settings) -> int:
    """0 when the recorded emulator is running, else 1."""
    from deploy.local import emulator

    found = emulator.recorded(settings.emulator_file)
    console.print(f"running at {found.endpoint} (pid {found.pid})" if found else "not running")
    return 0 if found else 1
