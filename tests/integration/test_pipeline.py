"""publish -> consume -> predictions against moto's server, a real process over HTTP."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from caa.wiring import ensure_resources
from consumers.applier import Totals
from deploy.resources import Provisioned
from models.events import PurchaseEvent
from models.state import CustomerState
from producers.datasets.cdnow import dataset_path, load_events, time_ordered
from producers.publisher import Publisher

pytestmark = pytest.mark.integration

N_CUSTOMERS = 400


def expected_from_source(n_customers: int) -> dict[str, tuple[int, int]]:
    """Per-customer (purchases, spend in cents), read straight from the file."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    with dataset_path().open() as fh:
        next(fh)
        for line in fh:
            cid, _day, _cds, dollars = line.split()
            if int(cid) > n_customers:
                continue
            out[cid][0] += 1
            out[cid][1] += int(Decimal(dollars) * 100)
    return {k: (v[0], v[1]) for k, v in out.items()}


@pytest.fixture
def settings(fresh_settings: Callable[..., Settings]) -> Settings:
    return fresh_settings(segment_warmup="50")


def cdnow_slice() -> list[PurchaseEvent]:
    return time_ordered([e for e in load_events(limit=1500) if int(e.customer_id) <= N_CUSTOMERS])


@dataclass
class Outcome:
    totals: Totals
    states: dict[str, CustomerState]
    predictions: dict[str, dict[str, Any]]
    dead: list[dict[str, Any]]


async def _consume(s: Settings) -> Outcome:
    async with Aws(s).clients("kinesis", "dynamodb") as c:
        w = wiring.worker(s, c["kinesis"], c["dynamodb"])
        await w.run(until_idle=True)
        return Outcome(
            w.applier.totals,
            {x.customer_id: x for x in await w.customers.all()},
            {p["customer_id"]: p for p in await w.predictions.all()},
            await w.dead_letters.all(),
        )


def consume(s: Settings, group: str | None = None) -> Outcome:
    if group:
        s = s.model_copy(update={"consumer_group": group})
    return asyncio.run(_consume(s))


def test_cdnow_slice_end_to_end_matches_the_source_file_exactly(settings: Settings) -> None:
    events = cdnow_slice()
    expected = expected_from_source(N_CUSTOMERS)
    assert len(events) == sum(n for n, _ in expected.values())
    kinesis = Aws(settings).client("kinesis")
    report = Publisher(kinesis, settings.stream_name).publish(events)
    assert report.records == len(events)
    assert len(report.shards) == settings.shard_count  # partition keys spread over shards

    w = consume(settings)
    got = {cid: (s.purchases, sum(s.spend_minor.values())) for cid, s in w.states.items()}
    assert got == expected
    assert w.totals.applied == len(events)
    assert set(w.predictions) == set(expected)
    p1 = w.predictions["00001"]
    assert p1["source"] == "statistical"
    assert 0.0 <= p1["p_alive"] <= 1.0
    assert p1["purchases"] == expected["00001"][0]
    assert p1["model_versions"][settings.forecast_model] >= 1  # refitted over the table
    assert p1["segment"]["name"]

    # A replay re-publishes the same events with new sequence numbers; a second consumer
    # group re-reads the whole stream: neither counts anything twice.
    Publisher(kinesis, settings.stream_name).publish(events[:300])
    again = consume(settings)
    assert again.totals.applied == 0
    assert again.totals.duplicate == 300
    reread = consume(settings, group="second-group")
    assert reread.totals.applied == 0
    assert {c: (s.purchases, sum(s.spend_minor.values()))
            for c, s in reread.states.items()} == expected


def test_bad_records_go_to_dead_letters_and_lose_nothing_valid(settings: Settings) -> None:
    events = cdnow_slice()[:200]
    kinesis = Aws(settings).client("kinesis")
    bad = [
        (b"\xff\xfe not utf-8", "x1", "not_utf8"),
        (b"{not json", "x2", "not_json"),
        (b'{"schema_version": 99, "event_id": "z"}', "x3", "unknown_version"),
        (events[0].to_bytes().replace(b'"total":"', b'"total":"9'), events[0].customer_id,
         "schema"),
        (b"x" * 300_000, "x5", "oversized"),
    ]
    half = len(events) // 2
    Publisher(kinesis, settings.stream_name).publish(events[:half])
    for data, key, _ in bad:
        kinesis.put_record(StreamName=settings.stream_name, Data=data, PartitionKey=key)
    Publisher(kinesis, settings.stream_name).publish(events[half:])

    w = consume(settings)
    expected: dict[str, int] = defaultdict(int)
    for e in events:
        expected[e.customer_id] += 1
    assert {c: s.purchases for c, s in w.states.items()} == expected
    assert sorted(d["kind"] for d in w.dead) == sorted(k for _, _, k in bad)
    payloads = {d["payload"] for d in w.dead}
    assert {data for data, _, _ in bad} <= payloads
    for d in w.dead:
        assert d["reason"] and d["shard_id"].startswith("shardId-")
        assert d["sequence_number"] and d["stream"] == settings.stream_name


def test_cli_show_and_segments_answer(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from caa.cli import main as cli

    events = cdnow_slice()[:500]
    Publisher(Aws(settings).client("kinesis"), settings.stream_name).publish(events)
    assert cli.main(["consume", "--until-idle", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"applied": 500' in out
    cid = events[0].customer_id
    assert cli.main(["show", cid, "--json"]) == 0
    shown = capsys.readouterr().out
    assert f'"customer_id": "{cid}"' in shown
    assert cli.main(["segments", "--json"]) == 0
    assert '"segments"' in capsys.readouterr().out
    assert cli.main(["show", "99999"]) == 6  # caa.errors.NotFound


def test_resources_are_idempotent(settings: Settings) -> None:
    aws = Aws(settings)
    assert ensure_resources(settings, aws.client("kinesis"), aws.client("dynamodb")) == (
        Provisioned())
    desc = aws.client("kinesis").describe_stream_summary(StreamName=settings.stream_name)
    assert desc["StreamDescriptionSummary"]["OpenShardCount"] == 4
