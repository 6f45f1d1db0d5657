"""Deploy the template (all but the Lambda function, which the emulator cannot run) onto the
emulator's CloudFormation, then run the consumer against the resources the stack created."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from consumers.sources.worker import Worker
from producers.datasets.cdnow import load_events, time_ordered
from producers.publisher import Publisher

pytestmark = pytest.mark.integration
TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "template.yaml"


def test_the_stack_deploys_and_the_consumer_runs_on_what_it_created(aws_env: str) -> None:
    prefix = f"cfn{uuid.uuid4().hex[:6]}-"
    base = Settings()
    cf = Aws(base).client("cloudformation")
    name = f"caa-{prefix.rstrip('-')}"
    cf.create_stack(StackName=name, TemplateBody=TEMPLATE.read_text(),
                    Capabilities=["CAPABILITY_IAM"], Parameters=[
                        {"ParameterKey": "Prefix", "ParameterValue": prefix},
                        {"ParameterKey": "DeployFunction", "ParameterValue": "false"},
                        {"ParameterKey": "StreamMode", "ParameterValue": "PROVISIONED"},
                        {"ParameterKey": "ShardCount", "ParameterValue": "2"},
                        # names only (no function reads them here: DeployFunction=false)
                        {"ParameterKey": "ApiKeysParameter", "ParameterValue": "/t/api-keys"},
                        {"ParameterKey": "PseudonymKeyParameter",
                         "ParameterValue": "/t/pseudonym-key"}])
    deadline = time.monotonic() + 60
    while True:
        stack = cf.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["TablePrefix"] == prefix
    # the analysis requests' queue, its redrive to the dead-letter queue after 5 receives
    sqs = Aws(base).client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=outputs["AnalysisRequestsQueueUrl"],
                                     AttributeNames=["All"])["Attributes"]
    dlq = sqs.get_queue_attributes(QueueUrl=outputs["AnalysisRequestsDeadLettersUrl"],
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert json.loads(attrs["RedrivePolicy"]) == {"deadLetterTargetArn": dlq,
                                                  "maxReceiveCount": 5}
    # the daily batch's bucket and the role Bedrock assumes there (moto's CloudFormation
    # keeps neither the public access block nor the lifecycle: tests/unit/deploy reads them)
    assert outputs["BatchBucketName"] == f"{prefix}batch-123456789012-{base.region}"
    Aws(base).client("s3").head_bucket(Bucket=outputs["BatchBucketName"])
    assert ":role/" in outputs["BatchServiceRoleArn"]
    assert "BatchFunctionName" not in outputs  # DeployFunction=false
    created = {r.get("LogicalResourceId") for r in cf.list_stack_resources(
        StackName=name)["StackResourceSummaries"]}
    assert {"BatchBucket", "BatchServiceRole", "BatchRole", "BatchLogGroup"} <= created

    s = base.model_copy(update={"stream_name": outputs["StreamName"], "table_prefix": prefix,
                                "refit_interval_s": 0, "idle_polls": 2,
                                "poll_interval_s": 0.05})
    kinesis = Aws(s).client("kinesis")
    assert kinesis.describe_stream_summary(StreamName=s.stream_name)[
        "StreamDescriptionSummary"]["OpenShardCount"] == 2
    events = time_ordered(load_events(limit=500))
    Publisher(kinesis, s.stream_name).publish(events)

    async def consume() -> tuple[Worker, int]:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"])
            await w.run(until_idle=True)
            return w, sum(x.purchases for x in await w.customers.all())

    w, purchases = asyncio.run(consume())
    assert w.applier.totals.applied == purchases == len(events)
    predictions = Aws(s).client("dynamodb").scan(TableName=s.table("predictions"),
                                                 Select="COUNT")["Count"]
    assert predictions == len({e.customer_id for e in events})
