"""CPU per event of the pure core, with and without the applier's GC policy (issue 17).

Each measurement is a fresh child process (``--child``) that builds the records of one
stream of ``bench/core_golden.py`` (the full CDNOW log, time-ordered; the ~20k-event
synthetic stream with refunds and cancellations), then replays them through
``decode_batch`` + ``process_batch`` in batches of 1,000 as the applier does (the states
carried over in a dict: a state cache holding every customer, as the local worker's does
with its default size; the segment model learning; the given purchase model with its
prior), and reports the process CPU time of the replay per event (``time.process_time``,
the GC policy's own collections included), its peak RSS (``VmHWM`` of
``/proc/self/status``, and ``ru_maxrss``: both include the records, built first) and the
collector's figures.

``gc`` is ``cpython`` (its own collections, as before issue 17) or ``freeze``
(:class:`consumers.gc_policy.GcPolicy` after each batch, as
:meth:`consumers.applier.BatchApplier.apply` runs it). The runs are interleaved (repeat by
repeat, every stream, model and mode), so a change of the machine's load hits all alike;
printed: the median and the range (min-max) of the repeats.

    .venv/bin/python bench/core_cpu.py [--repeats 3] [--streams cdnow,synthetic]
        [--models pareto_nbd,bgnbd]

Writes out/bench-core-cpu.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("cpython", "freeze")


def records_of(stream: str) -> list[Any]:
    """The records of ``stream``: a name of :data:`core_golden.STREAMS`, or
    ``e2e:CUSTOMERS:DAYS:EVENTS`` (the first ``EVENTS`` of
    :func:`producers.datasets.synthetic.generate`, seed 7: what ``bench/e2e.py`` publishes)."""
    from core_golden import STREAMS, _records

    if stream.startswith("e2e:"):
        from producers.datasets.synthetic import generate

        customers, days, events = (int(x) for x in stream.split(":")[1:])
        return _records(list(generate(customers=customers, days=days, seed=7)[:events]))
    return STREAMS[stream]()


def child(stream: str, model: str, mode: str) -> dict[str, Any]:
    """One replay of ``stream`` (see :func:`records_of`) with the ``model`` forecaster and
    the GC ``mode``: its CPU and wall time, peak RSS and the collector's figures."""
    from core_golden import replay

    from consumers.gc_policy import GcPolicy

    records = records_of(stream)
    policy = GcPolicy(enabled=mode == "freeze")
    gc.collect()
    wall0, started = time.perf_counter(), time.process_time()
    batches = sum(1 for _ in replay(records, model, after_batch=policy.after_batch))
    cpu, wall = time.process_time() - started, time.perf_counter() - wall0
    n = len(records)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if ":" in line)
    return {
        "stream": stream, "model": model, "gc": mode, "events": n,
        "batches": batches, "cpu_s": cpu, "wall_s": wall, "us_per_event": cpu / n * 1e6,
        "cpu_us_per_event": cpu / n * 1e6, "wall_us_per_event": wall / n * 1e6,
        "events_per_cpu_s": n / cpu, "events_per_wall_s": n / wall,
        "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "frozen": gc.get_freeze_count(), "sweeps": policy.sweeps,
        "gen2_collections": gc.get_stats()[2]["collections"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streams", default="cdnow,synthetic")
    ap.add_argument("--models", default="pareto_nbd,bgnbd")
    ap.add_argument("--child", nargs=3, metavar=("STREAM", "MODEL", "GC"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for stream in args.streams.split(","):
            for model in args.models.split(","):
                for mode in MODES:
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", stream, model, mode],
                        check=True, capture_output=True, text=True).stdout
                    runs.append(json.loads(out.strip().splitlines()[-1]) | {"repeat": rep})
                    r = runs[-1]
                    print(f"  repeat {rep + 1}: {stream:<10}{model:<11}{mode:<8}"
                          f"{r['us_per_event']:7.1f} us/event  peak {r['peak_rss_mib']:6.1f} MiB",
                          file=sys.stderr, flush=True)
    print(f"{'stream':<10}{'model':<11}{'gc':<8}{'us/event (median, range)':>30}"
          f"{'events/s':>10}{'speed-up':>10}{'peak RSS MiB':>14}{'gen-2 GCs':>11}"
          f"{'sweeps':>8}")
    for stream in args.streams.split(","):
        for model in args.models.split(","):
            base = 0.0
            for mode in MODES:
                rs = [r for r in runs
                      if (r["stream"], r["model"], r["gc"]) == (stream, model, mode)]
                us = [r["us_per_event"] for r in rs]
                med = statistics.median(us)
                base = base or med
                print(f"{stream:<10}{model:<11}{mode:<8}"
                      f"{f'{med:.1f} ({min(us):.1f}-{max(us):.1f})':>30}{1e6 / med:>10,.0f}"
                      f"{base / med:>9.2f}x"
                      f"{statistics.median(r['peak_rss_mib'] for r in rs):>14.1f}"
                      f"{rs[0]['gen2_collections']:>11}{rs[0]['sweeps']:>8}")
    folder = Path("out")
    folder.mkdir(exist_ok=True)
    (folder / "bench-core-cpu.json").write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
