"""The CloudFormation template: cfn-lint clean, least privilege, and the tables the code uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from cfnlint.decode import decode

from consumers.stores.dead_letters import _POSITION_KEYS, BY_CUSTOMER_ID, BY_PARTITION_KEY
from deploy.resources import INDEXES, KEYS, TTL

TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "template.yaml"


def template() -> dict[str, Any]:
    tpl, problems = decode(str(TEMPLATE))
    assert not problems
    assert tpl is not None
    return dict(tpl)


def statements() -> list[dict[str, Any]]:
    out = []
    for res in template()["Resources"].values():
        if res["Type"] == "AWS::IAM::Role":
            for policy in res["Properties"]["Policies"]:
                out += policy["PolicyDocument"]["Statement"]
    return out


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def test_cfn_lint_is_clean() -> None:
    cli = Path(sys.executable).parent / "cfn-lint"  # the console script in this environment
    done = subprocess.run([str(cli), str(TEMPLATE)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_iam_has_no_wildcard_actions_and_no_wildcard_resources_aws_does_not_require() -> None:
    stmts = statements()
    assert stmts
    for st in stmts:
        assert st["Effect"] == "Allow"
        for action in _list(st["Action"]):
            assert "*" not in action, st
        for resource in _list(st["Resource"]):
            if resource == "*":  # only where the action has no resource-level permissions
                assert _list(st["Action"]) == ["cloudwatch:PutMetricData"], st
                assert st["Condition"] == {
                    "StringEquals": {"cloudwatch:namespace": "CustomerAIAnalytics"}}
            elif isinstance(resource, dict) and "Fn::Sub" in resource:
                text = resource["Fn::Sub"]
                # the batch: its jobs' generated ids, and the objects under its bucket's prefix
                for allowed in ("bedrock:*::foundation-model/", "model-invocation-job/*",
                                "${BatchBucket.Arn}/caa-batch/input/*",
                                "${BatchBucket.Arn}/caa-batch/output/*",
                                "${BatchBucket.Arn}/caa-batch/*"):
                    text = text.replace(allowed, "")
                assert "*" not in text, st
            else:
                assert isinstance(resource, dict) and "Fn::GetAtt" in resource, st


def test_bedrock_is_invoke_model_on_the_configured_model_only() -> None:
    """Invoking (the analyzer, Bedrock's batch service role, and the batch function for a run
    too small for a job) and creating batch jobs only on the configured model; the batch
    function's other Bedrock actions only on jobs."""
    model = [
        "arn:${AWS::Partition}:bedrock:${PrimaryRegion}:${AWS::AccountId}:"
        "inference-profile/${BedrockModelId}",
        "arn:${AWS::Partition}:bedrock:*::foundation-model/${BedrockFoundationModelId}",
    ]
    jobs = ["arn:${AWS::Partition}:bedrock:${PrimaryRegion}:${AWS::AccountId}:"
            "model-invocation-job/*"]
    bedrock = [st for st in statements()
               if any(a.startswith("bedrock:") for a in _list(st["Action"]))]
    invoke = [st for st in bedrock if _list(st["Action"]) == ["bedrock:InvokeModel"]]
    create = [st for st in bedrock
              if _list(st["Action"]) == ["bedrock:CreateModelInvocationJob"]]
    on_jobs = [st for st in bedrock if st not in invoke and st not in create]
    assert (len(invoke), len(create), len(on_jobs)) == (3, 1, 1)
    for st in invoke + create:
        assert sorted(r["Fn::Sub"] for r in st["Resource"]) == model
    assert sorted(_list(on_jobs[0]["Action"])) == [
        "bedrock:CreateModelInvocationJob", "bedrock:GetModelInvocationJob",
        "bedrock:TagResource"]
    assert [r["Fn::Sub"] for r in on_jobs[0]["Resource"]] == jobs


