"""The dead-letters table: poison records with their raw payload and reason (key ``id``
= stream/shard/sequence number, and /sub-sequence number for a KPL user record after the
first: :func:`dead_letter_id`).

An item holds ``stream``, ``shard_id``, ``sequence_number``, ``partition_key``, the raw
``payload`` (binary), ``kind`` and ``reason`` of the rejection, ``arrival_ts`` (the
record's arrival in the stream, epoch seconds, when the adapter knew it), ``received_at`` and
``status`` (``open``, or ``redriven`` with ``redriven_at`` and ``redriven_to``; a redrive
that still rejects it sets ``kind``, ``reason`` and ``checked_at``). Readers get each item
as a plain dict of those attributes (text as str, the payload as bytes).

**Every dead letter fits in an item** (DynamoDB's limit is 400 KB, names and values): a
payload over :data:`MAX_PAYLOAD_BYTES` (350,000 bytes) is stored cut to that many bytes,
with ``truncated`` true, ``payload_bytes`` (the original size) and ``payload_sha256`` (hex
digest of the whole payload); a reason over :data:`MAX_REASON_CHARS` is cut too. Such a
letter cannot be redriven as it is (its payload is incomplete): it stays open with its
reason. Should DynamoDB still refuse a letter permanently, it is written again bare (no
payload, the refusal in its reason); a letter refused even so is counted in
:attr:`DeadLetterStore.lost`, logged on one line and returned by
:meth:`DeadLetterStore.save`: it never raises for it and never holds the shard (transient
errors do raise :class:`~consumers.stores.dynamo.WriteFailed`, as for every write).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from consumers.core import Position, Rejected, StreamRecord, arrival
from consumers.stores.dynamo import (
    ConditionalPut,
    Dynamo,
    Item,
    Rejection,
    error_code,
    from_attr,
    now_iso,
)
from models.events import is_identifier

#: payload bytes kept in a dead letter; the rest of the 400 KB item is left for the others
MAX_PAYLOAD_BYTES = 350_000
#: characters kept of a reason (a DynamoDB message can be long)
MAX_REASON_CHARS = 2_000
#: the table's global secondary index by ``partition_key`` (hash) and ``id`` (range), with
#: the position attributes projected (``deploy.resources.INDEXES``, the template): what
#: :meth:`DeadLetterStore.erase` queries. Letters with an empty partition key lack the
#: attribute (an index key cannot be empty) and are not in it
BY_PARTITION_KEY = "by-partition-key"
#: the global secondary index by ``customer_id`` (hash) and ``id`` (range), same projection:
#: the letters whose payload names a customer other than their partition key (a producer
#: keying records by order id, say: every record a ``partition_key`` dead letter carrying
#: the customer's data); sparse, only those letters have the attribute
BY_CUSTOMER_ID = "by-customer-id"
#: the attributes an erasure reads of each letter, and the projection that reads them
#: (``stream`` is a reserved word)
_POSITION_KEYS = ("id", "stream", "shard_id", "sequence_number", "sub_sequence_number")
_POSITION: dict[str, Any] = {
    "ProjectionExpression": ", ".join(f"#{k}" if k == "stream" else k for k in _POSITION_KEYS),
    "ExpressionAttributeNames": {"#stream": "stream"}}
#: seconds a store remembers the positions of the letters it wrote, for an erasure the same
#: process applies (the index shows a letter within about a second), and at most how many
RECENT_S = 60.0
RECENT_MAX = 10_000


#: ``"<key>": "<text>"`` pairs of JSON texts in a payload, JSON or not (a broken record is
#: the usual dead letter; a KPL aggregate holds its user records' JSON as it is); the key is
#: unescaped and compared (``"\\u0063ustomer_id"`` is ``customer_id``)
_PAIR = re.compile(rb'"((?:[^"\\]|\\.){1,80})"\s*:\s*"((?:[^"\\]|\\.){1,400})"')
#: at most this many customers are recorded of one letter (an aggregate holds many records)
MAX_NAMED = 100


def named_customers(data: bytes, partition_key: str) -> list[str]:
    """The customer ids the payload names, other than its partition key, in order, each
    once, at most :data:`MAX_NAMED`: whose letter it is too, for an erasure. JSON escapes
    are read (``"cust\\u0050"`` is ``custP``); a value that is no identifier an erasure
    can name (the wire schema's rule) is left out.

    >>> named_customers(b'{"customer_id": "c-9", "order_id": "o-1"', "o-1")
    ['c-9']
    >>> named_customers(b'{"customer_id": "c-9"}', "c-9")
    []
    """
    named: list[str] = []
    for match in _PAIR.finditer(data):
        key = match.group(1)
        if key != b"customer_id" and (b"\\" not in key or _text(key) != "customer_id"):
            continue
        text = _text(match.group(2))
        if (isinstance(text, str) and text != partition_key and text not in named
                and is_identifier(text)):
            named.append(text)
            if len(named) == MAX_NAMED:
                break
    return named


def _text(token: bytes) -> str | None:
    """A JSON string's content (between its quotes), unescaped; None if it is no JSON."""
    try:
        text = json.loads(b'"' + token + b'"')
    except ValueError:
        return None
    return text if isinstance(text, str) else None


def alias_item(letter: Item, customer_id: str) -> Item:
    """The index entry of a letter for one more customer its payload names (the index key
    holds one value an item): id ``<letter id>#<customer id>``, the letter's position, no
    payload, ``status`` alias: every reader of letters leaves it out (:func:`alias_of`)."""
    return {"id": {"S": f"{letter['id']['S']}{ALIAS}{customer_id}"},
            **{k: letter[k] for k in _POSITION_KEYS[1:] if k in letter},
            "customer_id": {"S": customer_id}, "status": {"S": "alias"}}


#: between a letter's id and the customer of an :func:`alias_item`
ALIAS = "#"


def alias_of(entry_id: str) -> str | None:
    """The letter id of an :func:`alias_item`'s id, None for a letter's own id. A letter's
    id ends in a sequence number or a replay's record number (``/<n>``: a ``#`` in a replayed
    file's path is followed by a ``/``), an entry's in ``#<customer id>``.

    >>> alias_of("s/shard-0/4#c1"), alias_of("replay//data/orders#2.csv/5")
    ('s/shard-0/4', None)
    """
    letter, sep, customer = entry_id.rpartition(ALIAS)
    return letter if sep and letter and is_identifier(customer) else None


def index_stored_letters(client: Any, table: str) -> int:
    """Give the letters stored before :data:`BY_CUSTOMER_ID` existed the customers their
    payload names (``customer_id``, ``more_customers``, the :func:`alias_item` entries), so
    an erasure finds them too; how many letters name one. ``client``: a boto3 DynamoDB
    client (``caa setup`` runs this once, when it adds the index). Idempotent: a letter
    that has ``customer_id`` is left as it is."""
    pages = client.get_paginator("scan").paginate(
        TableName=table, ConsistentRead=True, ExpressionAttributeNames={"#st": "status"},
        FilterExpression="attribute_not_exists(customer_id) AND #st <> :alias",
        ExpressionAttributeValues={":alias": {"S": "alias"}})
    done = 0
    for item in (i for page in pages for i in page.get("Items", [])):
        named = named_customers(bytes(item.get("payload", {}).get("B", b"")),
                                item.get("partition_key", {}).get("S", ""))
        if not named:
            continue
        letter, *entries = with_named({**item}, named)
        client.update_item(
            TableName=table, Key={"id": item["id"]},
            UpdateExpression="SET customer_id = :c" + (", more_customers = :m" if entries
                                                      else ""),
            ExpressionAttributeValues={":c": letter["customer_id"], **(
                {":m": letter["more_customers"]} if entries else {})})
        for entry in entries:
            client.put_item(TableName=table, Item=entry)
        done += 1
    return done


def _payload(data: bytes) -> Item:
    """The payload attributes: whole, or cut with the original size and digest."""
    if len(data) <= MAX_PAYLOAD_BYTES:
        return {"payload": {"B": data}}
    return {"payload": {"B": data[:MAX_PAYLOAD_BYTES]}, "truncated": {"BOOL": True},
            "payload_bytes": {"N": str(len(data))},
            "payload_sha256": {"S": hashlib.sha256(data).hexdigest()}}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 1] + "…"


