"""The CDNOW purchase log (69,659 purchases by 23,570 customers, 1997-01 to 1998-06).

The file ships inside the PyPI package ``lifetimes`` (the ``demo`` extra); we
use the package only as the data's carrier and never import it. Each row
becomes one :class:`PurchaseEvent` with a deterministic id, so re-publishing
the log yields the same events. Rows carry a count of CDs and a dollar value
but no unit price: the value is spread over the CDs to the cent (for example
3 CDs for 10.00 become 1 x 3.34 + 2 x 3.33), so the line items add up exactly.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from models.events import LineItem, PurchaseEvent

MASTER = "CDNOW_master.txt"
SAMPLE = "CDNOW_sample.txt"


class DatasetMissing(RuntimeError):
    pass


def dataset_path(name: str = MASTER) -> Path:
    """Where the file lies inside the installed ``lifetimes`` package (not imported)."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetMissing(
            "the CDNOW log ships in the 'lifetimes' package: pip install '.[demo]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    if not path.is_file():
        raise DatasetMissing(f"{path} not found in the installed lifetimes package")
    return path


@dataclass(frozen=True, slots=True)
class CdnowRow:
    row: int  # 0-based data row number in the file, the basis of the event id
    customer_id: str
    day: str  # YYYYMMDD
    cds: int
    dollars: Decimal


def iter_rows(path: Path | None = None) -> Iterator[CdnowRow]:
    """Rows of CDNOW_master.txt (header skipped), ids kept zero-padded."""
    with (path or dataset_path()).open(encoding="ascii") as fh:
        n = 0
        for line in fh:
            parts = line.split()
            if not parts or not parts[0].isdigit():
                continue
            yield CdnowRow(n, parts[0], parts[1], int(parts[2]), Decimal(parts[3]))
            n += 1


def split_price(cents: int, quantity: int) -> list[tuple[int, int]]:
    """(quantity, unit cents) pairs that add up to ``cents`` exactly.

    >>> split_price(1000, 3)
    [(1, 334), (2, 333)]
    >>> split_price(0, 2)
    [(2, 0)]
    """
    base, extra = divmod(cents, quantity)
    parts = [(extra, base + 1), (quantity - extra, base)]
    return [(q, c) for q, c in parts if q > 0]


def to_event(row: CdnowRow) -> PurchaseEvent:
    """The purchase event of one CDNOW row. ``ValueError`` in words for a row that makes
    none: no CDs or a negative count, a date that is not YYYYMMDD, an amount that is not a
    finite number of dollars and cents of at least 0."""
    if row.cds <= 0:
        raise ValueError(f"{row.cds} CDs: an order has at least one")
    if not row.dollars.is_finite() or row.dollars < 0:
        raise ValueError(f"{row.dollars} dollars: not an amount of at least 0")
    if not (len(row.day) == 8 and row.day.isdigit()):
        raise ValueError(f"date {row.day[:20]!r} is not YYYYMMDD")
    try:
        day = datetime.strptime(row.day, "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"date {row.day!r} is not a day of the calendar (YYYYMMDD)") from None
    cents = int(row.dollars * 100)
    items = [
        LineItem(
            product_id="cdnow-cd",
            category="music",
            quantity=q,
            unit_price=Decimal(c) / 100,
        )
        for q, c in split_price(cents, row.cds)
    ]
    return PurchaseEvent(
        event_id=f"cdnow-{row.row:05d}",
        order_id=f"cdnow-order-{row.row:05d}",
        customer_id=row.customer_id,
        occurred_at=day,
        currency="USD",
        items=items,
        total=row.dollars,
        channel="web",
    )


def load_events(limit: int | None = None, path: Path | None = None) -> list[PurchaseEvent]:
    """The log as events, in file order (which is customer order, not time order)."""
    events: list[PurchaseEvent] = []
    for row in iter_rows(path):
        if limit is not None and len(events) >= limit:
            break
        events.append(to_event(row))
    return events


def time_ordered(events: list[PurchaseEvent]) -> list[PurchaseEvent]:
    """As an orders service would emit them: by time, ties in file order."""
    return sorted(events, key=lambda e: e.occurred_at)
