"""Analysis requests: the message, what a batch sends, the sender's batching and retries."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from consumers.analysis.requests import (
    AnalysisRequest,
    RequestQueue,
    delay_of,
    requests_for,
)
from consumers.core import BatchResult
from consumers.stores.dynamo import WriteFailed
from models.state import CustomerState


def _result(states: dict[str, int], erased: set[str] | None = None) -> BatchResult:
    return BatchResult(outcomes=[], states={c: CustomerState(c, v) for c, v in states.items()},
                       predictions=[], dead_letters=[], learn=[], watermark=1000,
                       checkpoints={}, erased=erased or set())


def test_one_request_per_changed_customer_and_a_versionless_one_for_the_unchanged() -> None:
    out = requests_for(_result({"b": 3, "a": 1}, erased={"z"}), {"a", "b", "c", "z"}, now=5.0)
    assert [(r.customer_id, r.version, r.as_of, r.trigger, r.enqueued_at) for r in out] == [
        ("a", 1, 1000, "purchase", 5.0), ("b", 3, 1000, "purchase", 5.0),
        ("c", None, 1000, "purchase", 5.0)]


@pytest.mark.parametrize("body", ["", "[]", "{}", '{"v": 2, "customer_id": "a"}',
                                  '{"v": 1, "customer_id": "a"}',
                                  '{"v": 1, "customer_id": 1, "version": 1, "as_of": 1, '
                                  '"last_event_at": null, "trigger": "purchase", '
                                  '"enqueued_at": 1}',
                                  '{"v": 1, "customer_id": "a", "version": 1, "as_of": 1, '
                                  '"last_event_at": null, "trigger": "later", "enqueued_at": 1}'])
def test_anything_else_is_not_a_request(body: str) -> None:
    with pytest.raises(ValueError, match="request"):
        AnalysisRequest.from_json(body)


def test_the_delay_is_the_debounce_window_capped_at_sqs_limit() -> None:
    assert [delay_of(d) for d in (0, 0.4, 60, 899.6, 3600)] == [0, 0, 60, 900, 900]


class FakeSqs:
    """SendMessageBatch refusing the entries whose body names a customer in ``refuse``
    the first ``times`` times."""

    def __init__(self, refuse: set[str], times: int) -> None:
        self.refuse, self.times = refuse, times
        self.calls: list[list[dict[str, Any]]] = []
        self.bodies: list[str] = []

    async def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]
                                 ) -> dict[str, Any]:
        assert QueueUrl == "http://q" and len(Entries) <= 10
        self.calls.append(Entries)
        ok, failed = [], []
        for e in Entries:
            cid = json.loads(e["MessageBody"])["customer_id"]
            if cid in self.refuse and self.times > 0:
                failed.append({"Id": e["Id"], "Code": "InternalError", "Message": "try again",
                               "SenderFault": False})
            else:
                ok.append({"Id": e["Id"]})
                self.bodies.append(e["MessageBody"])
        if failed:
            self.times -= 1
        return {"Successful": ok, "Failed": failed}


def test_sent_in_tens_with_the_delay_and_refused_entries_sent_again() -> None:
    sqs = FakeSqs({"c07"}, times=2)
    q = RequestQueue(sqs, "http://q", delay_s=60, backoff_s=0)
    reqs = [AnalysisRequest(f"c{i:02}", 1, 0, None, "purchase", 0.0) for i in range(23)]
    assert asyncio.run(q.send(reqs)) == 23
    assert sorted(json.loads(b)["customer_id"] for b in sqs.bodies) == [r.customer_id
                                                                       for r in reqs]
    assert all(e["DelaySeconds"] == 60 for c in sqs.calls for e in c)
    assert sorted(len(c) for c in sqs.calls) == [1, 1, 3, 10, 10]  # c07's chunk: 2 retries


def test_what_still_fails_fails_the_batch() -> None:
    q = RequestQueue(FakeSqs({"a"}, times=99), "http://q", delay_s=0, attempts=3, backoff_s=0)
    with pytest.raises(WriteFailed, match="1 analysis request"):
        asyncio.run(q.send([AnalysisRequest("a", 1, 0, None, "purchase", 0.0)]))
