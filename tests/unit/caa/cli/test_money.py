"""Every amount the command line prints carries its currency, and amounts in several
currencies are converted into the reporting currency, never summed as they are: one
customer's EUR 40.00 + JPY 6000 + USD 15.00 is USD 98.40 at EUR 1.08 / JPY 0.0067, or
USD 58.20 with JPY named as left out when JPY has no rate, never "6055"."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from caa.cli import customers, output
from caa.cli.pipeline import print_summary, refit_summary
from caa.settings import Settings
from consumers.refit import RefitReport
from models.events import PurchaseEvent
from models.learn.forecaster import Forecaster
from models.learn.pareto_nbd import DEFAULT_PRIOR
from models.money import Rates
from models.prediction import SegmentRef
from models.state import CustomerState

ONE_CUSTOMER = {"EUR": 4000, "JPY": 6000, "USD": 1500}  # EUR 40.00 + JPY 6000 + USD 15.00
RATES = Rates("USD", {"EUR": 1.08, "JPY": 0.0067}, as_of="2026-11-30")
NO_JPY = Rates("USD", {"EUR": 1.08}, as_of="2026-11-30")


def prediction(**over: Any) -> dict[str, Any]:
    """A stored prediction as `caa show` reads it (the fields it prints)."""
    return {"customer_id": "c1", "segment": {"id": 0, "name": "Champions"}, "p_alive": 0.9,
            "expected_purchases_30d": 0.4, "expected_purchases_90d": 1.1, "purchases": 3,
            "spend": 98.4, "currency": "USD", "unconverted": [], "data_quality": "B",
            "data_quality_reason": "r", "confidence": 0.5, "source": "statistical",
            "as_of": "2026-11-30T00:00:00+00:00", "generated_at": "2026-11-30T00:00:00+00:00",
            "last_event": {"event_id": "e", "occurred_at": "2026-11-30T00:00:00+00:00"},
            "model_versions": {"segments": 1}, **over}


def shown(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          pred: dict[str, Any]) -> dict[str, str]:
    monkeypatch.setattr(customers, "_read", lambda _aws, _read: pred)
    assert customers.show(Settings(), None, "c1", as_json=False) == 0  # type: ignore[arg-type]
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split(": ", 1) for line in lines[1:] if ": " in line)


def test_the_value_rows_name_the_currencies_left_out(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A customer whose orders are all in currencies without a rate showed a customer value
    of $0.00 with no word of why (only the spend row named them)."""
    value = {"clv": 0.0, "clv_low": 0.0, "clv_high": 0.0, "expected_order_value": 0.0,
             "historic": 0.0, "months": 12, "monthly_discount_rate": 0.01}
    rows = shown(monkeypatch, capsys, prediction(spend=0.0, unconverted=["JPY", "KWD"],
                                                 value=value))
    note = " (orders in JPY, KWD left out for want of a rate)"
    assert rows["customer value (12 months)"].endswith("% a month)" + note)
    assert rows["expected spend per purchase day"] == "$0.00" + note
    assert rows["spent so far"] == "$0.00" + note
    rows = shown(monkeypatch, capsys, prediction(value=value))
    assert rows["expected spend per purchase day"] == "$0.00"


