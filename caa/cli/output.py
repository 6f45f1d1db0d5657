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
from collections.abc import Collection, Iterable, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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


def _flat(value: str) -> str:
    """One cell of a plain row: no tab or line break inside."""
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ")


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
    t = Table(title=title, show_header=False, caption=caption, caption_justify="left")
    t.add_column(overflow="fold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, v)
    console().print(t)


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
    t = Table(title=title, caption=caption, caption_justify="left")
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left", overflow="fold")
    for r in rows:
        t.add_row(*r)
    console().print(t)


def lines(title: str, rows: Iterable[tuple[str, str]]) -> None:
    """Commands to try, or any short list of ``what  why`` lines, under a title."""
    rows = list(rows)
    width = max((len(a) for a, _ in rows), default=0)
    print(title)
    for a, b in rows:
        print(f"  {a:<{width}}  {b}")


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
