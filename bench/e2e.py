"""End to end on the emulator: our consumer against a naive one; the pure core; peak RSS.

Run by ``make bench`` (``bench/pipeline.py`` runs it last) or alone:
``.venv/bin/python bench/e2e.py``. Prints a side-by-side table, a table of where each
drain's time goes, and writes ``out/bench.json``::

    {"ours":  {"events_per_s": .., "p50_ms": .., "p99_ms": ..,
               "client_cpu_us_per_event": .., "emulator_cpu_us_per_event": ..},
     "naive": {...the same keys...},
     "core_events_per_s": ..,
     "peak_rss_mb": {"10000": .., "100000": .., "1000000": ..}}

and everything behind those figures (settings, sample sizes, drain latencies, the CPU
meters, where the naive consumer's time goes, the core's runs, machine load) in
``out/bench-e2e.json``.

Setup. One moto server process (:func:`deploy.local.emulator.launch` on a free loopback port,
started here) serves every run; each run gets a fresh stream (``BENCH_SHARDS``, 4 shards)
and fresh tables. The events are the synthetic grocery stream
(:func:`producers.datasets.synthetic.generate`: ``BENCH_CUSTOMERS`` 2,000 customers over
``BENCH_DAYS`` 60 days, seed 7), the first ``BENCH_EVENTS`` (20,000) by time.

The consumers; both forecast with the settings' model (``CAA_FORECAST_MODEL``: Pareto/NBD
unless set).

* ours: the real :class:`consumers.sources.worker.Worker` (the
  :class:`~consumers.sources.poller.Poller` on GetRecords,
  :class:`~consumers.applier.BatchApplier`, the DynamoDB stores, the model
  registry) in this process on aiobotocore, with default settings and no refit;
* naive: ``bench/naive_consumer.py``: one thread per shard polling GetRecords concurrently
  (synchronous boto3); per event one GetItem of the customer's state, the event folded in,
  one PutItem of the state, one statistical analysis, one PutItem of the prediction. It
  writes prediction items of the same layout and forecast (its docstring says what it
  leaves out).

``events_per_s`` (throughput: draining a backlog). All of a run's events are published
first; then the consumer is started on the fresh stream (TRIM_HORIZON) and
``events_per_s = events / (t_last_ack - t_start)``: from the moment the consumer was started
to the moment the last event's prediction write was acknowledged. Ours drains all
``BENCH_EVENTS``. The naive consumer is an order of magnitude slower, so it drains a
subset: the whole history of every k-th customer, k chosen so that about
``BENCH_NAIVE_EVENTS`` (2,000) events remain, which keeps its per-event work (history
lengths, basket sizes) distributed as in the full stream; its events/s is measured on that
subset (the printout says how many events each consumer drained).

Where a drain's time goes (``bench/e2e_cpu.py``). From the consumer's start until its last
event was handled (ours: the end of the ``apply`` of the batch holding it; naive: its
prediction PutItem returned), a meter takes this process's CPU time (the client: ours on the
event loop, or the naive one's shard threads; nothing else runs here meanwhile) and the
moto server's (``/proc/<pid>/stat``). Printed: the CPU per event of each, their shares of
the wall time, the rest (time neither ran: poll sleeps, waits for a core) and which limits
the drain; ``client_cpu_us_per_event`` and ``emulator_cpu_us_per_event`` go to
``out/bench.json``. The naive consumer's thread-seconds per step (summed over its threads)
are printed too.

``p50_ms`` / ``p99_ms`` (latency at a steady offered load). A fresh stream; the consumer is
started, then a publisher thread puts ``BENCH_LATENCY_EVENTS`` (300) events (the naive
subset's, in time order) at a constant ``BENCH_RATE`` (10) events/s, one PutRecords every
100 ms; the same load for both consumers, chosen below the naive consumer's drain rate so
that neither should build a backlog (the printout flags it when one does). An event's
latency is ``t_ack - t_put``:

* ``t_put``: the record's ``ApproximateArrivalTimestamp``, set by the emulator when the
  PutRecords carrying it arrived (same host, same clock as the consumer);
* ``t_ack``: the wall-clock time at which the DynamoDB write of the prediction that reflects
  the event returned to the consumer: ours, the moment the applier's prediction writes for
  the event's batch returned (every BatchWriteItem of the batch's predictions acknowledged);
  naive, the moment its PutItem returned.

Percentiles are nearest-rank over all events of the run. The drain runs' latencies (mostly
time queued behind the backlog, so they grow with its size) are in the detail file only.

``core_events_per_s``: events per CPU second of the pure core on the same ``BENCH_EVENTS``
events, with the settings' forecast model: ``bench/pipeline_core.py``
(:func:`~consumers.core.decode_batch` + :func:`~consumers.core.process_batch` in batches of
1,000 on in-memory states, the segment model learning, the applier's GC policy), each of
``BENCH_CORE_REPEATS`` (3) runs a fresh process; the median (the range and the wall-clock
figures are printed and in the detail file).

``peak_rss_mb``: see ``bench/rss.py`` (``BENCH_RSS_SIZES``, ``BENCH_RSS_EVENTS``,
``BENCH_RSS_CACHE``).

Aim (issue 7): ours >= 10x the naive consumer's events/s; the measured ratio is printed
either way.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_cpu import Meter, print_limits
from naive_consumer import NaiveConsumer
from pipeline_core import interleaved, summarise
from rss import RssRun, env_int, measure, print_runs

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from consumers.applier import BatchApplier
from consumers.core import BatchResult, DecodedBatch, StreamRecord
from consumers.sources.worker import Worker
from deploy.local.emulator import launch
from models.events import PurchaseEvent
from models.prediction import Prediction
from producers.datasets.synthetic import generate
from producers.publisher import Publisher, PublishReport


@dataclass
class Sink:
    """Latencies (s) of acknowledged events and when the last one was acknowledged; stops
    ``meter`` when the ``expected``-th event is acknowledged (thread-safe: the naive
    consumer's shard threads add to it)."""

    latencies: list[float] = field(default_factory=list)
    last_ack: float = 0.0
    expected: int = 0
    meter: Meter | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, put_at: float, acked_at: float) -> None:
        with self.lock:
            self.latencies.append(acked_at - put_at)
            self.last_ack = max(self.last_ack, acked_at)
            if self.meter is not None and len(self.latencies) == self.expected:
                self.meter.stop()

    @property
    def n(self) -> int:
        return len(self.latencies)

    def pct_ms(self, p: float) -> float:
        xs = sorted(self.latencies)
        if not xs:
            return math.nan
        return round(1000 * xs[max(0, math.ceil(p * len(xs)) - 1)], 1)


