"""The branches of the dead-letter erase a real server does not show: an index that lags
behind the letters just written, and errors that are not about the index."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError

from consumers.core import Rejected, StreamRecord
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Dynamo


class _Lagging:
    """A client whose index shows none of the letters yet (DynamoDB's index is eventually
    consistent), or that answers every Query with ``error``."""

    def __init__(self, error: ClientError | None = None) -> None:
        self.error = error
        self.deleted: list[str] = []
        self.scanned = 0

    async def query(self, **kw: Any) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"Items": []}

    async def scan(self, **kw: Any) -> dict[str, Any]:
        self.scanned += 1
        return {"Items": []}

    async def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        for writes in RequestItems.values():
            self.deleted += [w["DeleteRequest"]["Key"]["id"]["S"] for w in writes]
        return {}


def _letter(key: str, seq: int) -> Rejected:
    return Rejected(StreamRecord(b"{", str(seq), key, "shard-0", "s"), "not_json", "no")


def test_the_letters_just_written_go_even_before_the_index_shows_them() -> None:
    client = _Lagging()
    batch = [_letter("c1", 1), _letter("c2", 2), _letter("c1", 3), _letter("c1", 8)]
    store = DeadLetterStore(Dynamo(client), "dl")
    assert asyncio.run(store.erase("c1", ("s", ("shard-0", "5", 0)), batch)) == 2
    assert sorted(client.deleted) == ["s/shard-0/1", "s/shard-0/3"]  # not c2's, not after


def test_a_missing_index_falls_back_to_a_scan_and_other_errors_raise() -> None:
    def error(code: str, message: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": message}}, "Query")

    missing = _Lagging(error("ValidationException",
                             "The table does not have the specified index: by-partition-key"))
    assert asyncio.run(DeadLetterStore(Dynamo(missing), "dl").erase("c1")) == 0
    assert missing.scanned > 0
    gone = _Lagging(error("ResourceNotFoundException", "Requested resource not found"))
    with pytest.raises(ClientError):
        asyncio.run(DeadLetterStore(Dynamo(gone), "dl").erase("c1"))
    assert gone.scanned == 0
