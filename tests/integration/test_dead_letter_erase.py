"""An erasure finds the customer's dead letters by the table's index, not by a Scan of the
whole table (whose cost grows with every letter ever kept); a table made before the index
is still erased (by a Scan) and gets the index from ``ensure_resources``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from caa.aws import Aws
from caa.settings import Settings
from consumers.core import Rejected, StreamRecord
from consumers.stores.dead_letters import (
    BY_CUSTOMER_ID,
    BY_PARTITION_KEY,
    DeadLetterStore,
    index_stored_letters,
)
from consumers.stores.dynamo import Dynamo
from deploy.resources import INDEXES, ensure_index, ensure_table

pytestmark = pytest.mark.integration


def _letters(stream: str) -> list[Rejected]:
    """c1's letters on two shards (one after its erasure at shard-0/5), c2's, one without a
    partition key (such a letter has no index key: it must still be stored), and one keyed
    by an order id whose payload is c1's (a producer keying by order: a ``partition_key``
    dead letter carrying the customer's data)."""
    def letter(key: str, shard: str, seq: int, data: bytes = b"") -> Rejected:
        return Rejected(StreamRecord(data or b"{oops " + key.encode(), str(seq), key, shard,
                                     stream), "not_json", "not JSON")

    by_order = b'{"customer_id": "c1", "order_id": "o-7", "contact": {"email": "c1@x.org"}}'
    return [letter("c1", "shard-0", 1), letter("c1", "shard-0", 3),
            letter("c1", "shard-1", 2), letter("c1", "shard-0", 9),
            letter("c2", "shard-0", 4), letter("c2", "shard-1", 6), letter("", "shard-0", 7),
            letter("o-7", "shard-1", 8, by_order)]


async def _erase(s: Settings, table: str, customer_id: str, at: tuple[str, str, int]
                 ) -> tuple[int, list[str], list[str]]:
    """Save the letters, erase the customer's before ``at`` on the test's stream: how many
    went, the DynamoDB operations the erasure made, the ids left."""
    async with Aws(s).clients("dynamodb") as c:
        client = c["dynamodb"]
        assert await DeadLetterStore(Dynamo(client), table).save(_letters(s.stream_name)) == []
        # another store (another process): it does not remember them
        store = DeadLetterStore(Dynamo(client), table)
        calls: list[str] = []

        def record(model: Any, **_: Any) -> None:
            calls.append(model.name)

        client.meta.events.register("before-call.dynamodb", record)
        try:
            erased = await store.erase(customer_id, (s.stream_name, at))
        finally:
            client.meta.events.unregister("before-call.dynamodb", record)
        left = sorted(str(d["id"]) for d in await store.all())
        return erased, calls, left


def test_an_erasure_queries_the_customers_letters_only(
        fresh_settings: Callable[..., Settings]) -> None:
    s = fresh_settings()
    erased, calls, left = asyncio.run(_erase(s, s.table("dead-letters"), "c1",
                                             ("shard-0", "5", 0)))
    # shard-0/1, shard-0/3, shard-1/2 and the one keyed o-7; shard-0/9 came after it
    assert erased == 4
    assert "Query" in calls and "Scan" not in calls
    stream = s.stream_name
    assert left == sorted(f"{stream}/{x}" for x in ("shard-0/9", "shard-0/4", "shard-1/6",
                                                    "shard-0/7"))


def test_a_table_made_before_the_index_is_erased_by_a_scan_and_gets_the_index(
        fresh_settings: Callable[..., Settings]) -> None:
    s = fresh_settings()
    ddb = Aws(s).client("dynamodb")
    old = f"{s.table('dead-letters')}-old"
    assert ensure_table(ddb, old, "id", None)  # as every setup before the index made it
    erased, calls, left = asyncio.run(_erase(s, old, "c2", ("shard-9", "0", 0)))
    assert erased == 2 and "Scan" in calls
    assert len(left) == 6
    # as the code before the index stored a letter without a partition key: no item may keep
    # an empty index key once the index exists (every later write of it would be refused)
    ddb.put_item(TableName=old, Item={"id": {"S": "old/letter"}, "partition_key": {"S": ""},
                                      "status": {"S": "open"}})
    # with the first index only (as setup made it before the second): still a Scan
    first, second = INDEXES["dead-letters"]
    assert (first.name, second.name) == (BY_PARTITION_KEY, BY_CUSTOMER_ID)
    assert ensure_index(ddb, old, first) and not ensure_index(ddb, old, first)
    erased, calls, left = asyncio.run(_erase(s, old, "c1", ("shard-9", "0", 0)))
    assert erased == 5 and "Scan" in calls  # every c1 letter: the erasure was elsewhere
    # a letter stored before the second index, naming c7 and c8 under an order id: named
    # by setup when it adds the index (once: a second pass changes nothing)
    ddb.put_item(TableName=old, Item={
        "id": {"S": f"{s.stream_name}/shard-1/30"}, "stream": {"S": s.stream_name},
        "shard_id": {"S": "shard-1"}, "sequence_number": {"S": "30"},
        "partition_key": {"S": "o-9"}, "status": {"S": "open"},
        "payload": {"B": b'{"customer_id": "c7"}{"customer_id": "c8"}'}})
    assert ensure_index(ddb, old, second) and not ensure_index(ddb, old, second)
    assert index_stored_letters(ddb, old) == 1 and index_stored_letters(ddb, old) == 0
    erased, calls, left = asyncio.run(_erase(s, old, "c8", ("shard-9", "0", 0)))
    assert erased == 1 and "Scan" not in calls
    assert f"{s.stream_name}/shard-1/30" not in left
    described = ddb.describe_table(TableName=old)["Table"]["GlobalSecondaryIndexes"]
    assert [i["IndexName"] for i in described] == [BY_PARTITION_KEY, BY_CUSTOMER_ID]
    item = ddb.get_item(TableName=old, Key={"id": {"S": "old/letter"}})["Item"]
    assert "partition_key" not in item
    erased, calls, left = asyncio.run(_erase(s, old, "c1", ("shard-9", "0", 0)))
    assert erased == 5 and "Scan" not in calls and calls.count("Query") == 2
    assert len(left) == 4  # c2's two, saved again, the one without a key, the old one

    async def redrive_marks() -> None:  # the old letter can still be marked
        async with Aws(s).clients("dynamodb") as c:
            await DeadLetterStore(Dynamo(c["dynamodb"]), old).mark_rejected(
                "old/letter", "not_json", "still not JSON", "2026-01-01T00:00:00Z")

    asyncio.run(redrive_marks())
    item = ddb.get_item(TableName=old, Key={"id": {"S": "old/letter"}})["Item"]
    assert item["reason"]["S"] == "still not JSON"