def bare_item(refused: Rejection) -> Item:
    """A refused letter again without its payload: key, position, kind and a reason that
    names the refusal; size and digest of the payload kept."""
    item = refused.item
    data: bytes = item.get("payload", {}).get("B", b"")
    keep = {k: v for k, v in item.items() if k not in {"payload", "reason"}}
    return {**keep, "payload": {"B": b""}, "truncated": {"BOOL": True},
            "payload_bytes": item.get("payload_bytes", {"N": str(len(data))}),
            "payload_sha256": item.get("payload_sha256",
                                       {"S": hashlib.sha256(data).hexdigest()}),
            "reason": {"S": _cut(f"dead letter refused ({refused.reason}); payload dropped; "
                                 f"was: {item.get('reason', {}).get('S', '')}")},
            **({"partition_key": {"S": key[:256]}}
               if (key := item.get("partition_key", {}).get("S", "")) else {})}


def dead_letter_id(rec: StreamRecord) -> str:
    """stream/shard/sequence number, then /sub-sequence number for a user record of a KPL
    aggregate after the first (a plain record's id is as it always was).

    >>> dead_letter_id(StreamRecord(b"", "49", "c1", "shard-0", "s", sub_sequence_number=2))
    's/shard-0/49/2'
    """
    base = f"{rec.stream}/{rec.shard_id}/{rec.sequence_number}"
    return f"{base}/{rec.sub_sequence_number}" if rec.sub_sequence_number else base


