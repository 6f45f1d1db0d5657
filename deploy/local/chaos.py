"""Crash harness: SIGKILL the consumer again and again, then check every customer exactly.

``make chaos`` runs it on the full CDNOW log; ``make test`` runs a reduced form
(tests/integration/test_chaos.py). It starts the emulator, publishes the log plus
one poison record of each kind, and then, until it has killed the consumer at
least ``--kills`` times, starts ``caa consume --until-idle`` as a subprocess and
kills it with SIGKILL: from outside at a random moment once it holds the consumer group
(sooner after each run that finished first), or from inside at the
hardest points (``CAA_CHAOS_POINTS``: in the middle of a DynamoDB batch write,
between the write and the checkpoint, right after the checkpoint). When a run
finishes before being killed, part of the log is re-published (a replay with new
sequence numbers) so there is more to crash on.

Once per run (``--handovers``) a **lease handover with a zombie**: a consumer is started,
SIGSTOPped mid-run (once it holds the group), left stopped past its lease (30 s), a second
consumer is started (it takes the expired lease: the first is alive, only paused), and
the first is SIGCONTed while the second runs. The resumed one must stop before its next
write (``consumer stopped: lost the lease``, exit 1); its batch in flight may still land,
which the conditional state writes and the forward-only checkpoints make harmless.

A last clean run drains the stream; then every customer's totals in the customer table
(:func:`~consumers.stores.customers.totals_from_item`: purchases and spend, whatever
the layout) are compared with the same totals of the source file's events applied once
each to a fresh state. The last line printed is exactly
``lost=<n> double_counted=<n> kills=<n> rejected=<n>``.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from consumers.stores.checkpoints import OWNER_KEY
from consumers.stores.customers import state_to_item, totals_from_item
from deploy.local.emulator import launch
from deploy.resources import TableNames, ensure_resources
from models.events import PurchaseEvent
from models.state import CustomerState
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher

#: per run, one way to die: from outside only, or also at one of the chaos points with this
#: probability (per DynamoDB batch-write chunk, or per checkpointed batch)
MODES = {"external": 0.0, "mid_batch_write": 0.01, "before_checkpoint": 0.2,
         "after_checkpoint": 0.2}
#: shards of the harness's stream (the consumer's CAA_SHARD_COUNT default)
SHARDS = 4
#: records per GetRecords of the consumers it starts: a round of the four shards' batches
#: must end (and checkpoint) well within the kill delays (2-15 s) for the kills to land at
#: every point; at the local consumer's 300-600 events/s on 2 cores, 4 x 500 records take
#: 3-7 s (4 x 2,000, the earlier value, took longer than the longest delay once the
#: per-customer outlook made the core slower, and no run died at a checkpoint)
GET_RECORDS_LIMIT = 500
#: a consumer started to die at a chaos point is killed from outside only after this long
#: (the random delays are for the ``external`` runs: with them, a consumer slower to start
#: than the delay, as on a loaded CI machine, never reached a checkpoint to die at)
POINT_BACKSTOP_S = 120.0
#: the ``external`` runs' delays (counted from when the consumer holds the group) shrink by
#: half after each run that finished first, down to this factor of ``delay_s``
EXTERNAL_SCALE_MIN = 1 / 64


def poison() -> list[tuple[bytes, str]]:
    """One record of each kind the decoder must reject, with its expected kind."""
    good = load_events(limit=1)[0].model_dump(mode="json")
    return [
        (b"this is not json", "not_json"),
        (b"\xff\xfe\x00 broken utf-8", "not_utf8"),
        (b'{"schema_version": 1, "event_id": "x"}', "schema"),
        (b'{"schema_version": 7, "event_id": "future"}', "unknown_version"),
        (("{" + " " * 300_000 + "}").encode(), "oversized"),
        (str(good).encode(), "not_json"),  # a Python repr, not JSON
    ]


@dataclass
class ChaosReport:
    lost: int = 0
    double_counted: int = 0
    spend_mismatches: int = 0
    kills: int = 0
    rejected: int = 0
    runs: int = 0
    replays: int = 0
    kills_by_point: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    #: lease handovers staged, and how many of the resumed consumers stopped on their own
    handovers: int = 0
    zombies_stopped: int = 0

    def line(self) -> str:
        return (f"lost={self.lost} double_counted={self.double_counted} kills={self.kills} "
                f"rejected={self.rejected}")


Totals = tuple[int, object]  # (purchases, spend as totals_from_item gives it)


def _expected(events: list[PurchaseEvent]) -> dict[str, Totals]:
    """Each customer's totals with every event applied once, read back through the same
    item layout and :func:`totals_from_item` as the table's (so the comparison does not
    depend on how spend is stored)."""
    states: dict[str, CustomerState] = {}
    for e in events:
        states.setdefault(e.customer_id, CustomerState.new(e.customer_id)).apply(e)
    out: dict[str, Totals] = {}
    for cid, state in states.items():
        _, purchases, spend = totals_from_item(state_to_item(state))
        out[cid] = (purchases, spend)
    return out


def _consumer_env(endpoint: str, run_id: str, state_dir: Path,
                  get_records_limit: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CAA_", "AWS_ENDPOINT_URL"))}
    env.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "eu-central-1",
        "CAA_STREAM_NAME": f"chaos-{run_id}", "CAA_TABLE_PREFIX": f"chaos-{run_id}-",
        "CAA_LOCAL_EMULATOR": "never", "CAA_STATE_DIR": str(state_dir),
        "CAA_REFIT_INTERVAL_S": "0", "CAA_POLL_INTERVAL_S": "0.1", "CAA_IDLE_POLLS": "2",
        "CAA_GET_RECORDS_LIMIT": str(get_records_limit),
    })
    return env


class Harness:
    def __init__(self, endpoint: str, *, limit: int | None, seed: int, delay_s: tuple[float, float],
                 probability: float, get_records_limit: int, workdir: Path | None,
                 say: bool) -> None:
        self.rng = random.Random(seed)
        self.delay_s = delay_s
        self.say = say
        self.work = workdir or Path(tempfile.mkdtemp(prefix="caa-chaos-"))
        run_id = uuid.uuid4().hex[:8]
        self.scale = probability
        self.env = _consumer_env(endpoint, run_id, self.work / ".caa", get_records_limit)
        # the names the consumer subprocess gets from its environment
        self.stream = self.env["CAA_STREAM_NAME"]
        self.tables = TableNames(self.env["CAA_TABLE_PREFIX"])
        kw = {"endpoint_url": endpoint, "region_name": "eu-central-1",
              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self.kinesis = boto3.client("kinesis", **kw)  # type: ignore[call-overload]
        self.ddb = boto3.client("dynamodb", **kw)  # type: ignore[call-overload]
        self.events = time_ordered(load_events(limit=limit))
        self.publisher = Publisher(self.kinesis, self.stream)
        self.report = ChaosReport()
        #: factor on ``delay_s`` for the ``external`` runs, halved each time one finishes
        self.external_scale = 1.0
        self.modes = sorted(MODES)
        self.rng.shuffle(self.modes)

    def done(self, kills: int) -> bool:
        """At least ``kills`` kills, and at least one at each place there is to die."""
        r = self.report
        return r.kills >= kills and set(MODES) <= set(r.kills_by_point)

    def note(self, msg: str) -> None:
        if self.say:
            print(msg, flush=True)

    def publish(self) -> None:
        ensure_resources(self.kinesis, self.ddb, stream_name=self.stream, shard_count=SHARDS,
                         tables=self.tables)
        self.publisher.publish(self.events)
        bad = poison()
        self.kinesis.put_records(StreamName=self.stream, Records=[
            {"Data": data, "PartitionKey": f"poison-{i}"} for i, (data, _) in enumerate(bad)])
        self.note(f"chaos: {len(self.events):,} events + {len(bad)} poison records on "
                  f"{self.stream}; logs in {self.work}")

    def crash_once(self) -> None:
        """Start a consumer and see it killed (from outside, or at a chaos point)."""
        r = self.report
        r.runs += 1
        path = self.work / f"run-{r.runs:02d}.log"
        mode = self.modes[(r.runs - 1) % len(self.modes)]  # each way to die in turn
        env = {**self.env, "CAA_CHAOS_POINTS": "" if mode == "external" else mode,
               "CAA_CHAOS_PROBABILITY": str(min(1.0, MODES[mode] * self.scale))}
        with path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "caa.cli.main", "consume", "--until-idle", "--json",
                 "--no-refit"], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
            delay = self.rng.uniform(*self.delay_s)
            if mode != "external":  # it dies at its point: the delay is only a backstop
                delay = max(delay, POINT_BACKSTOP_S)
            else:  # counted from when it holds the group (is past its start-up and working)
                self._until("the consumer's lease",
                            lambda: (self._lease() or (0, 0.0))[0] == proc.pid, proc)
                delay *= self.external_scale
            try:
                rc = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                r.kills += 1
                r.kills_by_point["external"] += 1
                self.note(f"  run {r.runs}: killed from outside after {delay:.1f} s")
                return
        if rc == -signal.SIGKILL:
            text = path.read_text(errors="replace")
            point = text.rsplit("chaos: SIGKILL at ", 1)[-1].split()[0] if "chaos:" in text \
                else "unknown"
            r.kills += 1
            r.kills_by_point[point] += 1
            self.note(f"  run {r.runs}: killed itself at {point}")
        elif rc == 0:  # it finished first: replay part of the log to crash on
            if mode == "external":  # and kill the next one sooner (a replay of events it
                # has seen is only duplicates: a fast machine gets through it in a second)
                self.external_scale = max(EXTERNAL_SCALE_MIN, self.external_scale / 2)
            size = max(1, len(self.events) // 5)
            start = self.rng.randrange(0, max(1, len(self.events) - size))
            self.publisher.publish(self.events[start:start + size])
            r.replays += 1
            self.note(f"  run {r.runs}: finished; replaying events {start}..{start + size}")
        else:
            raise RuntimeError(f"consumer failed with exit code {rc}; see {path}")

    def _consumer(self, path: Path) -> tuple[subprocess.Popen[bytes], Any]:
        log = path.open("wb")
        env = {**self.env, "CAA_CHAOS_POINTS": "", "CAA_CHAOS_PROBABILITY": "0"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "caa.cli.main", "consume", "--until-idle", "--json",
             "--no-refit"], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        return proc, log

    def _lease(self) -> tuple[int, float] | None:
        """(pid of the holder, expiry in epoch seconds) of the group's lease, if any."""
        item = self.ddb.get_item(TableName=self.tables.checkpoints, ConsistentRead=True,
                                 Key={"group": {"S": self.env.get("CAA_CONSUMER_GROUP",
                                                                  "caa-consumer")},
                                      "shard_id": {"S": OWNER_KEY}}).get("Item")
        if not item:
            return None
        pid = item["owner"]["S"].split(":")[1]
        return int(pid) if pid.isdigit() else -1, float(item["expires"]["N"])

    def _until(self, what: str, ok: Callable[[], bool], proc: subprocess.Popen[bytes],
               timeout_s: float = 120.0) -> bool:
        """Poll ``ok`` until it holds (True) or ``proc`` ended (False)."""
        deadline = time.monotonic() + timeout_s
        while not ok():
            if proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"chaos: timed out waiting for {what}")
            time.sleep(0.2)
        return True

    def handover(self) -> None:
        """Pause a consumer (holding the group, mid-run) past its lease, let a second one
        take the group over, resume the first while the second runs: the first must stop
        before its next write."""
        r = self.report
        r.runs += 1
        paused = self.work / f"run-{r.runs:02d}-paused.log"
        first, log1 = self._consumer(paused)
        holds = self._until("the first consumer's lease",
                            lambda: (self._lease() or (0, 0.0))[0] == first.pid, first)
        time.sleep(self.rng.uniform(0.2, 1.5))  # mid-batch, somewhere
        if not holds or first.poll() is not None:
            first.wait()
            log1.close()
            self.note(f"  run {r.runs}: finished before the pause")
            return
        first.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        lease = self._lease()
        expires = lease[1] if lease else time.time()
        time.sleep(max(0.0, expires - time.time()) + 1.0)
        second, log2 = self._consumer(self.work / f"run-{r.runs:02d}-takeover.log")
        self._until("the second consumer's lease",
                    lambda: (self._lease() or (0, 0.0))[0] == second.pid, second)
        self.note(f"  run {r.runs}: SIGSTOPped {time.monotonic() - stopped:.0f} s, past its "
                  "lease; a second consumer took the group; SIGCONT")
        first.send_signal(signal.SIGCONT)
        rc1 = first.wait()
        rc2 = second.wait()
        log1.close()
        log2.close()
        text = paused.read_text(errors="replace")
        r.handovers += 1
        if rc1 == 1 and "consumer stopped: lost the lease" in text:
            r.zombies_stopped += 1
        elif rc1 != 0:  # 0: the second one had already finished and released the group
            raise RuntimeError(f"the resumed consumer exited {rc1}; see {paused}")
        if rc2 != 0:
            raise RuntimeError(f"the second consumer failed with exit code {rc2}; see "
                               f"{log2.name}")
        self.note(f"  run {r.runs}: resumed consumer exited {rc1}, second consumer {rc2}")

    def finish(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "caa.cli.main", "consume", "--until-idle", "--json"],
            env=self.env, capture_output=True, check=False)
        if done.returncode:
            raise RuntimeError(f"final consumer failed: {done.stderr.decode()[-2000:]}")

    def verify(self) -> None:
        r, t = self.report, self.tables
        expected = _expected(self.events)
        got: dict[str, Totals] = {}
        for page in self.ddb.get_paginator("scan").paginate(TableName=t.customers):
            for item in page["Items"]:
                cid, purchases, spend = totals_from_item(item)
                got[cid] = (purchases, spend)
        for cid in expected.keys() | got.keys():
            want, have = expected.get(cid, (0, None)), got.get(cid, (0, None))
            r.lost += max(0, want[0] - have[0])
            r.double_counted += max(0, have[0] - want[0])
            r.spend_mismatches += want[0] == have[0] and want[1] != have[1]
        r.rejected = int(self.ddb.scan(TableName=t.dead_letters,
                                       Select="COUNT")["Count"])


