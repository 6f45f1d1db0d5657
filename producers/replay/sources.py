"""Where replayed records come from: files, an S3 prefix of archived events, the stream.

A source is a list of *parts* read one after another in a fixed order (files as given,
directories expanded in name order; S3 objects in key order; shards in id order), and
every record carries its *position* in its part: its ordinal (0, 1, ...) in a file or
an object, its sequence number in a shard (``sequence/sub-sequence number`` for a user record
of a KPL aggregate, which the stream source de-aggregates as the consumers do, with the
same library: one Kinesis record may hold many orders). A job's progress is therefore one cursor,
(part, position of the last record the target acknowledged): the parts before it are
done, and so are the records up to it. :meth:`Source.records` resumes after a cursor.

The sets of parts are fixed by the job: S3 objects written after the job started and
records that arrived on the stream after it started are not part of it (``until``),
so a resumed job reads the same records, and replaying a stream into itself ends.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from consumers.retry import Backoff, Jitter
from models.kpl import valid_user_records
from producers.replay.framing import detect_format, frame

CHUNK_BYTES = 1024 * 1024
#: GetRecords: at most 5 calls a second per shard
READ_INTERVAL_S = 0.2
#: GetRecords throttled: wait twice the interval, doubling per throttle in a row, at most 64x
READ_THROTTLED = Backoff(base=READ_INTERVAL_S, cap=64 * READ_INTERVAL_S, jitter=Jitter.NONE)

OnBytes = Callable[[int], None]


class SourceError(RuntimeError):
    """A source that cannot be read at all: a missing file, an unknown bucket or stream."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str  # absolute file path, s3://bucket/key, or shard id
    size: int | None = None  # bytes, when known (for progress)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    part: str
    position: str  # ordinal in a file or object; sequence number in a shard
    line: int  # where the record starts in a file or object; 0 on the stream
    data: bytes
    key: str  # the partition key: the customer id when the source knows it
    problem: tuple[str, str] | None = None  # (kind, reason): not even a record
    #: a KPL user record's sub-sequence number (0 for any other record)
    sub_sequence_number: int = 0

    @property
    def sequence_number(self) -> str:
        """The position without a KPL user record's ``/sub-sequence number``."""
        return self.position.split("/", 1)[0]

    @property
    def where(self) -> str:
        return f"{self.part}:{self.line}" if self.line else f"{self.part}/{self.position}"


@dataclass(frozen=True)
class Cursor:
    part: str
    position: str  # of the last record acknowledged in ``part``


class Source(ABC):
    #: the ``stream`` named by this source's dead letters (their id is origin/part/position)
    origin = "replay"

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """What a resumed job must find unchanged."""

    @abstractmethod
    def parts(self) -> list[Part]: ...

    @abstractmethod
    def read(self, part: Part, after: str | None, on_bytes: OnBytes) -> Iterator[SourceRecord]:
        """The records of ``part`` after position ``after`` (all of them when None)."""

    def records(self, cursor: Cursor | None, on_bytes: OnBytes) -> Iterator[SourceRecord]:
        """Every record after ``cursor``, part after part."""
        parts = self.parts()
        start = 0
        if cursor is not None:
            names = [p.name for p in parts]
            if cursor.part not in names:
                raise SourceError(f"the job stopped in {cursor.part}, which the source no "
                                  "longer has; start it again with --restart")
            start = names.index(cursor.part)
            on_bytes(sum(p.size or 0 for p in parts[:start]))
        for i, part in enumerate(parts[start:]):
            yield from self.read(part, cursor.position if cursor and i == 0 else None, on_bytes)


class Archive(Source):
    """Parts holding framed records (files, S3 objects), in ``fmt`` or detected by name."""

    def __init__(self, fmt: str = "auto") -> None:
        self.fmt = fmt

    @abstractmethod
    def chunks(self, part: Part) -> Iterator[bytes]: ...

    def read(self, part: Part, after: str | None, on_bytes: OnBytes) -> Iterator[SourceRecord]:
        skip = int(after) if after is not None else -1
        fmt = detect_format(part.name) if self.fmt == "auto" else self.fmt

        def counted() -> Iterator[bytes]:
            for chunk in self.chunks(part):
                on_bytes(len(chunk))
                yield chunk

        for i, f in enumerate(frame(counted(), fmt)):
            if i > skip:
                yield SourceRecord(part.name, str(i), f.line, f.data, f.key, f.problem)


