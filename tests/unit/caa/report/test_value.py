"""The report's "Customer value and churn" section on hand-built predictions (no servers):
value spread and total, churn bands defined from the thresholds, and the action lists."""

from __future__ import annotations

import doctest
import random
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from caa.report import value as value_module
from caa.report.page import SECTIONS, ReportData, render
from caa.report.value import (
    DUE_DAYS,
    TOP,
    CustomerValue,
    customer_values,
    due_to_buy,
    section,
    win_back,
)
from caa.report.words import jargon_in
from consumers.stores.predictions import prediction_from_item, prediction_to_item
from models.money import Rates
from models.prediction import Churn, NextPurchase, Prediction, Timing, Value
from models.state import CustomerState
from tests.unit.caa.cli.test_show import prediction

AS_OF = datetime(1997, 9, 30, tzinfo=UTC)
BANDS = {"low": 0.2, "medium": 0.6, "high": 0.9}


def customer(cid: str, clv: float, band: str, spent: float, next_in: int | None = None,
             due: tuple[str, ...] = (), currency: str = "USD") -> Prediction:
    """A prediction as of :data:`AS_OF` with its value, churn band and next order date."""
    nexts = [NextPurchase(kind="product", key=k, expected_date=AS_OF.date(), avg_days_between=30,
                          purchases=3, confidence=0.6, status="due") for k in due]
    return prediction(
        cid, currency=currency, spend=spent, as_of=AS_OF, generated_at=AS_OF, clv=clv,
        churn_band=band, next_purchases=nexts,
        value=Value(clv=clv, clv_low=clv / 2, clv_high=clv * 2, expected_order_value=20.0,
                    historic=spent, months=12, monthly_discount_rate=0.01),
        churn=Churn(p_no_purchase_30d=BANDS[band] / 2, p_no_purchase_90d=BANDS[band],
                    band=band),
        timing=Timing(avg_days_between=45.0, next_order_80=None, next_order_50=None
                      if next_in is None else AS_OF.date() + timedelta(days=next_in)))


def rows(preds: list[Prediction]) -> list[dict[str, Any]]:
    return [prediction_from_item(prediction_to_item(p)) for p in preds]


def values_of(states: list[CustomerState], seed: int = 5) -> list[CustomerValue]:
    """Value and churn for synthetic customer states (the page tests' population)."""
    rng = random.Random(seed)
    preds = [customer(s.customer_id, rng.lognormvariate(3, 1.2),
                      rng.choice(("low", "medium", "medium", "high")), s.spend()[0],
                      rng.choice((None, 10, 60))) for s in states]
    return customer_values(rows(preds), {s.customer_id: s.last_ts for s in states})[0]


def test_value_doctests() -> None:
    assert doctest.testmod(value_module).failed == 0


def test_customer_values_read_the_table_shape_and_count_the_older_predictions() -> None:
    old = prediction("old", value=None, churn=None, timing=None, clv=None, churn_band=None)
    got, missing = customer_values(rows([customer("a", 50.0, "high", 300.0, due=("milk",)),
                                         old]), {"a": int(AS_OF.timestamp()) - 86400 * 40})
    assert missing == 1 and len(got) == 1
    a = got[0]
    assert (a.customer_id, a.clv, a.band, a.historic, a.due, a.as_of) == (
        "a", 50.0, "high", 300.0, ("milk",), AS_OF.date())
    assert a.last_purchase == date(1997, 8, 21)  # from the state, not the last event
    assert customer_values(rows([customer("a", 1.0, "low", 1.0)]))[0][0].last_purchase == \
        date(2024, 4, 30)  # no state: the last event's day


def test_win_back_is_high_risk_by_spend_and_due_is_soon_or_due_by_value() -> None:
    got, _ = customer_values(rows([
        customer("gone-big", 5.0, "high", 900.0), customer("gone-small", 50.0, "high", 20.0),
        customer("soon", 80.0, "low", 100.0, next_in=DUE_DAYS),
        customer("later", 500.0, "low", 100.0, next_in=DUE_DAYS + 1),
        customer("milk", 10.0, "medium", 60.0, due=("milk",))]))
    assert [v.customer_id for v in win_back(got)] == ["gone-big", "gone-small"]
    assert [v.customer_id for v in due_to_buy(got)] == ["soon", "milk"]
    many = [customer(f"c{i}", float(i), "high", float(i)) for i in range(TOP + 5)]
    assert len(win_back(customer_values(rows(many))[0])) == TOP