def run_chaos(endpoint: str, *, limit: int | None, kills: int, seed: int = 1,
              delay_s: tuple[float, float] = (2.0, 15.0), probability: float = 1.0,
              get_records_limit: int = GET_RECORDS_LIMIT, workdir: Path | None = None,
              say: bool = True, handovers: int = 1) -> ChaosReport:
    started = time.monotonic()
    h = Harness(endpoint, limit=limit, seed=seed, delay_s=delay_s, probability=probability,
                get_records_limit=get_records_limit, workdir=workdir, say=say)
    h.publish()
    while not h.done(kills):
        if h.report.runs >= 20 * max(kills, len(MODES)):
            raise RuntimeError(f"no kill at every point after {h.report.runs} runs: "
                               f"{dict(h.report.kills_by_point)}")
        h.crash_once()
        if h.report.handovers < handovers and h.report.kills >= kills // 2:
            h.handover()
    h.finish()
    h.verify()
    r = h.report
    r.elapsed_s = round(time.monotonic() - started, 1)
    h.note(f"chaos: {r.runs} runs, kills by point {dict(r.kills_by_point)}, {r.replays} "
           f"replays, {r.handovers} lease handover(s) ({r.zombies_stopped} resumed consumer(s) "
           f"stopped on a lost lease), spend mismatches {r.spend_mismatches}, {r.elapsed_s} s")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--limit", type=int, help="events (default: the whole CDNOW log)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--handovers", type=int, default=1,
                    help="lease handovers with a paused, then resumed, consumer")
    ap.add_argument("--probability", type=float, default=1.0,
                    help="scales the per-point kill probabilities of MODES")
    ap.add_argument("--get-records-limit", type=int, default=GET_RECORDS_LIMIT,
                    help="records per GetRecords of the consumers it starts")
    args = ap.parse_args()
    emu = launch("127.0.0.1")
    try:
        report = run_chaos(emu.endpoint, limit=args.limit, kills=args.kills, seed=args.seed,
                           probability=args.probability, handovers=args.handovers,
                           get_records_limit=args.get_records_limit)
    finally:
        emu.stop()
    print(report.line())
    return 0 if report.lost == report.double_counted == report.spend_mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