class FileSource(Archive):
    def __init__(self, paths: list[Path], fmt: str = "auto") -> None:
        super().__init__(fmt)
        self.paths = paths
        self._parts: list[Part] | None = None

    def parts(self) -> list[Part]:
        if self._parts is None:
            files: list[Path] = []
            for p in self.paths:
                if p.is_dir():
                    files += sorted(f for f in p.rglob("*")
                                    if f.is_file() and not f.name.startswith("."))
                elif p.is_file():
                    files.append(p)
                else:
                    raise SourceError(f"{p}: no such file or directory")
            self._parts = [Part(str(f.resolve()), f.stat().st_size) for f in files]
        return self._parts

    def identity(self) -> dict[str, Any]:
        return {"kind": "files", "format": self.fmt,
                "files": [[p.name, p.size, Path(p.name).stat().st_mtime_ns]
                          for p in self.parts()]}

    def chunks(self, part: Part) -> Iterator[bytes]:
        with Path(part.name).open("rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk


class S3Source(Archive):
    """Objects under ``s3://bucket/prefix`` last modified no later than ``until``."""

    def __init__(self, s3: Any, bucket: str, prefix: str, until: datetime,
                 fmt: str = "auto") -> None:
        super().__init__(fmt)
        self.s3 = s3
        self.bucket = bucket
        self.prefix = prefix
        self.until = until
        self._parts: list[Part] | None = None

    def parts(self) -> list[Part]:
        if self._parts is None:
            found: list[Part] = []
            try:
                for page in self.s3.get_paginator("list_objects_v2").paginate(
                        Bucket=self.bucket, Prefix=self.prefix):
                    found += [Part(f"s3://{self.bucket}/{o['Key']}", int(o["Size"]))
                              for o in page.get("Contents", [])
                              if not o["Key"].endswith("/") and o["LastModified"] <= self.until]
            except self.s3.exceptions.NoSuchBucket:
                raise SourceError(f"s3://{self.bucket}: no such bucket") from None
            self._parts = sorted(found, key=lambda p: p.name)
        return self._parts

    def identity(self) -> dict[str, Any]:
        return {"kind": "s3", "bucket": self.bucket, "prefix": self.prefix,
                "format": self.fmt, "until": self.until.isoformat()}

    def chunks(self, part: Part) -> Iterator[bytes]:
        key = part.name.removeprefix(f"s3://{self.bucket}/")
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except self.s3.exceptions.NoSuchKey:
            raise SourceError(f"{part.name} was deleted while the job ran") from None
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()


def user_records(shard: str, sequence_number: str, data: bytes,
                 partition_key: str) -> list[SourceRecord]:
    """One Kinesis record as the consumers see it (:func:`consumers.sources.records.expand`):
    a valid KPL aggregate's user records, positioned ``sequence/sub``; any other record
    (plain, or a corrupt aggregate, which the decoder refuses as ``bad_aggregate``) whole."""
    users = valid_user_records(data)
    if users is None:
        return [SourceRecord(shard, sequence_number, 0, data, partition_key)]
    return [SourceRecord(shard, f"{sequence_number}/{i}", 0, u.data, u.partition_key,
                         sub_sequence_number=i) for i, u in enumerate(users)]


def _done(after: str | None) -> tuple[str, int]:
    """(sequence number, last sub-sequence number done) of a cursor inside an aggregate."""
    if after is None or "/" not in after:
        return "", -1
    seq, sub = after.split("/", 1)
    return seq, int(sub)


class KinesisSource(Source):
    """The records of every shard, open or closed, that arrived from ``since`` (AT_TIMESTAMP;
    the oldest kept when None) up to ``until``."""

    def __init__(self, kinesis: Any, stream: str, since: datetime | None, until: datetime,
                 limit: int = 10_000, sleep: Callable[[float], None] = time.sleep) -> None:
        self.kinesis = kinesis
        self.stream = stream
        self.origin = stream
        self.since = since
        self.until = until
        self.limit = limit
        self._sleep = sleep
        self.throttled = 0

    def identity(self) -> dict[str, Any]:
        return {"kind": "kinesis", "stream": self.stream,
                "since": self.since.isoformat() if self.since else None,
                "until": self.until.isoformat()}

    def parts(self) -> list[Part]:
        shards: list[Part] = []
        args: dict[str, Any] = {"StreamName": self.stream}
        try:
            while True:
                resp = self.kinesis.list_shards(**args)
                shards += [Part(s["ShardId"]) for s in resp["Shards"]]
                if not resp.get("NextToken"):
                    return sorted(shards, key=lambda p: p.name)
                args = {"NextToken": resp["NextToken"]}
        except self.kinesis.exceptions.ResourceNotFoundException:
            raise SourceError(f"stream {self.stream}: not found") from None

    def _iterator(self, shard: str, after: str | None) -> str:
        """After a plain record's position; at an aggregate's sequence number after one of
        its user records (``sequence/sub``: :meth:`read` passes over the ones done)."""
        kw: dict[str, Any] = {"StreamName": self.stream, "ShardId": shard}
        if after is not None and "/" in after:
            kw.update(ShardIteratorType="AT_SEQUENCE_NUMBER",
                      StartingSequenceNumber=after.split("/", 1)[0])
        elif after is not None:
            kw.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        elif self.since is not None:
            kw.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=self.since)
        else:
            kw.update(ShardIteratorType="TRIM_HORIZON")
        return str(self.kinesis.get_shard_iterator(**kw)["ShardIterator"])

    def read(self, part: Part, after: str | None, on_bytes: OnBytes) -> Iterator[SourceRecord]:
        """Until the shard ends (closed and drained), a record arrived after ``until``, or
        the shard is caught up (nothing more, nothing behind)."""
        errors = self.kinesis.exceptions
        iterator: str | None = self._iterator(part.name, after)
        done = _done(after)
        backoff = 0
        while iterator is not None:
            try:
                resp = self.kinesis.get_records(ShardIterator=iterator, Limit=self.limit)
            except errors.ExpiredIteratorException:
                iterator, done = self._iterator(part.name, after), _done(after)
                continue
            except errors.ProvisionedThroughputExceededException:
                self.throttled += 1
                backoff += 1
                self._sleep(READ_THROTTLED.delay(backoff))
                continue
            backoff = 0
            for r in resp.get("Records", []):
                arrived = r.get("ApproximateArrivalTimestamp")
                if isinstance(arrived, datetime) and arrived > self.until:
                    return
                on_bytes(len(r["Data"]))
                for rec in user_records(part.name, str(r["SequenceNumber"]), r["Data"],
                                        r.get("PartitionKey", "")):
                    if rec.sequence_number == done[0] and rec.sub_sequence_number <= done[1]:
                        continue  # user records of the aggregate the cursor is in, done
                    after = rec.position
                    yield rec
                done = ("", -1)
            iterator = resp.get("NextShardIterator")
            if not resp.get("Records") and resp.get("MillisBehindLatest", 0) == 0:
                return
            self._sleep(READ_INTERVAL_S)
