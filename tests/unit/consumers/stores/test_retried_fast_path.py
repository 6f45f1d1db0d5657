"""Dynamo._retried makes its first call outside the retrier (issue 17: one tenacity retrier
per state put was some 6% of the local consumer's CPU); the calls, the delays between them,
the counters and the errors are those of the retrier alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from consumers.retry import Backoff
from consumers.stores import dynamo as dynamo_module
from consumers.stores.dynamo import Dynamo, WriteFailed
from tests.unit.consumers.memory_dynamo import MemoryDynamo, client_error

TABLES = {"t": ("customer_id",)}
COND = "attribute_not_exists(customer_id)"


def item(i: int) -> dict[str, Any]:
    return {"customer_id": {"S": f"k{i}"}, "n": {"N": str(i)}}


def failing_first(n: int, code: str = "ThrottlingException", status: int = 400) -> MemoryDynamo:
    left = [n]

    def fail(op: str, _: Any) -> Exception | None:
        if left[0] > 0:
            left[0] -= 1
            return client_error(code, "slow down", status)
        return None

    return MemoryDynamo(TABLES, fail=fail)


def test_a_first_call_that_succeeds_never_builds_a_retrier(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    def no_retrier(*_: Any, **__: Any) -> Any:
        raise AssertionError("the retrier was built for a call that succeeded at once")

    monkeypatch.setattr(dynamo_module, "retry_until_done_async", no_retrier)
    client = MemoryDynamo(TABLES)
    assert asyncio.run(Dynamo(client).put_if("t", item(1), COND)) == "ok"
    assert client.calls == ["PutItem"] and len(client.tables["t"]) == 1


@pytest.mark.parametrize("failures", [1, 2, 4])
def test_transient_first_calls_are_retried_with_the_same_delays(
        failures: int, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[int] = []  # the attempt numbers whose delay was drawn
    real_delay = Backoff.delay

    def delay(self: Any, attempt: int, rng: Any = None) -> float:
        delays.append(attempt)
        return real_delay(self, attempt, rng)

    monkeypatch.setattr(Backoff, "delay", delay)
    client = failing_first(failures)
    db = Dynamo(client, base_delay=0.0, max_attempts=5)
    assert asyncio.run(db.put_if("t", item(1), COND)) == "ok"
    assert client.calls == ["PutItem"] * (failures + 1)
    assert db.throttled == failures and db.transient == 0
    assert delays == list(range(1, failures + 1))  # after call n, the delay of attempt n


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_transient_errors_outlasting_the_attempts_raise_after_exactly_max_attempts(
        attempts: int) -> None:
    client = failing_first(100, "ServiceUnavailable", 503)
    db = Dynamo(client, base_delay=0.0, max_attempts=attempts)
    with pytest.raises(WriteFailed, match=f"after {attempts} attempts"):
        asyncio.run(db.put_if("t", item(1), COND))
    assert client.calls == ["PutItem"] * attempts and db.transient == attempts


def test_conflicts_and_permanent_errors_are_answered_at_once() -> None:
    client = MemoryDynamo(TABLES)
    db = Dynamo(client, base_delay=0.0)
    assert asyncio.run(db.put_if("t", item(1), COND)) == "ok"
    assert asyncio.run(db.put_if("t", item(1), COND)) == "conflict"
    bad = MemoryDynamo(TABLES, fail=lambda op, _: client_error("ValidationException", "big"))
    answer = asyncio.run(Dynamo(bad, base_delay=0.0).put_if("t", item(2), COND))
    assert not isinstance(answer, str) and answer.code == "ValidationException"
    assert bad.calls == ["PutItem"]
    # after a transient first call, a conflict on the retry is still a conflict
    flaky = failing_first(1)
    flaky.tables["t"][("k3",)] = item(3)
    assert asyncio.run(Dynamo(flaky, base_delay=0.0).put_if("t", item(3), COND)) == "conflict"
    assert flaky.calls == ["PutItem"] * 2
