"""The AI analysis of one customer: the structured answer every analyzer returns.

Bedrock is forced to answer by calling a tool whose input schema is generated
from :class:`Analysis` (:func:`tool_spec`), so a valid answer parses into this
model and anything else is rejected. The statistical analyzer fills the same
model from the forecast, so downstream readers see one shape whatever the
source.

By design the analysis never infers demographics (age, income, family size,
gender, ...): there is no field for them and unknown fields are refused.
:meth:`Analysis.problems` then checks a model's answer against what it was
given: free text that states such an inference (item names masked out, so
"Aged Gouda" is fine) and products that are not among the customer's items
(nothing injected or invented flows into stored analyses).

>>> a = Analysis.model_validate({
...     "profile": {"shopping_frequency": "regular", "price_preference": "mid_range",
...                 "preferred_categories": ["dairy"],
...                 "behavioural_insights": [{"label": "planned_shopper",
...                                           "evidence": "buys milk every 7 days"}]},
...     "consumption_patterns": [{"product": "milk", "avg_days_between": 7,
...                               "predicted_next_date": "2024-05-08", "confidence": 0.8}],
...     "recommendations": [{"product": "milk", "reason": "due for a refill",
...                          "urgency": "high", "predicted_date": "2024-05-08"}],
...     "next_best_action": {"action": "replenishment_reminder", "detail": "remind about milk"},
...     "narrative": "A steady weekly dairy buyer.", "confidence": 0.7})
>>> a.profile.behavioural_insights[0].label
'planned_shopper'
>>> items = {"milk", "dairy", "Aged Gouda"}
>>> a.model_copy(update={"narrative": "Probably 35 years old, high income."}).problems(items)
["narrative: sensitive inference refused (mentions 'years old')"]
>>> a.model_copy(update={"narrative": "Loves Aged Gouda."}).problems(items)
[]
>>> a.model_copy(update={"recommendations": []}).problems({"dairy"})
["consumption_patterns[0].product: 'milk' is not one of the customer's items"]
>>> tool_spec()["toolSpec"]["name"]
'record_customer_analysis'
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TOOL_NAME = "record_customer_analysis"

#: Free text stating any of these is a demographic inference the product refuses to make.
_SENSITIVE = re.compile(
    r"\b(?:ages?|aged|years?[ -]old|income|salary|salaries|earns?|earning|wealth\w*|"
    r"affluent|low[ -]income|family size|household size|married|marital|divorced|"
    r"gender|male|female|ethnic\w*|religio\w*|pregnan\w*|nationality|disabilit\w*)\b",
    re.IGNORECASE,
)


def sensitive_mention(text: str, labels: Iterable[str] = ()) -> str | None:
    """The demographic term ``text`` states, with the given item names masked out."""
    for label in sorted(labels, key=len, reverse=True):
        if label:
            text = text.replace(label, " ")
    found = _SENSITIVE.search(text)
    return found.group(0) if found else None


Text = Annotated[str, Field(max_length=300)]
ItemName = Annotated[str, Field(min_length=1, max_length=64)]
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]

Frequency = Literal["one_off", "occasional", "regular", "frequent"]
PricePreference = Literal["budget", "mid_range", "premium", "mixed"]
InsightLabel = Literal[
    "planned_shopper", "bulk_buyer", "impulse_buyer", "brand_loyal", "explorer",
    "seasonal", "lapsing", "new_customer",
]
Urgency = Literal["low", "medium", "high"]
Action = Literal[
    "replenishment_reminder", "cross_sell", "win_back", "loyalty_reward", "welcome", "no_action",
]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BehaviouralInsight(_Strict):
    label: InsightLabel
    evidence: Text = Field(description="The purchase facts that support the label.")


class Profile(_Strict):
    shopping_frequency: Frequency
    price_preference: PricePreference = Field(
        description="Average order value relative to reference_order_value."
    )
    preferred_categories: Annotated[list[ItemName], Field(max_length=5)]
    behavioural_insights: Annotated[list[BehaviouralInsight], Field(max_length=5)]


class ConsumptionPattern(_Strict):
    product: ItemName
    avg_days_between: Annotated[float, Field(ge=0.0, le=3650.0)]
    predicted_next_date: date
    confidence: Confidence


class AnalysisRecommendation(_Strict):
    product: ItemName
    reason: Text
    urgency: Urgency
    predicted_date: date | None = None


class NextBestAction(_Strict):
    action: Action
    detail: Text


class Analysis(_Strict):
    """One customer's analysis, as the tool input schema demands it."""

    profile: Profile
    #: not in the tool's schema (:func:`input_schema`): a model's answer gets the purchase
    #: intervals' patterns (consumers.analysis.bedrock, with_statistical_patterns)
    consumption_patterns: Annotated[list[ConsumptionPattern], Field(max_length=10)]
    recommendations: Annotated[list[AnalysisRecommendation], Field(max_length=5)]
    next_best_action: NextBestAction
    narrative: Annotated[str, Field(max_length=600)]
    confidence: Confidence

    def problems(self, items: set[str]) -> list[str]:
        """What makes this answer unacceptable for a customer with these item names."""
        out: list[str] = []
        texts = [("narrative", self.narrative), ("next_best_action.detail",
                                                  self.next_best_action.detail)]
        texts += [(f"profile.behavioural_insights[{i}].evidence", b.evidence)
                  for i, b in enumerate(self.profile.behavioural_insights)]
        texts += [(f"recommendations[{i}].reason", r.reason)
                  for i, r in enumerate(self.recommendations)]
        for where, text in texts:
            term = sensitive_mention(text, items)
            if term:
                out.append(f"{where}: sensitive inference refused (mentions {term!r})")
        named = [(f"consumption_patterns[{i}].product", c.product)
                 for i, c in enumerate(self.consumption_patterns)]
        named += [(f"recommendations[{i}].product", r.product)
                  for i, r in enumerate(self.recommendations)]
        named += [(f"profile.preferred_categories[{i}]", c)
                  for i, c in enumerate(self.profile.preferred_categories)]
        out += [f"{where}: {name!r} is not one of the customer's items"
                for where, name in named if name not in items]
        return out


