"""The write path with several writers and with refused writes (issue 14, items 3 and 8),
over an in-memory DynamoDB (tests/unit/consumers/memory_dynamo.py) whose calls yield to the
event loop in a drawn order: the real applier, stores and poller code.

- any interleaving of two writers over one customer's events gives one writer's state;
- a state or prediction DynamoDB refuses permanently puts that customer's records in the
  dead letters and the shard is checkpointed; a transient error holds the shard;
- a checkpoint that would move backwards is refused and counted.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.applier import BatchApplier
from consumers.core import StreamRecord
from consumers.registry import ModelRegistry, RegistryConfig
from consumers.sources.poller import Poller, Progress
from consumers.stores.checkpoints import CheckpointStore
from consumers.stores.customers import CustomerStore, state_from_item
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from models.events import MAX_EVENT_BYTES
from tests.unit.consumers.memory_dynamo import MemoryDynamo, client_error

NOW = datetime(2024, 6, 1, tzinfo=UTC)
TABLES = {"customers": ("customer_id",), "predictions": ("customer_id",), "dead": ("id",),
          "cps": ("group", "shard_id")}


class Models:
    """The models table in memory (what the registry calls)."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[int, dict[str, Any]]] = {}

    async def load(self, name: str) -> tuple[int, dict[str, Any]] | None:
        return self.docs.get(name)

    async def save(self, name: str, expected_version: int, body: dict[str, Any]) -> int:
        self.docs[name] = (expected_version + 1, body)
        return expected_version + 1

    async def put(self, name: str, body: dict[str, Any]) -> None:
        self.docs[name] = (0, body)


def applier(client: MemoryDynamo, cache: int = 0) -> BatchApplier:
    db = Dynamo(client, max_attempts=2, base_delay=0.0)
    registry = ModelRegistry(Models(), RegistryConfig(  # type: ignore[arg-type]
        n_segments=5, segment_seed=1, segment_warmup=10, forecast_model="pareto_nbd"))
    return BatchApplier(CustomerStore(db, "customers"), PredictionStore(db, "predictions"),
                        DeadLetterStore(db, "dead"), registry, MAX_EVENT_BYTES,
                        clock=lambda: NOW, cache_size=cache)


def purchase(cid: str, i: int) -> bytes:
    return json.dumps({
        "event_id": f"{cid}-e{i}", "order_id": f"{cid}-o{i}", "customer_id": cid,
        "occurred_at": f"2024-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", "currency": "USD",
        "items": [{"product_id": f"p{i % 3}", "category": "k", "quantity": 1,
                   "unit_price": f"{1 + i}.25"}], "total": f"{1 + i}.25"}).encode()


def record(cid: str, i: int, shard: str = "shard-0") -> StreamRecord:
    return StreamRecord(purchase(cid, i), str(100 + i), cid, shard, "s")


def stored(client: MemoryDynamo, cid: str) -> Any:
    return state_from_item(client.tables["customers"][(cid,)])


def _batches(recs: list[StreamRecord], sizes: list[int]) -> list[list[StreamRecord]]:
    out, i = [], 0
    for n in sizes:
        if i >= len(recs):
            break
        out.append(recs[i:i + n])
        i += n
    if i < len(recs):
        out.append(recs[i:])
    return out


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_interleaving_of_two_writers_gives_the_state_one_writer_gives(
        data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 12), label="events")
    recs = [record("c1", i, shard=f"shard-{i % 4}") for i in range(n)]
    owner = data.draw(st.lists(st.sampled_from("AB"), min_size=n, max_size=n), label="owner")
    # a zombie or a redelivery: some records reach both writers
    both = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="both")
    mine = {w: [r for r, o, b in zip(recs, owner, both, strict=True) if o == w or b]
            for w in "AB"}
    sizes = {w: data.draw(st.lists(st.integers(1, 4), max_size=6), label=f"sizes {w}")
             for w in "AB"}
    caches = data.draw(st.tuples(st.sampled_from([0, 100]), st.sampled_from([0, 100])))
    client = MemoryDynamo(TABLES, rng=random.Random(data.draw(st.integers(0, 2**32))))
    writers = {"A": applier(client, caches[0]), "B": applier(client, caches[1])}

    async def run(w: str) -> None:
        for batch in _batches(mine[w], sizes[w]):
            await writers[w].apply(batch)

    async def both_writers() -> None:
        await asyncio.gather(run("A"), run("B"))

    asyncio.run(both_writers())
    alone = MemoryDynamo(TABLES)
    asyncio.run(applier(alone).apply(recs))
    assert stored(client, "c1").comparable() == stored(alone, "c1").comparable()
    assert stored(client, "c1").purchases == n


