"""``caa`` against the emulator: the table view of ``caa show`` with the AI analysis, plain
rows when stdout is not a terminal, the exit codes of a dry run and of unknown customers,
progress lines on stderr (JSON alone on stdout), and costs, history and the run summary
saying when Bedrock's answers came from the local test server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from deploy.local.bedrock_server import BedrockServer
from models.prediction import Prediction
from producers.datasets.synthetic import generate
from producers.publisher import Publisher
from tests.integration.test_pipeline import cdnow_slice

pytestmark = pytest.mark.integration

ANALYSIS = {
    "profile": {"shopping_frequency": "regular", "price_preference": "mid_range",
                "preferred_categories": ["dairy"],
                "behavioural_insights": [{"label": "planned_shopper",
                                          "evidence": "buys milk every 7 days"}]},
    "consumption_patterns": [{"product": "milk", "avg_days_between": 7,
                              "predicted_next_date": "2024-05-08", "confidence": 0.8}],
    "recommendations": [{"product": "milk", "reason": "due for a refill",
                         "urgency": "high", "predicted_date": "2024-05-08"}],
    "next_best_action": {"action": "replenishment_reminder", "detail": "remind about milk"},
    "narrative": "A steady weekly dairy buyer, who will want milk again next Wednesday.",
    "confidence": 0.7}
MODEL = "eu.anthropic.claude-haiku-4-5-20251001-v1:0"
NOTE = ("Bedrock answers came from the local test server (canned answers), not from a model; "
        "costs shown are what AWS would charge for the same tokens.")


def _with_analysis(s: Settings, cid: str) -> None:
    async def run() -> None:
        async with Aws(s).clients("dynamodb") as c:
            store = PredictionStore(Dynamo(c["dynamodb"]), s.tables.predictions)
            stored = await store.get(cid)
            assert stored is not None
            await store.save([Prediction.model_validate({
                **stored, "source": "bedrock", "analysis": ANALYSIS, "analysis_model": MODEL,
                "analysis_at": datetime(2026, 11, 30, 23, 59, tzinfo=UTC)})])

    asyncio.run(run())


def test_show_prints_the_analysis_in_plain_rows(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(refit_interval_s="0")
    events = cdnow_slice()[:50]
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    assert cli.main(["consume", "--until-idle", "--json"]) == 0
    cid = events[0].customer_id
    _with_analysis(s, cid)
    capsys.readouterr()

    assert cli.main(["show", cid]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    rows = dict(line.split(": ", 1) for line in out.splitlines()[1:])
    assert out.splitlines()[0] == f"# customer {cid}"
    assert rows["narrative"] == ANALYSIS["narrative"]
    assert rows["next best action"] == "replenishment_reminder: remind about milk"
    assert rows["analysis model"] == MODEL
    assert rows["analysis source"] == "bedrock"
    assert rows["analysis at"].startswith("2026-11-30")
    # value, churn risk and timing, in words and dollars (CDNOW is USD)
    assert rows["customer value (12 months)"].startswith("$") and "80% range $" in rows[
        "customer value (12 months)"]
    assert rows["churn risk"].split(":")[0] in ("low", "medium", "high")
    assert rows["no purchase in 90 days"].endswith("% likely")
    assert "next order likely by" in rows and rows["models last refitted because"] != "-"

    assert cli.main(["show", cid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["analysis"]["narrative"] == ANALYSIS["narrative"]
    assert shown["churn_band"] == shown["churn"]["band"] and shown["clv"] == shown["value"]["clv"]

    assert cli.main(["segments"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "# monetary: the average order value, in USD"
    assert lines[2].split("\t") == ["id", "name", "customers", "recency_days", "frequency",
                                    "monetary"]


def test_unknown_customers_are_not_found_in_one_line(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    fresh_settings()
    capsys.readouterr()
    for argv in (["show", "nobody"], ["history", "nobody"], ["history", "nobody", "--json"]):
        assert cli.main(argv) == 6, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("caa: no ") and captured.err.count("\n") == 1
    assert cli.main(["show", ""]) == 7  # BadInput
    assert "caa: a customer id is needed" in capsys.readouterr().err


def test_a_dry_run_of_invalid_records_exits_1(
    fresh_settings: Callable[..., Settings], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fresh_settings()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{broken\nnot json either\n")
    capsys.readouterr()
    assert cli.main(["replay", str(path), "--dry-run"]) == 1
    captured = capsys.readouterr()
    assert "# caa replay --dry-run (nothing written)" in captured.out
    assert "invalid: 2" in captured.out and "…" not in captured.out
    assert "2 invalid record(s)" in captured.err
    assert cli.main(["replay", str(path), "--dry-run", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["report"]["valid"] == 0


def test_consume_shows_its_phases_on_stderr_and_keeps_json_on_stdout(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(refit_interval_s="0")
    events = cdnow_slice()[:60]
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    capsys.readouterr()
    assert cli.main(["consume", "--until-idle", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # nothing but the JSON on stdout
    assert summary["applied"] == len(events)
    customers = summary["table_customers"]
    # stderr is no terminal here: one line as each phase starts and one as it ends, in order
    lines = captured.err.splitlines()
    starts = [line.removesuffix(" ...") for line in lines if line.endswith(" ...")]
    assert starts[0] == "consuming"
    assert starts.index("consuming") < starts.index("winding down") \
        < starts.index("refit: reading customer states") \
        < starts.index(f"rewriting predictions ({customers:,} to do)")
    assert any(line.startswith("refit: fitting the purchase model") for line in starts)
    assert re.search(rf"^consuming: done \({len(events)}\) in [\d.]+ s$", captured.err, re.M)
    assert re.search(rf"^refit: reading customer states: done \({customers}\) in [\d.]+ s$",
                     captured.err, re.M)
    assert re.search(rf"^rewriting predictions: done \({customers}/{customers}\) in [\d.]+ s$",
                     captured.err, re.M)
    ended = [line for line in lines if ": done" in line]
    assert len(ended) == len(starts)  # every phase ended, none left ticking
    assert len(lines) == 2 * len(starts)  # nothing else: modest output


def test_costs_history_and_the_summary_say_the_answers_came_from_the_test_server(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # debounced past the consuming: the analyses are made when the consumer drains them
    s = ai_settings(consent_mode="opt_out", refit_interval_s="0", analysis_debounce_s="600")
    events = generate(customers=6, days=30, seed=5)
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    capsys.readouterr()
    assert cli.main(["consume", "--until-idle"]) == 0
    captured = capsys.readouterr()
    assert bedrock_server.requests()
    where = f"test server at {bedrock_server.endpoint} (canned answers)"
    out = captured.out.splitlines()
    assert out[0] == "# customer-ai-analytics: run summary"
    assert out[1] == f"# {NOTE}"
    assert f"ai: answered by: {where}" in out
    assert re.search(r"^AI analyses: done \((\d+)/\1\) in [\d.]+ s$", captured.err, re.M)

    assert cli.main(["costs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == ["# Bedrock usage per day (UTC)", f"# {NOTE}"]
    assert out[2].split("\t")[-1] == "answered by"
    assert out[3].split("\t")[-1] == where

    assert cli.main(["costs", "--json"]) == 0
    (day,) = json.loads(capsys.readouterr().out)
    assert day["simulated"] is True and day["note"] == NOTE and day["endpoints"] == [where]

    def analysed_by_bedrock(cid: str) -> bool:
        assert cli.main(["history", cid, "--json"]) == 0
        return any(r["source"] == "bedrock" for r in json.loads(capsys.readouterr().out))

    cid = next(c for c in sorted({e.customer_id for e in events}) if analysed_by_bedrock(c))
    assert cli.main(["history", cid]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"# {NOTE}"
    header = out[2].split("\t")
    assert header[-1] == "endpoint"
    bedrock = [r.split("\t") for r in out[3:] if r.split("\t")[header.index("source")]
               == "bedrock"]
    assert bedrock and all(r[-1] == where for r in bedrock)


def test_costs_say_nothing_of_a_test_server_when_there_was_none(
    fresh_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str],
) -> None:
    fresh_settings()
    capsys.readouterr()
    assert cli.main(["costs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["costs"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[:2] == ["# Bedrock usage per day (UTC)",
                                             "day\tspend USD\tcalls\tfailed\ttokens in\t"
                                             "tokens out\tanalyses\tfallbacks\tcache hits"]
    assert "test server" not in captured.out + captured.err
