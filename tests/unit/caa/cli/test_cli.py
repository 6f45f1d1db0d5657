"""The ``caa`` command line without AWS: help on every command and option, ``--version``,
usage errors (exit 2, with the subcommand's usage), tables that never cut a value, and the
run summary saying when Bedrock's answers came from the local test server."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer

from caa.cli import main as cli
from caa.cli import output
from caa.cli.pipeline import next_steps, print_summary
from consumers.stores.usage import simulated_note


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        out += _commands(sub, (*path, name))
    return out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"caa {version('customer-ai-analytics')}"


def test_every_command_and_option_has_help() -> None:
    root = typer.main.get_command(cli.app())
    found = _commands(root)
    names = {" ".join(p) for p, _ in found}
    for expected in ("run", "setup", "publish", "consume", "show", "segments", "audience", "costs",
                     "history", "analyze", "analyzer", "erase", "watch", "batch", "replay",
                     "evaluate", "report", "serve", "emulator start", "emulator stop",
                     "emulator status", "dlq list", "dlq redrive", "kcl properties", "kcl run"):
        assert expected in names
    missing = []
    for path, command in found:
        if path and not (command.help or command.short_help):
            missing.append(" ".join(path))
        for p in command.params:
            if not (getattr(p, "help", None) or "").strip():
                missing.append(f"{' '.join(path) or 'caa'} {p.name}")
    assert missing == []


def test_top_level_help_says_what_caa_is_and_where_to_start(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Customer AI Analytics" in out
    for start in ("caa run", "caa show 00001", "caa segments"):
        assert start in out


@pytest.mark.parametrize("argv", [["show", "--help"], ["dlq", "list", "-h"],
                                  ["replay", "--help"], ["watch", "--help"]])
def test_subcommand_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "--json" in out and ("Print the result as JSON" in out or "PredictionChange" in out)


@pytest.mark.parametrize(("argv", "usage"), [
    (["show", "1", "--bogus"], "caa show"),
    (["dlq", "list", "--dry-run"], "caa dlq list"),
    (["replay", "x", "--chunk", "0"], "caa replay"),
    (["replay", "x", "--share", "1.5"], "caa replay"),
    (["replay", "x", "--since", "not a time"], "caa replay"),
    (["replay", "x", "--job", "a b"], "caa replay"),
    (["history", "1", "--limit", "0"], "caa history"),
    (["publish", "--days", "0"], "caa publish"),
    (["publish", "--dataset", "nope"], "caa publish"),
    (["evaluate", "--holdout-weeks", "0"], "caa evaluate"),
    (["evaluate", "--calibration-end", "1997-13-01"], "caa evaluate"),
    (["batch"], "caa batch"),
    (["batch", "--active-since", "yesterday"], "caa batch"),
    (["batch", "--active-since", "1d", "--ingest", "j"], "caa batch"),
    (["serve", "--port", "0"], "caa serve"),
    (["kcl", "properties", "--retrieval-mode", "SOMETIMES"], "caa kcl properties"),
    (["nosuchcommand"], "caa"),
])
def test_usage_errors_exit_2_with_the_subcommands_usage(
        argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"Usage: {usage}" in captured.err


@pytest.mark.parametrize(("command", "bad"), [
    *[(c, b) for c in ("show", "history", "analyze")
      for b in ("a b", "x" * 5000, "c1\x1b[2J", " ")],
    # erase takes any partition key (its dead letters), but not these
    ("erase", "x" * 5000), ("erase", " "), ("erase", "x" * 257),
])
def test_commands_refuse_an_id_no_event_can_carry_in_one_line(
        command: str, bad: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before anything is read, published or erased (no endpoint is reachable here): ``caa
    show`` echoed a 5,000-character argument whole in its not-found line."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert cli.main([command, bad]) == 7  # BadInput
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert ("not a customer id" in line or "customer id is needed" in line) and len(line) < 300
    assert "x" * 65 not in line


def test_watch_refuses_a_negative_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["watch", "--limit", "-3"]) == 2
    err = capsys.readouterr().err
    assert "Usage: caa watch" in err and "--limit" in err


LONG = "2026-11-30T23:59:59.123456+00:00 bedrock eu.anthropic.claude-haiku-4-5-20251001-v1:0"


def test_plain_rows_when_stdout_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    output.pairs("customer 1", [("analysis at", LONG), ("narrative", "two\nlines")])
    output.table("t", ("day", "model"), [("2026-11-30", LONG)])
    out = capsys.readouterr().out
    assert "…" not in out
    assert out.splitlines() == ["# customer 1", f"analysis at: {LONG}", "narrative: two lines",
                                "# t", "day\tmodel", f"2026-11-30\t{LONG}"]


def test_tables_fold_on_a_narrow_terminal(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "40")
    output.pairs("customer 1", [("analysis at", LONG)])
    output.table("t", ("day", "spend", "model"), [("2026-11-30", "12.50", LONG)])
    out = capsys.readouterr().out
    assert "…" not in out
    text = re.sub(r"[\s│┃┏┓┗┛━─┡┩┠┨╇╈┼╭╮╰╯|]", "", out)
    assert re.sub(r"\s", "", LONG) in text.replace("2026-11-3012.50", "")


def test_next_steps_after_a_run() -> None:
    steps = next_steps({"rejected": 0}, "00001")
    assert [s for s, _ in steps] == ["caa show 00001", "caa segments", "caa report"]
    assert "out/report.html" in steps[2][1]
    assert [s for s, _ in next_steps({"rejected": 3}, "7")][2] == "caa dlq list"


def test_a_caption_is_a_comment_line_under_the_title(capsys: pytest.CaptureFixture[str]) -> None:
    output.pairs("p", [("a", "1")], caption="said\nonce")
    output.table("t", ("x",), [("1",)], caption="also")
    output.table("u", ("x",), [("1",)])
    assert capsys.readouterr().out.splitlines() == [
        "# p", "# said once", "a: 1", "# t", "# also", "x", "1", "# u", "x", "1"]


def test_the_run_summary_says_when_bedrock_answers_came_from_the_test_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    where = "test server at http://127.0.0.1:4599 (canned answers)"
    summary: dict[str, Any] = {
        "records_read": 10, "applied": 10, "duplicates": 0, "rejected": 0,
        "predictions_written": 4, "consume_s": 1.0, "events_per_s": 10.0, "refit_s": 0.5,
        "elapsed_s": 2.0, "ai": {"model": "m", "analyses": 4, "answered_by": [where],
                                 "note": simulated_note([where])}}
    print_summary(summary)
    plain = capsys.readouterr().out
    assert plain.splitlines()[:2] == ["# customer-ai-analytics: run summary",
                                      f"# {simulated_note([where])}"]
    assert f"ai: answered by: {where}" in plain and "ai: note" not in plain
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")
    print_summary(summary)
    shown = capsys.readouterr().out
    assert "Bedrock answers came from the local test server (canned answers)" in shown
    summary["ai"] = {"model": "m", "analyses": 4}  # answered by AWS: nothing said
    print_summary(summary)
    assert "test server" not in capsys.readouterr().out


def test_an_empty_endpoint_variable_is_unset_as_botocore_takes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from caa.settings import Settings

    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "")
    s = Settings()
    assert s.endpoint_url is None and s.bedrock_endpoint_url is None


@pytest.mark.parametrize(("env", "line"), [
    ({"AWS_ENDPOINT_URL": "notaurl"}, "bad setting AWS_ENDPOINT_URL='notaurl'"),
    ({"AWS_ENDPOINT_URL": "http://[::1"}, "bad setting AWS_ENDPOINT_URL="),
    ({"AWS_ENDPOINT_URL": "ftp://127.0.0.1:9"}, "not an http:// or https:// URL"),
    ({"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": "x"}, "bad setting AWS_ENDPOINT_URL_BEDROCK_RUNTIME"),
    ({"AWS_REGION": "bad region!"}, "bad setting AWS_REGION='bad region!'"),
    # a structured value that is not JSON (pydantic-settings' own error: a traceback before)
    ({"CAA_BEDROCK_PRICES": "notjson"}, "bad setting CAA_BEDROCK_PRICES='notjson': not valid"),
    # wrong only together (a traceback deep in a command, or taken silently, before)
    ({"CAA_CHURN_MEDIUM": "0.9"},
     "bad setting CAA_CHURN_MEDIUM (0.9) must not be above CAA_CHURN_HIGH (0.8)"),
    ({"CAA_AB_EXPERIMENT": "e", "CAA_AB_VARIANTS": "bedrock=abc"},
     "bad setting variant weights must be positive integers: 'bedrock=abc'"),
    ({"CAA_AB_VARIANTS": "statistical=100"},
     "bad setting CAA_AB_VARIANTS is set but CAA_AB_EXPERIMENT is empty"),
    # read by botocore itself, not by the settings
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_DYNAMODB": "notaurl"},
     "bad endpoint URL (Invalid endpoint: notaurl)"),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ENDPOINT_URL_DYNAMODB": "ftp://127.0.0.1:9"},
     "cannot call http://127.0.0.1:9: An HTTP Client raised an unhandled exception"),
])
def test_a_bad_endpoint_or_region_is_one_line_not_a_traceback(
        env: dict[str, str], line: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "CAA_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(["dlq", "list"] if "DYNAMODB" in str(env) else ["show", "c1"])
    captured = capsys.readouterr()
    assert code in (5, 7) and "Traceback" not in captured.err
    (said,) = [ln for ln in captured.err.splitlines() if ln.startswith("caa: ")]
    assert line in said