class TimedApplier(BatchApplier):
    """The real applier (a copy of the worker's, every attribute); notes when each
    customer's prediction write was acknowledged, and after a batch, each applied record's
    latency goes to ``sink``.

    A shard's batches run one after the other and its customers are its own, so when
    ``apply`` returns, ``acks[customer]`` is the acknowledgement of this batch's write."""

    def __init__(self, base: BatchApplier, sink: Sink) -> None:
        super().__init__(base.customers, base.predictions, base.dead_letters, base.registry,
                         base.max_event_bytes)
        self.__dict__.update(base.__dict__)
        self.sink = sink
        self.acks: dict[str, float] = {}

    async def _write_predictions(self, result: BatchResult, decoded: DecodedBatch
                                 ) -> list[Prediction]:
        written = await super()._write_predictions(result, decoded)
        acked = time.time()
        for p in result.predictions:
            self.acks[p.customer_id] = acked
        return written

    async def apply(self, records: Sequence[StreamRecord]) -> BatchResult:
        result = await super().apply(records)
        for rec, outcome in zip(records, result.outcomes, strict=True):
            if outcome.status == "applied" and rec.arrived_at is not None:
                self.sink.add(rec.arrived_at.timestamp(), self.acks[rec.partition_key])
        return result


def timed_worker(settings: Settings, kinesis: Any, dynamodb: Any, sink: Sink) -> Worker:
    worker = wiring.worker(settings, kinesis, dynamodb)
    worker.applier = worker.poller.applier = TimedApplier(worker.applier, sink)
    return worker


