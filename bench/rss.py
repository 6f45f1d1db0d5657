"""Peak memory (RSS) of the real consumer process as the customer population grows.

What is measured. For each population size N (BENCH_RSS_SIZES, default 10,000, 100,000 and
1,000,000 customers): a fresh stream and fresh tables on the emulator, BENCH_RSS_EVENTS
(default 30,000) synthetic purchase events published, each by a customer drawn uniformly at
random from N (so the customers a run touches, and the misses and evictions of the state
cache, grow with N: about 9.5k, 26k and 30k distinct customers at the defaults), then the
real consumer, ``caa consume --until-idle --no-refit --json`` (:func:`caa.cli.main.main`, run
by this file's ``--child`` mode in a child process), run until the stream is drained. Its
peak RSS is the ``VmHWM`` of that child (``/proc/self/status``, read as it finishes: the
kernel's high-water mark of its resident set since exec; MiB = 2^20 bytes). Not
``ru_maxrss``: for a child the kernel carries the parent's resident set over fork and
exec into it, so it reads as the size of this (event-holding) parent; it is kept in the
detail file as ``ru_maxrss_mb``.

The run length is fixed, not the population: 1M customers would take hours to publish
through moto at a few thousand events/s. So the runs show whether anything in the consumer
grows with the population beyond its two bounds, the state cache (``CAA_STATE_CACHE_SIZE``
states) and the batch (``CAA_GET_RECORDS_LIMIT`` records per shard).

* The cache is set to BENCH_RSS_CACHE (default 10,000) for these runs, about the customers
  the smallest run touches, so it holds about as many states in all three runs (9.5k to
  10k; it evicts in the larger two), as it would in a long run; with the default size
  (200,000) a 30k-event run could never fill it. What the default size costs when full is
  estimated from the measured size of the states (``state_bytes``: tracemalloc of the same
  states built in memory) times 200,000, and printed beside the measurement.
* The events are all published before the consumer starts, so it reads full batches
  (``CAA_GET_RECORDS_LIMIT`` records, default 5,000, on every shard at once): the worst
  case for the batch bound. The distinct customers in a batch, whose states, loads and
  predictions the batch holds, grow with N until they reach the limit, so the peak may grow
  from the smallest population to the next and should then stay flat.

Not measured: the refit (``consumers.refit``) scans the whole customer table into memory,
so its peak grows with the table; ``--no-refit`` and ``CAA_REFIT_INTERVAL_S=0`` keep it out
of these runs.

Run alone: ``.venv/bin/python bench/rss.py`` (starts its own emulator); bench/e2e.py calls
:func:`measure` with its own.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from deploy.local.emulator import launch
from models.events import LineItem, PurchaseEvent
from models.state import CustomerState
from producers.datasets.synthetic import CATALOG, CHANNELS
from producers.publisher import Publisher

DEFAULT_CACHE = Settings.model_fields["state_cache_size"].default


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def population_events(customers: int, n: int, seed: int = 11) -> list[PurchaseEvent]:
    """``n`` orders over 90 days, each by one of ``customers`` shoppers drawn uniformly.

    A shopper's staples (3-9 catalogue products) and channel follow from their number, so
    a shopper who comes back buys from the same staples; an order is 1-4 of them.
    """
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    step = timedelta(days=90) / n
    events = []
    for i in range(n):
        c = rng.randrange(customers)
        own = random.Random(c)
        staples = own.sample(range(len(CATALOG)), own.randint(3, 9))
        channel = CHANNELS[c % len(CHANNELS)]
        basket = sorted(rng.sample(staples, rng.randint(1, min(4, len(staples)))))
        items = [LineItem(product_id=CATALOG[k][0], category=CATALOG[k][1],
                          quantity=rng.choice((1, 1, 2)), unit_price=Decimal(CATALOG[k][2]))
                 for k in basket]
        cid = f"r{c:07d}"
        events.append(PurchaseEvent(
            event_id=f"rss-{customers}-{i:07d}", order_id=f"rss-order-{customers}-{i:07d}",
            customer_id=cid, occurred_at=start + i * step, currency="EUR", items=items,
            total=sum((x.unit_price * x.quantity for x in items), Decimal("0")),
            channel=channel, consent=True,
        ))
    return events


def state_bytes(events: list[PurchaseEvent]) -> tuple[float, float]:
    """(mean bytes per state, mean purchases per state) of the states ``events`` build:
    what one entry of the state cache holds (tracemalloc, Python objects only)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    states: dict[str, CustomerState] = {}
    for e in events:
        s = states.get(e.customer_id)
        if s is None:
            s = states[e.customer_id] = CustomerState.new(e.customer_id)
        s.apply(e)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # the dict holding them is the test's, not the cache's (an OrderedDict entry is similar)
    return used / len(states), sum(s.purchases for s in states.values()) / len(states)


