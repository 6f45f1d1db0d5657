"""The daily batch function (caa/entry/batch_lambda.py, deploy/template.yaml ``BatchFunction``):
customers consumed on moto's server, the schedule's input submits a Bedrock batch job (its
input and record on moto's S3, the job on the Bedrock-protocol test server: moto has no model
invocation jobs), the pseudonym key read from the SSM parameter the template names; then
Bedrock's "Batch Inference Job State Change" event, with the job's output written as Bedrock
writes it (as tests/integration/test_batch.py does), stores the analyses. A job that has not
ended is skipped and nothing is written; a second delivery of the event is refused. A job
that failed, expired or was stopped part way is ingested too: what it answered (and was
billed for) is stored and counted, every other record gets its statistical analysis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from caa import secrets
from caa.aws import Aws
from caa.entry import batch_lambda
from caa.errors import BadInput
from caa.settings import Settings
from deploy.local.bedrock_server import BedrockServer
from models.daily_job import split_s3_uri
from tests.integration.test_analysis import KEY
from tests.integration.test_batch import (
    ROLE,
    _event,
    check_ingested,
    check_native_request,
    consume,
    generated_at,
    read_input,
    run_cli,
    write_output,
)

pytestmark = pytest.mark.integration

#: what BatchSchedule's target sends (deploy/template.yaml), times filled in
SCHEDULED = {"job": "batch", "active_since": "1d", "source": "caa.scheduler",
             "scheduled_time": "2026-11-30T03:00:00Z",
             "execution_id": "5e0c1c47-2f1b-4d57-9a51-8c0f1b2a3d4e"}


def state_change(job: dict[str, Any], status: str) -> dict[str, Any]:
    """Bedrock's event on the default bus (the sample of AWS's "How EventBridge for Amazon
    Bedrock works"), for ``job``."""
    arn = job["job_arn"]
    return {
        "version": "0", "id": str(uuid.uuid4()),
        "detail-type": "Batch Inference Job State Change", "source": "aws.bedrock",
        "account": "123456789012", "time": "2026-11-30T05:12:00Z", "region": "eu-central-1",
        "resources": [arn],
        "detail": {"version": "0.0", "accountId": "123456789012",
                   "batchJobName": job["job"], "batchJobArn": arn,
                   "batchModelId": "eu.anthropic.claude-haiku-4-5-20251001-v1:0",
                   "status": status, "failureMessage": "",
                   "creationTime": "Nov 30, 2026, 3:00:05 AM"},
    }