def dead_letter_items(r: Rejected) -> list[Item]:
    """The letter, keyed in the second index by the first customer its payload names other
    than its partition key (:func:`named_customers`), and an :func:`alias_item` for each
    further one."""
    return with_named(dead_letter_item(r), named_customers(r.record.data,
                                                          r.record.partition_key))


def with_named(item: Item, named: list[str]) -> list[Item]:
    """``item`` keyed by the first of ``named`` (``customer_id``), naming the others
    (``more_customers``: what deleting it deletes too), and their :func:`alias_item`."""
    if named:
        item["customer_id"] = {"S": named[0]}
    if len(named) > 1:
        item["more_customers"] = {"SS": named[1:]}
    return [item, *(alias_item(item, cid) for cid in named[1:])]


def dead_letter_item(r: Rejected) -> Item:
    rec = r.record
    return {
        "id": {"S": dead_letter_id(rec)},
        "stream": {"S": rec.stream},
        "shard_id": {"S": rec.shard_id},
        "sequence_number": {"S": rec.sequence_number},
        # a KPL user record's, the first's (0) too: its letter is not the whole record's
        **({"sub_sequence_number": {"N": str(rec.sub_sequence_number)}}
           if rec.sub_sequence_number or rec.aggregated else {}),
        # absent when empty: it keys the table's index (a key attribute cannot be empty)
        **({"partition_key": {"S": rec.partition_key[:256]}} if rec.partition_key else {}),
        **_payload(rec.data),
        "kind": {"S": r.kind},
        "reason": {"S": _cut(r.reason)},
        "received_at": {"S": now_iso()},
        "status": {"S": "open"},
        **({"arrival_ts": {"N": repr(float(at))}} if (at := arrival(rec)) is not None else {}),
    }


def _kept(item: Item, stream: str, at: Position) -> bool:
    """Does an erasure at ``at`` in ``stream`` keep the letter ``item``: one of another
    stream, or of a record after ``at`` on its shard?"""
    if stream and item.get("stream", {}).get("S", stream) != stream:
        return True
    shard, seq, sub = at
    if item.get("shard_id", {}).get("S") != shard:
        return False
    mine = (int(item["sequence_number"]["S"]),
            int(item.get("sub_sequence_number", {}).get("N", "0")))
    return mine > (int(seq), sub)


#: a letter is written unless one of the same record was redriven already
_UNLESS_REDRIVEN = "attribute_not_exists(id) OR #s <> :r"