class Bench:
    def __init__(self, endpoint: str, shards: int, emulator_pid: int | None = None) -> None:
        self.endpoint = endpoint
        self.shards = shards
        self.emulator_pid = emulator_pid

    def sink(self, expected: int, drain: bool) -> Sink:
        """A drain's sink meters the CPU from the consumer's start to the last ack."""
        return Sink(expected=expected, meter=Meter(self.emulator_pid) if drain else None)

    def fresh(self, tag: str) -> Settings:
        """A fresh stream and fresh tables."""
        run = f"bench-{tag}-{uuid.uuid4().hex[:6]}"
        settings = Settings(stream_name=run, table_prefix=f"{run}-", shard_count=self.shards,
                            refit_interval_s=0, analyzer="statistical")
        aws = Aws(settings, quiet=True)
        ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
        return settings

    @staticmethod
    def publish(settings: Settings, events: list[PurchaseEvent]) -> float:
        report = Publisher(Aws(settings, quiet=True).client("kinesis"),
                           settings.stream_name).publish(events)
        return report.records_per_s

    @staticmethod
    def pace(settings: Settings, events: list[PurchaseEvent], rate: float,
             tick: float = 0.1) -> float:
        """Put ``events`` at ``rate`` per second (one PutRecords per tick); the rate achieved."""
        pub = Publisher(Aws(settings, quiet=True).client("kinesis"), settings.stream_name)
        encoded = [(e, e.to_bytes()) for e in events]
        report = PublishReport()
        started = time.monotonic()
        sent = k = 0
        while sent < len(encoded):
            k += 1
            due = min(len(encoded), round(k * tick * rate))
            if due > sent:
                pub.put_batch(encoded[sent:due], report)
                sent = due
            time.sleep(max(0.0, started + k * tick - time.monotonic()))
        return len(encoded) / (time.monotonic() - started)

    # -- ours -----------------------------------------------------------------------------
    async def _ours(self, settings: Settings, expected: int,
                    paced: tuple[list[PurchaseEvent], float] | None,
                    timeout_s: float) -> tuple[Sink, float, dict[str, Any]]:
        sink = self.sink(expected, paced is None)
        extra: dict[str, Any] = {}
        async with Aws(settings, quiet=True).clients("kinesis", "dynamodb") as c:
            worker = timed_worker(settings, c["kinesis"], c["dynamodb"], sink)
            stop = asyncio.Event()
            started = time.time()
            if sink.meter is not None:
                sink.meter.start()
            run = asyncio.create_task(worker.run(until_idle=paced is None, stop=stop,
                                                 final_refit=False))
            if paced is not None:
                extra["offered_rate"] = await asyncio.to_thread(self.pace, settings, *paced)
            deadline = time.monotonic() + timeout_s
            while sink.n < expected and time.monotonic() < deadline and not run.done():
                await asyncio.sleep(0.05)
            stop.set()
            await run
            extra.update(batches=worker.applier.totals.batches,
                         state_cache_hits=worker.applier.cache.hits)
        if sink.n < expected:
            raise RuntimeError(f"ours: {sink.n} of {expected} predictions written")
        if sink.meter is not None:
            extra["limits"] = sink.meter.limits(expected)
        return sink, started, extra

    def ours(self, events: list[PurchaseEvent], paced_rate: float | None = None
             ) -> tuple[Sink, float, dict[str, Any]]:
        settings = self.fresh("ours")
        if paced_rate is None:
            self.publish(settings, events)
            return asyncio.run(self._ours(settings, len(events), None, 600))
        return asyncio.run(self._ours(settings, len(events), (events, paced_rate),
                                      len(events) / paced_rate + 60))

    # -- naive ----------------------------------------------------------------------------
    def naive(self, events: list[PurchaseEvent], paced_rate: float | None = None
              ) -> tuple[Sink, float, dict[str, Any]]:
        settings = self.fresh("naive")
        aws = Aws(settings, quiet=True)
        sink = self.sink(len(events), paced_rate is None)
        consumer = NaiveConsumer(
            aws.client("kinesis"), aws.client("dynamodb"), settings.stream_name,
            settings.table("customers"), settings.table("predictions"),
            poll_interval=settings.poll_interval_s,
            on_written=lambda rec, acked: sink.add(
                rec["ApproximateArrivalTimestamp"].timestamp(), acked),
            forecast_model=settings.forecast_model,
        )
        extra: dict[str, Any] = {}
        publisher = None
        if paced_rate is None:
            self.publish(settings, events)
            timeout = 3600.0
        else:
            def put() -> None:
                extra["offered_rate"] = self.pace(settings, events, paced_rate)
            publisher = threading.Thread(target=put, daemon=True)
            timeout = len(events) / paced_rate + 120
        started = time.time()
        if sink.meter is not None:
            sink.meter.start()
        if publisher is not None:
            publisher.start()
        consumer.run(len(events), timeout)
        if publisher is not None:
            publisher.join()
        if sink.n < len(events):
            raise RuntimeError(f"naive: {sink.n} of {len(events)} predictions written")
        extra["thread_seconds_by_step"] = {k: round(v, 2) for k, v in consumer.seconds.items()}
        if sink.meter is not None:
            extra["limits"] = sink.meter.limits(len(events))
        return sink, started, extra


