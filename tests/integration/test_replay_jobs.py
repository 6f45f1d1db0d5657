"""`caa replay` as a job against moto's server: resuming after an exception and after
SIGKILL with nothing counted twice, locks against a second run and a live consumer,
replaying twice changes nothing, and the acceptance check: a replay through the stream
and a direct backfill give identical predictions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from consumers.sources.lease import GroupLease
from consumers.stores.dynamo import Dynamo
from producers.replay.job import ReplayJob
from producers.replay.runner import run
from producers.replay.sources import FileSource
from producers.replay.tally import Checked, ReplayReport
from producers.replay.targets import DirectTarget
from tests.integration.replay_fixtures import (
    cdnow_file,
    cdnow_slice,
    comparable,
    consume,
    counts,
    expected,
    replay,
    segment_agreement,
    stored,
    tables,
    write_jsonl_gz,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings(segment_warmup="50", refit_interval_s="0")


class FailingTarget(DirectTarget):
    """A real direct target that fails after applying its n-th chunk, before the commit."""

    def __init__(self, *args: Any, fail_at: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.fail_at = fail_at
        self.chunks = 0

    async def send(self, chunk: list[Checked], report: ReplayReport) -> None:
        await super().send(chunk, report)
        self.chunks += 1
        if self.chunks == self.fail_at:
            raise RuntimeError("injected: the chunk was applied, its commit never happens")


def test_direct_backfill_interrupted_after_a_chunk_resumes_exactly(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    events = cdnow_slice()
    lines = [e.to_bytes() for e in events]
    lines.insert(300, b"garbage")
    path = write_jsonl_gz(tmp_path / "slice.jsonl.gz", lines)
    s = settings

    async def interrupted() -> None:
        async with Aws(s).clients("dynamodb") as c:
            applier = wiring.applier(s, c["dynamodb"], cache_size=s.state_cache_size)
            owner = f"test:{os.getpid()}:interrupted"
            target = FailingTarget(
                applier, s.table_prefix, origin="replay", fail_at=3,
                lease=GroupLease(applier.customers.db, s.table("checkpoints"),
                                 s.consumer_group, owner))
            job = ReplayJob(Dynamo(c["dynamodb"]), s.table("checkpoints"), "resume-me", owner)
            await run(job, lambda _t: FileSource([path]), target, summary="test",
                      max_event_bytes=s.max_event_bytes, chunk_size=200)

    with pytest.raises(RuntimeError, match="injected"):
        asyncio.run(interrupted())
    assert counts(tables(s).states) != expected(events)  # it did stop part way

    out = replay(capsys, str(path), "--to", "direct", "--job", "resume-me", "--chunk", "200")
    r = out["report"]
    assert out["status"] == "complete" and r["runs"] == 2
    assert (r["records"], r["valid"], r["invalid"]) == (len(lines), len(events), {"not_json": 1})
    # the third chunk was applied but not committed: sent again, and counted once
    assert r["duplicates"] == 200 and r["applied"] + r["duplicates"] == len(events)
    t = tables(s)
    assert counts(t.states) == expected(events)
    assert len(t.dead) == 1  # the garbage line, once, although its chunk was re-read
    again = replay(capsys, str(path), "--to", "direct", "--job", "resume-me")
    assert again["status"] == "already_complete" and again["sent_this_run"] == 0
    # the same file, touched: the job says what changed (its "before" and "now" read alike)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert cli.main(["replay", str(path), "--to", "direct", "--job", "resume-me"]) == 7
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("caa")]
    assert "its source changed since it started (a file's size or modification time" in line


def test_replay_killed_with_sigkill_resumes_and_the_consumer_counts_once(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    events = cdnow_slice()
    path = write_jsonl_gz(tmp_path / "slice.jsonl.gz", [e.to_bytes() for e in events])
    ddb = Aws(settings).client("dynamodb")

    def job() -> dict[str, Any]:
        return dict(ddb.get_item(TableName=settings.table("checkpoints"), ConsistentRead=True,
                                 Key={"group": {"S": "replay:kill-me"},
                                      "shard_id": {"S": "__job__"}}).get("Item", {}))

    log = (tmp_path / "replay.log").open("wb")
    # paced to 5% of the capacity (200 records/s) in chunks of 50, so it is mid-way for long
    proc = subprocess.Popen(
        [sys.executable, "-m", "caa.cli.main", "replay", str(path), "--job", "kill-me",
         "--chunk", "50", "--share", "0.05"], stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            item = job()
            if item and json.loads(item["tallies"]["S"]).get("records", 0) >= 150:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    item = job()
    assert item["status"]["S"] == "running", (tmp_path / "replay.log").read_text()
    committed = json.loads(item["tallies"]["S"])["records"]
    assert 150 <= committed < len(events)

    out = replay(capsys, str(path), "--job", "kill-me")  # takes over the dead run's lock
    r = out["report"]
    assert out["status"] == "complete" and r["runs"] == 2
    assert r["records"] == r["valid"] == len(events)
    assert out["sent_this_run"] == len(events) - committed
    totals = consume(settings)
    assert totals.applied == len(events)  # any chunk sent twice is a duplicate, not a count
    assert counts(tables(settings).states) == expected(events)


def test_replaying_the_same_history_twice_changes_nothing(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = cdnow_file(tmp_path)
    (tmp_path / "CDNOW_slice.txt").write_bytes(path.read_bytes() + b"00001 1997 junk\n")
    first = replay(capsys, str(path), "--to", "direct")
    before = tables(settings)
    second = replay(capsys, str(path), "--to", "direct", "--restart")
    after = tables(settings)
    n = first["report"]["valid"]
    assert first["report"]["applied"] == n == 1200
    assert (second["report"]["applied"], second["report"]["duplicates"]) == (0, n)
    assert {c: stored(s) for c, s in after.states.items()} == \
        {c: stored(s) for c, s in before.states.items()}  # versions and digests too
    # every figure, segment and date is the same; only the model versions moved on: the
    # second job ended with a second refit, which installs its (equal) parameters and
    # centres as the next version of each model
    assert {c: {**comparable(p), "model_versions": None} for c, p in after.predictions.items()} \
        == {c: {**comparable(p), "model_versions": None} for c, p in before.predictions.items()}
    assert {p["model_versions"][settings.forecast_model]
            for p in after.predictions.values()} == {2}
    assert [d["id"] for d in after.dead] == [d["id"] for d in before.dead] and \
        len(after.dead) == 1


def test_stream_replay_and_direct_backfill_give_identical_predictions(
    fresh_settings: Callable[..., Settings], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The acceptance check. The same CDNOW slice (a) replayed through the stream and
    consumed by the real Worker until idle, (b) backfilled straight into a second set of
    tables. Both end with the same refit over the same states from the same starting
    models (fresh tables, no periodic refit), so every prediction must be equal."""
    path = cdnow_file(tmp_path)
    a = fresh_settings(segment_warmup="50", refit_interval_s="0")
    assert replay(capsys, str(path))["report"]["published"] == 1200
    totals = consume(a)
    assert totals.applied == 1200
    via_stream = tables(a)

    b = fresh_settings(segment_warmup="50", refit_interval_s="0")  # other stream, tables
    direct = replay(capsys, str(path), "--to", "direct")
    assert direct["report"]["applied"] == 1200
    backfilled = tables(b)

    assert set(via_stream.predictions) == set(backfilled.predictions)
    assert len(via_stream.predictions) > 300
    for cid, p in via_stream.predictions.items():
        assert comparable(p) == comparable(backfilled.predictions[cid]), cid
    # the final refits start from streaming models that learned in other batches, cut by
    # the poller's timing (a refit keeps ids and names stable from the model before it:
    # issue 16), so the segments agree but for customers near a boundary: 94.5% and 83.6% on this
    # slice when written, varying from run to run; far below that the refits would not be
    # segmenting the same way
    agreement = segment_agreement(via_stream.predictions, backfilled.predictions)
    print(f"\nsegment names the same on both paths: {agreement:.1%}")
    assert agreement >= 0.7
    assert {p["model_versions"][a.forecast_model]
            for p in via_stream.predictions.values()} == {1}
    # the states too (their versions count writes, so they differ with the batching)
    assert {c: s.to_json() for c, s in via_stream.states.items()} == \
        {c: s.to_json() for c, s in backfilled.states.items()}
    assert {c: s.book.events for c, s in via_stream.states.items()} == \
        {c: s.book.events for c, s in backfilled.states.items()}


def test_a_running_job_and_a_consumer_holding_the_group_are_not_raced(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = cdnow_file(tmp_path, rows=50)

    async def hold(group: str, release: bool = False) -> None:
        async with Aws(settings).clients("dynamodb") as c:
            lease = GroupLease(Dynamo(c["dynamodb"]), settings.table("checkpoints"), group,
                               "another-host:1:alive")
            await (lease.release() if release else lease.acquire(time.time()))

    asyncio.run(hold(settings.consumer_group))  # a live consumer elsewhere
    assert cli.main(["replay", str(path), "--to", "direct", "--job", "j"]) == 1
    assert "stop the consumer, or replay --to stream" in capsys.readouterr().err
    asyncio.run(hold(settings.consumer_group, release=True))
    asyncio.run(hold("replay:j"))  # the same job, running elsewhere
    assert cli.main(["replay", str(path), "--to", "direct", "--job", "j"]) == 1
    assert "replay job 'j' is running in another live process" in capsys.readouterr().err
    assert tables(settings).states == {}
    asyncio.run(hold("replay:j", release=True))
    assert replay(capsys, str(path), "--to", "direct", "--job", "j")["report"]["applied"] == 50
