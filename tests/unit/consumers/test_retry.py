"""consumers.retry: the backoff policy, the stop-aware pause and the tenacity-run loops;
and that every call site still waits what it waited before the policy existed."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from consumers.retry import (
    Backoff,
    Jitter,
    pause,
    retry_until_done,
    retry_until_done_async,
)
from consumers.stores.dynamo import Dynamo, WriteFailed
from producers.datasets.synthetic import generate
from producers.publisher import Publisher, PublishError, PublishReport

# -- the policy -------------------------------------------------------------------------


def test_the_ceiling_doubles_from_base_and_stops_at_the_cap() -> None:
    b = Backoff(base=0.1, cap=5.0)
    assert [b.ceiling(n) for n in range(8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert b.ceiling(5000) == 5.0  # no OverflowError however long the run


def test_full_jitter_draws_from_zero_to_the_ceiling_with_the_rng_given() -> None:
    b = Backoff(base=0.05, cap=5.0)
    got = [b.delay(n, random.Random(7)) for n in range(1, 12)]
    want = [random.Random(7).uniform(0, b.ceiling(n)) for n in range(1, 12)]
    assert got == want
    draws = [b.delay(6, random.Random(s)) for s in range(200)]
    assert all(0 <= d <= 3.2 for d in draws) and max(draws) > 2.5


def test_equal_jitter_keeps_at_least_half_and_no_jitter_is_exact() -> None:
    eq = Backoff(base=0.5, cap=5.0, jitter=Jitter.EQUAL)
    draws = [eq.delay(2, random.Random(s)) for s in range(200)]
    assert all(1.0 <= d <= 2.0 for d in draws)
    assert min(draws) < 1.1 and max(draws) > 1.9
    none = Backoff(base=0.5, cap=30.0, jitter=Jitter.NONE)
    assert [none.delay(n) for n in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_without_an_rng_the_global_random_is_used() -> None:
    state = random.getstate()
    try:
        random.seed(11)
        got = Backoff(base=0.1, cap=5.0).delay(3)
        random.seed(11)
        assert got == random.uniform(0, 0.8)
    finally:
        random.setstate(state)


def test_a_policy_is_frozen_and_checked() -> None:
    b = Backoff(base=0.1, cap=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.base = 1.0  # type: ignore[misc]
    for bad in ({"base": -1.0, "cap": 1.0}, {"base": 0.1, "cap": -1.0},
                {"base": 0.1, "cap": 1.0, "attempts": 0}):
        with pytest.raises(ValueError, match="backoff"):
            Backoff(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("policy", "old", "attempts"), [
    # the formulas each call site had before: (policy, old delay of attempt n, attempts n)
    (Backoff(base=0.05, cap=5.0),  # publisher
     lambda r, n: r.uniform(0, min(5.0, 0.05 * 2**n)), range(1, 8)),
    (Backoff(base=0.05, cap=2.0),  # DynamoDB batches
     lambda r, n: r.uniform(0, min(2.0, 0.05 * 2**n)), range(1, 8)),
    (Backoff(base=0.1, cap=2.0),  # redrive
     lambda r, n: r.uniform(0, min(2.0, 0.1 * 2**n)), range(1, 6)),
    (Backoff(base=0.1, cap=5.0),  # poller GetRecords throttled
     lambda r, n: r.uniform(0, min(5.0, 0.1 * 2**n)), range(1, 40)),
    (Backoff(base=0.5, cap=5.0, jitter=Jitter.EQUAL),  # fan-out re-subscribe
     lambda r, n: r.uniform(0.5, 1.0) * min(5.0, 0.5 * 2**n), range(1, 40)),
    (Backoff(base=0.25, cap=8.0),  # Bedrock, attempt = attempts made - 1
     lambda r, n: r.uniform(0.0, min(8.0, 0.25 * 2 ** n)), range(0, 10)),
    (Backoff(base=0.5, cap=30.0, jitter=Jitter.NONE),  # poller hold, n = failures - 1
     lambda r, n: min(30.0, 0.5 * 2 ** n), range(0, 40)),
    (Backoff(base=1.0, cap=min(30.0, 32.0), jitter=Jitter.NONE),  # KCL hold, n = failures - 1
     lambda r, n: min(30.0, 0.5 * 2 ** min(n + 1, 6)), range(0, 40)),
    (Backoff(base=1.0, cap=min(100.0, 32.0), jitter=Jitter.NONE),  # ... a larger max_pause_s
     lambda r, n: min(100.0, 0.5 * 2 ** min(n + 1, 6)), range(0, 40)),
    (Backoff(base=0.1, cap=2.0, jitter=Jitter.NONE),  # fan-out consumer ACTIVE poll
     lambda r, n: min(2.0, 0.1 * 2**n), range(0, 12)),
    (Backoff(base=0.2, cap=12.8, jitter=Jitter.NONE),  # replay source throttled
     lambda r, n: 0.2 * 2 ** min(n, 6), range(1, 20)),
])
def test_every_call_site_waits_exactly_what_it_did(policy: Backoff, old: Any,
                                                   attempts: range) -> None:
    new_rng, old_rng = random.Random(3), random.Random(3)
    assert [policy.delay(n, new_rng) for n in attempts] == [old(old_rng, n) for n in attempts]


# -- pause and sleep ----------------------------------------------------------------------


def test_pause_sleeps_without_a_stop_event() -> None:
    started = time.monotonic()
    assert asyncio.run(pause(0.05)) is False
    assert time.monotonic() - started >= 0.045


def test_a_stop_event_cuts_a_pause_short() -> None:
    async def go() -> tuple[bool, float, float]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        started = time.monotonic()
        stopped = await pause(30.0, stop)
        waited = time.monotonic() - started
        started = time.monotonic()
        await pause(30.0, stop)  # already set: returns at once
        return stopped, waited, time.monotonic() - started

    stopped, waited, again = asyncio.run(go())
    assert stopped is True and waited < 5.0 and again < 1.0


def test_sleep_waits_the_delay_it_returns_unless_stopped() -> None:
    b = Backoff(base=0.02, cap=0.1, jitter=Jitter.NONE)

    async def go() -> tuple[float, float, float]:
        started = time.monotonic()
        d = await b.sleep(1)
        waited = time.monotonic() - started
        stop = asyncio.Event()
        stop.set()
        started = time.monotonic()
        await Backoff(base=60.0, cap=60.0).sleep(3, stop, random.Random(1))
        return d, waited, time.monotonic() - started

    d, waited, stopped = asyncio.run(go())
    assert d == 0.04 and waited >= 0.035 and stopped < 1.0


# -- the tenacity-run loops -------------------------------------------------------------


def _drop_one(calls: list[int]) -> Any:
    def step(left: list[int]) -> list[int]:
        calls.append(len(left))
        return left[1:]
    return step


def test_retry_until_done_stops_after_the_attempts_and_returns_what_is_left() -> None:
    calls: list[int] = []
    slept: list[float] = []
    seen: list[list[int]] = []
    left = retry_until_done(Backoff(0.1, 5.0, attempts=4), _drop_one(calls), [1, 2, 3, 4, 5, 6],
                            rng=random.Random(9), sleep=slept.append, on_retry=seen.append)
    assert left == [5, 6]
    assert calls == [6, 5, 4, 3]
    rng = random.Random(9)
    assert slept == [rng.uniform(0, 0.1 * 2**n) for n in (1, 2, 3)]
    assert seen == [[2, 3, 4, 5, 6], [3, 4, 5, 6], [4, 5, 6]]  # before each sleep


def test_retry_until_done_returns_as_soon_as_nothing_is_left() -> None:
    calls: list[int] = []
    slept: list[float] = []
    assert retry_until_done(Backoff(0.1, 5.0, attempts=8), _drop_one(calls), [1, 2],
                            sleep=slept.append) == []
    assert calls == [2, 1] and len(slept) == 1
    calls.clear()
    assert retry_until_done(Backoff(0.0, 0.0), _drop_one(calls), list(range(30)),
                            sleep=slept.append) == []  # attempts=None: until done
    assert len(calls) == 30


def test_an_error_in_the_step_propagates_at_once() -> None:
    slept: list[float] = []
    calls = 0

    def step(left: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        raise KeyError("boom")

    with pytest.raises(KeyError):
        retry_until_done(Backoff(0.1, 1.0, attempts=5), step, [1], sleep=slept.append)
    assert calls == 1 and slept == []


def test_the_async_loop_sleeps_the_policy_delays_and_propagates_errors() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    async def step(left: dict[str, int]) -> dict[str, int]:
        return {k: v for k, v in left.items() if v > len(slept)}

    left = asyncio.run(retry_until_done_async(Backoff(0.05, 2.0, attempts=3), step,
                                              {"a": 1, "b": 9}, rng=random.Random(4),
                                              sleep=sleep))
    assert left == {"b": 9}
    rng = random.Random(4)
    assert slept == [rng.uniform(0, 0.1), rng.uniform(0, 0.2)]

    async def fails(left: dict[str, int]) -> dict[str, int]:
        raise ClientError({"Error": {"Code": "ValidationException"}}, "BatchWriteItem")

    with pytest.raises(ClientError):
        asyncio.run(retry_until_done_async(Backoff(0.05, 2.0, attempts=3), fails, {"a": 1},
                                           sleep=sleep))
    assert len(slept) == 2


def test_concurrent_async_loops_keep_their_own_count() -> None:
    async def go() -> list[tuple[list[int], list[int]]]:
        async def one(n: int) -> tuple[list[int], list[int]]:
            calls: list[int] = []

            async def step(left: list[int]) -> list[int]:
                calls.append(len(left))
                await asyncio.sleep(0)
                return left[1:]

            left = await retry_until_done_async(Backoff(0.0, 0.0, attempts=4), step,
                                                list(range(n)))
            return left, calls

        return list(await asyncio.gather(*(one(n) for n in (2, 6, 3))))

    assert asyncio.run(go()) == [([], [2, 1]), ([4, 5], [6, 5, 4, 3]), ([], [3, 2, 1])]


# -- call sites -------------------------------------------------------------------------


class _RefusingKinesis:
    """Accepts the first entry of every PutRecords and refuses the rest."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def put_records(self, StreamName: str, Records: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(len(Records))
        return {"Records": [{"ShardId": "s", "SequenceNumber": "1"}] + [
            {"ErrorCode": "InternalFailure", "ErrorMessage": "x"}] * (len(Records) - 1)}


