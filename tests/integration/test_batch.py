"""The daily batch end to end: customers consumed on moto's server, `caa batch` recomputes
the active ones and, with Bedrock on, writes a batch inference job's input (the on-demand
request in Anthropic's native format) to moto's S3 and creates the InvokeModel-type job on the
Bedrock-protocol test server (moto has no model invocation jobs); the
test then writes the job's output as Bedrock would and `caa batch --ingest` stores it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.cli.daily import NOT_FINISHED
from caa.settings import Settings
from consumers.analysis.analyzer import PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from deploy.local.bedrock_server import BedrockServer
from deploy.local.schema_answer import generate, grounding
from models.analysis import TOOL_NAME, input_schema, tool_spec
from models.daily_job import BatchJob, split_s3_uri
from models.events import LineItem, PurchaseEvent
from models.prompt import SYSTEM_PROMPT, AnalysisInput, pseudonym, render_user
from producers.publisher import Publisher
from tests.integration.test_analysis import KEY, customer_data

pytestmark = pytest.mark.integration
ROLE = "arn:aws:iam::123456789012:role/caa-batch"


def _event(cid: str, day: int, product: str, consent: bool) -> PurchaseEvent:
    return PurchaseEvent(
        event_id=f"{cid}-{day}-{product}", order_id=f"o-{cid}-{day}", customer_id=cid,
        occurred_at=datetime(2024, 3, 1, 9, tzinfo=UTC) + timedelta(days=day), currency="EUR",
        items=[LineItem(product_id=product, category="pantry", quantity=2,
                        unit_price=Decimal("3.25"))],
        total=Decimal("6.50"), consent=consent)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    rc = cli.main(list(args))
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else None


def answer(model_input: dict[str, Any], tool_input: Any, tokens: tuple[int, int]) -> Any:
    """An Anthropic Messages response forced through the request's tool, as an
    InvokeModel-type batch job writes it."""
    (choice,) = [t["name"] for t in model_input["tools"]
                 if t["name"] == model_input["tool_choice"]["name"]]
    return {"id": "msg_bdrk_1", "type": "message", "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [{"type": "tool_use", "id": "toolu_bdrk_1", "name": choice,
                         "input": tool_input}],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}}


def consume(s: Settings, events: list[PurchaseEvent]) -> None:
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)

    async def run() -> None:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            await wiring.worker(s, c["kinesis"], c["dynamodb"]).run(until_idle=True)

    asyncio.run(run())


def generated_at(s: Settings, cid: str) -> str:
    item = Aws(s).client("dynamodb").get_item(
        TableName=s.table("predictions"), Key={"customer_id": {"S": cid}},
        ConsistentRead=True)["Item"]
    return str(item["generated_at"]["S"])


def read_input(s: Settings, job: dict[str, Any]) -> tuple[list[Any], BatchJob, bytes]:
    """The input lines and the job record `caa batch` wrote to S3."""
    s3 = Aws(s).client("s3")
    bucket, key = split_s3_uri(job["input_uri"])
    raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    record = BatchJob.model_validate_json(
        s3.get_object(Bucket=bucket, Key=split_s3_uri(job["record_uri"])[1])["Body"].read())
    return [json.loads(ln) for ln in raw.decode().splitlines()], record, raw


def write_output(s: Settings, job: dict[str, Any], by_cid: dict[str, Any]) -> None:
    """Bedrock's output: two answers, an invalid one, an error, an unreadable line; under
    ``<output uri><job id>/<input name>.out`` as Bedrock writes it."""

    def valid(cid: str) -> str:
        body = by_cid[cid]["modelInput"]
        schema = body["tools"][0]["input_schema"]
        tool_input = generate(schema, grounded=tuple(grounding(body)))
        return json.dumps({**by_cid[cid], "modelOutput": answer(body, tool_input, (1000, 200))})

    out_lines = [
        valid("c1"), valid("c2"),
        json.dumps({**by_cid["c3"], "modelOutput": answer(
            by_cid["c3"]["modelInput"], {"narrative": "x"}, (1000, 200))}),
        json.dumps({**by_cid["c4"], "error": {"errorCode": 400,
                                              "errorMessage": "Malformed input request"}}),
        json.dumps(by_cid["c5"])[:40],  # cut short: not JSON
    ]
    job_id = job["job_arn"].rsplit("/", 1)[-1]
    bucket, prefix = split_s3_uri(job["output_uri"])
    Aws(s).client("s3").put_object(Bucket=bucket, Key=f"{prefix}{job_id}/{job['job']}.jsonl.out",
                                   Body="\n".join(out_lines).encode())


def check_native_request(s: Settings, ln: dict[str, Any], x: AnalysisInput, cid: str) -> None:
    """The line's model input is the on-demand request, pseudonymised, in Anthropic's native
    format (an InvokeModel-type job: Converse-type jobs refuse toolConfig)."""
    conv = BedrockAnalyzer(None, s.bedrock_model_id, max_tokens=s.bedrock_max_tokens,
                           prices=PriceTable.parse(s.bedrock_prices)).request(x)
    spec = tool_spec()["toolSpec"]
    assert ln["modelInput"] == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": conv["inferenceConfig"]["maxTokens"],
        "temperature": conv["inferenceConfig"]["temperature"],
        "system": conv["system"][0]["text"],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": conv["messages"][0]["content"][0]["text"]}]}],
        "tools": [{"name": spec["name"], "description": spec["description"],
                   "input_schema": spec["inputSchema"]["json"]}],
        "tool_choice": {"type": "tool", "name": TOOL_NAME},
    }
    assert (ln["modelInput"]["system"], ln["modelInput"]["max_tokens"]) == (
        SYSTEM_PROMPT, s.bedrock_max_tokens)
    assert ln["modelInput"]["messages"][0]["content"][0]["text"] == render_user(x)
    assert ln["modelInput"]["tools"][0]["input_schema"] == input_schema()
    assert customer_data({"body": ln["modelInput"]})["subject"] == pseudonym(KEY, cid)


def test_daily_batch_submits_a_bedrock_job_and_ingests_its_answers(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = f"caa-batch-{uuid.uuid4().hex[:8]}"
    s0 = ai_settings(analyzer="statistical", consent_mode="opt_in", batch_bucket=bucket,
                     batch_role_arn=ROLE, batch_min_records="1", refit_interval_s="0")
    Aws(s0).client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": s0.region})
    analysed = ["c1", "c2", "c3", "c4", "c5"]
    consume(s0, [_event(c, d, p, True) for c in [*analysed, "idle"]
                 for d, p in ((1, "rice"), (8, "oats"))] + [_event("nope", 2, "rice", False)])
    Aws(s0).client("dynamodb").update_item(
        TableName=s0.table("customers"), Key={"customer_id": {"S": "idle"}},
        UpdateExpression="SET updated_at = :t",  # its state was last written long ago
        ExpressionAttributeValues={":t": {"S": "2000-01-01T00:00:00.000+00:00"}})
    before = {c: generated_at(s0, c) for c in [*analysed, "idle", "nope"]}

    # -- the batch: predictions recomputed, analyses handed to a batch job ---------------
    monkeypatch.setenv("CAA_ANALYZER", "bedrock")
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", bedrock_server.endpoint)
    s = Settings()
    rc, out = run_cli(capsys, "batch", "--active-since", "1d", "--json")
    assert rc == 0, out
    assert (out["active"], out["predictions_written"]) == (6, 6)  # not "idle"
    plan = out["analysis"]
    assert (plan["no_consent"], plan["cache_hits"], plan["to_analyse"]) == (1, 0, 5)
    assert plan["worst_case_usd"] > 0
    assert all(generated_at(s, c) != before[c] for c in [*analysed, "nope"])
    assert generated_at(s, "idle") == before["idle"]
    assert bedrock_server.requests() == []  # no on-demand call

    job = plan["job"]
    (created,) = bedrock_server.jobs()
    assert created["jobArn"] == job["job_arn"] and created["jobName"] == job["job"]
    assert (created["modelId"], created["roleArn"], created["modelInvocationType"]) == (
        s.bedrock_model_id, ROLE, "InvokeModel")
    assert created["inputDataConfig"]["s3InputDataConfig"]["s3Uri"] == job["input_uri"]
    assert created["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"] == job["output_uri"]

    lines, record, raw = read_input(s, job)
    assert [ln["recordId"] for ln in lines] == sorted(record.entries)
    who = {rid: e.customer_id for rid, e in record.entries.items()}
    assert sorted(who.values()) == analysed
    for ln in lines:
        check_native_request(s, ln, record.entries[ln["recordId"]].input, who[ln["recordId"]])
    assert not any(c.encode() in raw for c in [*analysed, "nope"])  # no customer id in it

    # -- still running: nothing is ingested --------------------------------------------
    assert run_cli(capsys, "batch", "--ingest", job["job"], "--json")[0] == NOT_FINISHED
    assert run_cli(capsys, "history", "c1", "--json") == (0, [])

    write_output(s, job, {who[ln["recordId"]]: ln for ln in lines})
    bedrock_server.set_job_status("Completed")
    rc, report = run_cli(capsys, "batch", "--ingest", job["job_arn"], "--json")  # by ARN
    assert rc == 0, report
    check_ingested(capsys, s, report)

    # -- a second ingestion is refused and counts nothing twice -------------------------
    costs = run_cli(capsys, "costs", "--json")[1]
    assert run_cli(capsys, "batch", "--ingest", job["job"], "--json")[0] == 1
    assert run_cli(capsys, "costs", "--json")[1] == costs

    # -- the answers feed the change-aware cache: the next batch sends only what changed --
    rc, again = run_cli(capsys, "batch", "--active-since", "1d", "--json")
    assert rc == 0
    assert again["analysis"]["cache_hits"] == 2  # c1, c2 answered; the fallbacks go again
    assert again["analysis"]["to_analyse"] == 3


def check_ingested(capsys: pytest.CaptureFixture[str], s: Settings,
                   report: dict[str, Any]) -> None:
    each = round((1000 * 1.10 + 200 * 5.50) / 1e6 * 0.5, 9)  # eu. Haiku 4.5 at the batch rate
    assert report["ingested"] and report["analyses"] == 5 and report["bedrock"] == 2
    assert report["fallbacks"] == {"batch_error": 1, "batch_missing": 1, "invalid_answer": 1}
    assert report["cost_usd"] == pytest.approx(3 * each)
    assert len(report["problems"]) == 2 and report["write_errors"] == []

    def latest(cid: str) -> dict[str, Any]:
        rc, history = run_cli(capsys, "history", cid, "--json")
        assert rc == 0
        return dict(history[0])

    for cid in ("c1", "c2"):
        h = latest(cid)
        assert (h["source"], h["trigger"], h["model"]) == ("bedrock", "schedule",
                                                           s.bedrock_model_id)
        assert (h["input_tokens"], h["output_tokens"]) == (1000, 200)
        assert h["cost_usd"] == pytest.approx(each)
        assert str(h["endpoint"]).startswith("test server at ")  # no model ran that job
    for cid, reason, cost in (("c3", "invalid_answer", each), ("c4", "batch_error", 0),
                              ("c5", "batch_missing", 0), ("nope", "no_consent", 0)):
        h = latest(cid)
        assert (h["source"], h["fallback_reason"]) == ("statistical", reason), cid
        assert h["cost_usd"] == pytest.approx(cost)
    show = run_cli(capsys, "show", "c1", "--json")[1]
    assert (show["source"], show["analysis_model"]) == ("bedrock", s.bedrock_model_id)
    show = run_cli(capsys, "show", "c4", "--json")[1]
    assert (show["source"], show["fallback_reason"]) == ("statistical", "batch_error")

    (day,) = run_cli(capsys, "costs", "--json")[1]
    assert day["spend_usd"] == pytest.approx(3 * each)
    assert (day["calls"], day["input_tokens"], day["output_tokens"]) == (3, 3000, 600)
    assert day["fallback_reasons"] == {"batch_error": 1, "batch_missing": 1,
                                       "invalid_answer": 1, "no_consent": 1}
    assert [e.startswith("test server at ") for e in day["endpoints"]] == [True]


def test_statistical_batch_rewrites_active_predictions_and_small_jobs_go_on_demand(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    s = ai_settings(analyzer="statistical", consent_mode="opt_out", refit_interval_s="0")
    consume(s, [_event(c, 1, "rice", True) for c in ("a", "b")])
    before = generated_at(s, "a")
    assert run_cli(capsys, "batch", "--active-since", "yesterday")[0] == 2
    rc, out = run_cli(capsys, "batch", "--active-since", "2h", "--json")
    assert rc == 0
    assert (out["active"], out["predictions_written"]) == (2, 2) and "analysis" not in out
    assert generated_at(s, "a") != before

    monkeypatch.setenv("CAA_ANALYZER", "bedrock")
    assert run_cli(capsys, "batch", "--active-since", "1d")[0] == 7  # BadInput: no bucket, role
    monkeypatch.setenv("CAA_BATCH_BUCKET", "never-written")
    monkeypatch.setenv("CAA_BATCH_ROLE_ARN", ROLE)
    rc, out = run_cli(capsys, "batch", "--active-since", "1d", "--json")
    assert rc == 0
    assert out["analysis"]["to_analyse"] == 2
    assert out["analysis"]["job"].startswith("not submitted: 2 record(s), fewer than")
    assert bedrock_server.jobs() == []  # too few for a job: analysed on demand instead
    assert out["analysis"]["on_demand"] == {"bedrock": 2, "statistical": 0, "failed": 0}
    rc, history = run_cli(capsys, "history", "a", "--json")
    assert [(h["source"], h["trigger"]) for h in history] == [("bedrock", "schedule")]

    monkeypatch.setenv("CAA_AB_EXPERIMENT", "exp-1")  # everyone in the control variant
    monkeypatch.setenv("CAA_AB_VARIANTS", "statistical=1")
    rc, out = run_cli(capsys, "batch", "--active-since", "1d", "--json")
    assert rc == 0
    assert (out["analysis"]["ab_control"], out["analysis"]["to_analyse"]) == (2, 0)
    rc, history = run_cli(capsys, "history", "a", "--json")
    assert [(h["source"], h["fallback_reason"]) for h in history] == [
        ("statistical", "ab_control"), ("bedrock", None)]  # newest first