def subset(events: list[PurchaseEvent], target: int) -> tuple[list[PurchaseEvent], int]:
    """Every k-th customer's whole history, about ``target`` events; (events, k)."""
    k = max(1, round(len(events) / target))
    ids = sorted({e.customer_id for e in events})[::k]
    keep = set(ids)
    return [e for e in events if e.customer_id in keep], k


def drain_figures(sink: Sink, started: float, events: int) -> dict[str, float]:
    seconds = sink.last_ack - started
    return {"events": events, "seconds": round(seconds, 2),
            "events_per_s": round(events / seconds, 1),
            "p50_ms": sink.pct_ms(0.5), "p99_ms": sink.pct_ms(0.99)}


def main() -> None:
    customers = env_int("BENCH_CUSTOMERS", 2000)
    n_events = env_int("BENCH_EVENTS", 20_000)
    naive_target = env_int("BENCH_NAIVE_EVENTS", 2000)
    rate = float(os.environ.get("BENCH_RATE", "10"))
    n_latency = env_int("BENCH_LATENCY_EVENTS", 300)
    shards = env_int("BENCH_SHARDS", 4)
    rss_sizes = [int(x) for x in
                 os.environ.get("BENCH_RSS_SIZES", "10000,100000,1000000").split(",")]
    rss_events = env_int("BENCH_RSS_EVENTS", 30_000)
    rss_cache = env_int("BENCH_RSS_CACHE", 10_000)
    load = {"start": os.getloadavg()}

    days = env_int("BENCH_DAYS", 60)
    events = generate(customers=customers, days=days, seed=7)[:n_events]
    naive_events, k = subset(events, naive_target)
    latency_events = naive_events[:n_latency]
    print(f"e2e: {len(events):,} synthetic events of {customers:,} customers, {shards} shards; "
          f"naive drains every {k}th customer ({len(naive_events):,} events); latency at "
          f"{rate:g} events/s offered, {len(latency_events):,} events", flush=True)
    detail: dict[str, Any] = {
        "settings": {"customers": customers, "days": days, "events": len(events),
                     "shards": shards,
                     "naive_events": len(naive_events), "naive_every_kth_customer": k,
                     "latency_rate": rate, "latency_events": len(latency_events),
                     "rss_sizes": rss_sizes, "rss_events": rss_events,
                     "rss_cache_size": rss_cache},
    }
    forecast_model = Settings(stream_name="bench").forecast_model
    repeats = env_int("BENCH_CORE_REPEATS", 3)
    print(f"pure core: {len(events):,} events, {forecast_model}, {repeats} repeats", flush=True)
    core_runs = interleaved([f"e2e:{customers}:{days}:{n_events}"], [forecast_model], repeats)
    core = summarise(core_runs)[0]
    detail["core"] = core | {"runs": core_runs}
    detail["core_events_per_s"] = round(core["events_per_cpu_s"]["median"])

    with tempfile.TemporaryDirectory() as tmp:
        emu = launch("127.0.0.1", log=Path(tmp) / "moto.log")
        try:
            os.environ.update(AWS_ENDPOINT_URL=emu.endpoint, CAA_STATE_DIR=tmp)
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            bench = Bench(emu.endpoint, shards, emu.pid)
            runs: dict[str, dict[str, Any]] = {}
            for name, run in (("ours", bench.ours), ("naive", bench.naive)):
                drained = events if name == "ours" else naive_events
                print(f"{name}: draining {len(drained):,} events", flush=True)
                sink, started, extra = run(drained)
                runs[name] = {"drain": {**drain_figures(sink, started, len(drained)), **extra}}
                print(f"{name}: {len(latency_events):,} events at {rate:g}/s", flush=True)
                sink, _, extra = run(latency_events, rate)
                runs[name]["latency"] = {"events": sink.n, "p50_ms": sink.pct_ms(0.5),
                                         "p90_ms": sink.pct_ms(0.9), "p99_ms": sink.pct_ms(0.99),
                                         "max_ms": sink.pct_ms(1.0), **extra}
            print(f"peak RSS: {rss_events:,} events from populations of "
                  f"{', '.join(f'{n:,}' for n in rss_sizes)}", flush=True)
            rss = measure(emu.endpoint, Path(tmp), rss_sizes, rss_events, rss_cache, shards)
        finally:
            emu.stop()
    load["end"] = os.getloadavg()
    detail.update(runs=runs, rss=[r.as_dict() for r in rss], load_average=load)
    report(runs, detail["core_events_per_s"], rss, detail)


