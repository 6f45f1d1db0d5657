"""``caa show|segments``: a customer's prediction, and the segments with their sizes."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from pydantic import TypeAdapter, ValidationError

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.errors import BadInput, NotFound
from caa.settings import Settings
from consumers.stores.dynamo import Dynamo
from models.events import Identifier

T = TypeVar("T")

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)


def check_customer_id(customer_id: str) -> None:
    """Raise :class:`BadInput` unless ``customer_id`` is one the events can carry (the wire
    schema's identifier rule): before anything is read, erased or published, so a wrong
    argument (a pasted line, a 5,000-character text) is one short line, not echoed whole."""
    if not customer_id.strip():
        raise BadInput("a customer id is needed, not an empty string")
    try:
        _IDENTIFIER.validate_python(customer_id)
    except ValidationError:
        raise BadInput(f"not a customer id: {customer_id[:64]!r}"
                       f"{'...' if len(customer_id) > 64 else ''} (1 to 64 of A-Z a-z 0-9 "
                       "and . _ : @ -, as events carry it)") from None


def _read(aws: Aws, read: Callable[[Dynamo], Awaitable[T]]) -> T:
    """One read through the table stores (they are async), on a client of its own."""
    async def run() -> T:
        async with aws.clients("dynamodb") as c:
            return await read(Dynamo(c["dynamodb"]))

    return asyncio.run(run())


def _text(v: Any) -> str:
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def analysis_rows(analysis: dict[str, Any] | None, at: Any = None,
                  model: str | None = None, source: str | None = None) -> list[tuple[str, str]]:
    """The rows of an AI (or statistical) analysis as ``caa show`` and ``caa analyze`` print
    it: where it came from, its narrative and the next best action first."""
    if not analysis:
        return [("analysis", "none yet")]
    nba = analysis.get("next_best_action") or {}
    rows = [("analysis source", str(source or "-")), ("analysis model", str(model or "-")),
            ("analysis at", str(at or "-")),
            ("narrative", str(analysis.get("narrative", ""))),
            ("next best action", f"{nba.get('action', '-')}: {nba.get('detail', '')}"),
            ("analysis confidence", _text(analysis.get("confidence")))]
    profile = analysis.get("profile") or {}
    if profile:
        rows.append(("profile", f"{profile.get('shopping_frequency', '-')} shopper, "
                                f"{profile.get('price_preference', '-')} prices, likes "
                                f"{', '.join(profile.get('preferred_categories', [])) or '-'}"))
    for r in analysis.get("recommendations", []):
        rows.append(("ai recommends", f"{r['product']} ({r['urgency']}): {r['reason']}"))
    return rows


#: currencies named one by one in a "left out for want of a rate" note; the rest counted
SHOWN_CURRENCIES = 5


def currencies_text(codes: list[Any]) -> str:
    """Currency codes for a note, the first :data:`SHOWN_CURRENCIES` named and the rest
    counted (a customer buying in 165 currencies without a rate made each note a screen).

    >>> currencies_text(["JPY", "CHF"]), currencies_text([f"C{i:02d}" for i in range(8)])
    ('JPY, CHF', 'C00, C01, C02, C03, C04 and 3 more')
    """
    shown = ", ".join(map(str, codes[:SHOWN_CURRENCIES]))
    more = len(codes) - SHOWN_CURRENCIES
    return f"{shown} and {more} more" if more > 0 else shown


def spend_text(pred: dict[str, Any]) -> str:
    """A prediction's spend with its (reporting) currency, naming the currencies left out
    for want of a rate; a prediction written before amounts were converted says so."""
    from caa.report.words import money

    spend = float(pred.get("spend") or 0.0)
    currency = pred.get("currency")
    if not currency:
        return f"{spend:,.2f} (currency not recorded: written before amounts were converted)"
    line = money(spend, str(currency))
    left_out = pred.get("unconverted") or []
    if left_out:
        line += f" (left out for want of a rate: {currencies_text(left_out)})"
    return line


def _pct(p: Any) -> str:
    return f"{100 * float(p):.0f}%"


def outlook_rows(pred: dict[str, Any]) -> list[tuple[str, str]]:
    """The customer's value, churn risk and order timing as ``caa show`` prints them: money
    in the prediction's (reporting) currency, chances in per cent, dates as dates. A
    prediction written before these were computed says so in one row."""
    value, churn, timing = pred.get("value"), pred.get("churn"), pred.get("timing")
    if not (value or churn or timing):
        return [("customer value", "not in this prediction yet (written before value and "
                                   "churn were computed; the next update fills them)")]
    from caa.report.words import money

    cur = str(pred.get("currency") or "USD")
    rows: list[tuple[str, str]] = []
    if value:
        months = int(value["months"])
        # the money figures leave out the orders in currencies without a rate: say so
        # beside each (all of them: $0.00 otherwise reads as a customer worth nothing)
        left_out = pred.get("unconverted") or []
        note = (f" (orders in {currencies_text(left_out)} left out for want of a rate)"
                if left_out else "")
        rows += [(f"customer value ({months} months)",
                  f"{money(float(value['clv']), cur)} expected (80% range "
                  f"{money(float(value['clv_low']), cur)} to "
                  f"{money(float(value['clv_high']), cur)}; future spend discounted "
                  f"{100 * float(value['monthly_discount_rate']):g}% a month){note}"),
                 ("expected spend per purchase day",
                  money(float(value["expected_order_value"]), cur) + note),
                 ("spent so far", money(float(value["historic"]), cur) + note)]
    if churn:
        rows += [("churn risk", f"{churn['band']}: {_pct(churn['p_no_purchase_90d'])} likely "
                                "to buy nothing in the next 90 days"),
                 ("no purchase in 30 days", f"{_pct(churn['p_no_purchase_30d'])} likely"),
                 ("no purchase in 90 days", f"{_pct(churn['p_no_purchase_90d'])} likely")]
    if timing:
        avg = timing.get("avg_days_between")
        rows.append(("days between orders", "no repeat order yet" if avg is None
                     else f"{float(avg):.1f} on average"))
        for key, label, chance in (("next_order_50", "next order likely by", "50%"),
                                   ("next_order_80", "next order almost surely by", "80%")):
            when = timing.get(key)
            rows.append((label, f"{when} ({chance} chance)" if when
                         else f"not expected: the chance of an order never reaches {chance}"))
    interval = pred.get("expected_purchases_90d_interval")
    if interval:
        low, high = (float(x) for x in interval)
        rows.append(("purchases in 90 days", f"{float(pred['expected_purchases_90d']):.2f} "
                                              f"expected (80% range {low:g} to {high:g})"))
    rows.append(("models last refitted because", str(pred.get("refit_reason") or "-")))
    return rows


def show(settings: Settings, aws: Aws, customer_id: str, as_json: bool) -> int:
    """``caa show``: :class:`NotFound` when the customer has no prediction."""
    from consumers.stores.predictions import PredictionStore

    check_customer_id(customer_id)
    pred = _read(aws, lambda db: PredictionStore(db, settings.tables.predictions).get(
        customer_id))
    if pred is None:
        raise NotFound(f"no prediction for customer {customer_id!r}",
                       "is the id right, and has `caa consume` run since it bought?")
    if as_json:
        output.print_json(pred, sort_keys=True)
        return 0
    rows: list[tuple[str, str]] = []
    for key in ("segment", "p_alive", "expected_purchases_30d", "expected_purchases_90d",
                "purchases", "spend", "data_quality", "data_quality_reason", "confidence",
                "source", "as_of", "generated_at", "last_event", "model_versions"):
        v: Any = pred.get(key)
        if key == "segment":
            v = v["name"]
        elif key == "spend":
            v = spend_text(pred)
        rows.append((key, _text(v)))
    rows += outlook_rows(pred)
    for n in pred.get("next_purchases", []):
        rows.append((f"next {n['kind']}", f"{n['key']}: {n['expected_date']} ({n['status']}, "
                     f"every {n['avg_days_between']} d, confidence {n['confidence']})"))
    for a in pred.get("alerts", []):
        rows.append(("alert", a["message"]))
    for r in pred.get("recommendations", []):
        rows.append(("recommend", f"{r['kind']} {r['key']} ({r['reason']}, {r['score']})"))
    source = pred.get("source")
    if pred.get("fallback_reason"):
        source = f"{source} (fallback: {pred['fallback_reason']})"
    rows += analysis_rows(pred.get("analysis"), pred.get("analysis_at"),
                          pred.get("analysis_model"), source)
    output.pairs(f"customer {customer_id}", rows)
    return 0


def segments(settings: Settings, aws: Aws, as_json: bool) -> int:
    """``caa segments``: none (and a note on stderr) when there is no segment model yet."""
    from caa.report.words import money
    from consumers.refit import SIZES
    from consumers.registry import SEGMENTS
    from consumers.stores.model_snapshots import ModelStore
    from models.learn.segmentation import SegmentModel

    async def read(db: Dynamo) -> tuple[tuple[int, dict[str, Any]] | None,
                                        tuple[int, dict[str, Any]] | None]:
        store = ModelStore(db, settings.tables.models)
        return await store.load(SEGMENTS), await store.load(SIZES)

    found, sized = _read(aws, read)
    if found is None:
        output.note("no segment model yet: run `caa consume` (or `caa run`) first")
        if as_json:
            output.print_json({"version": None, "segments": []})
        return 0
    version, body = found
    model = SegmentModel.from_dict(body)
    sizes: dict[str, int] = sized[1]["sizes"] if sized else {}
    by_id: dict[str, int] = sized[1].get("sizes_by_id", {}) if sized else {}
    described = model.describe()
    shared = Counter(str(d["name"]) for d in described)  # centres too alike share a name
    rows = [{**d, "customers": by_id.get(str(d["id"]), sizes.get(str(d["name"]), 0)
                                         if shared[str(d["name"])] == 1 else 0)}
            for d in described]
    currency = settings.reporting_currency  # the monetary feature's
    if as_json:
        output.print_json({"version": version, "currency": currency, "segments": rows})
        return 0
    cells = []
    for r in sorted(rows, key=lambda r: -int(str(r["customers"]))):
        c: Any = r.get("centre", r)
        cells.append((str(r["id"]), str(r["name"]), f"{r['customers']:,}",
                      f"{round(float(c['recency_days']))}", f"{float(c['frequency']):.2f}",
                      money(float(c["monetary"]), currency, symbol=False)))
    output.table(f"segments (model version {version})",
                 ("id", "name", "customers", "recency_days", "frequency", "monetary"), cells,
                 right={"id", "customers", "recency_days", "frequency", "monetary"},
                 caption=f"monetary: the average order value, in {currency}")
    return 0


CustomerId = Annotated[str, typer.Argument(
    help="The customer's id, as in the purchase events (CDNOW: 00001 to 23570).",
    metavar="CUSTOMER_ID", show_default=False)]


def _show(ctx: typer.Context, customer_id: CustomerId, as_json: JsonFlag = False) -> int:
    inv = current(ctx)
    return show(inv.settings, inv.aws(), customer_id, as_json)


def _segments(ctx: typer.Context, as_json: JsonFlag = False) -> int:
    inv = current(ctx)
    return segments(inv.settings, inv.aws(), as_json)


def register(app: typer.Typer) -> None:
    app.command("show", rich_help_panel=output.START,
                help="One customer's prediction: segment, purchase forecast, value, churn "
                     "risk, next purchases, recommendations and the latest AI analysis.")(_show)
    app.command("segments", rich_help_panel=output.START,
                help="The customer segments: sizes and centres (recency, frequency, "
                     "monetary value).")(_segments)
