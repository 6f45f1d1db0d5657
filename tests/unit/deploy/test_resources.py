"""The branch of ``ensure_resources`` a local emulator does not show: DynamoDB builds one
index of a table at a time, so adding the second one to a table that has neither must wait
for the next setup; setup says so and goes on with the rest."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from deploy.resources import INDEXES, IndexPending, ensure_index


def _described(indexes: list[str]) -> dict[str, Any]:
    return {"Table": {"TableName": "tab", "KeySchema": [{"AttributeName": "id",
                                                       "KeyType": "HASH"}],
                      "GlobalSecondaryIndexes": [{"IndexName": i} for i in indexes]}}


@pytest.mark.parametrize("code", ["LimitExceededException", "ResourceInUseException"])
def test_an_index_that_must_wait_for_another_is_pending_not_a_crash(code: str) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    first, second = INDEXES["dead-letters"]
    with Stubber(client) as stub:
        stub.add_response("describe_table", _described([]), {"TableName": "tab"})
        stub.add_response("scan", {"Items": []})
        stub.add_client_error("update_table", code, "Subscriber limit exceeded: Only 1 online "
                              "index can be created or deleted simultaneously per table")
        with pytest.raises(IndexPending, match=f"index {first.name} on tab not added yet.*{code}"):
            ensure_index(client, "tab", first)
        stub.add_response("describe_table", _described([first.name, second.name]),
                          {"TableName": "tab"})
        assert not ensure_index(client, "tab", second)  # there already: nothing to do
        stub.assert_no_pending_responses()


def test_other_errors_of_the_update_are_not_taken_for_waiting() -> None:
    client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("describe_table", _described([]), {"TableName": "tab"})
        stub.add_response("scan", {"Items": []})
        stub.add_client_error("update_table", "AccessDeniedException", "no")
        with pytest.raises(ClientError, match="AccessDenied"):
            ensure_index(client, "tab", INDEXES["dead-letters"][0])
