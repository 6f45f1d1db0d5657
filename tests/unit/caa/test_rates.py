"""The operator's exchange rates: CAA_REPORTING_CURRENCY, the CAA_FX_RATES file (JSON or
CSV) and the one-line errors a bad one gives."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from caa import rates as rates_module
from caa import wiring
from caa.cli import main as cli
from caa.errors import BadInput, NotFound
from caa.rates import load, parse
from caa.settings import Settings
from models.money import Rates

ISSUE_RATES = {"base": "USD", "date": "2026-11-30", "rates": {"EUR": 1.08, "JPY": 0.0067}}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_module_doctests() -> None:
    assert doctest.testmod(rates_module).failed == 0


# -- the file formats ---------------------------------------------------------------------------
def test_json_rates_in_the_reporting_currency(tmp_path: Path) -> None:
    r = load(write(tmp_path, "fx.json", json.dumps(ISSUE_RATES)), "USD")
    assert r == Rates("USD", {"EUR": 1.08, "JPY": 0.0067}, as_of="2026-11-30")
    assert r.convert({"EUR": 4000, "JPY": 6000, "USD": 1500}) == (98.4, ())


def test_csv_rates_with_a_header_row_per_currency(tmp_path: Path) -> None:
    path = write(tmp_path, "fx.csv", "currency,rate,date\r\nEUR,1.08,2026-11-30\r\n"
                                     "jpy, 0.0067 ,2026-11-30\r\n\r\n")
    assert load(path, "USD") == Rates("USD", {"EUR": 1.08, "JPY": 0.0067}, "2026-11-30")


def test_csv_rows_of_different_dates_give_an_interval(tmp_path: Path) -> None:
    path = write(tmp_path, "fx.csv", "currency,rate,date\nEUR,1.08,2026-11-30\n"
                                     "JPY,0.0067,2026-11-27\n")
    assert load(path, "USD").as_of == "2026-11-27/2026-11-30"


def test_the_format_is_sniffed_without_a_known_suffix(tmp_path: Path) -> None:
    assert load(write(tmp_path, "fx", json.dumps(ISSUE_RATES)), "USD").rates["EUR"] == 1.08
    assert load(write(tmp_path, "fx.txt", "currency,rate,date\nEUR,1.08,2026-11-30\n"),
                "USD").rates == {"EUR": 1.08}


def test_another_base_is_converted_through_the_reporting_currency(tmp_path: Path) -> None:
    """EUR-based: one dollar is 0.925 euros, so one euro is 1/0.925 dollars."""
    doc = {"base": "EUR", "date": "2026-11-30", "rates": {"USD": 0.925, "JPY": 0.0062}}
    r = load(write(tmp_path, "eur.json", json.dumps(doc)), "USD")
    assert r.reporting == "USD" and set(r.rates) == {"EUR", "JPY"}
    assert r.rates["EUR"] == pytest.approx(1 / 0.925)
    assert r.rates["JPY"] == pytest.approx(0.0062 / 0.925)
    csv = write(tmp_path, "eur.csv", "currency,rate,date,base\nUSD,0.925,2026-11-30,EUR\n")
    assert load(csv, "USD").rates == pytest.approx({"EUR": 1 / 0.925})


def test_the_base_may_list_itself_at_one(tmp_path: Path) -> None:
    doc = {**ISSUE_RATES, "rates": {"USD": 1, "EUR": 1.08}}
    assert load(write(tmp_path, "fx.json", json.dumps(doc)), "USD").rates == {"EUR": 1.08}


# -- what is refused, in one line ---------------------------------------------------------------
@pytest.mark.parametrize(("name", "text", "says"), [
    ("bad-base.json", json.dumps({**ISSUE_RATES, "base": "GBP"}),
     "the base is GBP, not the reporting currency USD, and there is no USD rate"),
    ("base-not-one.json", json.dumps({**ISSUE_RATES, "rates": {"USD": 2, "EUR": 1.08}}),
     "the base USD has the rate 2"),
    ("unknown.json", json.dumps({**ISSUE_RATES, "rates": {"XYZ": 1.5}}),
     "rates.XYZ: 'XYZ' is not an ISO 4217 currency code"),
    ("gold.json", json.dumps({**ISSUE_RATES, "rates": {"XAU": 2000}}),
     "XAU has no minor unit"),
    ("negative.json", json.dumps({**ISSUE_RATES, "rates": {"EUR": -1.08}}),
     "the rate of EUR must be positive, not -1.08"),
    ("zero.csv", "currency,rate,date\nEUR,0,2026-11-30\n",
     "line 2: the rate of EUR must be positive"),
    ("text.csv", "currency,rate,date\nEUR,1;08,2026-11-30\n",
     "line 2: the rate of EUR must be a number, not '1;08'"),
    ("nan.json", '{"base": "USD", "date": "2026-11-30", "rates": {"EUR": NaN}}',
     "the rate of EUR must be a number"),
    ("bool.json", json.dumps({**ISSUE_RATES, "rates": {"EUR": True}}),
     "the rate of EUR must be a number"),
    ("twice.csv", "currency,rate,date\nEUR,1.08,2026-11-30\neur,1.09,2026-11-30\n",
     "line 3: EUR appears more than once"),
    ("no-date.json", json.dumps({"base": "USD", "rates": {"EUR": 1.08}}), "no 'date'"),
    ("bad-date.json", json.dumps({**ISSUE_RATES, "date": "30/11/2026"}),
     "'30/11/2026' is not a date (YYYY-MM-DD)"),
    ("header.csv", "code,value\nEUR,1.08\n", "the header must be currency,rate,date"),
    ("short.csv", "currency,rate,date\nEUR,1.08\n", "line 2: expected 3 fields"),
    ("long.csv", "currency,rate,date\nEUR,1.08,2026-11-30,x\n", "line 2: expected 3 fields"),
    ("two-bases.csv", "currency,rate,date,base\nEUR,1.08,2026-11-30,USD\n"
                      "JPY,0.0067,2026-11-30,GBP\n", "more than one base (GBP, USD)"),
    ("list.json", "[1, 2]", "not a JSON object"),
    ("broken.json", '{"base": "USD",', "not JSON"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_fault(
        tmp_path: Path, name: str, text: str, says: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(BadInput) as caught:
        load(path, "USD")
    line = caught.value.line()
    assert "\n" not in line and says in line, line
    assert line.startswith(f"rates file {str(path)!r}: ") and "CAA_FX_RATES" in line
    assert caught.value.exit_code == 7


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        load(tmp_path / "nowhere.json", "USD")
    assert caught.value.exit_code == 6
    assert "no rates file" in caught.value.line() and "nowhere.json" in caught.value.line()


def test_parse_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        parse("<rates/>", "xml", "USD")


# -- settings and wiring ------------------------------------------------------------------------
def test_the_reporting_currency_defaults_to_usd_and_must_be_iso_4217(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAA_REPORTING_CURRENCY", raising=False)
    monkeypatch.delenv("CAA_FX_RATES", raising=False)
    assert Settings().reporting_currency == "USD" and Settings().fx_rates is None
    monkeypatch.setenv("CAA_REPORTING_CURRENCY", " eur ")
    assert Settings().reporting_currency == "EUR"
    for bad in ("EURO", "XYZ", "XAU", ""):
        monkeypatch.setenv("CAA_REPORTING_CURRENCY", bad)
        with pytest.raises(ValidationError, match="CAA_REPORTING_CURRENCY"):
            Settings()
    monkeypatch.setenv("CAA_REPORTING_CURRENCY", "JPY")
    monkeypatch.setenv("CAA_FX_RATES", "")
    assert Settings().fx_rates is None


def test_wiring_builds_the_rates_once_from_the_settings(tmp_path: Path) -> None:
    assert wiring.rates(Settings(reporting_currency="EUR", fx_rates=None)) == Rates("EUR")
    path = write(tmp_path, "fx.json", json.dumps(ISSUE_RATES))
    fx = wiring.rates(Settings(fx_rates=path))
    assert fx.rates == {"EUR": 1.08, "JPY": 0.0067} and fx.as_of == "2026-11-30"
    # reporting in EUR from a USD-based file: through its EUR rate
    in_eur = wiring.rates(Settings(reporting_currency="EUR", fx_rates=path))
    assert in_eur.reporting == "EUR" and in_eur.rates["USD"] == pytest.approx(1 / 1.08)
    with pytest.raises(BadInput, match="no EUR rate to convert through"):
        wiring.rates(Settings(reporting_currency="EUR", fx_rates=write(
            tmp_path, "fx2.json", json.dumps({**ISSUE_RATES, "rates": {"JPY": 0.0067}}))))
    registry = wiring.registry(Settings(fx_rates=path), db=None)  # type: ignore[arg-type]
    assert registry.rates == fx


def test_the_command_line_says_what_is_wrong_with_the_file_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`caa serve` reads the rates before it listens: exit 6 / 7 and a `caa: ...` line."""
    monkeypatch.setenv("CAA_API_KEYS", "k")
    monkeypatch.setenv("CAA_FX_RATES", str(tmp_path / "missing.csv"))
    assert cli.main(["serve", "--port", "1"]) == 6
    err = capsys.readouterr().err
    assert err.startswith("caa: no rates file") and err.count("\n") == 1
    bad = write(tmp_path, "fx.csv", "currency,rate,date\nEUR,-1,2026-11-30\n")
    monkeypatch.setenv("CAA_FX_RATES", str(bad))
    assert cli.main(["serve", "--port", "1"]) == 7
    err = capsys.readouterr().err
    assert "the rate of EUR must be positive" in err and err.count("\n") == 1


def test_a_bad_setting_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CAA_REPORTING_CURRENCY", "XYZ")
    assert cli.main(["show", "00001"]) == 7
    err = capsys.readouterr().err
    assert err.startswith("caa: bad setting CAA_REPORTING_CURRENCY='XYZ'")
    assert "not an ISO 4217 currency" in err and err.count("\n") == 1
