"""``caa show`` on hand-built predictions (no servers): value, churn risk and timing in
words and in the reporting currency, and all of it in ``--json``."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from caa.cli import customers
from caa.settings import Settings
from consumers.stores.predictions import prediction_from_item, prediction_to_item
from models.prediction import Churn, LastEvent, Prediction, SegmentRef, Timing, Value


def prediction(cid: str = "00042", **over: Any) -> Prediction:
    """A prediction with value, churn and timing (override any field)."""
    fields: dict[str, Any] = dict(
        customer_id=cid, segment=SegmentRef(id=1, name="Loyal"), p_alive=0.9,
        expected_purchases_30d=0.5, expected_purchases_90d=1.4, next_purchases=[], alerts=[],
        recommendations=[], confidence=0.6, data_quality="B", data_quality_reason="ok",
        purchases=4, spend=80.0, currency="EUR", model_versions={"pareto_nbd": 2},
        as_of=datetime(2024, 5, 1, tzinfo=UTC), generated_at=datetime(2024, 5, 1, 10, tzinfo=UTC),
        last_event=LastEvent(event_id="e4", occurred_at=datetime(2024, 4, 30, tzinfo=UTC)),
        expected_purchases_90d_interval=(0.0, 3.0), clv=123.456, churn_band="medium",
        value=Value(clv=123.456, clv_low=50.0, clv_high=210.0, expected_order_value=22.35,
                    historic=80.0, months=12, monthly_discount_rate=0.01),
        churn=Churn(p_no_purchase_30d=0.35, p_no_purchase_90d=0.68, band="medium"),
        timing=Timing(avg_days_between=106.5, next_order_50=date(2024, 6, 14),
                      next_order_80=None),
        refit_reason="drift: order values moved")
    fields.update(over)
    return Prediction(**fields)


def stored(p: Prediction) -> dict[str, Any]:
    """As the predictions table gives it back."""
    return prediction_from_item(prediction_to_item(p))


def run_show(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             pred: dict[str, Any], as_json: bool = False) -> str:
    monkeypatch.setattr(customers, "_read", lambda _aws, _read: pred)
    assert customers.show(Settings(), None, "00042", as_json) == 0  # type: ignore[arg-type]
    return capsys.readouterr().out


def test_show_says_value_churn_and_timing_in_words(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = run_show(monkeypatch, capsys, stored(prediction()))
    rows = dict(line.split(": ", 1) for line in out.splitlines()[1:] if ": " in line)
    assert rows["customer value (12 months)"] == (
        "€123.46 expected (80% range €50.00 to €210.00; future spend discounted 1% a month)")
    assert rows["expected spend per purchase day"] == "€22.35"
    assert rows["spent so far"] == "€80.00"
    assert rows["churn risk"] == "medium: 68% likely to buy nothing in the next 90 days"
    assert rows["no purchase in 30 days"] == "35% likely"
    assert rows["no purchase in 90 days"] == "68% likely"
    assert rows["days between orders"] == "106.5 on average"
    assert rows["next order likely by"] == "2024-06-14 (50% chance)"
    assert rows["next order almost surely by"] == (
        "not expected: the chance of an order never reaches 80%")
    assert rows["purchases in 90 days"] == "1.40 expected (80% range 0 to 3)"
    assert rows["models last refitted because"] == "drift: order values moved"


def test_show_json_carries_the_new_fields(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = json.loads(run_show(monkeypatch, capsys, stored(prediction()), as_json=True))
    assert out["clv"] == 123.456 and out["churn_band"] == "medium"
    assert out["value"]["clv_low"] == 50.0 and out["value"]["months"] == 12
    assert out["churn"] == {"p_no_purchase_30d": 0.35, "p_no_purchase_90d": 0.68,
                            "band": "medium"}
    assert out["timing"] == {"avg_days_between": 106.5, "next_order_50": "2024-06-14",
                             "next_order_80": None}
    assert out["expected_purchases_90d_interval"] == [0.0, 3.0]
    assert out["refit_reason"] == "drift: order values moved"


def test_show_an_older_prediction_says_value_is_not_there_yet(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    old = prediction(value=None, churn=None, timing=None, clv=None, churn_band=None,
                     expected_purchases_90d_interval=None, refit_reason=None)
    out = run_show(monkeypatch, capsys, stored(old))
    assert "customer value: not in this prediction yet" in out
    assert "churn risk" not in out and "next order" not in out
    first = prediction(timing=Timing(avg_days_between=None, next_order_50=None,
                                     next_order_80=None))
    assert "days between orders: no repeat order yet" in run_show(monkeypatch, capsys,
                                                                  stored(first))


@pytest.mark.parametrize("terminal", [False, True])
def test_show_writes_no_control_character_of_the_data_to_the_terminal(
        terminal: bool, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A category from a payload with an ANSI escape, a right-to-left override and a NUL
    (the schema bounds its length only) is shown escaped, on a terminal and in plain rows."""
    from caa.cli import output
    from models.prediction import Recommendation

    monkeypatch.setattr(output, "is_terminal", lambda: terminal)
    bad = "\x1b[31mRED\x1b[0m\u202e\x00zz"
    pred = prediction(recommendations=[Recommendation(
        key=bad, kind="category", reason="category_affinity", score=0.5)])
    out = run_show(monkeypatch, capsys, stored(pred))
    assert "RED" in out and "\\x1b[31mRED" in out
    assert not any(c in out for c in ("\x1b", "\u202e", "\x00"))


def test_show_keeps_joiners_and_non_breaking_spaces_of_real_names(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from caa.cli import output
    from models.prediction import Recommendation

    monkeypatch.setattr(output, "is_terminal", lambda: False)
    name = ("\U0001f468\u200d\U0001f469\u200d\U0001f467 fam\u00a0ily "  # emoji ZWJ, NBSP
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645")  # Persian, a ZWNJ
    pred = prediction(recommendations=[Recommendation(
        key=name, kind="category", reason="category_affinity", score=0.5)])
    assert name in run_show(monkeypatch, capsys, stored(pred))


def test_caa_analyze_says_why_the_model_was_not_used(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The table said "analysis source: statistical" with no reason (over budget, no
    consent); `caa show` and `--json` said it."""
    from caa.cli import ai

    async def answer(*_: Any) -> dict[str, Any]:
        return {"source": "statistical", "fallback_reason": "budget_exhausted",
                "analysis": {"narrative": "n", "next_best_action": {"action": "a"}}}

    monkeypatch.setattr(ai, "analysis", answer)
    assert ai.analyze(Settings(), None, "c1") == 0  # type: ignore[arg-type]
    rows = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines()
                if ": " in line)
    assert rows["analysis source"] == "statistical (fallback: budget_exhausted)"