def report(runs: dict[str, dict[str, Any]], core: float, rss: list[RssRun],
           detail: dict[str, Any]) -> None:
    figures = {
        name: {"events_per_s": runs[name]["drain"]["events_per_s"],
               "p50_ms": runs[name]["latency"]["p50_ms"],
               "p99_ms": runs[name]["latency"]["p99_ms"],
               "client_cpu_us_per_event": runs[name]["drain"]["limits"]["client_cpu_us_per_event"],
               "emulator_cpu_us_per_event":
                   runs[name]["drain"]["limits"]["emulator_cpu_us_per_event"]}
        for name in ("ours", "naive")
    }
    out: dict[str, Any] = {
        **figures, "core_events_per_s": core,
        "peak_rss_mb": {str(r.customers): r.peak_rss_mb for r in rss if r.customers},
    }
    ours, naive = runs["ours"], runs["naive"]
    ratio = ours["drain"]["events_per_s"] / naive["drain"]["events_per_s"]
    rate = detail["settings"]["latency_rate"]
    print()
    print(f"{'':<40}{'ours':>14}{'naive':>14}")
    rows: list[tuple[str, str, str]] = [
        ("events drained", f"{ours['drain']['events']:,}", f"{naive['drain']['events']:,}"),
        ("events/s (drain)", f"{ours['drain']['events_per_s']:,.0f}",
         f"{naive['drain']['events_per_s']:,.1f}"),
        (f"latency p50 ms (at {rate:g} events/s)", f"{ours['latency']['p50_ms']:,.0f}",
         f"{naive['latency']['p50_ms']:,.0f}"),
        (f"latency p99 ms (at {rate:g} events/s)", f"{ours['latency']['p99_ms']:,.0f}",
         f"{naive['latency']['p99_ms']:,.0f}"),
        ("latency p50 ms (drain, queueing)", f"{ours['drain']['p50_ms']:,.0f}",
         f"{naive['drain']['p50_ms']:,.0f}"),
    ]
    for label, a, b in rows:
        print(f"{label:<40}{a:>14}{b:>14}")
    print(f"throughput ratio ours/naive: {ratio:,.1f}x (aim >= 10x: "
          f"{'met' if ratio >= 10 else 'MISSED'})")
    for name in ("ours", "naive"):
        lat = runs[name]["latency"]
        if lat.get("offered_rate", rate) < 0.9 * rate or runs[name]["drain"]["events_per_s"] < rate:
            print(f"note: {name} did not keep up with {rate:g} events/s; its latency includes "
                  "a growing backlog")
    print()
    print_limits({name: runs[name]["drain"]["limits"] for name in ("ours", "naive")})
    print(f"naive thread-seconds by step (summed over its shard threads): "
          f"{naive['drain']['thread_seconds_by_step']}")
    c = detail["core"]
    print(f"pure core (decode_batch + process_batch, batches of 1,000, GC policy on; the "
          f"{c['events']:,} events drained by ours; {c['model']}; median (min-max) of "
          f"{c['repeats']}): {c['cpu_us_per_event']['median']:,.0f} "
          f"({c['cpu_us_per_event']['min']:,.0f}-{c['cpu_us_per_event']['max']:,.0f}) us CPU "
          f"per event = {core:,.0f} events per CPU second; wall "
          f"{c['events_per_wall_s']['median']:,.0f} events/s")
    print()
    print_runs(rss)
    print(f"load average (1, 5, 15 min) at start {detail['load_average']['start']}, "
          f"at end {detail['load_average']['end']}")
    out_dir = Path("out")
    out_dir.mkdir(exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(out, indent=2))
    (out_dir / "bench-e2e.json").write_text(json.dumps(detail, indent=2))
    print("wrote out/bench.json and out/bench-e2e.json")


if __name__ == "__main__":
    main()
