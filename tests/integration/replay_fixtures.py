"""Helpers shared by the `caa replay` tests: a CDNOW slice, per-customer counts from the
source, `caa replay --json` in process, the tables read back, the real Worker."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.cli import main as cli
from caa.settings import Settings
from consumers.applier import Totals
from consumers.stores.customers import CustomerStore, state_to_item
from consumers.stores.dead_letters import DeadLetterStore
from consumers.stores.dynamo import Dynamo
from consumers.stores.predictions import PredictionStore
from models.events import PurchaseEvent
from models.state import CustomerState
from producers.datasets.cdnow import dataset_path, load_events, time_ordered

N_CUSTOMERS = 300


def cdnow_slice() -> list[PurchaseEvent]:
    return time_ordered([e for e in load_events(limit=1500)
                         if int(e.customer_id) <= N_CUSTOMERS])


def expected(events: list[PurchaseEvent]) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in events:
        out[e.customer_id][0] += 1
        out[e.customer_id][1] += int(e.total * 100)
    return {k: (n, c) for k, (n, c) in out.items()}


def counts(states: dict[str, CustomerState]) -> dict[str, tuple[int, int]]:
    return {c: (s.purchases, sum(s.spend_minor.values())) for c, s in states.items()}


def write_jsonl_gz(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines)))
    return path


def replay(capsys: pytest.CaptureFixture[str], *argv: str, expect: int = 0) -> dict[str, Any]:
    """`caa replay ... --json` in this process; its JSON answer (its exit code: ``expect``)."""
    rc = cli.main(["replay", *argv, "--json"])
    out, err = capsys.readouterr()
    assert rc == expect, err
    answer: dict[str, Any] = json.loads(out)
    return answer


@dataclass
class Tables:
    states: dict[str, CustomerState]
    predictions: dict[str, dict[str, Any]]
    dead: list[dict[str, Any]]


async def _tables(s: Settings) -> Tables:
    async with Aws(s).clients("dynamodb") as c:
        db = Dynamo(c["dynamodb"])
        return Tables(
            {x.customer_id: x for x in await CustomerStore(db, s.table("customers")).all()},
            {p["customer_id"]: p
             for p in await PredictionStore(db, s.table("predictions")).all()},
            await DeadLetterStore(db, s.table("dead-letters")).all())


def tables(s: Settings) -> Tables:
    return asyncio.run(_tables(s))


def consume(s: Settings) -> Totals:
    """The real Worker until idle, with its final refit (as `caa consume --until-idle`)."""

    async def go() -> Totals:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            w = wiring.worker(s, c["kinesis"], c["dynamodb"])
            await w.run(until_idle=True)
            return w.applier.totals

    return asyncio.run(go())


def segment_agreement(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> float:
    """Share of the customers of ``a`` whose segment name is the same in ``b``."""
    same = sum(1 for c, p in a.items() if p["segment"]["name"] == b[c]["segment"]["name"])
    return same / len(a)


def comparable(p: dict[str, Any]) -> dict[str, Any]:
    """A prediction minus what legitimately differs between two equal histories:
    ``generated_at`` is the wall clock of the write; the segment model's version counts
    its compare-and-set saves, one per learning batch, so it depends on how the events
    were batched (stream batches vs grouped backfill batches), not on the model the
    final refit installed. Likewise the segment: a refit warm-starts from the streaming
    model's centres and keeps their ids and names (models.learn.segmentation: stable
    across refits), and that model depends on the batching; callers compare segments
    separately (:func:`segment_agreement`)."""
    out = {k: v for k, v in p.items() if k not in ("generated_at", "segment")}
    out["model_versions"] = {k: v for k, v in p["model_versions"].items() if k != "segments"}
    return out


def stored(state: CustomerState) -> dict[str, Any]:
    item = state_to_item(state)
    item.pop("updated_at")
    return item


def cdnow_file(tmp_path: Path, rows: int = 1200) -> Path:
    """A slice of the CDNOW master file in its own format (header and all)."""
    with dataset_path().open("rb") as fh:
        head = b"".join(fh.readline() for _ in range(rows + 1))
    path = tmp_path / "CDNOW_slice.txt"
    path.write_bytes(head)
    return path