#: the answer's limits in the tool's schema, tighter than :class:`Analysis` accepts (so the
#: analyses stored under earlier prompt versions stay valid): at most this many items per
#: list, characters per short text and in the narrative. Worst case of an answer at these
#: limits: about 2,800 characters of JSON, 700 to 950 tokens, inside the default ``maxTokens``
#: of 1,024 (billing counts the tokens answered, not ``maxTokens``)
ANSWER_MAX_ITEMS = 3
ANSWER_TEXT_CHARS = 120
ANSWER_NARRATIVE_CHARS = 320
_TIGHTER = {300: ANSWER_TEXT_CHARS, 600: ANSWER_NARRATIVE_CHARS}


#: schema keys that tell the model nothing it needs (titles repeat the property names;
#: ``minLength`` 1 and ``default`` null are checked and filled on our side)
_DROPPED = ("title", "minLength", "default")
#: answer fields the tool does not ask for (and the $defs only they use)
_NOT_ASKED = {"consumption_patterns": "ConsumptionPattern"}


def _tighten(node: Any) -> Any:
    """The schema without what tells the model nothing (:data:`_DROPPED`), with the answer's
    tighter limits."""
    if isinstance(node, list):
        return [_tighten(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _tighten(v) for k, v in node.items()
           if k not in _DROPPED or isinstance(v, dict)}  # a property may be called so
    if isinstance(out.get("maxItems"), int):
        out["maxItems"] = min(out["maxItems"], ANSWER_MAX_ITEMS)
    if isinstance(out.get("maxLength"), int):
        out["maxLength"] = _TIGHTER.get(out["maxLength"], out["maxLength"])
    return out


def input_schema() -> dict[str, Any]:
    """The JSON schema Bedrock's tool use is forced to satisfy (a fresh copy each call: built
    once, as pydantic's schema generation takes milliseconds and every request sends it).

    >>> s = input_schema()
    >>> s["properties"]["narrative"]["maxLength"], "title" in s
    (320, False)
    """
    out: dict[str, Any] = json.loads(_schema_json())
    return out


@functools.cache
def _schema_json() -> str:
    schema: dict[str, Any] = _tighten(Analysis.model_json_schema())
    schema.pop("description", None)  # the class docstring, for developers
    # the model would only restate the statistical intervals it is given (statistical_next)
    for name, model in _NOT_ASKED.items():
        schema["properties"].pop(name)
        schema["$defs"].pop(model, None)
    schema["required"] = [r for r in schema["required"] if r not in _NOT_ASKED]
    return json.dumps(schema)


def tool_spec() -> dict[str, Any]:
    """The Converse ``toolSpec`` entry for :class:`Analysis`."""
    return {
        "toolSpec": {
            "name": TOOL_NAME,
            "description": "Record the analysis of one customer's purchase behaviour.",
            "inputSchema": {"json": input_schema()},
        }
    }


Source = Literal["statistical", "bedrock"]
TriggerKind = Literal["purchase", "schedule", "on_demand"]


class AnalysisRecord(_Strict):
    """One analysis as stored (latest per customer, and in the history with a TTL)."""

    customer_id: str
    at: datetime
    as_of: date
    source: Source
    model: str
    trigger: TriggerKind
    fallback_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 0
    analysis: Analysis
    signature: dict[str, Any] | None = None
    #: where the answer (and what it cost) came from when that was not AWS's own endpoint,
    #: e.g. ``"test server at http://127.0.0.1:4599 (canned answers)"``; None for AWS, and
    #: for an analysis that called nothing
    endpoint: str | None = None
