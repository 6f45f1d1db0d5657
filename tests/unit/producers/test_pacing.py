"""The replay's AIMD limiter: pacing, cuts on throttling, additive growth, and the
publisher calling it (error branches with botocore's Stubber; time is virtual)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from producers.datasets.synthetic import generate
from producers.pacing import AimdLimiter, Capacity
from producers.publisher import Publisher, PublishReport


def test_reservations_pace_records_and_bytes_to_the_capacity() -> None:
    lim = AimdLimiter(Capacity.for_shards(4))  # 4,000 records/s, 4 MiB/s
    waits = [lim.reserve(500, 1000, now=0.0) for _ in range(8)]
    assert waits == [i * 0.125 for i in range(8)]  # 4,000 records in the first second
    big = AimdLimiter(Capacity.for_shards(1))
    # 100 records of 20 KiB: 2 MiB, bytes bind (2 s), not records (0.1 s)
    assert [big.reserve(100, 2 * 1024 * 1024, now=0.0) for _ in range(2)] == [0.0, 2.0]


def test_idle_time_builds_no_burst_credit() -> None:
    lim = AimdLimiter(Capacity.for_shards(1))
    assert lim.reserve(1000, 0, now=0.0) == 0.0
    assert lim.reserve(1000, 0, now=100.0) == 0.0  # long idle...
    assert lim.reserve(1000, 0, now=100.0) == 1.0  # ...but the next call still waits


def test_throttling_cuts_once_per_episode_down_to_the_floor() -> None:
    lim = AimdLimiter(Capacity.for_shards(2), floor=0.1, cooldown_s=1.0)
    lim.throttled(now=10.0)
    assert lim.fraction == 0.5 and lim.records_per_s == 1000
    lim.throttled(now=10.5)  # the same episode (its retries): no second cut
    assert lim.fraction == 0.5 and lim.cuts == 1
    for t in range(11, 20):
        lim.throttled(now=float(t))
    assert lim.fraction == 0.1  # 0.25, 0.125, then held at the floor
    assert lim.cuts == 10


def test_success_grows_additively_up_to_the_ceiling() -> None:
    lim = AimdLimiter(Capacity.for_shards(1), ceiling=0.8, increase_per_s=0.05)
    lim.throttled(now=0.0)
    assert lim.fraction == 0.4
    lim.succeeded(now=2.0)
    assert lim.fraction == pytest.approx(0.5)
    lim.succeeded(now=3.0)
    assert lim.fraction == pytest.approx(0.55)
    lim.succeeded(now=60.0)
    assert lim.fraction == 0.8  # the ceiling (a --share below 1)


def test_a_reshard_changes_the_pace_not_the_fraction() -> None:
    lim = AimdLimiter(Capacity.for_shards(1))
    lim.throttled(now=0.0)
    lim.set_capacity(Capacity.for_shards(4))
    assert lim.fraction == 0.5 and lim.records_per_s == 2000


def test_aimd_settles_under_a_hidden_bottleneck() -> None:
    """A hot shard: the stream takes only 600 records/s although 4 shards say 4,000. The
    limiter, told only "throttled or not", settles near the real capacity: most calls go
    through and the accepted rate is a good share of what the bottleneck allows."""
    lim = AimdLimiter(Capacity.for_shards(4), cooldown_s=1.0)
    real = 600.0
    now, accepted, calls, refused = 0.0, 0, 0, 0
    window: list[tuple[float, int]] = []  # (time, records) taken in the last second
    while now < 300.0:
        now += lim.reserve(100, 10_000, now)
        window = [(t, n) for t, n in window if t > now - 1.0]
        calls += 1
        if sum(n for _, n in window) + 100 > real:
            refused += 1
            lim.throttled(now)
        else:
            window.append((now, 100))
            accepted += 100
            lim.succeeded(now)
        now += 0.01  # the call's own latency
    assert accepted / 300.0 > 0.5 * real  # uses the bottleneck well...
    assert refused / calls < 0.2  # ...without hammering it
    assert lim.cuts >= 2


def _client() -> Any:
    return boto3.client("kinesis", region_name="eu-central-1", aws_access_key_id="x",
                        aws_secret_access_key="x")


def _ok(n: int) -> dict[str, Any]:
    return {"SequenceNumber": str(n), "ShardId": "shardId-000000000000"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


def test_publisher_tells_the_limiter_about_throttled_entries_and_waits_its_turn() -> None:
    client = _client()
    events = generate(customers=3, days=20, seed=2)[:4]
    clock = Clock()
    lim = AimdLimiter(Capacity(records_per_s=4.0, bytes_per_s=1e9))
    pte = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow"}
    with Stubber(client) as stub:
        stub.add_response("put_records", {"FailedRecordCount": 1,
                                          "Records": [_ok(1), pte, _ok(2), _ok(3)]})
        stub.add_response("put_records", {"Records": [_ok(4)]})
        report = PublishReport()
        pub = Publisher(client, "s", sleep=clock.sleep, clock=clock, limiter=lim,
                        base_delay=0.0)
        pub.put_batch([(e, e.to_bytes()) for e in events], report)
    assert report.records == 4 and report.throttled_records == 1
    assert lim.cuts == 1
    assert lim.fraction == pytest.approx(0.55)  # cut to 0.5, then 1 s of success: + 0.05
    # the first call waits for nothing; the retry (1 record at the cut pace of 2/s) waits
    # for the first call's 4 records at 4/s: 1 s after it
    paced = [s for s in clock.sleeps if s > 0]
    assert paced == [1.0]


def test_a_throttling_exception_cuts_the_pace_too() -> None:
    client = _client()
    events = generate(customers=2, days=20, seed=2)[:2]
    clock = Clock()
    lim = AimdLimiter(Capacity.for_shards(1))
    with Stubber(client) as stub:
        stub.add_client_error("put_records", "ProvisionedThroughputExceededException")
        stub.add_response("put_records", {"Records": [_ok(1), _ok(2)]})
        report = PublishReport()
        Publisher(client, "s", sleep=clock.sleep, clock=clock, limiter=lim).put_batch(
            [(e, e.to_bytes()) for e in events], report)
    assert report.records == 2 and report.throttled_records == 2 and lim.cuts == 1