def test_the_publisher_retries_what_was_refused_with_its_seeded_delays() -> None:
    events = generate(customers=3, days=30, seed=1)[:10]
    kinesis = _RefusingKinesis()
    slept: list[float] = []
    report = PublishReport()
    pub = Publisher(kinesis, "s", max_attempts=4, sleep=slept.append, rng=random.Random(5))
    with pytest.raises(PublishError) as err:
        pub.put_batch([(e, e.to_bytes()) for e in events], report)
    assert kinesis.calls == [10, 9, 8, 7]
    assert len(err.value.unacknowledged) == 6
    assert err.value.reasons == {"InternalFailure": 9 + 8 + 7 + 6}
    assert report.records == 4 and report.calls == 4 and report.retried_records == 9 + 8 + 7
    rng = random.Random(5)
    assert slept == [rng.uniform(0, min(5.0, 0.05 * 2**n)) for n in (1, 2, 3)]


class _Dynamo:
    """BatchWriteItem that is throttled once, then leaves one item unprocessed each call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        (table, requests), = RequestItems.items()
        self.calls.append(len(requests))
        if len(self.calls) == 1:
            raise ClientError({"Error": {"Code": "ThrottlingException"}}, "BatchWriteItem")
        return {"UnprocessedItems": {table: requests[1:]} if len(requests) > 1 else {}}


def test_dynamo_batches_retry_throttling_and_unprocessed_items_then_fail() -> None:
    client = _Dynamo()
    db = Dynamo(client, max_attempts=4, base_delay=0.0)
    items = [{"id": {"S": str(i)}} for i in range(5)]
    with pytest.raises(WriteFailed, match="2 item\\(s\\) still unprocessed in t after 4"):
        asyncio.run(db.batch_write("t", items))
    assert client.calls == [5, 5, 4, 3] and db.throttled == 1
    client = _Dynamo()
    asyncio.run(Dynamo(client, max_attempts=8, base_delay=0.0).batch_write("t", items[:3]))
    assert client.calls == [3, 3, 2, 1]
