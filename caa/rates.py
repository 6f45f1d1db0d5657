"""The operator's exchange rates (``CAA_FX_RATES``), read once at the edge into
:class:`models.money.Rates` for the reporting currency (``CAA_REPORTING_CURRENCY``).

A rate is the value of **one unit** of a currency in the file's base currency. Two formats,
told apart by the file's suffix (``.json`` / ``.csv``; otherwise by its first character):

JSON, one date for every rate::

    {"base": "USD", "date": "2026-11-30", "rates": {"EUR": 1.08, "JPY": 0.0067}}

CSV, a header and one row per currency (``base`` is an optional fourth column; without it
the rates are in the reporting currency)::

    currency,rate,date
    EUR,1.08,2026-11-30
    JPY,0.0067,2026-11-30

**The base.** When the base is the reporting currency the rates are used as they are. When
it is another currency, the file must also give the reporting currency's rate in that base,
and every rate is converted through it (``rate / rate[reporting]``; the base itself gets
``1 / rate[reporting]``): a EUR-based file ``{"USD": 1.08, "JPY": 0.0062}`` reports in USD as
EUR 1/1.08 = 0.9259..., JPY 0.0062/1.08. A base without the reporting currency's rate is
refused. The dates (ISO ``YYYY-MM-DD``) are required; when the CSV rows give different dates,
the rates' date is the ISO 8601 interval ``first/last``.

Codes are ISO 4217 (``models.money.exponent``; upper-cased); rates must be finite and
positive; a currency appears once. Anything else is refused with one line naming the file
and what is wrong (:class:`caa.errors.BadInput`, exit 7; a missing file
:class:`caa.errors.NotFound`, exit 6).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "r.csv").write_text("currency,rate,date\\nEUR,1.08,2026-11-30\\n")
>>> load(d / "r.csv", "USD")
Rates(reporting='USD', rates={'EUR': 1.08}, as_of='2026-11-30')
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from caa.errors import BadInput, NotFound
from models.money import Rates, exponent

__all__ = ["RatesFileError", "load", "parse"]

_WHERE = "check CAA_FX_RATES (the exchange rates file, JSON or CSV)"
_FORMAT = ('CAA_FX_RATES is JSON {"base": "USD", "date": "YYYY-MM-DD", "rates": {"EUR": 1.08}} '
           "or CSV with the header currency,rate,date")


class RatesFileError(ValueError):
    """What is wrong with a rates file's content (one line)."""


def load(path: Path, reporting: str) -> Rates:
    """The rates in ``path`` for ``reporting``; :class:`NotFound` when the file is missing,
    :class:`BadInput` when it cannot be read or is not as documented."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise NotFound(f"no rates file {str(path)!r}", _WHERE) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read the rates file {str(path)!r} ({exc})", _WHERE) from None
    kind = path.suffix.lower().lstrip(".")
    if kind not in {"json", "csv"}:
        kind = "json" if text.lstrip().startswith("{") else "csv"
    try:
        return parse(text, kind, reporting)
    except RatesFileError as exc:
        raise BadInput(f"rates file {str(path)!r}: {exc}", _FORMAT) from None


def parse(text: str, kind: str, reporting: str) -> Rates:
    """``text`` in format ``kind`` ("json" or "csv") as rates into ``reporting``;
    :class:`RatesFileError` when it is not as documented."""
    dates: set[str] = set()
    if kind == "json":
        base, day, rows = _json(text)
        dates.add(_date(day, "date"))
    elif kind == "csv":
        base, rows = _csv(text, reporting)
    else:
        raise RatesFileError(f"unknown format {kind!r} (json or csv)")
    rates: dict[str, float] = {}
    for where, given, rate, day in rows:
        code = _code(given, where)
        if code in rates:
            raise RatesFileError(f"{where}: {code} appears more than once")
        rates[code] = _rate(rate, where, code)
        dates.add(_date(day, where))
    return Rates(reporting, _rebase(base, rates, reporting), as_of=_as_of(dates))


_Row = tuple[str, Any, Any, Any]  # (where, code, rate, date)


def _json(text: str) -> tuple[str, Any, list[_Row]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RatesFileError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise RatesFileError('not a JSON object {"base", "date", "rates"}')
    missing = [k for k in ("base", "date", "rates") if k not in doc]
    if missing:
        raise RatesFileError(f"no {', '.join(repr(k) for k in missing)} "
                             '(expected {"base": "USD", "date": "YYYY-MM-DD", "rates": {...}})')
    if not isinstance(doc["rates"], dict):
        raise RatesFileError('"rates" must map currency codes to numbers')
    base = _code(doc["base"], "base")
    return base, doc["date"], [(f"rates.{code}", code, rate, doc["date"])
                               for code, rate in doc["rates"].items()]


def _csv(text: str, reporting: str) -> tuple[str, list[_Row]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if not {"currency", "rate", "date"} <= set(header) or not set(header) <= {
            "currency", "rate", "date", "base"}:
        raise RatesFileError(f"the header must be currency,rate,date (optionally base), "
                             f"not {','.join(reader.fieldnames or []) or 'empty'}")
    reader.fieldnames = header
    rows: list[_Row] = []
    bases: set[str] = set()
    for i, row in enumerate(reader, start=2):
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank line
        if None in row or any(row.get(k) is None for k in header):
            raise RatesFileError(f"line {i}: expected {len(header)} fields")
        where = f"line {i}"
        if "base" in header:
            bases.add(_code(row["base"], f"{where} base"))
        rows.append((where, row["currency"], row["rate"].strip(), row["date"]))
    if len(bases) > 1:
        raise RatesFileError(f"more than one base ({', '.join(sorted(bases))})")
    return (bases.pop() if bases else reporting), rows


def _code(code: Any, where: str) -> str:
    if not isinstance(code, str) or not code.strip():
        raise RatesFileError(f"{where}: {code!r} is not a currency code")
    upper = code.strip().upper()
    try:
        exponent(upper)
    except ValueError as exc:
        raise RatesFileError(f"{where}: {exc}") from None
    return upper


def _rate(rate: Any, where: str, code: str) -> float:
    try:
        value = math.nan if isinstance(rate, bool) else float(rate)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise RatesFileError(f"{where}: the rate of {code} must be a number, not {rate!r}")
    if value <= 0:
        raise RatesFileError(f"{where}: the rate of {code} must be positive, not {rate}")
    return value


def _date(day: Any, where: str) -> str:
    try:
        return date.fromisoformat(str(day).strip()).isoformat()
    except ValueError:
        raise RatesFileError(f"{where}: {day!r} is not a date (YYYY-MM-DD)") from None


def _as_of(dates: Iterable[str]) -> str:
    ordered = sorted(dates)
    if not ordered:
        return ""
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]}/{ordered[-1]}"


def _rebase(base: str, rates: dict[str, float], reporting: str) -> dict[str, float]:
    """The rates (one unit of each currency in ``base``) as one unit in ``reporting``."""
    if base == reporting:
        if rates.get(reporting, 1.0) != 1.0:
            raise RatesFileError(f"the base {base} has the rate {rates[reporting]}, not 1")
        return {c: r for c, r in rates.items() if c != reporting}
    through = rates.get(reporting)
    if through is None:
        raise RatesFileError(f"the base is {base}, not the reporting currency {reporting}, "
                             f"and there is no {reporting} rate to convert through "
                             "(set CAA_REPORTING_CURRENCY or add the rate)")
    out = {c: r / through for c, r in rates.items() if c not in {reporting, base}}
    out[base] = 1.0 / through
    return out