@dataclass
class RssRun:
    customers: int
    events: int
    distinct_customers: int
    cache_size: int
    get_records_limit: int
    peak_rss_mb: float
    ru_maxrss_mb: float
    consume_s: float
    events_per_s: float
    state_bytes: float
    purchases_per_state: float
    publish_s: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def vm_hwm_kib() -> int:
    """This process's peak resident set since it was exec'd (``VmHWM``, KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(peak_file: str) -> int:
    """The child: the real ``caa consume``, then its own peak RSS into ``peak_file``."""
    from caa.cli.main import main as cli

    rc = cli(["consume", "--until-idle", "--no-refit", "--json"])
    Path(peak_file).write_text(str(vm_hwm_kib()))
    return rc


def run_child(env: dict[str, str], log: Path) -> tuple[float, float, dict[str, Any]]:
    """Run the real consumer as a child until the stream is drained.

    Returns (its VmHWM in MiB, the ``ru_maxrss`` ``os.wait4`` reported in MiB, its summary).
    The first is the figure: ``ru_maxrss`` of a child also counts the resident set of the
    parent it was forked from (the kernel keeps the high-water mark across exec), so in a
    parent that holds the run's events it reads as the parent's size."""
    peak_file = log.with_name(f"peak-{uuid.uuid4().hex[:6]}")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(peak_file)]
    with log.open("ab") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"consumer child exited with {proc.returncode}; see {log}")
    hwm = int(peak_file.read_text())
    peak_file.unlink()
    return hwm / 1024, usage.ru_maxrss / 1024, json.loads(out)


def _fresh(tag: str, endpoint: str, shards: int) -> Settings:
    run = f"bench-{tag}-{uuid.uuid4().hex[:6]}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint)
    settings = Settings(stream_name=run, table_prefix=f"{run}-", shard_count=shards,
                        refit_interval_s=0)
    aws = Aws(settings, quiet=True)
    ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))
    return settings


def measure_one(endpoint: str, state_dir: Path, customers: int, n_events: int,
                cache_size: int, shards: int) -> RssRun:
    settings = _fresh(f"rss{customers}", endpoint, shards)
    events = population_events(customers, n_events) if n_events else []
    started = time.perf_counter()
    if events:
        Publisher(Aws(settings, quiet=True).client("kinesis"), settings.stream_name).publish(
            events)
    publish_s = time.perf_counter() - started
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "CAA_STREAM_NAME": settings.stream_name,
           "CAA_TABLE_PREFIX": settings.table_prefix, "CAA_SHARD_COUNT": str(shards),
           "CAA_STATE_CACHE_SIZE": str(cache_size), "CAA_REFIT_INTERVAL_S": "0",
           "CAA_ANALYZER": "statistical", "CAA_STATE_DIR": str(state_dir)}
    env.setdefault("AWS_ACCESS_KEY_ID", "bench")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    peak, ru_maxrss, summary = run_child(env, state_dir / "rss-consumer.log")
    if summary["applied"] != len(events):
        raise RuntimeError(f"consumer applied {summary['applied']} of {len(events)} events")
    per_state, purchases = state_bytes(events) if events else (0.0, 0.0)
    return RssRun(
        customers=customers, events=len(events),
        distinct_customers=len({e.customer_id for e in events}), cache_size=cache_size,
        get_records_limit=settings.get_records_limit, peak_rss_mb=round(peak, 1),
        ru_maxrss_mb=round(ru_maxrss, 1),
        consume_s=summary["consume_s"], events_per_s=summary["events_per_s"],
        state_bytes=round(per_state), purchases_per_state=round(purchases, 2),
        publish_s=round(publish_s, 1),
    )


def measure(endpoint: str, state_dir: Path, sizes: list[int], n_events: int,
            cache_size: int, shards: int = 4) -> list[RssRun]:
    """A baseline (empty stream, customers 0), then one run per population size."""
    return [measure_one(endpoint, state_dir, n, n_events if n else 0, cache_size, shards)
            for n in [0, *sizes]]


def print_runs(runs: list[RssRun]) -> None:
    print(f"peak RSS of the consumer process (caa consume in a child, VmHWM), "
          f"CAA_GET_RECORDS_LIMIT {runs[0].get_records_limit:,}, CAA_STATE_CACHE_SIZE "
          f"{runs[0].cache_size:,}")
    print(f"{'customers':>10} {'events':>7} {'distinct':>9} {'cache':>7} {'peak RSS MiB':>13} "
          f"{'events/s':>9} {'B/state':>8} {'buys/state':>10}")
    for r in runs:
        label = f"{r.customers:>10,}" if r.customers else f"{'(empty)':>10}"
        print(f"{label} {r.events:>7,} {r.distinct_customers:>9,} {r.cache_size:>7,} "
              f"{r.peak_rss_mb:>13.1f} {r.events_per_s:>9,.0f} {r.state_bytes:>8,.0f} "
              f"{r.purchases_per_state:>10.2f}")
    sized = [r for r in runs if r.customers]
    if sized:
        worst = max(r.state_bytes for r in sized)
        print(f"the default CAA_STATE_CACHE_SIZE ({DEFAULT_CACHE:,} states) full of states like "
              f"these (<= {worst:,.0f} B each) would add ~{DEFAULT_CACHE * worst / 2**20:,.0f} MiB")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2]))
    sizes = [int(x) for x in os.environ.get("BENCH_RSS_SIZES", "10000,100000,1000000").split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        emu = launch("127.0.0.1", log=Path(tmp) / "moto.log")
        try:
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            os.environ["CAA_STATE_DIR"] = tmp
            runs = measure(emu.endpoint, Path(tmp), sizes, env_int("BENCH_RSS_EVENTS", 30_000),
                           env_int("BENCH_RSS_CACHE", 10_000))
        finally:
            emu.stop()
    print_runs(runs)


if __name__ == "__main__":
    main()
