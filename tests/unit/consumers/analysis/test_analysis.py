"""The analysis domain without servers: schema, privacy of the prompt, policy, fallback."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from consumers.analysis.analyzer import statistical_analysis
from consumers.analysis.bedrock import endpoint, is_aws
from consumers.analysis.breaker import CircuitBreaker
from consumers.analysis.trigger import CacheRules, Signature, TriggerPolicy, stale_reason
from models.analysis import Analysis, input_schema
from models.events import LineItem, PurchaseEvent
from models.prompt import MAX_NAME_CHARS, build_input, pseudonym, render_user, sanitize
from models.state import CustomerState

DEMOGRAPHIC = {"age", "income", "gender", "sex", "family", "family_size", "household",
               "marital_status", "ethnicity", "religion", "birth", "children"}


def _walk(schema: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(schema, dict):
        if "properties" in schema:
            out.append(schema)
        for v in schema.values():
            out += _walk(v)
    elif isinstance(schema, list):
        for v in schema:
            out += _walk(v)
    return out


def test_the_tool_schema_has_no_room_for_demographics() -> None:
    objects = _walk(input_schema())
    # the answer, profile, insight, recommendation, next best action (consumption patterns
    # are not asked for: they come from the purchase intervals)
    assert len(objects) >= 5
    for obj in objects:
        assert obj.get("additionalProperties") is False  # nothing beyond the declared fields
        assert not DEMOGRAPHIC & {p.lower() for p in obj["properties"]}


@pytest.mark.parametrize("text", [
    "Likely in her 30s; probably 35 years old.", "A high income household.",
    "Family size of four judging by volumes.", "Probably married with kids.",
    "Buys like a female shopper.",
])
def test_free_text_stating_a_sensitive_inference_is_refused(text: str) -> None:
    x = _input(_state("c", [("Aged Gouda", 1), ("Aged Gouda", 8)]))
    base = statistical_analysis(x)
    items = {i.name for i in (*x.products, *x.categories)}
    assert base.problems(items) == []  # naming an item ("Aged Gouda") is no inference
    problems = base.model_copy(update={"narrative": text}).problems(items)
    assert len(problems) == 1 and "sensitive inference refused" in problems[0]


def test_unknown_fields_are_refused() -> None:
    base = statistical_analysis(_input(_state("c", [("milk", 1)])))
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Analysis.model_validate(base.model_dump(mode="json") | {"age_band": "30-39"})


@given(st.text(max_size=400))
def test_sanitized_labels_are_short_plain_text(text: str) -> None:
    out = sanitize(text)
    assert 0 < len(out) <= MAX_NAME_CHARS
    assert not any(unicodedata.category(ch)[0] == "C" for ch in out)
    assert not set(out) & set("<>{}[]`\\")


def _state(cid: str, buys: list[tuple[str, int]], consent: bool | None = True) -> CustomerState:
    s = CustomerState.new(cid)
    for n, (product, day) in enumerate(buys):
        s.apply(PurchaseEvent(
            event_id=f"e{n}", order_id=f"o{n}", customer_id=cid,
            occurred_at=datetime(2024, 1, 1, tzinfo=UTC).replace(day=1 + day % 28),
            currency="EUR", total=Decimal("3.00"), consent=consent,
            items=[LineItem(product_id="p", category=product, quantity=1,
                            unit_price=Decimal("3.00"))]))
    return s


def _input(s: CustomerState) -> Any:
    return build_input(s, None, as_of_ts=s.last_ts, key=b"k", reference_order_value=10.0)


ids = st.from_regex(r"Z[A-Z0-9]{7,20}", fullmatch=True)
labels = st.text(min_size=1, max_size=80)


@settings(max_examples=60, deadline=None)
@given(ids, st.lists(st.tuples(labels, st.integers(0, 27)), min_size=1, max_size=6))
def test_prompts_never_carry_the_customer_id_and_fallback_always_validates(
    cid: str, buys: list[tuple[str, int]],
) -> None:
    x = _input(_state(cid, buys))
    text = render_user(x)
    assert cid not in text and x.subject == pseudonym(b"k", cid)
    data = json.loads(text.split("<customer_data>\n", 1)[1].split("\n</customer_data>", 1)[0])
    assert "consent" not in data
    for item in data["categories"]:
        assert "</customer_data>" not in item["name"]
    fallback = Analysis.model_validate(statistical_analysis(x).model_dump(mode="json"))
    names = {i.name for i in (*x.products, *x.categories)} | {h.name for h in x.statistical_next}
    assert all("not one of the customer's items" not in p for p in fallback.problems(names))


def test_policy_schedule_defer_and_flush() -> None:
    p: TriggerPolicy[str] = TriggerPolicy(debounce_s=60)
    p.purchase("a", "a1", 0.0)
    p.schedule("b", "b1", 5.0)
    p.schedule("a", "a2", 10.0)  # a schedule makes a waiting customer due now
    assert [(c, d.features) for c, d in p.due(10.0)] == [("b", "b1"), ("a", "a2")]
    p.purchase("c", "c1", 20.0)
    [(cid, pending)] = p.due(80.0)
    p.purchase("c", "c2", 81.0)  # arrives while c is deferred: merged into it
    p.defer(cid, pending, 90.0)
    assert p.next_due_at() == 90.0
    [(_, merged)] = p.flush()
    assert merged.features == "c2" and merged.arrivals == [20.0, 81.0] and len(p) == 0


def test_cache_rules_in_order() -> None:
    base = Signature("m|p1", 6, 4.0, 20.0, frozenset({"product:milk"}), "Loyal", date(2024, 1, 1))
    rules = CacheRules()

    def changed(**kw: Any) -> str | None:
        fields = {f: getattr(base, f) for f in base.__slots__} | kw
        return stale_reason(base, Signature(**fields), rules)

    assert stale_reason(None, base, rules) == "first"
    assert changed() is None
    assert changed(version="m2|p1") == "version"
    assert changed(items=frozenset({"product:milk", "product:eggs"})) == "new_item"
    assert changed(items=frozenset()) is None  # fewer items shown: nothing new to say
    assert changed(segment="At risk") == "segment"
    assert changed(purchase_days=10) == "history"
    assert changed(rate_30d=5.1) == "frequency"
    assert changed(spend_per_day=26.0) == "spend"
    assert changed(as_of=date(2024, 1, 31)) == "age"


def test_breaker_reopens_when_the_probe_fails() -> None:
    b = CircuitBreaker(failure_threshold=1, reset_after_s=10)
    b.record_failure(0.0)
    assert not b.allow(5.0) and b.allow(10.0)
    b.record_failure(10.5)
    assert b.state == "open" and not b.allow(15.0) and b.opened == 2


class _Meta:
    def __init__(self, url: str) -> None:
        self.endpoint_url = url


class _Client:
    def __init__(self, url: str) -> None:
        self.meta = _Meta(url)


@pytest.mark.parametrize(("url", "headers", "expected"), [
    ("https://bedrock-runtime.eu-central-1.amazonaws.com", None, None),
    ("https://bedrock-runtime-fips.us-east-1.amazonaws.com", {}, None),
    ("https://bedrock-runtime.cn-north-1.amazonaws.com.cn", None, None),
    ("http://127.0.0.1:4599", None, "http://127.0.0.1:4599"),  # not AWS: said as it is
    ("http://127.0.0.1:4599", {"x-caa-test-server": "canned answers"},
     "test server at http://127.0.0.1:4599 (canned answers)"),
])
def test_an_answer_not_from_aws_says_where_it_came_from(
        url: str, headers: dict[str, str] | None, expected: str | None) -> None:
    assert endpoint(_Client(url), headers) == expected
    assert is_aws(url) is (expected is None)
    assert endpoint(object()) is None  # a client that does not say where it goes
