"""The HTTP API without servers: the checked-in spec, keys, limits and ids (the API over real
HTTP is in tests/integration/test_api.py)."""

from __future__ import annotations

import asyncio
import doctest
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter, ValidationError

import caa.api.ratelimit
from caa.api import app as api
from caa.api.ratelimit import SlidingWindow, take
from caa.cli import main as cli
from caa.settings import Settings
from models.events import Identifier

SPEC = Path(__file__).resolve().parents[4] / "docs" / "openapi.json"


def test_the_checked_in_spec_is_the_apps() -> None:
    """Regenerate with `caa serve --print-openapi > docs/openapi.json`."""
    assert json.loads(SPEC.read_text()) == json.loads(json.dumps(
        api.create_app(Settings()).openapi()))
    assert SPEC.read_text() == api.spec_json(Settings())


def test_print_openapi(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--print-openapi"]) == 0
    assert capsys.readouterr().out == SPEC.read_text()


def test_serve_refuses_to_start_without_keys(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CAA_API_KEYS", raising=False)
    assert cli.main(["serve", "--port", "1"]) == 7  # caa.errors.BadInput
    assert "CAA_API_KEYS" in capsys.readouterr().err


def test_ratelimit_doctests() -> None:
    assert doctest.testmod(caa.api.ratelimit).failed == 0


def test_a_refused_request_costs_nothing_and_keys_are_bounded() -> None:
    minute, hour = SlidingWindow(3, 60.0), SlidingWindow(1, 3600.0, max_keys=2)
    assert take([minute, hour], "a", 0.0) == 0.0
    assert take([minute, hour], "a", 1.0) == 3599.0  # refused by the hour: minute unchanged
    assert [take([minute], "a", t) for t in (2.0, 3.0, 4.0)] == [0.0, 0.0, 56.0]
    for key in ("b", "c", "d"):
        take([hour], key, 5.0)
    assert len(hour) == 2  # "a" and "b" evicted, least recently used first
    assert take([hour], "a", 6.0) == 0.0


@pytest.mark.parametrize(("raw", "keys"), [
    ("k1", ["k1"]), ("k1, k2,,", ["k1", "k2"]), ('["a,b", "c"]', ["a,b", "c"]), ("", []),
    # the object form the README gives for the parameter: it was one key, its whole text
    ('{"marketing": "k1", "shop": "k2"}', ["k1", "k2"]), ("k1\nk2", ["k1", "k2"]),
])
def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str,
                                       keys: list[str]) -> None:
    monkeypatch.setenv("CAA_API_KEYS", raw)
    s = Settings()
    assert [k.get_secret_value() for k in s.api_keys] == keys
    assert "k1" not in repr(s)


@pytest.mark.parametrize("cid", ["00001", "a.b_c:d@e-f", "x" * 64, "", "x" * 65, "a b", "é",
                                 "a/b", "a;b", "a\nb"])
def test_the_api_accepts_exactly_the_customer_ids_of_the_wire_schema(cid: str) -> None:
    try:
        TypeAdapter(Identifier).validate_python(cid)
        valid = True
    except ValidationError:
        valid = False
    adapter = TypeAdapter(api.CustomerId)
    try:
        adapter.validate_python(cid)
        assert valid, cid
    except ValidationError:
        assert not valid, cid


def test_keys_are_checked_before_anything_else() -> None:
    asyncio.run(_keys_first())


async def _keys_first() -> None:
    app = api.create_app(Settings(api_keys=["right"]))  # lifespan not run: no AWS at all
    app.state.caa.db = "no client"  # as if started
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for headers in ({}, {"x-api-key": "wrong"}):
            r = await client.get("/customers/bad%20id/prediction", headers=headers)
            assert r.status_code == 401
        r = await client.get("/customers/bad%20id/prediction", headers={"x-api-key": "right"})
        assert r.status_code == 400
        # one error, said once (the route and the rate limit's key both check the path)
        (said,) = r.json()["detail"].split("; ")
        assert said.startswith("path.customer_id: String should match pattern")
        r = await client.get("/health")  # no key needed; the "client" fails
        assert (r.status_code, r.json()["status"]) == (503, "unavailable")


def test_the_prediction_carries_value_churn_and_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    from consumers.stores.predictions import prediction_from_item, prediction_to_item
    from tests.unit.caa.cli.test_show import prediction

    item = prediction_from_item(prediction_to_item(prediction("00042")))

    class Store:
        def __init__(self, _db: object, _table: str) -> None:
            pass

        async def get(self, cid: str) -> dict[str, object] | None:
            return item if cid == "00042" else None

    monkeypatch.setattr(api, "PredictionStore", Store)
    spec = api.create_app(Settings()).openapi()["components"]["schemas"]
    assert {"clv", "churn_band", "value", "churn", "timing", "expected_purchases_90d_interval",
            "refit_reason"} <= set(spec["Prediction"]["properties"])
    assert {"Value", "Churn", "Timing"} <= set(spec)

    async def get() -> dict[str, Any]:
        app = api.create_app(Settings(api_keys=["k"]))
        app.state.caa.db = "no client"  # as if started: the store is the stand-in above
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            missing = await client.get("/customers/nobody/prediction", headers={"x-api-key": "k"})
            assert missing.status_code == 404
            r = await client.get("/customers/00042/prediction", headers={"x-api-key": "k"})
            assert r.status_code == 200
            return dict(r.json())

    body = asyncio.run(get())
    assert (body["clv"], body["churn_band"], body["refit_reason"]) == (
        123.456, "medium", "drift: order values moved")
    assert body["value"]["clv_high"] == 210.0 and body["churn"]["p_no_purchase_90d"] == 0.68
    assert body["timing"]["next_order_50"] == "2024-06-14"
    assert body["expected_purchases_90d_interval"] == [0.0, 3.0]
