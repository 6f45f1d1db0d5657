"""Throughput of `caa replay` on the local emulator: to the stream (records/s, and as a
fraction of the stream's write capacity, shards x 1,000 records/s) and as a direct
backfill into the tables (events/s, refit excluded, then the refit's own time).

Run with `.venv/bin/python bench/replay.py [--limit N] [--shards N]` (not part of the
tests). Prints a table and writes out/bench-replay.json. moto never throttles, so the
stream figure shows the pacing itself: how close to the capacity the limiter keeps a
replay that has the stream to itself.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from deploy.local.emulator import launch
from producers.datasets.cdnow import load_events, time_ordered


def caa_replay(env: dict[str, str], *argv: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "caa.cli.main", "replay", *argv, "--json"],
                          env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"caa replay failed:\n{proc.stderr}")
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer, elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=None, help="CDNOW rows (default: all)")
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    events = time_ordered(load_events(limit=args.limit))
    figures: dict[str, float] = {"events": len(events), "shards": args.shards}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cdnow.jsonl.gz"
        path.write_bytes(gzip.compress(b"".join(e.to_bytes() + b"\n" for e in events)))
        emu = launch("127.0.0.1", log=Path(tmp) / "moto.log")
        try:
            run = uuid.uuid4().hex[:6]
            env = dict(os.environ, AWS_ENDPOINT_URL=emu.endpoint, AWS_ACCESS_KEY_ID="bench",
                       AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="eu-central-1",
                       CAA_STATE_DIR=tmp, CAA_STREAM_NAME=f"bench-{run}",
                       CAA_TABLE_PREFIX=f"bench-{run}-", CAA_SHARD_COUNT=str(args.shards))
            os.environ.update(env)
            settings = Settings()
            aws = Aws(settings, quiet=True)
            ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb"))

            out, _ = caa_replay(env, str(path))
            figures["stream_records_per_s"] = out["records_per_s"]
            figures["stream_capacity_records_per_s"] = out["capacity_records_per_s"]
            figures["stream_capacity_fraction"] = out["capacity_fraction"]
            figures["stream_throttled"] = out["report"]["throttled"]

            out, elapsed = caa_replay(env, str(path), "--to", "direct")
            figures["direct_events_per_s"] = out["records_per_s"]
            figures["direct_seconds"] = out["sent_this_run"] / out["records_per_s"]
            figures["direct_with_refit_seconds"] = elapsed
            figures["direct_customers"] = out["refit"]["customers"]
        finally:
            emu.stop()

    print(f"{'figure':<32}{'value':>14}")
    for k, v in figures.items():
        print(f"{k:<32}{v:>14,.3f}" if k.endswith("fraction") else f"{k:<32}{v:>14,.0f}")
    outdir = Path("out")
    outdir.mkdir(exist_ok=True)
    (outdir / "bench-replay.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