def test_dynamodb_actions_only_on_our_tables_and_every_table_as_the_code_expects() -> None:
    res = template()["Resources"]
    tables = {n: r for n, r in res.items() if r["Type"] == "AWS::DynamoDB::Table"}
    ddb = [st for st in statements()
           if any(a.startswith("dynamodb:") for a in _list(st["Action"]))]
    granted = {r["Fn::GetAtt"][0] for st in ddb for r in st["Resource"] if "Fn::GetAtt" in r}
    assert granted == set(tables) - {"AuditTable"}  # `caa erase` (operators) only
    # an index is queried only by a role granted its table, and only the indexes there are
    indexes = {r["Fn::Sub"] for st in ddb for r in st["Resource"] if "Fn::Sub" in r}
    assert indexes == {f"${{{resource}.Arn}}/index/{i['IndexName']}"
                       for resource, r in tables.items()
                       for i in r["Properties"].get("GlobalSecondaryIndexes", [])}
    by_suffix = {r["Properties"]["TableName"]["Fn::Sub"].removeprefix("${Prefix}"): r["Properties"]
                 for r in tables.values()}
    assert set(by_suffix) == set(KEYS)
    for name, (hk, rk) in KEYS.items():
        p = by_suffix[name]
        assert p["KeySchema"][0] == {"AttributeName": hk, "KeyType": "HASH"}
        assert (p["KeySchema"][1]["AttributeName"] if rk else None) == rk
        assert p["BillingMode"] == "PAY_PER_REQUEST"
        assert p["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert p["SSESpecification"] == {"SSEEnabled": True}
        ttl = p.get("TimeToLiveSpecification")
        assert (ttl["AttributeName"] if ttl else None) == TTL.get(name)
        declared = INDEXES.get(name, ())
        assert p.get("GlobalSecondaryIndexes", []) == [i.spec() for i in declared]
        assert sorted(a["AttributeName"] for a in p["AttributeDefinitions"]) == sorted(
            {hk, rk or hk, *(k for i in declared for k in (i.hash_key, i.range_key))})
    assert [i.name for i in INDEXES["dead-letters"]] == [BY_PARTITION_KEY, BY_CUSTOMER_ID]
    # each index projects what the erase reads of each letter
    for index in INDEXES["dead-letters"]:
        assert {index.range_key, *index.include} == set(_POSITION_KEYS)


def test_event_source_mapping_reports_item_failures_and_bounds_retries() -> None:
    res = template()["Resources"]
    esm = res["ConsumerMapping"]["Properties"]
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["BisectBatchOnFunctionError"] is True
    for key in ("BatchSize", "MaximumBatchingWindowInSeconds", "MaximumRetryAttempts",
                "MaximumRecordAgeInSeconds", "ParallelizationFactor"):
        assert key in esm
    assert esm["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["FailedBatchesQueue", "Arn"]}
    handler = res["ConsumerFunction"]["Properties"]["Handler"]
    assert handler == "caa.entry.lambda_stream.handler"
    stream = res["PurchaseStream"]["Properties"]
    assert stream["StreamEncryption"]["EncryptionType"] == "KMS"


def test_the_dashboard_reads_every_metric_the_adapters_emit() -> None:
    from consumers.instrument.metrics import NAMESPACE, batch_deltas

    body = template()["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
    emitted = {*batch_deltas({"applied": 1, "duplicate": 1, "rejected": 1}),
               "shard_write_failures", "bedrock_calls", "fallbacks", "cache_hits",
               "analyses", "input_tokens", "output_tokens", "cost_usd"}
    for name in sorted(emitted):
        assert f'["{NAMESPACE}", "{name}", ' in body, name


def test_the_analyzer_takes_requests_from_a_queue_with_a_dead_letter_queue_and_alarms() -> None:
    res = template()["Resources"]
    queue = res["AnalysisRequestsQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["AnalysisRequestsDeadLetters", "Arn"]},
        "maxReceiveCount": {"Ref": "AnalysisMaxReceives"}}
    fn = res["AnalyzerFunction"]["Properties"]
    assert fn["Handler"] == "caa.entry.analyzer_lambda.handler"
    assert (fn["Runtime"], fn["Architectures"]) == ("python3.12", ["arm64"])
    assert queue["VisibilityTimeout"] >= 6 * fn["Timeout"]  # Lambda's advice for SQS
    esm = res["AnalyzerMapping"]["Properties"]
    assert esm["EventSourceArn"] == {"Fn::GetAtt": ["AnalysisRequestsQueue", "Arn"]}
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "AnalyzerMaxConcurrency"}}
    consumer = res["ConsumerFunction"]["Properties"]["Environment"]["Variables"]
    assert consumer["CAA_ANALYSIS_QUEUE"] == {"Ref": "AnalysisRequestsQueue"}
    # each role does its part: the consumer sends, the analyzer takes; Bedrock is the
    # analyzer's alone
    sqs = {(role, a) for role in ("ConsumerRole", "AnalyzerRole")
           for p in res[role]["Properties"]["Policies"]
           for st in p["PolicyDocument"]["Statement"] for a in _list(st["Action"])
           if a.startswith(("sqs:", "bedrock:"))
           and "FailedBatchesQueue" not in str(st["Resource"])}
    assert sqs == {("ConsumerRole", "sqs:SendMessage"), ("AnalyzerRole", "sqs:ReceiveMessage"),
                   ("AnalyzerRole", "sqs:DeleteMessage"),
                   ("AnalyzerRole", "sqs:ChangeMessageVisibility"),
                   ("AnalyzerRole", "sqs:GetQueueAttributes"),
                   ("AnalyzerRole", "bedrock:InvokeModel")}
    alarms = {r["Properties"]["MetricName"]: r["Properties"]["Dimensions"][0]["Value"]
              for r in res.values() if r["Type"] == "AWS::CloudWatch::Alarm"
              and r["Properties"]["Namespace"] == "AWS/SQS"}
    assert alarms == {
        "ApproximateAgeOfOldestMessage": {"Fn::GetAtt": ["AnalysisRequestsQueue", "QueueName"]},
        "ApproximateNumberOfMessagesVisible": {
            "Fn::GetAtt": ["AnalysisRequestsDeadLetters", "QueueName"]}}
