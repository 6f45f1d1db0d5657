from __future__ import annotations

import itertools
from collections import Counter
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from producers.datasets.cdnow import dataset_path, iter_rows, load_events, split_price, to_event
from producers.datasets.synthetic import generate
from producers.publisher import Publisher, PublishError, batches


def test_cdnow_loader_reads_the_whole_log():
    rows = list(iter_rows())
    assert len(rows) == 69_659
    assert len({r.customer_id for r in rows}) == 23_570
    assert rows[0].customer_id == "00001"
    assert sum(1 for r in rows if r.dollars == 0) == 80
    assert min(r.day for r in rows) == "19970101" and max(r.day for r in rows) == "19980630"


def test_cdnow_events_are_deterministic_and_add_up_to_the_cent():
    first = load_events(limit=2000)
    again = load_events(limit=2000)
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len({e.event_id for e in first}) == 2000
    for row, e in zip(iter_rows(), first, strict=False):
        assert e.total == row.dollars
        assert sum(i.quantity for i in e.items) == row.cds
        assert e.customer_id == row.customer_id


@pytest.mark.parametrize(("cents", "qty"), [(1000, 3), (0, 4), (1, 2), (2933, 2), (5, 7)])
def test_split_price_is_exact(cents: int, qty: int):
    parts = split_price(cents, qty)
    assert sum(q for q, _ in parts) == qty
    assert sum(q * c for q, c in parts) == cents
    assert all(c >= 0 for _, c in parts)


def test_dataset_path_points_inside_lifetimes():
    assert dataset_path().name == "CDNOW_master.txt"


def test_synthetic_stream_has_product_cycles_and_bursts():
    events = generate(customers=50, days=90, seed=3)
    assert events == generate(customers=50, days=90, seed=3)
    assert events != generate(customers=50, days=90, seed=4)
    per_customer = Counter(e.customer_id for e in events)
    assert len(per_customer) == 50 and min(per_customer.values()) >= 3
    by_customer: dict[str, list[Any]] = {}
    for e in events:
        by_customer.setdefault(e.customer_id, []).append(e.occurred_at)
    gaps = [
        (b - a).total_seconds()
        for ts in by_customer.values()
        for a, b in itertools.pairwise(ts)
    ]
    assert any(g <= 15 * 60 for g in gaps), "no burst of orders minutes apart"
    products = Counter(i.product_id for e in events for i in e.items)
    assert len(products) > 10 and max(products.values()) > 20


def test_batches_respect_record_and_byte_limits():
    events = generate(customers=40, days=60, seed=1)
    entries = [(e, e.to_bytes()) for e in events]
    by_count = list(batches(entries, max_records=7))
    assert all(len(b) <= 7 for b in by_count)
    assert [e for b in by_count for e, _ in b] == events  # order kept
    limit = 3 * max(len(d) for _, d in entries)
    by_size = list(batches(entries, max_bytes=limit))
    assert all(sum(len(d) + len(e.customer_id) for e, d in b) <= limit for b in by_size)
    assert sum(len(b) for b in by_size) == len(events)


def _client() -> Any:
    return boto3.client("kinesis", region_name="eu-central-1", aws_access_key_id="x",
                        aws_secret_access_key="x")


def _ok(n: int) -> dict[str, Any]:
    return {"SequenceNumber": str(n), "ShardId": "shardId-000000000000"}


def test_partial_failure_retries_only_the_failed_entries():
    client = _client()
    events = generate(customers=3, days=20, seed=2)[:4]
    fail = {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}
    with Stubber(client) as stub:
        stub.add_response("put_records", {"FailedRecordCount": 2,
                                          "Records": [_ok(1), fail, _ok(2), fail]})
        stub.add_response(
            "put_records", {"Records": [_ok(3), _ok(4)]},
            expected_params={"StreamName": "s", "Records": [
                {"Data": events[i].to_bytes(), "PartitionKey": events[i].customer_id}
                for i in (1, 3)]},
        )
        report = Publisher(client, "s", sleep=lambda _: None).publish(events)
    assert report.records == 4 and report.retried_records == 2 and report.calls == 2


def test_last_attempt_hands_back_every_unacknowledged_event():
    client = _client()
    events = generate(customers=3, days=20, seed=2)[:3]
    fail = {"ErrorCode": "InternalFailure", "ErrorMessage": "boom"}
    sleeps: list[float] = []
    with Stubber(client) as stub:
        stub.add_response("put_records", {"FailedRecordCount": 1,
                                          "Records": [_ok(1), fail, _ok(2)]})
        stub.add_response("put_records", {"FailedRecordCount": 1, "Records": [fail]})
        stub.add_response("put_records", {"FailedRecordCount": 1, "Records": [fail]})
        with pytest.raises(PublishError) as info:
            Publisher(client, "s", max_attempts=3, sleep=sleeps.append).publish(events)
    assert info.value.unacknowledged == [events[1]]
    assert info.value.reasons == {"InternalFailure": 3}
    assert "1 event(s) were not acknowledged" in str(info.value)
    assert len(sleeps) == 2 and all(s >= 0 for s in sleeps)


def test_zero_dollar_rows_are_valid_purchases():
    row = next(r for r in iter_rows() if r.dollars == 0)
    e = to_event(row)
    assert e.total == Decimal("0.00") and all(i.unit_price == 0 for i in e.items)