def test_a_conflict_reloads_reapplies_and_refreshes_a_stale_cache() -> None:
    client = MemoryDynamo(TABLES)
    a, b = applier(client, cache=100), applier(client, cache=100)
    asyncio.run(a.apply([record("c1", 0)]))
    asyncio.run(b.apply([record("c1", 1)]))  # a's cache is stale now
    result = asyncio.run(a.apply([record("c1", 2)]))
    assert a.totals.conflicts == 1 and [o.status for o in result.outcomes] == ["applied"]
    assert stored(client, "c1").purchases == 3 and stored(client, "c1").version == 3
    assert a.cache.get_many(["c1"])[0]["c1"].version == 3  # refreshed, not stale
    assert [p.customer_id for p in result.predictions] == ["c1"]


TOO_BIG = "Item size has exceeded the maximum allowed size"


def refuse(table_key: str, code: str = "ValidationException", message: str = TOO_BIG,
           status: int = 400) -> Any:
    """A ``fail`` hook refusing every write of the item whose key is ``table_key``."""
    def fail(op: str, item: Any) -> Any:
        if op == "PutItem" and item.get("customer_id", {}).get("S") == table_key:
            return client_error(code, message, status)
        if op == "BatchWriteItem" and table_key in json.dumps(item, default=str):
            return client_error(code, message, status, op)
        return None
    return fail


def _poll_once(client: MemoryDynamo, recs: list[StreamRecord]) -> tuple[Poller, bool]:
    app = applier(client)
    db = app.customers.db
    poller = Poller(None, "s", CheckpointStore(db, "cps", "g"), app)

    async def go() -> bool:
        stop = asyncio.Event()
        stop.set()  # a hold returns at once
        raw = [{"Data": r.data, "SequenceNumber": r.sequence_number,
                "PartitionKey": r.partition_key} for r in recs]
        return await poller.apply_batch(Progress("shard-0", None), raw, False, stop)

    return poller, asyncio.run(go())


def test_a_state_refused_permanently_dead_letters_its_records_and_the_shard_goes_on() -> None:
    client = MemoryDynamo(TABLES, fail=refuse("big"))
    recs = [record("c1", 0), record("big", 1), record("big", 2), record("c2", 3)]
    poller, done = _poll_once(client, recs)
    assert done and poller.write_failures == 0
    assert client.tables["cps"][("g", "shard-0")]["sequence_number"]["S"] == "103"
    assert {c for (c,) in client.tables["customers"]} == {"c1", "c2"}
    assert {c for (c,) in client.tables["predictions"]} == {"c1", "c2"}
    letters = sorted(client.tables["dead"].values(), key=lambda d: d["id"]["S"])
    assert [(d["sequence_number"]["S"], d["kind"]["S"], d["reason"]["S"]) for d in letters] == [
        (s, "write_rejected", f"write_rejected: ValidationException: {TOO_BIG}")
        for s in ("101", "102")]
    assert poller.applier.totals.write_rejected == 2
    assert poller.applier.totals.rejected == 2 and poller.applier.totals.applied == 2


def test_a_prediction_refused_permanently_dead_letters_its_records() -> None:
    def fail(op: str, item: Any) -> Any:
        blob = json.dumps(item, default=str)
        if op in {"PutItem", "BatchWriteItem"} and '"p_alive"' in blob and '"big"' in blob:
            return client_error("ValidationException", "One or more parameter values were "
                                "invalid", 400, op)
        return None

    client = MemoryDynamo(TABLES, fail=fail)
    _, done = _poll_once(client, [record("c1", 0), record("big", 1)])
    assert done
    assert {c for (c,) in client.tables["predictions"]} == {"c1"}
    assert {c for (c,) in client.tables["customers"]} == {"c1", "big"}  # state written
    (letter,) = client.tables["dead"].values()
    assert letter["reason"]["S"].startswith("write_rejected: ValidationException: One or")


def test_a_transient_error_holds_the_shard_and_checkpoints_nothing() -> None:
    client = MemoryDynamo(TABLES, fail=refuse("c1", "InternalServerError", "oops", 500))
    poller, done = _poll_once(client, [record("c1", 0), record("c2", 1)])
    assert not done and poller.write_failures == 1
    assert client.tables["cps"] == {} and client.tables["dead"] == {}
    assert poller.applier.customers.db.transient == 2  # both attempts, then WriteFailed


def test_a_checkpoint_that_would_move_backwards_is_refused_and_counted() -> None:
    client = MemoryDynamo(TABLES)
    cps = CheckpointStore(Dynamo(client), "cps", "g")

    async def go() -> list[bool]:
        return [await cps.save("s", "99"), await cps.save("s", "1000"),
                await cps.save("s", "999"), await cps.save("s", "1000", ended=True),
                await cps.save("s", None)]

    assert asyncio.run(go()) == [True, True, False, True, False]
    assert cps.refused == 2
    assert client.tables["cps"][("g", "s")]["ended"]["BOOL"] is True
