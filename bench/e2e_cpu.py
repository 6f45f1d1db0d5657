"""Where an end-to-end drain's time goes: the client's CPU, the emulator's CPU, the rest.

:class:`Meter` takes, at :meth:`Meter.start` and :meth:`Meter.stop`, the wall clock
(``time.perf_counter``), this process's CPU time (``time.process_time``: user + system of
every thread of the consumer's process, i.e. the client; the emulator is another process)
and the emulator's CPU time (``utime + stime`` of ``/proc/<pid>/stat``, in clock ticks of
10 ms; the moto server process of :func:`deploy.local.emulator.launch`, all its threads).

:func:`limits` turns the three spans into per-event figures and shares of the wall time:

* ``client_share``: the client's CPU over the wall time (1.0: one core busy all along);
* ``emulator_share``: the emulator's, likewise;
* ``events_per_s``: events over the metered span (the caller's own events/s may use a
  slightly different span: it is printed by the caller, not by :func:`print_limits`);
* ``rest_share``: ``(wall - client CPU - emulator CPU) / wall``, floored at 0: time in
  which neither process ran (the poll loop's sleeps, waits for a core while other work
  runs on the machine, the loopback); 0 when the two overlapped (they can, on 2 cores);
* ``limited_by``: the largest of the three (``A ~ B`` when the second is within a fifth of
  the first).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (NaN when /proc cannot tell)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) * TICK_S  # fields 14 and 15 of stat(5)


@dataclass
class Meter:
    emulator_pid: int | None = None
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    emulator_cpu_s: float = float("nan")
    _t0: tuple[float, float, float] | None = None
    stopped: bool = False

    def _now(self) -> tuple[float, float, float]:
        emu = proc_cpu_s(self.emulator_pid) if self.emulator_pid else float("nan")
        return time.perf_counter(), time.process_time(), emu

    def start(self) -> None:
        self._t0, self.stopped = self._now(), False

    def stop(self) -> None:
        """Ends the span (the first call counts)."""
        if self.stopped or self._t0 is None:
            return
        t1 = self._now()
        self.wall_s, self.client_cpu_s, self.emulator_cpu_s = (b - a for a, b in
                                                               zip(self._t0, t1, strict=True))
        self.stopped = True

    def limits(self, events: int) -> dict[str, Any]:
        return limits(events, self.wall_s, self.client_cpu_s, self.emulator_cpu_s)


def limits(events: int, wall_s: float, client_cpu_s: float, emulator_cpu_s: float
           ) -> dict[str, Any]:
    emu = 0.0 if math.isnan(emulator_cpu_s) else emulator_cpu_s  # NaN: unknown
    shares = {"client CPU": client_cpu_s / wall_s, "emulator CPU": emu / wall_s,
              "rest (waits)": max(0.0, wall_s - client_cpu_s - emu) / wall_s}
    return {
        "events": events, "wall_s": round(wall_s, 3), "events_per_s": round(events / wall_s, 1),
        "client_cpu_s": round(client_cpu_s, 3), "emulator_cpu_s": round(emulator_cpu_s, 3),
        "client_cpu_us_per_event": round(client_cpu_s / events * 1e6, 1),
        "emulator_cpu_us_per_event": round(emulator_cpu_s / events * 1e6, 1),
        "client_share": round(shares["client CPU"], 3),
        "emulator_share": round(shares["emulator CPU"], 3),
        "rest_share": round(shares["rest (waits)"], 3),
        "limited_by": limited_by(shares),
    }


def limited_by(shares: dict[str, float]) -> str:
    """The largest share; ``A ~ B`` when the second is within a fifth of it."""
    (a, x), (b, y) = sorted(shares.items(), key=lambda kv: -kv[1])[:2]
    return f"{a} ~ {b}" if y >= 0.8 * x else a


ROWS = (("events", "events", ",.0f"), ("wall s (metered span)", "wall_s", ",.2f"),
        ("client CPU us/event", "client_cpu_us_per_event", ",.0f"),
        ("emulator CPU us/event", "emulator_cpu_us_per_event", ",.0f"),
        ("client CPU, share of wall", "client_share", ".0%"),
        ("emulator CPU, share of wall", "emulator_share", ".0%"),
        ("rest (waits), share of wall", "rest_share", ".0%"))


def print_limits(columns: dict[str, dict[str, Any]], width: int = 14) -> None:
    """A table: one column per run (name -> :func:`limits`), one row per figure."""
    width = max([width] + [len(c["limited_by"]) + 2 for c in columns.values()])
    print(f"{'drain: where the time goes':<32}" + "".join(f"{n:>{width}}" for n in columns))
    for label, key, fmt in ROWS:
        print(f"{label:<32}" + "".join(f"{c[key]:>{width}{fmt}}" for c in columns.values()))
    print(f"{'limited by':<32}" + "".join(f"{c['limited_by']:>{width}}"
                                          for c in columns.values()))
    print("(the client: this process, every thread; the emulator: the moto server process; "
          "the two can overlap on 2 cores, so the shares may add up to more than 100%)")
