"""Records out of archived bytes: plain or gzip; JSON objects, CSV rows or CDNOW lines.

:func:`frame` turns one part (a file, an S3 object) into :class:`Framed` records in
order, each with the line it starts on, its bytes as the stream would carry them and
the customer id when the format names it. Whether a record is a valid event is for
the one decoder to say (:func:`models.events.decode_event`); a record that cannot even
be framed (a CSV row with the wrong number of fields, a CDNOW line that is not a
purchase, the rest of a corrupt gzip member) comes out with a ``problem``: its kind
and a reason a person can read.

**Compression**: detected by the gzip magic bytes, not the name; concatenated gzip
members (as ``cat a.gz b.gz`` makes) are read as one stream.

**json**: JSON objects one per line (JSON Lines), or back to back with no separator, as
Kinesis Data Firehose writes records to S3, or any mix. A stretch that does not parse
becomes one record up to the end of its line, or to the next ``}{`` where objects are back
to back (a Firehose object has no lines); the decoder rejects it as ``not_json``, and
framing goes on with the next record; so does one nested too deep for Python's parser or
holding an integer of more than 4,300 digits. Bytes that are not UTF-8 are kept as they are.

**csv**: the wire schema flattened to one row per line item, under a header naming the
columns (in any order): ``event_id, order_id, customer_id, occurred_at, currency,
total, product_id, category, quantity, unit_price``, optionally ``channel``,
``consent`` (true/false) and ``schema_version``. Consecutive rows with the same
event_id make one event; its event columns come from its rows, which must agree.
Refunds and cancellations ride in the same file with the optional ``type`` column
(``refund`` or ``cancellation``; empty or ``purchase`` for an order) and, for a refund,
``amount``: their lines are their rows (returned or cancelled lines), and a row with
empty product columns adds none (a refund of an amount alone, a cancellation without
its lines). Beside event_id, order_id, customer_id and occurred_at they take only the
columns that are not empty (a refund: currency and amount), so the decoder names a
column they must not have (``total``, ``channel``) rather than it being dropped.

**cdnow**: the CDNOW master file's own lines (customer id, YYYYMMDD, CDs, dollars),
converted as ``caa publish --dataset cdnow`` does, with the same ids (``cdnow-<row>``).

>>> [(f.line, f.data) for f in frame([b'{"a":1}{"a":2}\\n{"a":', b'3}\\nnope\\n'], "json")]
[(1, b'{"a":1}'), (1, b'{"a":2}'), (2, b'{"a":3}'), (3, b'nope')]
>>> rows = b"event_id,order_id,customer_id,occurred_at,currency,total,product_id,category,"
>>> rows += b"quantity,unit_price\\ne1,o1,c1,2024-01-01T00:00:00Z,EUR,3.00,milk,dairy,1,1.00\\n"
>>> rows += b"e1,o1,c1,2024-01-01T00:00:00Z,EUR,3.00,eggs,dairy,1,2.00\\n"
>>> [(f.line, f.key, len(json.loads(f.data)["items"])) for f in frame([rows], "csv")]
[(2, 'c1', 2)]
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError

from producers.datasets.cdnow import CdnowRow, to_event

FORMATS = ("json", "csv", "cdnow")
GZIP_MAGIC = b"\x1f\x8b"
#: how far (characters) past a record that does not parse yet we read to find where it ends;
#: a record whose end is not in what was read by then is cut there, and the rest of it passed
#: over (still one record; read in larger chunks, it may come whole: over 1 MiB all the same)
MAX_SPAN = 2 * 1024 * 1024
#: where a JSON object ends and the next begins with nothing but blanks between (``}{``)
_NEXT_OBJECT = re.compile(r"\}[ \t\r]*(?=\{)")

CSV_EVENT = ("event_id", "order_id", "customer_id", "occurred_at", "currency", "total")
CSV_ITEM = ("product_id", "category", "quantity", "unit_price")
CSV_OPTIONAL = ("channel", "consent", "schema_version", "type", "amount")
#: the columns every event has; a refund's or cancellation's others are taken when not empty
CSV_ALWAYS = ("event_id", "order_id", "customer_id", "occurred_at")


class FormatError(ValueError):
    """A whole part is unreadable in its format (a CSV header that is not ours)."""


class Corrupt(ValueError):
    """The bytes of a part stop decompressing."""


@dataclass(frozen=True, slots=True)
class Framed:
    line: int  # 1-based line the record starts on
    data: bytes  # the record as the stream would carry it
    key: str  # the customer id, when the format names one ("" otherwise)
    problem: tuple[str, str] | None = None  # (kind, reason): not even a record


def detect_format(name: str) -> str:
    """The format a part's name suggests; JSON when it says nothing (Firehose objects).

    >>> detect_format("s3://b/2024/01/x.csv.gz"), detect_format("CDNOW_master.txt")
    ('csv', 'cdnow')
    """
    base = PurePosixPath(name).name.lower().removesuffix(".gz").removesuffix(".gzip")
    if base.endswith(".csv"):
        return "csv"
    if "cdnow" in base and not base.endswith((".json", ".jsonl", ".ndjson")):
        return "cdnow"
    return "json"


def gunzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The bytes decompressed when they start as gzip does (every member), else as they are."""
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= len(GZIP_MAGIC):
            break
    if not head.startswith(GZIP_MAGIC):
        if head:
            yield head
        yield from it
        return
    member = zlib.decompressobj(wbits=31)
    fed = False
    for chunk in itertools.chain([head], it):
        data = chunk
        while data:
            fed = True
            try:
                out = member.decompress(data)
            except zlib.error as exc:
                raise Corrupt(f"gzip data is corrupt ({exc})") from None
            if out:
                yield out
            if not member.eof:
                break
            data = member.unused_data  # the next member, if any
            member, fed = zlib.decompressobj(wbits=31), False
    if fed and not member.eof:
        raise Corrupt("gzip data ends in the middle of a member (truncated)")


