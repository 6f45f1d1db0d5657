"""Error branches of the batch job ingestion that the end-to-end test does not reach; the
S3 and Bedrock clients here are in-process stand-ins (the real path: tests/integration)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from caa.settings import Settings
from consumers.analyzer import PriceTable
from consumers.ingestion import analysis_of, ingest
from models.batch import BatchEntry, BatchJob, OutputLine
from models.events import LineItem, PurchaseEvent
from models.prompt import build_input
from models.state import CustomerState

NOW = datetime(2024, 6, 1, 2, tzinfo=UTC)
MODEL = "eu.anthropic.claude-haiku-4-5-20251001-v1:0"


def entry() -> BatchEntry:
    state = CustomerState.new("c1")
    state.apply(PurchaseEvent(
        event_id="e1", order_id="o1", customer_id="c1", occurred_at=NOW, currency="EUR",
        items=[LineItem(product_id="rice", category="pantry", quantity=1,
                        unit_price=Decimal("2.00"))], total=Decimal("2.00")))
    x = build_input(state, None, as_of_ts=int(NOW.timestamp()), key=b"k" * 32,
                    reference_order_value=2.0)
    return BatchEntry(customer_id="c1", input=x, signature={})


def test_a_line_with_neither_answer_nor_error_falls_back_unbilled() -> None:
    line = OutputLine("malformed", "r0000000001", None, "neither modelOutput nor error")
    rec = analysis_of(entry(), line, PriceTable.parse({MODEL: (1.1, 5.5)}), MODEL, 0.5, NOW)
    assert (rec.source, rec.fallback_reason, rec.cost_usd, rec.trigger) == (
        "statistical", "batch_malformed", 0.0, "schedule")


class FakeS3:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.deleted: list[str] = []

    async def put_object(self, Bucket: str, Key: str, Body: bytes, **kw: Any) -> None:
        if kw.get("IfNoneMatch") == "*" and Key in self.objects:
            raise ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
        self.objects[Key] = Body

    async def delete_object(self, Bucket: str, Key: str) -> None:
        self.deleted.append(Key)
        self.objects.pop(Key, None)

    def get_paginator(self, name: str) -> Any:
        raise ClientError({"Error": {"Code": "InternalError"}}, "ListObjectsV2")


class FakeBedrock:
    async def get_model_invocation_job(self, jobIdentifier: str) -> dict[str, Any]:
        return {"status": "Completed"}


def test_an_ingestion_that_fails_before_counting_gives_its_claim_back() -> None:
    job = BatchJob(name="caa-batch-x", model_id=MODEL, created_at=NOW,
                   input_uri="s3://b/p/input/caa-batch-x.jsonl",
                   output_uri="s3://b/p/output/caa-batch-x/",
                   record_uri="s3://b/p/jobs/caa-batch-x.json",
                   entries={"r0000000001": entry()}, job_arn="arn:job")
    s3 = FakeS3()
    with pytest.raises(ClientError):  # the output could not be listed
        asyncio.run(ingest(Settings(), None, s3, FakeBedrock(), job, NOW))  # type: ignore[arg-type]
    assert s3.deleted == ["p/jobs/caa-batch-x.ingested.json"]
    assert s3.objects == {}  # free to try again