@dataclass
class DeadLetterStore:
    """Poison records with their raw payload; keyed by position, so a re-read of an open
    letter's record overwrites it, and one of a letter already redriven leaves it as it is
    (its redrive stays on record, and it is not reopened: a replay of the stream, or a
    consumer re-reading after a restart, meets the same records again)."""

    db: Dynamo
    table: str
    #: letters DynamoDB refused even bare (logged, not stored)
    lost: int = 0
    #: seconds, for :data:`RECENT_S`
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    #: (when, customers, position attributes) of the letters written in the last
    #: :data:`RECENT_S`, oldest first (no payload kept): customers are the partition key
    #: and the customer the payload names (:func:`named_customers`)
    _recent: deque[tuple[float, frozenset[str], Item]] = field(default_factory=deque,
                                                                repr=False)

    async def save(self, rejected: Sequence[Rejected]) -> list[Rejection]:
        """Write the letters; the ones DynamoDB refused even bare (usually none). Never
        raises for a refused letter (module docstring); transient errors outlasting the
        retries raise :class:`~consumers.stores.dynamo.WriteFailed`."""
        items = [i for r in rejected for i in dead_letter_items(r)]
        answers = await self.db.put_each_if(self.table, [
            ConditionalPut(i, _UNLESS_REDRIVEN, {"#s": "status"}, {":r": {"S": "redriven"}})
            for i in items]) if items else []
        refused = [a for a in answers if isinstance(a, Rejection)]
        self._remember(items)
        if not refused:
            return []
        lost = await self.db.put_all(self.table, [bare_item(r) for r in refused])
        self.lost += len(lost)
        for r in lost:
            print(f"dead letter {r.item.get('id', {}).get('S', '?')} not stored: {r.reason}",
                  file=sys.stderr, flush=True)
        return lost

    def _remember(self, items: list[Item]) -> None:
        now, recent = self.clock(), self._recent
        recent.extend((now, keys, {k: i[k] for k in _POSITION_KEYS if k in i})
                      for i in items if (keys := _customers(i)))
        while recent and (len(recent) > RECENT_MAX or recent[0][0] < now - RECENT_S):
            recent.popleft()

    async def all(self, segments: int = 4) -> list[dict[str, Any]]:
        """Every letter (not the index entries of :func:`alias_item`)."""
        return [from_attr({"M": i}) for i in await self.db.scan(self.table, segments=segments)
                if i.get("status", {}).get("S") != "alias"]

    async def open(self) -> list[dict[str, Any]]:
        """The open dead letters, by id: what a redrive re-checks."""
        return sorted((d for d in await self.all() if d.get("status") == "open"),
                      key=lambda d: str(d["id"]))

    async def by_arrival(self, open_only: bool = True) -> list[dict[str, Any]]:
        """The open dead letters (every one with ``open_only=False``), oldest first: what
        ``caa dlq list`` shows."""
        letters = [d for d in await self.all(segments=1)
                   if not open_only or d.get("status") == "open"]
        return sorted(letters, key=lambda d: str(d["received_at"]))

    async def mark_rejected(self, letter_id: str, kind: str, reason: str, at: str) -> None:
        """Re-checked and still rejected: it stays open with this check's reason."""
        await self._update(letter_id, "SET #k = :k, reason = :r, checked_at = :t",
                           {"#k": "kind"}, {":k": {"S": kind}, ":r": {"S": reason},
                                            ":t": {"S": at}})

    async def mark_redriven(self, letter_id: str, position: str, at: str) -> None:
        """Put back on the stream at ``position`` (shard/sequence number)."""
        await self._update(letter_id, "SET #s = :s, redriven_at = :t, redriven_to = :p",
                           {"#s": "status"}, {":s": {"S": "redriven"}, ":t": {"S": at},
                                              ":p": {"S": position}})

    async def _update(self, letter_id: str, expression: str, names: dict[str, str],
                      values: Item) -> None:
        """UpdateItem; a letter stored before the index with an empty partition key (which
        no item may have once the index exists: DynamoDB refuses every write of it) loses
        the attribute in the same update."""
        kw: dict[str, Any] = {"TableName": self.table, "Key": {"id": {"S": letter_id}},
                              "UpdateExpression": expression,
                              "ExpressionAttributeNames": names,
                              "ExpressionAttributeValues": values}
        try:
            await self.db.client.update_item(**kw)
        except ClientError as exc:
            if not _empty_index_key(exc):
                raise
            await self.db.client.update_item(
                **kw | {"UpdateExpression": f"{expression} REMOVE partition_key"})

    async def erase(self, customer_id: str, before: tuple[str, Position] | None = None
                    ) -> int:
        """Delete the customer's dead letters: those published under their partition key
        and those whose payload names them under another key (:func:`named_customers`);
        how many.

        ``before``: the stream and position of an erasure event the consumer applied; the
        letters of records after it on its shard (a new customer's, in the same batch) are
        kept, and so are other streams' (a table shared by several).

        A Query of each index, :data:`BY_PARTITION_KEY` and :data:`BY_CUSTOMER_ID` (the
        customer's letters only: the cost does not grow with the table). The indexes are
        eventually consistent (a letter shows there within about a second), so the letters
        this store wrote in the last
        :data:`RECENT_S` seconds are deleted by key as well: an erasure applied by the
        process that wrote the customer's letters just before (its batch, the batches before
        it) misses none; a letter another process wrote under a second before can be missed
        (``caa erase`` again deletes it). A table without the index (made before it, or
        while it is being built) is read by a strongly consistent Scan of the whole table."""
        try:
            items = [i for index, key in ((BY_PARTITION_KEY, "partition_key"),
                                          (BY_CUSTOMER_ID, "customer_id"))
                     for i in await self._indexed(index, key, customer_id)]
        except ClientError as exc:
            if not _no_index(exc):
                raise
            items = await self.db.scan(
                self.table, FilterExpression="partition_key = :c OR customer_id = :c",
                ExpressionAttributeValues={":c": {"S": customer_id}}, ConsistentRead=True,
                **_POSITION)
        items += [i for _, keys, i in self._recent if customer_id in keys]
        found = {i["id"]["S"] for i in items if before is None or not _kept(i, *before)}
        entries = {i for i in found if alias_of(i) is not None}
        # the letters (also of the entries found), as stored: those gone are not counted,
        # and each takes its other customers' entries with it
        letters = await self.db.batch_get(
            self.table, "id", (found - entries) | {str(alias_of(i)) for i in entries},
            ProjectionExpression="id, more_customers")
        ids = entries | {i["id"]["S"] for i in letters} | {
            f"{i['id']['S']}{ALIAS}{c}" for i in letters
            for c in i.get("more_customers", {}).get("SS", [])}
        if ids:
            await self.db.batch_delete(self.table, [{"id": {"S": i}} for i in sorted(ids)])
        # deleted: a second erasure (a batch read again) neither deletes nor counts them
        self._recent = deque(r for r in self._recent if r[2]["id"]["S"] not in found | ids)
        return len(letters)

    async def _indexed(self, index: str, key: str, customer_id: str) -> list[Item]:
        return await self.db.query(
            self.table, IndexName=index, KeyConditionExpression=f"{key} = :c",
            ExpressionAttributeValues={":c": {"S": customer_id}}, **_POSITION)


def _customers(item: Item) -> frozenset[str]:
    """Whose letter ``item`` is: its partition key, and the customer its payload names."""
    return frozenset(v["S"] for k in ("partition_key", "customer_id") if (v := item.get(k)))


def _empty_index_key(exc: ClientError) -> bool:
    """Is this DynamoDB's refusal of an item whose index key is an empty string?"""
    message = str(exc.response.get("Error", {}).get("Message", "")).lower()
    return (error_code(exc) == "ValidationException" and "empty string" in message
            and "index" in message)


def _no_index(exc: ClientError) -> bool:
    """Is this the answer to a Query of an index the table lacks or is building?
    (DynamoDB: ValidationException, "The table does not have the specified index" or
    "Cannot read from backfilling global secondary index"; moto: ResourceNotFoundException,
    "Invalid index")"""
    return (error_code(exc) in ("ValidationException", "ResourceNotFoundException")
            and "index" in str(exc.response.get("Error", {}).get("Message", "")).lower())
