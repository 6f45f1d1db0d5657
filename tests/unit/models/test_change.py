"""What makes a prediction change notable: a segment or churn band change, or a CLV move
beyond the documented threshold; and the change feed's ``notable`` filter."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from consumers.ops.changefeed import ChangeFeed, decode_record
from consumers.stores.predictions import prediction_to_item
from models.change import CLV_CHANGE, CLV_MIN_MOVE, change_of, notable_moves
from models.prediction import Churn, Prediction, SegmentRef
from tests.unit.caa.cli.test_show import prediction
from tests.unit.consumers.ops.test_changefeed import FakeStreams

AT = datetime(2024, 6, 1, tzinfo=UTC)


def moved(p: Prediction, **over: Any) -> Prediction:
    return p.model_copy(update=over)


@pytest.mark.parametrize(("old", "new", "why"), [
    (100.0, 100.0 * (1 + CLV_CHANGE), ["clv"]),
    (100.0, 100.0 * (1 - CLV_CHANGE), ["clv"]),
    (100.0, 124.0, []),  # under 25%
    (2.0, 2.9, []),  # 45% but under one unit of the currency
    (0.0, 1.0, ["clv"]),
    (0.0, 0.5, []),
    (None, 500.0, []),  # the first CLV of a prediction written before it was computed
    (100.0, None, []),
])
def test_a_clv_move_is_notable_beyond_the_threshold(old: float | None, new: float | None,
                                                    why: list[str]) -> None:
    p = prediction()
    assert CLV_MIN_MOVE == 1.0
    assert notable_moves(moved(p, clv=old), moved(p, clv=new)) == why


def test_churn_band_and_segment_changes_are_notable_figures_alone_are_not() -> None:
    p = prediction()
    high = moved(p, churn_band="high",
                 churn=Churn(p_no_purchase_30d=0.7, p_no_purchase_90d=0.85, band="high"))
    assert notable_moves(p, high) == ["churn_band"]
    assert notable_moves(p, moved(p, churn_band=None)) == []
    assert notable_moves(p, moved(p, segment=SegmentRef(id=4, name="At risk"))) == ["segment"]
    assert notable_moves(p, moved(p, p_alive=0.3, clv=123.0)) == []
    assert notable_moves(None, p) == notable_moves(p, None) == []


def test_the_change_carries_clv_and_band_and_why_it_is_notable() -> None:
    p = prediction()
    later = moved(p, churn_band="high", clv=40.0, generated_at=AT)
    c = change_of("00042", p.model_dump(mode="json"), later.model_dump(mode="json"),
                  sequence="2", at=AT, event_id="e")
    assert c.notable == ["churn_band", "clv"]
    assert "churn_band" in c.changed and "clv" in c.changed
    assert c.old is not None and c.new is not None
    assert (c.old.clv, c.old.churn_band, c.new.clv, c.new.churn_band) == (
        p.clv, "medium", 40.0, "high")
    created = change_of("00042", None, p.model_dump(mode="json"), sequence="1", at=AT,
                        event_id="e")
    assert created.notable == [] and created.new is not None and created.new.clv == p.clv
    # a consumer on version 1 reading an event of before this field still parses it
    assert type(c).model_validate({**c.model_dump(mode="json"), "notable": []}).notable == []


def _image_rec(seq: int, old: Prediction, new: Prediction) -> dict[str, Any]:
    return {"eventID": f"e{seq}", "eventName": "MODIFY", "dynamodb": {
        "SequenceNumber": str(seq), "Keys": {"customer_id": {"S": new.customer_id}},
        "ApproximateCreationDateTime": AT,
        "OldImage": prediction_to_item(old), "NewImage": prediction_to_item(new)}}


def test_the_feed_can_keep_only_notable_changes() -> None:
    p = prediction()
    client = FakeStreams()
    client.shards = [s for s in client.shards if s["ShardId"] == "x"]
    client.data = {"x": [_image_rec(40, p, moved(p, p_alive=0.5)),  # figures only
                         _image_rec(41, p, moved(p, churn_band="high")),
                         _image_rec(42, p, moved(p, clv=10.0))]}
    assert decode_record(client.data["x"][0]).notable == []  # type: ignore[union-attr]

    async def go(notable: bool) -> list[str]:
        feed = ChangeFeed(client, "arn", limit=2, poll_interval_s=0, idle_polls=2)
        return [c.sequence async for c in feed.changes(notable=notable)]

    assert asyncio.run(go(False)) == ["40", "41", "42"]
    assert asyncio.run(go(True)) == ["41", "42"]