def test_a_letter_naming_several_customers_goes_with_any_of_them(
        fresh_settings: Callable[..., Settings]) -> None:
    """A corrupt KPL aggregate under cQ's key holds cQ's, cR's and cP's records (cP's with
    an e-mail): erasing cP deletes it (only the first customer besides the key was indexed,
    and an escaped id was not read at all)."""
    s = fresh_settings()
    table = s.table("dead-letters")
    data = (b'\xf3\x89\x9a\xc2{"customer_id": "cQ"}{"customer_id": "cR"}'
            b'{"customer_id": "cust\\u0050", "contact": {"email": "p@example.org"}}')
    letter = Rejected(StreamRecord(data, "11", "cQ", "shard-0", s.stream_name),
                      "bad_aggregate", "corrupt")

    async def go() -> tuple[int, int, list[str]]:
        async with Aws(s).clients("dynamodb") as c:
            writer = DeadLetterStore(Dynamo(c["dynamodb"]), table)
            assert await writer.save([letter]) == []
            shown = len(await writer.all())
            erased = await DeadLetterStore(Dynamo(c["dynamodb"]), table).erase("custP")
            left = [i["id"]["S"] for i in await Dynamo(c["dynamodb"]).scan(table)]
            return shown, erased, left

    shown, erased, left = asyncio.run(go())
    assert shown == 1  # the letter; its index entry for custP is no letter
    assert erased == 1 and left == []



def test_setup_adds_the_index_to_an_older_table_and_names_its_letters_customers(
        fresh_settings: Callable[..., Settings]) -> None:
    """``caa setup`` on a dead-letter table made before the ``by-customer-id`` index: the
    index is added, reported as created, and the letters stored before it are named (setup
    found the index it added by the text of its line before)."""
    from caa.wiring import ensure_resources

    s = fresh_settings()
    aws = Aws(s)
    ddb = aws.client("dynamodb")
    table = s.table("dead-letters")
    ddb.delete_table(TableName=table)
    ddb.get_waiter("table_not_exists").wait(TableName=table)
    assert ensure_table(ddb, table, "id", None, INDEXES["dead-letters"][:1])  # the older setup
    ddb.put_item(TableName=table, Item={
        "id": {"S": f"{s.stream_name}/shard-0/1"}, "stream": {"S": s.stream_name},
        "shard_id": {"S": "shard-0"}, "sequence_number": {"S": "1"},
        "partition_key": {"S": "o-1"}, "status": {"S": "open"},
        "payload": {"B": b'{"customer_id": "c9", "order_id": "o-1"}'}})
    done = ensure_resources(s, aws.client("kinesis"), ddb)
    assert done.indexes == [(table, BY_CUSTOMER_ID)] and done.pending == []
    assert done.created == [f"index {BY_CUSTOMER_ID} on {table}",
                            "1 older dead letter(s) indexed by the customer(s) their payload "
                            "names"]
    item = ddb.get_item(TableName=table, Key={"id": {"S": f"{s.stream_name}/shard-0/1"}})
    assert item["Item"]["customer_id"] == {"S": "c9"}
    again = ensure_resources(s, aws.client("kinesis"), ddb)
    assert (again.created, again.pending, again.indexes) == ([], [], [])


def test_caa_erase_takes_a_key_no_event_can_carry_and_erases_its_letters(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    """A producer keying by e-mail (``jane+shop@example.com``: '+' is no customer id
    character): every record is a dead letter holding the customer's data, and `caa erase`
    refused the key ("not a customer id"), so none could be erased. It now erases them,
    audited, with no erasure event (none can carry the key)."""
    import json

    from caa.cli import main as cli
    from tests.unit.consumers.test_records import purchase

    s = fresh_settings(shard_count="1", refit_interval_s="0")
    key = "jane+shop@example.com"
    data = purchase("e1", key, 250)
    Aws(s).client("kinesis").put_record(StreamName=s.stream_name, Data=data, PartitionKey=key)
    assert cli.main(["consume", "--until-idle", "--no-refit", "--json"]) == 0
    ddb = Aws(s).client("dynamodb")
    (letter,) = ddb.scan(TableName=s.table("dead-letters"))["Items"]
    assert letter["kind"]["S"] == "schema" and letter["partition_key"]["S"] == key
    capsys.readouterr()

    assert cli.main(["erase", key, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["deleted"] == {"dead-letters": 1} and report["sequence_number"] == ""
    assert ddb.scan(TableName=s.table("dead-letters"))["Items"] == []
    (audit,) = ddb.scan(TableName=s.table("audit"))["Items"]
    assert key not in json.dumps(audit)  # no personal data in the audit entry
    assert cli.main(["erase", key]) == 0
    assert "no customer id an event can carry" in capsys.readouterr().out
