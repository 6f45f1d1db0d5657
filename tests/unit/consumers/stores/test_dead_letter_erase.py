"""The branches of the dead-letter erase a real server does not show: an index that lags
behind the letters just written, a letter stored before the index with an empty partition
key, and errors that are not about the index."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from botocore.exceptions import ClientError

from consumers.core import Rejected, StreamRecord
from consumers.stores.dead_letters import (
    RECENT_S,
    DeadLetterStore,
    alias_of,
    dead_letter_items,
    named_customers,
)
from consumers.stores.dynamo import Dynamo


def _error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Query")


class _Lagging:
    """A client whose index shows none of the letters yet (DynamoDB's index is eventually
    consistent), or that answers every Query with ``error``."""

    def __init__(self, error: ClientError | None = None) -> None:
        self.error = error
        self.deleted: list[str] = []
        self.updates: list[str] = []
        self.scanned = 0
        self.stored: dict[str, dict[str, Any]] = {}

    async def query(self, **kw: Any) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"Items": []}

    async def scan(self, **kw: Any) -> dict[str, Any]:
        self.scanned += 1
        return {"Items": []}

    async def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        for writes in RequestItems.values():
            self.deleted += [w["DeleteRequest"]["Key"]["id"]["S"] for w in writes
                             if "DeleteRequest" in w]
            for w in writes:
                if "PutRequest" in w:
                    item = w["PutRequest"]["Item"]
                    self.stored[item["id"]["S"]] = item
                else:
                    self.stored.pop(w["DeleteRequest"]["Key"]["id"]["S"], None)
        return {}

    async def put_item(self, TableName: str, Item: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.stored[Item["id"]["S"]] = Item  # the letters' condition holds: none redriven
        return {}

    async def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        return {"Responses": {t: [self.stored[k["id"]["S"]] for k in r["Keys"]
                                  if k["id"]["S"] in self.stored]
                              for t, r in RequestItems.items()}}

    async def update_item(self, **kw: Any) -> dict[str, Any]:
        self.updates.append(kw["UpdateExpression"])
        if "REMOVE partition_key" not in kw["UpdateExpression"]:
            raise _error("ValidationException", "One or more parameter values are not valid. "
                         "A value specified for a secondary index key is not supported. The "
                         "AttributeValue for a key attribute cannot contain an empty string "
                         "value. IndexName: by-partition-key, IndexKey: partition_key")
        return {}


def _letter(key: str, seq: int) -> Rejected:
    return Rejected(StreamRecord(b"{", str(seq), key, "shard-0", "s"), "not_json", "no")


def test_the_letters_this_store_wrote_go_even_before_the_index_shows_them() -> None:
    client, now = _Lagging(), [0.0]
    store = DeadLetterStore(Dynamo(client), "dl", clock=lambda: now[0])
    asyncio.run(store.save([_letter("c1", 1), _letter("c2", 2), _letter("c1", 20)]))
    now[0] = RECENT_S / 2
    asyncio.run(store.save([_letter("c1", 3), _letter("c1", 8), _letter("", 9)]))
    assert asyncio.run(store.erase("c1", ("s", ("shard-0", "5", 0)))) == 2
    assert sorted(client.deleted) == ["s/shard-0/1", "s/shard-0/3"]  # not c2's, not after
    assert asyncio.run(store.erase("c1", ("s", ("shard-0", "5", 0)))) == 0  # once only
    # remembered for RECENT_S only (by then the index shows them): shard-0/20, kept by the
    # erasure before it, is forgotten; shard-0/8, written later, is not yet
    now[0] = RECENT_S + 1
    asyncio.run(store.save([_letter("c3", 10)]))
    client.deleted.clear()
    assert asyncio.run(store.erase("c1")) == 1 and client.deleted == ["s/shard-0/8"]


def test_a_letter_whose_payload_names_the_customer_under_another_key_goes_too() -> None:
    client = _Lagging()
    store = DeadLetterStore(Dynamo(client), "dl")
    order_keyed = Rejected(StreamRecord(b'{"customer_id": "c1", "order_id": "o-7"', "4", "o-7",
                                        "shard-0", "s"), "partition_key", "not its key")
    asyncio.run(store.save([order_keyed, _letter("o-8", 6)]))
    assert asyncio.run(store.erase("c1")) == 1 and client.deleted == ["s/shard-0/4"]


@pytest.mark.parametrize(("data", "key", "named"), [
    (b'{"customer_id": "c1", "order_id": "o-7"}', "o-7", ["c1"]),
    (b'{"customer_id":"c1"', "c1", []),  # its own key: the first index has it
    (b'{"customer_id": "c1", "customer_id": "c2"}', "c1", ["c2"]),  # a duplicate key
    (b'{"customer_id": "' + b"x" * 65 + b'"}', "k", []),  # no id an erasure can name
    (b'{"note": "\\"customer_id\\": \\"c9\\""}', "k", []),  # inside a text
    (b"\xff\xfe{", "k", []),
    (b'{"customer_id": "cust\\u0050"}', "k", ["custP"]),  # a JSON escape
    (b'{"customer\\u005fid": "c3"}', "k", ["c3"]),  # an escaped key
    (b'{"\\u0063ustomer_id": "c4"}', "k", ["c4"]),  # escaped anywhere
    (b'{"customer_id": "c\\u0000"}', "k", []),  # escapes to no identifier
    # a KPL aggregate (corrupt or nested): its user records' JSON, verbatim in it
    (b"\xf3\x89\x9a\xc2\n\x02cQ" + b'{"customer_id":"cQ"}\x1a{"customer_id":"cR"}'
     b'{"customer_id":"cP","contact":{"email":"p@x.org"}}{"customer_id":"cR"}', "cQ",
     ["cR", "cP"]),
])
def test_the_customers_a_payload_names(data: bytes, key: str, named: list[str]) -> None:
    assert named_customers(data, key) == named


def test_a_letter_naming_several_customers_is_erased_for_each() -> None:
    """One index entry per further customer (an item has one index key): erasing any of
    them deletes the letter; readers of letters never see the entries."""
    client = _Lagging()
    store = DeadLetterStore(Dynamo(client), "dl")
    aggregate = Rejected(StreamRecord(b'{"customer_id":"cQ"}{"customer_id":"cR"}'
                                      b'{"customer_id":"cP"}', "4", "cQ", "shard-0", "s"),
                         "bad_aggregate", "corrupt")
    asyncio.run(store.save([aggregate]))
    assert asyncio.run(store.erase("cP")) == 1  # one letter (and its entry for cP)
    assert sorted(client.deleted) == ["s/shard-0/4", "s/shard-0/4#cP"]
    items = [i for i in dead_letter_items(aggregate)]
    assert [i["id"]["S"] for i in items] == ["s/shard-0/4", "s/shard-0/4#cP"]
    assert items[0]["customer_id"] == {"S": "cR"} and "payload" not in items[1]
    assert items[0]["more_customers"] == {"SS": ["cP"]}
    assert items[1]["shard_id"] == {"S": "shard-0"} and items[1]["status"] == {"S": "alias"}


@pytest.mark.parametrize("who", ["cQ", "cR", "cP", "cS"])
def test_deleting_a_letter_takes_every_entry_of_it_and_counts_it_once(who: str) -> None:
    """Erased through its key (cQ), its first customer (cR) or an entry (cP, cS): the letter
    and all its entries go (an entry left would keep a customer's id and count a letter
    already gone at the next erasure)."""
    client = _Lagging()
    store = DeadLetterStore(Dynamo(client), "dl")
    aggregate = Rejected(StreamRecord(b'{"customer_id":"cQ"}{"customer_id":"cR"}'
                                      b'{"customer_id":"cP"}{"customer_id":"cS"}', "4", "cQ",
                                      "shard-0", "s"), "bad_aggregate", "corrupt")
    asyncio.run(store.save([aggregate]))
    assert len(client.stored) == 3
    assert asyncio.run(store.erase(who)) == 1 and client.stored == {}
    assert all(asyncio.run(store.erase(c)) == 0 for c in ("cQ", "cR", "cP", "cS"))


def test_a_hash_in_a_replayed_files_path_is_no_index_entry() -> None:
    assert alias_of("replay//data/orders#2.csv/5") is None
    assert alias_of("replay//data/orders#2.csv/5#c1") == "replay//data/orders#2.csv/5"
    assert alias_of("s/shard-0/49/2") is None and alias_of("#c1") is None


def test_a_missing_index_falls_back_to_a_scan_and_other_errors_raise() -> None:
    missing = _Lagging(_error("ValidationException",
                              "The table does not have the specified index: by-partition-key"))
    assert asyncio.run(DeadLetterStore(Dynamo(missing), "dl").erase("c1")) == 0
    assert missing.scanned > 0
    gone = _Lagging(_error("ResourceNotFoundException", "Requested resource not found"))
    with pytest.raises(ClientError):
        asyncio.run(DeadLetterStore(Dynamo(gone), "dl").erase("c1"))
    assert gone.scanned == 0


def test_a_letter_with_an_empty_partition_key_loses_it_when_marked() -> None:
    """A letter stored before the index with ``partition_key`` "": DynamoDB refuses any
    update of it once the index exists; the update then removes the attribute as well."""
    client = _Lagging()
    asyncio.run(DeadLetterStore(Dynamo(client), "dl").mark_redriven("s/0/1", "0/9", "t"))
    assert client.updates == ["SET #s = :s, redriven_at = :t, redriven_to = :p",
                              "SET #s = :s, redriven_at = :t, redriven_to = :p "
                              "REMOVE partition_key"]
