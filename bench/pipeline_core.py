"""The pure core's CPU and wall time per event, for ``bench/pipeline.py`` and ``bench/e2e.py``.

The measurement is ``bench/core_cpu.py``'s child with the applier's GC policy (``freeze``,
:class:`consumers.gc_policy.GcPolicy` after each batch, as
:meth:`consumers.applier.BatchApplier.apply` runs it) and a second clock: each measurement
is a fresh child process (``--child STREAM MODEL``) that builds the records of ``STREAM``,
then replays them with :func:`core_golden.replay` (``decode_batch`` + ``process_batch`` in
batches of 1,000, the states carried over in a dict holding every customer, the segment
model learning, the ``MODEL`` forecaster with its prior) and reports, around the replay
only, both

* ``cpu_s``: the process's CPU time (``time.process_time``, user + system, the GC policy's
  collections included): what the core costs, whatever else the machine runs;
* ``wall_s``: the elapsed time (``time.perf_counter``): what it took here, which on a loaded
  machine includes the time the process waited for a core.

``STREAM`` is ``cdnow`` or ``synthetic`` (:data:`core_golden.STREAMS`), or
``e2e:CUSTOMERS:DAYS:EVENTS``: the first ``EVENTS`` of
:func:`producers.datasets.synthetic.generate` (``CUSTOMERS`` over ``DAYS`` days, seed 7),
the events ``bench/e2e.py`` publishes.

:func:`interleaved` runs the children repeat by repeat, every stream and model, so a change
of the machine's load hits all alike; :func:`summarise` gives per stream and model the
median and range (min-max) of the repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

FIGURES = ("cpu_us_per_event", "wall_us_per_event", "events_per_cpu_s", "events_per_wall_s")


def child(stream: str, model: str) -> dict[str, Any]:
    """``bench/core_cpu.py``'s measurement with the applier's GC policy."""
    from core_cpu import child as measure

    return measure(stream, model, "freeze")


def run_child(stream: str, model: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", stream, model],
                         check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def interleaved(streams: Sequence[str], models: Sequence[str], repeats: int,
                say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every (stream, model) once per repeat, each in a fresh child process."""
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        for stream in streams:
            for model in models:
                r = run_child(stream, model) | {"repeat": rep}
                runs.append(r)
                if say is not None:
                    say(f"  core repeat {rep + 1}: {stream:<18}{model:<11}"
                        f"{r['cpu_us_per_event']:7.1f} us CPU/event, "
                        f"{r['wall_us_per_event']:7.1f} us wall/event")
    return runs


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (stream, model), in first-seen order: events, repeats and, for each figure of
    :data:`FIGURES`, ``{"median", "min", "max"}`` over the repeats."""
    keys = list(dict.fromkeys((r["stream"], r["model"]) for r in runs))
    out = []
    for stream, model in keys:
        rs = [r for r in runs if (r["stream"], r["model"]) == (stream, model)]
        row: dict[str, Any] = {"stream": stream, "model": model, "events": rs[0]["events"],
                               "repeats": len(rs)}
        for f in FIGURES:
            xs = [r[f] for r in rs]
            row[f] = {"median": round(statistics.median(xs), 1), "min": round(min(xs), 1),
                      "max": round(max(xs), 1)}
        out.append(row)
    return out


def _mr(fig: dict[str, float], fmt: str) -> str:
    return f"{fig['median']:{fmt}} ({fig['min']:{fmt}}-{fig['max']:{fmt}})"


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per stream and model: CPU and wall time per event, events per CPU second
    and per wall second; each the median (min-max) of the repeats."""
    print(f"{'stream':<19}{'model':<11}{'events':>8}{'reps':>5}"
          f"{'us CPU/event':>24}{'us wall/event':>24}{'events/CPU-s':>24}{'events/s wall':>24}")
    for r in rows:
        print(f"{r['stream'][:18]:<19}{r['model']:<11}{r['events']:>8,}{r['repeats']:>5}"
              f"{_mr(r['cpu_us_per_event'], '.0f'):>24}{_mr(r['wall_us_per_event'], '.0f'):>24}"
              f"{_mr(r['events_per_cpu_s'], ',.0f'):>24}{_mr(r['events_per_wall_s'], ',.0f'):>24}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", nargs=2, metavar=("STREAM", "MODEL"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streams", default="cdnow,synthetic")
    ap.add_argument("--models", default="pareto_nbd,bgnbd")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    runs = interleaved(args.streams.split(","), args.models.split(","), args.repeats,
                       say=lambda s: print(s, file=sys.stderr, flush=True))
    print_table(summarise(runs))


if __name__ == "__main__":
    main()
