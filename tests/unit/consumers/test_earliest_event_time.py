"""A producer whose clock was never set (or reset) dates its events at the epoch: such an
event made its customer decades old (tenure, T, P(alive)), so an event before
``CAA_EARLIEST_EVENT_TIME`` (default 1990-01-01T00:00:00Z) is a ``time_out_of_range`` dead
letter, in the consumer, the redrive and the replay's dry run alike; a backfill of older
history sets it earlier."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from caa.cli import main as cli
from consumers.admission import EARLIEST_EVENT_TS, admit
from consumers.core import StreamRecord, decode_batch
from models.events import EventRejected

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def purchase(event_id: str, occurred_at: object) -> dict[str, object]:
    return {"event_id": event_id, "order_id": f"o-{event_id}", "customer_id": "c1",
            "occurred_at": occurred_at, "currency": "EUR",
            "items": [{"product_id": "p", "category": "k", "quantity": 1, "unit_price": "2.50"}],
            "total": "2.50"}


def data(event_id: str, occurred_at: object) -> bytes:
    return json.dumps(purchase(event_id, occurred_at)).encode()


def test_the_default_is_1990() -> None:
    assert datetime.fromtimestamp(EARLIEST_EVENT_TS, UTC) == datetime(1990, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("when", ["1970-01-01T00:00:00Z", 0, 86_400 * 365,
                                  "1989-12-31T23:59:59.999Z", "1990-01-01T00:59:59+01:00"])
def test_an_event_of_an_unset_clock_is_a_dead_letter(when: object) -> None:
    batch = decode_batch([StreamRecord(data("e1", when), "1", "c1", "s")], now=NOW)
    (letter,) = batch.rejected.values()
    assert letter.kind == "time_out_of_range"
    assert "1990-01-01T00:00:00+00:00 (CAA_EARLIEST_EVENT_TIME)" in letter.reason
    assert "never set" in letter.reason and not batch.events


def test_the_earliest_time_is_a_setting() -> None:
    at_1985 = data("e1", "1985-06-01T00:00:00Z")
    earlier = datetime(1980, 1, 1, tzinfo=UTC).timestamp()
    with pytest.raises(EventRejected, match="time_out_of_range"):
        admit(at_1985, "c1", arrival_ts=None, now_ts=NOW.timestamp())
    assert admit(at_1985, "c1", arrival_ts=None, now_ts=NOW.timestamp(),
                 earliest_ts=earlier).event_id == "e1"
    batch = decode_batch([StreamRecord(at_1985, "1", "c1", "s")], now=NOW, earliest_ts=earlier)
    assert not batch.rejected and len(batch.events) == 1
    assert decode_batch([StreamRecord(data("e2", "1990-01-01T00:00:00Z"), "1", "c1", "s")],
                        now=NOW).events


def test_the_replay_dry_run_judges_by_the_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The replay's checks took the defaults whatever the settings said (the future
    tolerance too): a backfill of 1985 orders was 'valid' in the dry run and refused by
    the consumer, or the other way round."""
    path = tmp_path / "old.jsonl"
    path.write_text("\n".join(json.dumps(purchase(f"e{i}", at)) for i, at in enumerate(
        ["1985-06-01T00:00:00Z", "1997-01-01T00:00:00Z"])) + "\n")
    monkeypatch.setenv("CAA_STATE_DIR", str(tmp_path / "state"))

    def invalid() -> tuple[int, dict[str, int]]:
        code = cli.main(["replay", str(path), "--dry-run", "--json"])
        return code, json.loads(capsys.readouterr().out)["report"]["invalid"]

    assert invalid() == (1, {"time_out_of_range": 1})
    monkeypatch.setenv("CAA_EARLIEST_EVENT_TIME", "1980-01-01T00:00:00Z")
    assert invalid() == (0, {})
