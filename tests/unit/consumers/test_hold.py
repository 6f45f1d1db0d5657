"""consumers.sources.hold: holding a shard whose effects could not be written, on its own
and in the poller's and the KCL processor's hands."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import pytest

from consumers.core import BatchResult, StreamRecord
from consumers.retry import Backoff, Jitter
from consumers.sources.hold import KCL_LINES, POLLER_LINES, ShardHold, log_due
from consumers.sources.kcl_processor import Processor
from consumers.sources.poller import HOLD_BACKOFF, Poller, Progress
from consumers.stores.dynamo import WriteFailed

EXC = WriteFailed("3 item(s) still unprocessed in customers after 8 attempts")


def _poller_line(shard: str, n: int, after: str | None, failures: int, delay: float) -> str:
    """The line the poller printed before the hold policy existed."""
    return (f"shard {shard}: effects of {n} record(s) after {after or 'TRIM_HORIZON'} "
            f"not written ({failures} time(s)): {EXC}; checkpoint held, retrying in "
            f"{delay:.1f} s")


def test_the_delay_grows_per_failure_in_a_row_up_to_the_cap() -> None:
    hold = ShardHold(HOLD_BACKOFF, POLLER_LINES)
    delays = [hold.failed("a", 1, None, EXC).delay for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert hold.failures("a") == 9


def test_one_line_at_the_first_failure_then_every_tenth() -> None:
    hold = ShardHold(HOLD_BACKOFF, POLLER_LINES)
    lines = {n: hold.failed("s-1", 3, "4960", EXC).line for n in range(1, 31)}
    assert [n for n, line in lines.items() if line] == [1, 10, 20, 30]
    assert lines[1] == _poller_line("s-1", 3, "4960", 1, 0.5)
    assert lines[10] == _poller_line("s-1", 3, "4960", 10, 30.0)
    assert [n for n in range(1, 31) if log_due(n)] == [1, 10, 20, 30]
    assert hold.failed("s-2", 7, None, EXC).line == _poller_line("s-2", 7, None, 1, 0.5)


def test_shards_are_counted_apart_and_success_resets_one() -> None:
    hold = ShardHold(HOLD_BACKOFF, POLLER_LINES)
    for _ in range(3):
        hold.failed("a", 1, None, EXC)
    hold.failed("b", 1, None, EXC)
    assert hold.succeeded("a") == "shard a: writes recovered after 3 failure(s)"
    assert hold.succeeded("a") is None  # nothing to recover from
    assert hold.failures("a") == 0 and hold.failures("b") == 1
    again = hold.failed("a", 1, None, EXC)
    assert (again.failures, again.delay, again.line is not None) == (1, 0.5, True)
    hold.reset("b")
    assert hold.failures("b") == 0 and hold.succeeded("b") is None


def test_the_kcl_lines_and_delays_are_the_processors() -> None:
    p = Processor(None, "stream", asyncio.new_event_loop())  # type: ignore[arg-type]
    try:
        held = [p.hold.failed("shardId-1", 4, None, EXC) for _ in range(7)]
    finally:
        p.loop.close()
    assert [h.delay for h in held] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert held[0].line == (f"shardId-1: 4 records not written ({EXC}); holding the shard, "
                            "attempt 1, next in 1.0s")
    assert p.hold.succeeded("shardId-1") == "shardId-1: writes recovered after 7 failure(s)"
    assert p.hold.lines is KCL_LINES


def test_a_jittered_hold_draws_from_its_rng() -> None:
    hold = ShardHold(Backoff(base=0.5, cap=30.0, jitter=Jitter.EQUAL), rng=random.Random(2))
    got = [hold.failed("a", 1, None, EXC).delay for _ in range(4)]
    rng = random.Random(2)
    assert got == [rng.uniform(0.5, 1.0) * 0.5 * 2**n for n in range(4)]


# -- in the poller ------------------------------------------------------------------------


@dataclass
class FailingApplier:
    """Raises ``fail`` times, then applies."""

    fail: int
    calls: int = 0

    async def apply(self, records: list[StreamRecord]) -> BatchResult:
        self.calls += 1
        if self.calls <= self.fail:
            raise EXC
        return BatchResult([], {}, [], [], [], 0, {}, {"applied": len(records)})


class Checkpoints:
    def __init__(self) -> None:
        self.saved: list[tuple[str, str | None, bool]] = []

    async def save(self, shard_id: str, after: str | None, ended: bool = False) -> None:
        self.saved.append((shard_id, after, ended))


class Sink:
    def __init__(self) -> None:
        self.puts: list[dict[str, float]] = []

    async def put(self, deltas: dict[str, float]) -> None:
        self.puts.append(deltas)


RAW = [{"Data": b"{}", "SequenceNumber": str(n), "PartitionKey": "c"} for n in (11, 12)]


def test_the_poller_holds_logs_and_recovers(capsys: pytest.CaptureFixture[str]) -> None:
    applier, cps, sink = FailingApplier(fail=2), Checkpoints(), Sink()
    poller = Poller(None, "s", cps, applier, metrics=sink)  # type: ignore[arg-type]

    async def go() -> tuple[list[bool], float]:
        stop = asyncio.Event()
        stop.set()  # the hold returns at once instead of waiting 0.5 s, then 1 s
        p = Progress("shard-1", "10")
        started = time.monotonic()
        done = [await poller.apply_batch(p, RAW, False, stop) for _ in range(3)]
        return done, time.monotonic() - started

    done, took = asyncio.run(go())
    assert done == [False, False, True] and took < 0.4
    assert poller.write_failures == 2 and sink.puts == [{"shard_write_failures": 1}] * 2
    assert cps.saved == [("shard-1", "12", False)]  # checkpointed only once written
    err = capsys.readouterr().err.splitlines()
    assert err == [_poller_line("shard-1", 2, "10", 1, 0.5),
                   "shard shard-1: writes recovered after 2 failure(s)"]
    assert poller.hold.failures("shard-1") == 0


# -- in the KCL processor -------------------------------------------------------------------


@dataclass
class KclRecord:
    binary_data: bytes
    sequence_number: str
    partition_key: str = "c"
    timestamp_millis: int | None = None
    sub_sequence_number: int | None = 0


def test_the_kcl_processor_holds_logs_and_recovers(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # the processor's hold
    sink = Sink()
    loop = asyncio.new_event_loop()
    try:
        p = Processor(FailingApplier(fail=3), "s", loop, metrics=sink)  # type: ignore[arg-type]
        p.initialize("shardId-7", None)
        result = p.apply([KclRecord(b"{}", "1"), KclRecord(b"{}", "2")])
        p.stopping = True
        p.applier = FailingApplier(fail=1)  # type: ignore[assignment]
        stopped = p.apply([KclRecord(b"{}", "3")])
    finally:
        loop.close()
    assert result is not None and stopped is None
    assert slept == [1.0, 2.0, 4.0]
    failures: list[dict[str, Any]] = [d for d in sink.puts if "shard_write_failures" in d]
    assert len(failures) == 4
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [
        f"kcl-processor: shardId-7: 2 records not written ({EXC}); holding the shard, "
        "attempt 1, next in 1.0s",
        "kcl-processor: shardId-7: writes recovered after 3 failure(s)",
        f"kcl-processor: shardId-7: 1 records not written ({EXC}); holding the shard, "
        "attempt 1, next in 1.0s",  # a new batch counts its own failures
    ]
