"""Crash harness: SIGKILL the consumer again and again, then check every customer exactly.

``make chaos`` runs it on the full CDNOW log; ``make test`` runs a reduced form
(tests/integration/test_chaos.py). It starts the emulator, publishes the log plus
one poison record of each kind, and then, until it has killed the consumer at
least ``--kills`` times, starts ``caa consume --until-idle`` as a subprocess and
kills it with SIGKILL: from outside at a random moment, or from inside at the
hardest points (``CAA_CHAOS_POINTS``: in the middle of a DynamoDB batch write,
between the write and the checkpoint, right after the checkpoint). When a run
finishes before being killed, part of the log is re-published (a replay with new
sequence numbers) so there is more to crash on. A last clean run drains the
stream; then every customer's purchase count and spend in the customer table are
compared with the source file. The last line printed is exactly
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
from dataclasses import dataclass, field
from pathlib import Path

import boto3

from consumers.stores.customers import totals_from_item
from deploy.local.emulator import launch
from deploy.resources import TableNames, ensure_resources
from models.events import PurchaseEvent
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher

#: per run, one way to die: from outside only, or also at one of the chaos points with this
#: probability (per DynamoDB batch-write chunk, or per checkpointed batch)
MODES = {"external": 0.0, "mid_batch_write": 0.01, "before_checkpoint": 0.2,
         "after_checkpoint": 0.2}
#: shards of the harness's stream (the consumer's CAA_SHARD_COUNT default)
SHARDS = 4


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

    def line(self) -> str:
        return (f"lost={self.lost} double_counted={self.double_counted} kills={self.kills} "
                f"rejected={self.rejected}")


def _expected(events: list[PurchaseEvent]) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {}
    for e in events:
        row = out.setdefault(e.customer_id, [0, 0])
        row[0] += 1
        row[1] += int(e.total * 100)
    return {k: (v[0], v[1]) for k, v in out.items()}


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
            size = max(1, len(self.events) // 5)
            start = self.rng.randrange(0, max(1, len(self.events) - size))
            self.publisher.publish(self.events[start:start + size])
            r.replays += 1
            self.note(f"  run {r.runs}: finished; replaying events {start}..{start + size}")
        else:
            raise RuntimeError(f"consumer failed with exit code {rc}; see {path}")

    def finish(self) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "caa.cli.main", "consume", "--until-idle", "--json"],
            env=self.env, capture_output=True, check=False)
        if done.returncode:
            raise RuntimeError(f"final consumer failed: {done.stderr.decode()[-2000:]}")

    def verify(self) -> None:
        r, t = self.report, self.tables
        expected = _expected(self.events)
        got: dict[str, tuple[int, int]] = {}
        for page in self.ddb.get_paginator("scan").paginate(TableName=t.customers):
            for item in page["Items"]:
                cid, purchases, spend_cents = totals_from_item(item)
                got[cid] = (purchases, spend_cents)
        for cid in expected.keys() | got.keys():
            want, have = expected.get(cid, (0, 0)), got.get(cid, (0, 0))
            r.lost += max(0, want[0] - have[0])
            r.double_counted += max(0, have[0] - want[0])
            r.spend_mismatches += want[0] == have[0] and want[1] != have[1]
        r.rejected = int(self.ddb.scan(TableName=t.dead_letters,
                                       Select="COUNT")["Count"])


def run_chaos(endpoint: str, *, limit: int | None, kills: int, seed: int = 1,
              delay_s: tuple[float, float] = (2.0, 15.0), probability: float = 1.0,
              get_records_limit: int = 2000, workdir: Path | None = None,
              say: bool = True) -> ChaosReport:
    started = time.monotonic()
    h = Harness(endpoint, limit=limit, seed=seed, delay_s=delay_s, probability=probability,
                get_records_limit=get_records_limit, workdir=workdir, say=say)
    h.publish()
    while not h.done(kills):
        if h.report.runs >= 20 * max(kills, len(MODES)):
            raise RuntimeError(f"no kill at every point after {h.report.runs} runs: "
                               f"{dict(h.report.kills_by_point)}")
        h.crash_once()
    h.finish()
    h.verify()
    r = h.report
    r.elapsed_s = round(time.monotonic() - started, 1)
    h.note(f"chaos: {r.runs} runs, kills by point {dict(r.kills_by_point)}, {r.replays} "
           f"replays, spend mismatches {r.spend_mismatches}, {r.elapsed_s} s")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--limit", type=int, help="events (default: the whole CDNOW log)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--probability", type=float, default=1.0,
                    help="scales the per-point kill probabilities of MODES")
    args = ap.parse_args()
    emu = launch("127.0.0.1")
    try:
        report = run_chaos(emu.endpoint, limit=args.limit, kills=args.kills, seed=args.seed,
                           probability=args.probability)
    finally:
        emu.stop()
    print(report.line())
    return 0 if report.lost == report.double_counted == report.spend_mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