@pytest.fixture
def deployed(ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Customers consumed, then the function's environment as BatchFunction's: the Bedrock
    analyzer, the batch bucket and service role, the pseudonym key by parameter name."""
    bucket = f"caa-batch-{uuid.uuid4().hex[:8]}"
    s0 = ai_settings(analyzer="statistical", consent_mode="opt_in", batch_bucket=bucket,
                     batch_role_arn=ROLE, batch_min_records="1", refit_interval_s="0")
    Aws(s0).client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": s0.region})
    consume(s0, [_event(c, d, p, True) for c in ("c1", "c2", "c3", "c4", "c5")
                 for d, p in ((1, "rice"), (8, "oats"))] + [_event("nope", 2, "rice", False)])
    parameter = f"/t{uuid.uuid4().hex[:8]}/pseudonym-key"
    Aws(s0).client("ssm").put_parameter(Name=parameter, Type="SecureString",
                                        Value=KEY.decode())
    monkeypatch.delenv("CAA_PSEUDONYM_KEY")  # read from the parameter, as deployed
    monkeypatch.setenv("CAA_PSEUDONYM_KEY_PARAMETER", parameter)
    monkeypatch.setenv("CAA_ANALYZER", "bedrock")
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK", bedrock_server.endpoint)
    secrets.clear_cache()
    yield Settings()
    secrets.clear_cache()


def marker_exists(s: Settings, job: dict[str, Any]) -> bool:
    bucket, key = split_s3_uri(job["record_uri"])
    listed = Aws(s).client("s3").list_objects_v2(
        Bucket=bucket, Prefix=key.removesuffix(".json") + ".ingested")
    return bool(listed.get("Contents"))


def test_the_schedule_submits_the_job_and_its_completion_event_ingests_it(
    deployed: Settings, bedrock_server: BedrockServer, capsys: pytest.CaptureFixture[str],
) -> None:
    s = deployed
    before = generated_at(s, "c1")
    out = batch_lambda.handler(dict(SCHEDULED))
    assert (out["job"], out["status"], out["span"]) == ("batch", "submitted", "1d"), out
    assert out["scheduled_time"] == SCHEDULED["scheduled_time"]
    assert (out["active"], out["predictions_written"]) == (6, 6)
    assert (out["analysis"]["no_consent"], out["analysis"]["to_analyse"]) == (1, 5)
    assert generated_at(s, "c1") != before
    assert bedrock_server.requests() == []  # no on-demand call

    # the job: created on Bedrock with the service role, its input and record on S3
    job = out["analysis"]["job"]
    (created,) = bedrock_server.jobs()
    assert (created["jobArn"], created["jobName"]) == (job["job_arn"], job["job"])
    assert (created["roleArn"], created["modelInvocationType"]) == (ROLE, "InvokeModel")
    assert created["inputDataConfig"]["s3InputDataConfig"]["s3Uri"] == job["input_uri"]
    lines, record, raw = read_input(s, job)
    who = {rid: e.customer_id for rid, e in record.entries.items()}
    assert sorted(who.values()) == ["c1", "c2", "c3", "c4", "c5"]
    for ln in lines:  # pseudonymised with the key read from the SSM parameter
        check_native_request(s, ln, record.entries[ln["recordId"]].input, who[ln["recordId"]])
    assert not any(c.encode() in raw for c in ("c1", "c2", "c3", "c4", "c5", "nope"))

    # a job that has not ended: skipped, nothing written
    write_output(s, job, {who[ln["recordId"]]: ln for ln in lines})
    for status in ("InProgress", "Stopping"):
        skipped = batch_lambda.handler(state_change(job, status))
        assert (skipped["job"], skipped["status"], skipped["job_status"]) == (
            "ingest", "skipped", status), skipped
        assert skipped["job_id"] == job["job_arn"] and skipped["job_name"] == job["job"]
    assert run_cli(capsys, "history", "c1", "--json") == (0, [])
    assert not marker_exists(s, job)

    # the event says Completed, Bedrock agrees: the answers are stored
    bedrock_server.set_job_status("Completed")
    done = batch_lambda.handler(state_change(job, "Completed"))
    assert (done["job"], done["status"], done["trigger"]) == ("ingest", "ingested", "event")
    assert (done["job_name"], done["job_status"]) == (job["job"], "Completed")
    check_ingested(capsys, s, done)
    assert marker_exists(s, job)

    # the same event delivered again, or the job ingested by hand: refused, counted once
    costs = run_cli(capsys, "costs", "--json")[1]
    again = batch_lambda.handler(state_change(job, "Completed"))
    assert again["status"] == "refused" and "ingested already" in again["reason"], again
    by_hand = batch_lambda.handler({"job": "ingest", "job_id": job["job"]})
    assert (by_hand["status"], by_hand["trigger"]) == ("refused", "manual")
    assert run_cli(capsys, "costs", "--json")[1] == costs


@pytest.mark.parametrize("status", ["Failed", "Expired", "Stopped"])
def test_a_job_that_ended_part_way_is_ingested_with_its_spend(
    deployed: Settings, bedrock_server: BedrockServer, capsys: pytest.CaptureFixture[str],
    status: str,
) -> None:
    """Bedrock answered some records before the job failed, expired or was stopped: those
    answers were billed. They are stored and counted against the day's budget; the records
    it never reached get their statistical analysis (``batch_missing``) now."""
    s = deployed
    job = batch_lambda.handler(dict(SCHEDULED))["analysis"]["job"]
    lines, record, _ = read_input(s, job)
    write_output(s, job, {record.entries[ln["recordId"]].customer_id: ln for ln in lines})
    bedrock_server.set_job_status(status)
    before = run_cli(capsys, "costs", "--json")[1]
    out = batch_lambda.handler(state_change(job, status))
    assert (out["status"], out["trigger"], out["job_status"]) == ("ingested", "event", status)
    check_ingested(capsys, s, out)
    assert marker_exists(s, job)
    (after,) = run_cli(capsys, "costs", "--json")[1]
    spent_before = sum(day["spend_usd"] for day in before or [])
    # the billed answers (two valid, one invalid) are in the day's spend and calls
    assert after["spend_usd"] - spent_before == pytest.approx(out["cost_usd"])
    assert out["cost_usd"] > 0 and after["calls"] >= 3
    again = batch_lambda.handler(state_change(job, status))
    assert again["status"] == "refused", again


def test_a_completion_event_of_a_job_still_running_on_bedrock_writes_nothing(
    deployed: Settings, bedrock_server: BedrockServer, capsys: pytest.CaptureFixture[str],
) -> None:
    """Bedrock is asked, not the event: a job it still runs is reported, not ingested."""
    job = batch_lambda.handler(dict(SCHEDULED, active_since="2h"))["analysis"]["job"]
    out = batch_lambda.handler(state_change(job, "PartiallyCompleted"))
    assert (out["status"], out["job_status"], out["ingested"]) == ("running", "Submitted",
                                                                   False), out
    assert run_cli(capsys, "history", "c1", "--json") == (0, [])
    assert not marker_exists(deployed, job)


def test_an_unknown_job_is_refused_and_a_foreign_event_is_bad_input(
    deployed: Settings, bedrock_server: BedrockServer,
) -> None:
    out = batch_lambda.handler({"job": "ingest", "job_id": "caa-batch-20260101t000000-abcdef"})
    assert out["status"] == "refused" and "no job record" in out["reason"], out
    with pytest.raises(BadInput):
        batch_lambda.handler({"job": "refit"})
    with pytest.raises(BadInput):
        batch_lambda.handler({"job": "ingest"})
    with pytest.raises(BadInput):
        batch_lambda.handler({"source": "aws.bedrock",
                              "detail-type": "Batch Inference Job State Change",
                              "detail": {"status": "Completed"}})
    assert bedrock_server.jobs() == []


def test_a_job_answering_after_a_newer_analysis_or_an_erasure_changes_neither(
    deployed: Settings, bedrock_server: BedrockServer, capsys: pytest.CaptureFixture[str],
) -> None:
    """The job is created; then c1 is analysed on demand and c2 is erased; then the job
    completes. Its answer for c1 is of an older input: kept in the history, not made the
    latest, not merged into the prediction. Its answer for c2 is of the erased customer:
    stored nowhere. The other customers' answers are stored as usual."""
    s = deployed
    job = batch_lambda.handler(dict(SCHEDULED))["analysis"]["job"]
    lines, record, _ = read_input(s, job)
    rc, on_demand = run_cli(capsys, "analyze", "c1", "--json")
    assert rc == 0 and on_demand["trigger"] == "on_demand", on_demand
    assert run_cli(capsys, "erase", "c2", "--json")[0] == 0
    db = Aws(s).client("dynamodb")

    def latest(cid: str) -> dict[str, Any]:
        return dict(db.get_item(TableName=s.table("analyses"), ConsistentRead=True,
                                Key={"customer_id": {"S": cid}})["Item"])

    newer = latest("c1")
    write_output(s, job, {record.entries[ln["recordId"]].customer_id: ln for ln in lines})
    bedrock_server.set_job_status("Completed")
    out = batch_lambda.handler(state_change(job, "Completed"))
    assert (out["status"], out["superseded"], out["erased"]) == ("ingested", 1, 1), out
    assert out["write_errors"] == []

    assert latest("c1") == newer  # the on-demand analysis is still the latest
    prediction = db.get_item(TableName=s.table("predictions"), ConsistentRead=True,
                             Key={"customer_id": {"S": "c1"}})["Item"]
    assert prediction["analysis_at"] == newer["at"]
    rc, history = run_cli(capsys, "history", "c1", "--json")
    assert rc == 0 and [h["trigger"] for h in history] == ["schedule", "on_demand"]

    assert set(latest("c2")) == {"customer_id", "erased", "input_at", "expires_at"}
    assert Aws(s).client("dynamodb").query(
        TableName=s.table("analysis-history"), KeyConditionExpression="customer_id = :c",
        ExpressionAttributeValues={":c": {"S": "c2"}})["Items"] == []
    for cid in ("c3", "c4", "c5"):  # the rest: stored and the latest
        assert latest(cid)["trigger"]["S"] == "schedule"