def test_many_currencies_without_a_rate_are_counted_not_listed_in_every_row(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A customer who bought in 165 currencies without a rate: each of the four notes listed
    all 165 codes (a screen of them per row)."""
    codes = [f"Q{i // 26 % 26 + 65:c}{i % 26 + 65:c}" for i in range(165)]
    value = {"clv": 0.0, "clv_low": 0.0, "clv_high": 0.0, "expected_order_value": 0.0,
             "historic": 0.0, "months": 12, "monthly_discount_rate": 0.01}
    rows = shown(monkeypatch, capsys, prediction(spend=0.0, unconverted=codes, value=value))
    named = ", ".join(codes[:customers.SHOWN_CURRENCIES])
    assert rows["spend"] == f"$0.00 (left out for want of a rate: {named} and 160 more)"
    assert rows["spent so far"] == f"$0.00 (orders in {named} and 160 more left out for want "\
                                   "of a rate)"
    assert all(len(v) < 200 for v in rows.values())


def test_the_run_summary_gives_the_table_spend_to_the_cent() -> None:
    """``consume --json`` printed the converted sum as it came (98.39999999999999)."""
    r = report({"EUR": 1, "JPY": 1, "USD": 1}, Rates("USD", {"EUR": 1.1, "JPY": 0.0067}))
    assert r.spend != round(r.spend, 2)
    assert refit_summary(r)["table_spend"] == round(r.spend, 2) == 0.03


def test_caa_show_prints_the_spend_with_its_currency(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert shown(monkeypatch, capsys, prediction())["spend"] == "$98.40"
    rows = shown(monkeypatch, capsys, prediction(spend=58.2, unconverted=["JPY"]))
    assert rows["spend"] == "$58.20 (left out for want of a rate: JPY)"
    rows = shown(monkeypatch, capsys, prediction(spend=6000.0, currency="JPY"))
    assert rows["spend"] == "¥6,000"
    # written before amounts were converted: the bare number is said to be one
    old = prediction(spend=6055.0)
    del old["currency"], old["unconverted"]
    assert shown(monkeypatch, capsys, old)["spend"] == (
        "6,055.00 (currency not recorded: written before amounts were converted)")


def test_caa_show_of_a_customer_paying_in_three_currencies(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """From the events to the line `caa show` prints, through the forecaster."""
    state = CustomerState.new("c1")
    for i, (currency, total) in enumerate((("EUR", "40.00"), ("JPY", "6000"),
                                           ("USD", "15.00"))):
        state.apply(PurchaseEvent.model_validate({
            "event_id": f"e{i}", "order_id": f"o{i}", "customer_id": "c1",
            "occurred_at": f"2026-11-0{i + 1}T10:00:00Z", "currency": currency,
            "items": [{"product_id": "p", "category": "c", "quantity": 1,
                       "unit_price": total}], "total": total}))
    forecaster = Forecaster(DEFAULT_PRIOR, 1)
    now = datetime(2026, 11, 30, tzinfo=UTC)

    def spend(rates: Rates) -> str:
        pred = forecaster.predict(state, SegmentRef(id=0, name="New"), int(now.timestamp()),
                                  now, 1, rates=rates)
        return shown(monkeypatch, capsys, pred.model_dump(mode="json"))["spend"]

    assert spend(RATES) == "$98.40"
    assert spend(NO_JPY) == "$58.20 (left out for want of a rate: JPY)"


def report(spend_minor: dict[str, int], rates: Rates) -> RefitReport:
    return RefitReport(customers=1, purchases=3, spend_minor=spend_minor,
                       segment_sizes={"Champions": 1},
                       as_of=datetime(2026, 11, 30, tzinfo=UTC), params=DEFAULT_PRIOR,
                       forecast_version=1, segments_version=1, predictions_rewritten=0,
                       seconds=0.1, rates=rates)


def summary_spend(capsys: pytest.CaptureFixture[str], r: RefitReport) -> str:
    summary = {"records_read": 3, "applied": 3, "duplicates": 0, "rejected": 0,
               "predictions_written": 1, "consume_s": 1.0, "events_per_s": 3.0,
               "refit_s": 0.1, "elapsed_s": 1.2, **refit_summary(r)}
    print_summary(summary)
    rows = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines()
                if ": " in line and not line.startswith("#"))
    return rows["spend"]


def test_the_run_summary_converts_the_table_spend_and_names_what_it_left_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    line = summary_spend(capsys, report(ONE_CUSTOMER, RATES))
    assert line == ("$98.40 (in USD at the rates of 2026-11-30, from EUR 40.00, JPY 6,000, "
                    "USD 15.00)")
    line = summary_spend(capsys, report(ONE_CUSTOMER, NO_JPY))
    assert line.startswith("$58.20 (") and line.endswith(
        "left out for want of a rate: JPY 6,000)")
    assert "6,055" not in line and "6055" not in line
    assert summary_spend(capsys, report({"USD": 1500}, RATES)) == "$15.00"
    s = refit_summary(report(ONE_CUSTOMER, NO_JPY))
    assert (s["table_spend"], s["table_spend_currency"], s["table_spend_unconverted"]) == (
        58.2, "USD", ["JPY"])
    assert s["table_spend_by_currency"] == {"EUR": 40.0, "JPY": 6000.0, "USD": 15.0}


def test_a_fit_on_few_customers_is_flagged_in_the_summary(
        capsys: pytest.CaptureFixture[str]) -> None:
    """On 8 customers the fit collapsed (r 9e9) and every customer showed P(alive) 1.0, churn
    low and the same CLV, with no word that the fit was thin."""
    from caa.cli.pipeline import STABLE_FIT_CUSTOMERS, fit_caution

    few = refit_summary(report({"USD": 1500}, RATES))
    assert few["fit_caution"] and "fitted on 1 customer, fewer than" in few["fit_caution"]
    print_summary({"records_read": 3, "applied": 3, "duplicates": 0, "rejected": 0,
                   "predictions_written": 1, "consume_s": 1.0, "events_per_s": 3.0,
                   "refit_s": 0.1, "elapsed_s": 1.2, **few})
    assert "caution: the purchase and spend models were fitted on 1 customer," in (
        capsys.readouterr().out)
    assert fit_caution(STABLE_FIT_CUSTOMERS) is None
    assert "fitted on 2 customers," in (fit_caution(2) or "")


def test_caa_segments_says_the_currency_of_the_order_values(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from models.learn.segmentation import SegmentModel

    model = SegmentModel(n_clusters=5, warmup=10)
    model.refit([{"recency_days": float(i), "frequency": 1.0 + i % 3, "monetary": 10.0 * i}
                 for i in range(1, 40)])
    found = (1, model.to_dict())
    monkeypatch.setattr(customers, "_read", lambda _aws, _read: (found, None))
    monkeypatch.setattr(output, "is_terminal", lambda: False)
    customers.segments(Settings(reporting_currency="EUR"), None,  # type: ignore[arg-type]
                       as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "# monetary: the average order value, in EUR"
    assert all(row.split("\t")[-1].startswith("EUR ") for row in lines[3:])

