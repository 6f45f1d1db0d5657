"""DynamoDB's error classes in the store helper (issue 14, item 3): transient errors are
retried then raise WriteFailed; permanent ones are not retried, and a batch refused for one
bad item is split to find it; dead letters always fit, and one refused even so is counted,
never raised."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

from consumers.core import Rejected, StreamRecord
from consumers.stores.dead_letters import MAX_PAYLOAD_BYTES, DeadLetterStore
from consumers.stores.dynamo import Dynamo, WriteFailed, WriteRejected, classify
from tests.unit.consumers.memory_dynamo import MemoryDynamo, client_error

TABLES = {"t": ("id",), "dead": ("id",)}
TOO_BIG = "Item size has exceeded the maximum allowed size"


def item(i: int) -> dict[str, Any]:
    return {"id": {"S": f"k{i}"}, "n": {"N": str(i)}}


@pytest.mark.parametrize(("code", "status", "kind"), [
    ("ProvisionedThroughputExceededException", 400, "transient"),
    ("ThrottlingException", 400, "transient"),
    ("InternalServerError", 500, "transient"),
    ("ServiceUnavailable", 503, "transient"),
    ("ResourceNotFoundException", 400, "transient"),  # setup, not the item: hold
    ("ValidationException", 400, "permanent"),
    ("SerializationException", 400, "permanent"),
    ("ConditionalCheckFailedException", 400, "conflict"),
])
def test_errors_are_classified(code: str, status: int, kind: str) -> None:
    assert classify(client_error(code, "m", status)) == kind


def test_a_timeout_is_transient() -> None:
    assert classify(ReadTimeoutError(endpoint_url="http://x")) == "transient"


def test_a_batch_refused_for_one_item_is_split_to_find_it_and_not_retried() -> None:
    def fail(op: str, target: Any) -> Any:
        if op == "BatchWriteItem" and "k7" in str(target):
            return client_error("ValidationException", TOO_BIG, op=op)
        if op == "PutItem" and target["id"]["S"] == "k7":
            return client_error("ValidationException", TOO_BIG)
        return None

    client = MemoryDynamo(TABLES, fail=fail)
    rejected = asyncio.run(Dynamo(client, base_delay=0.0).put_all("t", [item(i)
                                                                        for i in range(30)]))
    assert [(r.item["id"]["S"], r.reason) for r in rejected] == [
        ("k7", f"ValidationException: {TOO_BIG}")]
    assert len(client.tables["t"]) == 29
    # one refused batch of 25, 25 single puts, one batch of 5: no retry of the refusal
    assert client.calls.count("BatchWriteItem") == 2 and client.calls.count("PutItem") == 25
    with pytest.raises(WriteRejected, match="1 item"):  # the raising form of the same
        asyncio.run(Dynamo(MemoryDynamo(TABLES, fail=fail), base_delay=0.0)
                    .batch_write("t", [item(7)]))


def test_transient_errors_are_retried_then_raise_write_failed() -> None:
    errors = [client_error("InternalServerError", "boom", 500, "BatchWriteItem"),
              ReadTimeoutError(endpoint_url="http://x")]
    client = MemoryDynamo(TABLES, fail=lambda op, _: errors.pop() if errors else None)
    db = Dynamo(client, base_delay=0.0, max_attempts=3)
    assert asyncio.run(db.put_all("t", [item(1)])) == []  # third call got through
    assert db.transient == 2 and len(client.tables["t"]) == 1
    always = MemoryDynamo(TABLES, fail=lambda op, _: client_error("ServiceUnavailable", "x",
                                                                    503))
    with pytest.raises(WriteFailed):
        asyncio.run(Dynamo(always, base_delay=0.0, max_attempts=3).put_if(
            "t", item(1), "attribute_not_exists(customer_id)"))
    assert always.calls == ["PutItem"] * 3


def letter(data: bytes, reason: str = "not_json: no") -> Rejected:
    return Rejected(StreamRecord(data, "49", "pk", "shard-0", "s"), "not_json", reason)


def test_a_huge_dead_letter_is_stored_truncated_with_its_size_and_digest() -> None:
    client = MemoryDynamo(TABLES)
    data = b"x" * (1024 * 1024)
    assert asyncio.run(DeadLetterStore(Dynamo(client), "dead").save([letter(data)])) == []
    (stored,) = client.tables["dead"].values()
    assert len(stored["payload"]["B"]) == MAX_PAYLOAD_BYTES
    assert stored["truncated"] == {"BOOL": True}
    assert stored["payload_bytes"] == {"N": str(len(data))}
    assert stored["payload_sha256"] == {"S": hashlib.sha256(data).hexdigest()}
    small = MemoryDynamo(TABLES)
    asyncio.run(DeadLetterStore(Dynamo(small), "dead").save([letter(b"{")]))
    assert "truncated" not in next(iter(small.tables["dead"].values()))


def test_a_dead_letter_refused_is_stored_bare_and_one_refused_even_so_never_raises(
        capsys: pytest.CaptureFixture[str]) -> None:
    def fail(op: str, target: Any) -> Any:
        if op not in {"PutItem", "BatchWriteItem"}:
            return None
        if op == "PutItem" and target["payload"]["B"] == b"" and target["id"]["S"] == "s/b/2":
            return None  # the bare form of the first goes in
        return client_error("ValidationException", "invalid attribute value", op=op)

    client = MemoryDynamo(TABLES, fail=fail)
    store = DeadLetterStore(Dynamo(client, base_delay=0.0), "dead")
    recs = [Rejected(StreamRecord(b"{", "2", "pk", "b", "s"), "not_json", "x"),
            Rejected(StreamRecord(b"{", "3", "pk", "b", "s"), "not_json", "y")]
    lost = asyncio.run(store.save(recs))
    assert [r.item["id"]["S"] for r in lost] == ["s/b/3"] and store.lost == 1
    assert "dead letter s/b/3 not stored: ValidationException" in capsys.readouterr().err