def page(tmp_path: Path, values: list[CustomerValue], **over: Any) -> str:
    data: dict[str, Any] = dict(
        stream="s", table_prefix="p-", generated_at=AS_OF, customers=len(values), purchases=0,
        spend_minor={}, model=None, model_version=0, sizes_doc=None, timeline=None,
        evaluation_path=tmp_path / "e.csv", values=values)
    data.update(over)
    return section(ReportData(**data))


def test_the_section_speaks_money_bands_and_actions_in_plain_words(tmp_path: Path) -> None:
    got, _ = customer_values(rows([
        customer("00007", 1200.0, "high", 2500.0, currency="EUR"),
        customer("00008", 300.0, "medium", 90.0, currency="EUR"),
        customer("00009", 40.0, "low", 60.5, next_in=5, currency="EUR"),
        customer("00010", 10.0, "low", 12.0, due=("jazz",), currency="EUR"),
        customer("x", 1.0, "low", 1.0, currency="USD")]))
    html = page(tmp_path, got, rates=Rates("EUR"), churn_medium=0.4, churn_high=0.75,
                values_missing=3)
    assert "together expected to spend <strong>€1,550.00</strong>" in html
    assert "next 12 months" in html and "discounted 1% a month" in html
    # bands defined from the thresholds given, with counts, shares and value
    assert ("<td>high</td><td>at least 75% likely to buy nothing in the next 90 days</td>"
            "<td class=\"n\">1</td><td class=\"n\">25.0%</td><td class=\"n\">€1,200.00</td>"
            ) in html
    assert "40% to 75% likely" in html and "less than 40% likely" in html
    assert "<td>all (the most valuable customer)</td><td class=\"n\">€1,200.00</td>" in html
    # the action lists: ids, money, last purchase
    win = html.split("<h3>Win back</h3>")[1].split("<h3>")[0]
    assert re.findall(r"<tr><td>([^<]+)</td>", win) == ["00007"]
    assert "€2,500.00" in win and "90%" in win and "2024-04-30" in win
    due = html.split("<h3>Due to buy</h3>")[1]
    assert re.findall(r"<tr><td>([^<]+)</td>", due) == ["00009", "00010"]
    assert "1997-10-05" in due and "jazz" in due and "by 1997-10-30" in due
    assert "The 2 most valuable of 2." in due
    assert "3 predictions written before value was computed are left out" in html
    assert "1 predictions in another currency than EUR are left out" in html
    for text in re.findall(r'<p class="caption[^"]*">(.*?)</p>', html):
        assert not jargon_in(text), text
    assert html.count("<img ") == 1


def test_the_section_without_value_says_what_to_run(tmp_path: Path) -> None:
    html = page(tmp_path, [])
    assert "No customer value yet" in html and "<code>caa consume</code>" in html
    assert "<img" not in html
    quiet = page(tmp_path, customer_values(rows([customer("a", 5.0, "low", 5.0)]))[0])
    assert "No customer is at high churn risk." in quiet
    assert f"No customer is expected to order within {DUE_DAYS} days." in quiet


def test_the_page_has_the_section_after_the_segments(tmp_path: Path) -> None:
    keys = [k for k, _ in SECTIONS]
    assert keys.index("value") == keys.index("centroids") + 1
    got, _ = customer_values(rows([customer("a", 5.0, "high", 5.0)]))
    html = render(ReportData(stream="s", table_prefix="p-", generated_at=AS_OF, customers=1,
                             purchases=1, spend_minor={"USD": 500}, model=None,
                             model_version=0, sizes_doc=None, timeline=None,
                             evaluation_path=tmp_path / "e.csv", values=got))
    assert '<section id="value"><h2>Customer value and churn</h2>' in html
    assert html.count("<img ") == 1
