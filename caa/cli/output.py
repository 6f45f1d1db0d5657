"""How every ``caa`` command prints: a table for a person, JSON for a script (``--json``).

Tables never cut a value short: on a terminal their columns fold long values onto more lines
(no ellipsis); when stdout is not a terminal (a pipe, a file, a test) they are plain rows,
``key: value`` lines or tab-separated columns under a header, each after a ``# title`` line.
Progress bars and notes go to stderr, so stdout stays parseable.

>>> import io, contextlib
>>> buf = io.StringIO()
>>> with contextlib.redirect_stdout(buf):
...     pairs("customer 1", [("segment", "Champions"), ("spend", "12.50")])
>>> print(buf.getvalue(), end="")
# customer 1
segment: Champions
spend: 12.50
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from typing import Annotated, Any, overload

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from caa.progress import RichProgress

#: the ``--json`` flag of every command that prints a result
JsonFlag = Annotated[bool, typer.Option(
    "--json",
    help="Print the result as JSON (for scripts) instead of a table.")]


def is_terminal() -> bool:
    """Whether stdout is a terminal (else tables print as plain rows)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def console() -> Console:
    """A console on the current stdout (tests swap ``sys.stdout``)."""
    return Console(file=sys.stdout)


def print_json(obj: Any, *, sort_keys: bool = False, indent: int | None = 2) -> None:
    print(json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str), flush=True)


#: bidirectional controls (they reorder what follows on a terminal), with the line and
#: paragraph separators; beside every character of categories Cc, Cs, Co and Cn
_REORDERING = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                        "\u2066\u2067\u2068\u2069\u2028\u2029")


def _unsafe(c: str) -> bool:
    return c in _REORDERING or unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn")


def safe(value: str, *, lines: bool = False) -> str:
    """``value`` (text that may come from a record's payload: a category, a product, an
    analysis) fit for a terminal: control characters (ANSI escapes, NUL: Unicode category
    Cc), bidirectional overrides and unassigned or private code points written as Python
    escapes; other format and space characters (a zero-width joiner in an emoji, a
    non-breaking space) are kept, and so are line breaks with ``lines``.

    >>> safe("red \\x1b[31mX\\u202e"), safe("a\\r\\nb", lines=True), safe("1\\u202f234 \\u20ac")
    ('red \\\\x1b[31mX\\\\u202e', 'a\\nb', '1\\u202f234 €')
    """
    if value.isprintable():
        return value
    if lines:
        return "\n".join(safe(part) for part in value.replace("\r\n", "\n").split("\n"))
    return "".join(repr(c)[1:-1] if _unsafe(c) else c for c in value)


def _flat(value: str) -> str:
    """One cell of a plain row: no tab or line break inside, nothing a terminal acts on."""
    return safe(value.replace("\t", " ").replace("\r", " ").replace("\n", " "))


def pairs(title: str, rows: Iterable[tuple[str, str]], caption: str | None = None) -> None:
    """A two-column table of names and values; ``caption``: a line under it (plain rows: a
    ``# `` line under the title)."""
    rows = list(rows)
    if not is_terminal():
        print(f"# {title}")
        if caption:
            print(f"# {_flat(caption)}")
        for k, v in rows:
            print(f"{_flat(k).rstrip()}: {_flat(v)}")
        return
    t = Table(title=Text(title), show_header=False, caption=_text(caption),
              caption_justify="left")
    t.add_column(overflow="fold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(_text(k), _text(v))  # data, never markup: "[canned ...]" stays
    _print_fitting(t, title, None, pair_rows=rows, caption=caption)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]],
          right: Collection[str] = (), caption: str | None = None) -> None:
    """A table with a header; ``right``: the columns aligned right on a terminal;
    ``caption``: a line under it (plain rows: a ``# `` line under the title)."""
    if not is_terminal():
        print(f"# {title}")
        if caption:
            print(f"# {_flat(caption)}")
        print("\t".join(columns))
        for r in rows:
            print("\t".join(_flat(c) for c in r))
        return
    rows = [list(r) for r in rows]
    t = Table(title=Text(title), caption=_text(caption), caption_justify="left")
    for c in columns:
        t.add_column(_text(c), justify="right" if c in right else "left", overflow="fold")
    for r in rows:
        t.add_row(*(_text(c) for c in r))  # data, never markup
    _print_fitting(t, title, columns, table_rows=rows, caption=caption)


@overload
def _text(value: str) -> Text: ...
@overload
def _text(value: None) -> None: ...
def _text(value: str | None) -> Text | None:
    """A cell or caption as rich text: never markup, nothing a terminal acts on."""
    return None if value is None else Text(safe(value, lines=True))


def _print_fitting(t: Table, title: str, columns: Sequence[str] | None, *,
                   pair_rows: Sequence[tuple[str, str]] = (),
                   table_rows: Sequence[Sequence[str]] = (),
                   caption: str | None = None) -> None:
    """Print ``t`` when its columns fit the terminal without breaking words; otherwise the
    plain rows (``key: value`` lines, or one ``column: value`` block per row)."""
    out = console()
    if _fits(out, t):
        out.print(t)
        return
    out.print(Text(safe(title), style="bold"))
    if caption:
        out.print(_text(caption))
    if columns is None:
        for k, v in pair_rows:
            out.print(Text(f"{_flat(k).rstrip()}: {_flat(v)}"))
        return
    for i, r in enumerate(table_rows):
        if i:
            out.print()
        for c, v in zip(columns, r, strict=False):
            out.print(Text(f"{c}: {_flat(v)}"))


def _fits(out: Console, t: Table) -> bool:
    """Whether every column gets at least its longest word (rich folds the rest)."""
    widths = [0] * len(t.columns)
    for i, col in enumerate(t.columns):
        for cell in [col.header, *col.cells]:
            text = cell.plain if isinstance(cell, Text) else str(cell)
            longest = max((len(w) for w in text.split()), default=0)
            widths[i] = max(widths[i], longest)
    # borders and padding: 3 characters a column, plus 1
    return sum(widths) + 3 * len(widths) + 1 <= out.width


def lines(title: str, rows: Iterable[tuple[str, str]]) -> None:
    """Commands to try, or any short list of ``what  why`` lines, under a title."""
    rows = list(rows)
    width = max((len(a) for a, _ in rows), default=0)
    print(safe(title))
    for a, b in rows:
        print(f"  {safe(a):<{width}}  {_flat(b)}")


def progress() -> RichProgress:
    """Progress of the command's long phases, on stderr (bars on a terminal, a line as each
    phase starts and ends otherwise); a context manager."""
    return RichProgress(Console(stderr=True))


def note(text: str) -> None:
    """A line for the person at the terminal, on stderr."""
    print(text, file=sys.stderr, flush=True)


# the sections of ``caa --help``, in this order
START = "Start here"
PIPELINE = "Pipeline"
CUSTOMERS = "Customers and predictions"
AI = "AI analysis"
OPERATIONS = "Operations"
DATA = "Backfill, evaluation and reports"
LOCAL = "Serving and running"