def texts(chunks: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 text; bytes that are not UTF-8 survive as surrogates (``surrogateescape``)."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    first = True
    for chunk in chunks:
        text = decoder.decode(chunk)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _key(obj: Any) -> str:
    cid = obj.get("customer_id") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 256 else ""


def _open_end(buf: str, stop: int) -> int:
    """Where a ``}`` followed by nothing but blanks up to ``stop`` is (an object's end, whose
    next object may start past ``stop``); ``stop`` when there is none."""
    j = stop
    while j > 0 and buf[j - 1] in " \t\r":
        j -= 1
    return j - 1 if j > 0 and buf[j - 1] == "}" else stop


def _passed_over(buf: str, pos: int) -> int | None:
    """Where the rest of a record cut at :data:`MAX_SPAN` ends, from ``pos`` on: at its
    line's end or the next object's start (None: not within ``buf``)."""
    nl = buf.find("\n", pos)
    after = _NEXT_OBJECT.search(buf, pos, nl if nl >= 0 else len(buf))
    if after is not None:
        return after.end()
    return nl if nl >= 0 else None


def json_records(chunks: Iterable[str]) -> Iterator[Framed]:
    decoder = json.JSONDecoder()
    it = iter(chunks)
    buf, pos, line, eof = "", 0, 1, False
    #: the rest of a record cut at MAX_SPAN is being passed over (it is that one record)
    skipping = False

    def more() -> None:
        nonlocal buf, pos, eof
        chunk = next(it, None)
        if chunk is None:
            eof = True
        else:
            buf, pos = buf[pos:] + chunk, 0

    while True:
        if skipping:
            resume = _passed_over(buf, pos)
            if resume is None:
                if eof:
                    return
                pos = max(pos, _open_end(buf, len(buf)))  # its "{" may be in the next chunk
                more()
                continue
            pos, skipping = resume, False
        while pos < len(buf) and buf[pos] in " \t\r\n":
            if buf[pos] == "\n":
                line += 1
            pos += 1
        if pos >= len(buf):
            if eof:
                return
            more()
            continue
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except (ValueError, RecursionError) as exc:
            # JSONDecodeError (a ValueError) says where it failed; nesting too deep for the
            # parser (RecursionError) and an integer beyond int's digit limit (a plain
            # ValueError) do not: the record is bad up to the end of its line all the same
            at = exc.pos if isinstance(exc, json.JSONDecodeError) else pos
            nl = buf.find("\n", at)
            # the next object back to back (a Firehose object has no lines to resume at)
            after = _NEXT_OBJECT.search(buf, max(at, pos + 1), nl if nl >= 0 else len(buf))
            # no end after the failure: the record may go on in the next chunk
            if not eof and nl < 0 and after is None and len(buf) - pos < MAX_SPAN:
                more()
                continue
            # no end within MAX_SPAN: the record is cut there, and what follows up to its end
            # is passed over (one record, not one per MAX_SPAN)
            skipping = not eof and nl < 0 and after is None
            end = (pos + MAX_SPAN if skipping else after.end() if after
                   else buf.find("\n", pos) if nl >= 0 else len(buf))
            yield Framed(line, _raw(buf[pos:end].rstrip()), "")
            line += buf.count("\n", pos, end)
            # passing over from the cut: from a "}" just before it, whose "{" may follow it
            pos = max(pos + 1, _open_end(buf, end)) if skipping else end
            continue
        if end == len(buf) and not eof and buf[end - 1] not in '}]"':
            more()  # a bare number at the end of a chunk may go on in the next one
            continue
        yield Framed(line, _raw(buf[pos:end]), _key(obj))
        line += buf.count("\n", pos, end)
        pos = end


def lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines with their ends kept (only ``\\n`` ends a line)."""
    rest = ""
    for chunk in chunks:
        rest += chunk
        start = 0
        while (nl := rest.find("\n", start)) >= 0:
            yield rest[start:nl + 1]
            start = nl + 1
        rest = rest[start:]
    if rest:
        yield rest


class _Tap:
    """Lines handed to ``csv.reader``, remembered until the row they made is taken."""

    def __init__(self, source: Iterable[str]) -> None:
        self._source = iter(source)
        self.taken: list[str] = []
        self.line = 0

    def __iter__(self) -> _Tap:
        return self

    def __next__(self) -> str:
        text = next(self._source)
        self.taken.append(text)
        self.line += 1
        return text

    def take(self) -> tuple[int, list[str]]:
        """(first line, its lines) of the row just read."""
        taken, self.taken = self.taken, []
        return self.line - len(taken) + 1, taken

    def again(self, texts: list[str]) -> None:
        """Read ``texts`` (lines taken) again, before the rest."""
        self._source = itertools.chain(texts, self._source)
        self.line -= len(texts)


#: the only column whose text may run over several lines (a quoted category): a row whose
#: other fields do was cut short by a stray quote
_MULTILINE = frozenset({"category"})


def _csv_header(row: list[str]) -> list[str]:
    header = [c.strip() for c in row]
    missing = [c for c in (*CSV_EVENT, *CSV_ITEM) if c not in header]
    unknown = [c for c in header if c not in (*CSV_EVENT, *CSV_ITEM, *CSV_OPTIONAL)]
    if missing or unknown or len(set(header)) != len(header):
        raise FormatError(
            "the CSV header must name the flattened wire schema, one row per line item: "
            f"{', '.join((*CSV_EVENT, *CSV_ITEM))} (optional: {', '.join(CSV_OPTIONAL)})"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + ("; a column is named twice" if len(set(header)) != len(header) else ""))
    return header


def _number(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text  # the decoder will say what is wrong with it


def _csv_event(rows: list[tuple[int, str, dict[str, str]]]) -> Framed:
    line, first = rows[0][0], rows[0][2]
    raw = _raw("".join(r[1] for r in rows))
    event_cols = [c for c in (*CSV_EVENT, *CSV_OPTIONAL) if c in first]
    differ = [c for c in event_cols if any(r[2][c] != first[c] for r in rows[1:])]
    if differ:
        return Framed(line, raw, first["customer_id"],
                      ("csv", f"line {line}: the rows of event {first['event_id']!r} "
                              f"disagree on {', '.join(differ)}"))
    kind = first.get("type", "").strip()
    purchase = kind in ("", "purchase")  # on the wire an order has no type
    obj: dict[str, Any] = {c: first[c] for c in CSV_EVENT
                           if purchase or c in CSV_ALWAYS or first[c].strip()}
    for c in CSV_OPTIONAL:
        value = first.get(c, "").strip()
        if not value or (c == "type" and purchase):
            continue
        if c == "consent" and value.lower() in ("true", "false"):
            obj[c] = value.lower() == "true"
        else:
            obj[c] = _number(value) if c == "schema_version" else value
    obj["items"] = [{"product_id": r["product_id"], "category": r["category"],
                     "quantity": _number(r["quantity"]), "unit_price": r["unit_price"]}
                    for _, _, r in rows
                    if purchase or any(r[c].strip() for c in CSV_ITEM)]
    return Framed(line, json.dumps(obj, separators=(",", ":")).encode(), first["customer_id"])


def _rows(tap: _Tap) -> Iterator[tuple[int, str, list[str] | str]]:
    """(first line, raw text, fields) of each CSV row, or the reason it is none: a field
    over the csv module's limit, or a stray quote (a row running over several lines where
    only a quoted category may: it stops at its first line, and the lines after it are
    read again, so one bad quote costs one row, not the rest of the file)."""
    reader = csv.reader(tap)
    header: list[str] | None = None
    while True:
        try:
            row: list[str] | str = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row = f"not CSV ({exc})"
        line, texts = tap.take()
        if len(texts) > 1 and not _spans_lines_rightly(row, header):
            tap.again(texts[1:])
            row, texts = ("an unclosed quote: the row ran into the lines after it (read on "
                          "their own)"), texts[:1]
        if header is None and isinstance(row, list) and any(c.strip() for c in row):
            header = [c.strip() for c in row]
        yield line, "".join(texts), row


def _spans_lines_rightly(row: list[str] | str, header: list[str] | None) -> bool:
    """May this row run over several lines: all its fields there, and a line break only in
    a (quoted) column of :data:`_MULTILINE`?"""
    if isinstance(row, str) or header is None or len(row) != len(header):
        return False
    return all(name in _MULTILINE or ("\n" not in f and "\r" not in f)
               for name, f in zip(header, row, strict=True))


def csv_records(chunks: Iterable[str]) -> Iterator[Framed]:
    tap = _Tap(lines(chunks))
    header: list[str] | None = None
    group: list[tuple[int, str, dict[str, str]]] = []
    for line, raw, row in _rows(tap):
        if isinstance(row, str):
            if group:
                yield _csv_event(group)
                group = []
            yield Framed(line, _raw(raw), "", ("csv", f"line {line}: {row}"))
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # a blank line
        if header is None:
            header = _csv_header(row)
            continue
        if len(row) != len(header):
            if group:
                yield _csv_event(group)
                group = []
            yield Framed(line, _raw(raw), "", (
                "csv", f"line {line}: {len(row)} field(s), the header has {len(header)}"))
            continue
        fields = dict(zip(header, row, strict=True))
        if group and fields["event_id"] != group[0][2]["event_id"]:
            yield _csv_event(group)
            group = []
        group.append((line, raw, fields))
    if group:
        yield _csv_event(group)


def cdnow_records(chunks: Iterable[str]) -> Iterator[Framed]:
    """Data rows are numbered from 0 in file order (a header line is skipped), so the
    master file gives the ids ``caa publish --dataset cdnow`` gives."""
    row = 0
    for number, text in enumerate(lines(chunks), 1):
        parts = text.split()
        if not parts or (number == 1 and not parts[0].isdigit()):
            continue
        n, row = row, row + 1
        try:
            if len(parts) != 4:
                raise ValueError(f"{len(parts)} field(s), expected 4: customer id, "
                                 "YYYYMMDD, CDs, dollars")
            event = to_event(CdnowRow(n, parts[0], parts[1], _cds(parts[2]),
                                      _dollars(parts[3])))
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}"
                               for e in exc.errors(include_url=False)[:3])
            yield Framed(number, _raw(text.strip()), parts[0], ("cdnow", f"line {number}: "
                                                                           f"{reason}"))
            continue
        except (ValueError, ArithmeticError) as exc:
            reason = str(exc)[:200] or type(exc).__name__
            yield Framed(number, _raw(text.strip()), parts[0], ("cdnow", f"line {number}: "
                                                                           f"{reason}"))
            continue
        yield Framed(number, event.to_bytes(), event.customer_id)


def _cds(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"CDs {text[:20]!r} is not a whole number")
    return int(text)


def _dollars(text: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError:  # decimal.InvalidOperation, whose text names a class
        raise ValueError(f"dollars {text[:20]!r} is not a number") from None


FRAMERS: dict[str, Callable[[Iterable[str]], Iterator[Framed]]] = {
    "json": json_records, "csv": csv_records, "cdnow": cdnow_records}


def frame(chunks: Iterable[bytes], fmt: str) -> Iterator[Framed]:
    """Records of one part; a part that stops decompressing ends with a ``corrupt`` one."""
    line = 1
    try:
        for record in FRAMERS[fmt](texts(gunzip(chunks))):
            line = record.line
            yield record
    except Corrupt as exc:
        yield Framed(line, b"", "", ("corrupt", f"after line {line}: {exc}"))
