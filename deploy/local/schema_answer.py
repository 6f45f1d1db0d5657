"""Schema-driven answers for the Bedrock-protocol test server (pure, deterministic).

:func:`generate` builds an instance valid against a tool's JSON schema (the subset pydantic v2
emits); :func:`grounding` finds the item names in the request's data, which the answer then
refers to, as a well-behaved model would.
"""

from __future__ import annotations

import json
import math
import operator
from typing import Any, cast

JsonObj = dict[str, Any]

#: how every free-text answer of the test server begins: it is not a model's answer
CANNED = "[canned answer from the local Bedrock test server]"
FORMATS = {"date": "2026-12-01", "date-time": "2026-12-01T00:00:00Z", "time": "00:00:00",
           "email": "sample@example.com", "uri": "https://example.com/sample",
           "uuid": "00000000-0000-4000-8000-000000000000", "duration": "P1D"}
#: string fields answered with a name taken from the request's data (see :func:`grounding`)
GROUNDED_FIELDS = frozenset({"product", "preferred_categories"})
BOUND_CHECKS = (("minimum", operator.ge), ("exclusiveMinimum", operator.gt),
                ("maximum", operator.le), ("exclusiveMaximum", operator.lt))


def grounding(body: JsonObj) -> list[str]:
    """Item names in the first JSON object of the request's first user text (``"name"``
    values), which a well-behaved model would refer to instead of inventing products."""
    try:
        text = body["messages"][0]["content"][0]["text"]
        data = json.loads(text[text.index("{"): text.rindex("}") + 1])
    except (LookupError, TypeError, ValueError):
        return []
    names: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if isinstance(v.get("name"), str):
                names.append(v["name"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(data)
    return names


def generate(schema: JsonObj, defs: JsonObj | None = None, name: str = "value",
             refs: frozenset[str] = frozenset(), deep: bool = False,
             grounded: tuple[str, ...] = ()) -> Any:
    """A deterministic instance valid against ``schema`` (pydantic v2 JSON-schema subset).

    Inside a recursive ``$ref`` (``deep``) only required properties, null if allowed, [].
    Strings of the fields in ``GROUNDED_FIELDS`` take the first ``grounded`` name.
    """
    if defs is None:
        defs = cast(JsonObj, schema.get("$defs", schema.get("definitions", {})))
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "$ref" in schema:
        ref = str(schema["$ref"])
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        target = {**defs.get(ref.rsplit("/", 1)[-1], {}), **rest}
        return generate(target, defs, name, refs | {ref}, deep or ref in refs, grounded)
    if "allOf" in schema:
        merged: JsonObj = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            merged.update(part)
        return generate(merged, defs, name, refs, deep, grounded)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        non_null = [b for b in branches if b.get("type") != "null"]
        if deep and len(non_null) < len(branches):
            return None
        return generate(non_null[0] if non_null else branches[0], defs, name, refs, deep,
                        grounded)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "default" in schema:
        return schema["default"]
    if kind == "object" or (kind is None and "properties" in schema):
        required = set(schema.get("required", []))
        out: JsonObj = {prop: generate(sub, defs, prop, refs, deep, grounded)
                        for prop, sub in schema.get("properties", {}).items()
                        if not deep or prop in required}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not out and not deep:
            out[f"sample_{name}"] = generate(extra, defs, name, refs, deep, grounded)
        return out
    if kind == "array":
        prefix = [generate(s, defs, name, refs, deep, grounded)
                  for s in schema.get("prefixItems", [])]
        count = max(int(schema.get("minItems", 0)), 0 if deep else 1)
        count = min(count, int(schema.get("maxItems", count))) - len(prefix)
        item = schema.get("items")
        if not isinstance(item, dict):
            return prefix
        return prefix + [generate(item, defs, name, refs, deep, grounded)
                         for _ in range(max(count, 0))]
    if kind in ("number", "integer"):
        return _number(schema, integer=kind == "integer")
    if kind == "string" and name in GROUNDED_FIELDS and grounded:
        return grounded[0][: int(schema.get("maxLength", len(grounded[0])))]
    return {"boolean": True, "null": None}.get(str(kind), _string(schema, name))


def _fits(value: float, schema: JsonObj) -> bool:
    return all(op(value, schema[k]) for k, op in BOUND_CHECKS if schema.get(k) is not None)


def _number(schema: JsonObj, *, integer: bool) -> int | float:
    """Midpoint of the bounds when bounded on both sides, else 1 (or just inside the bound)."""
    lo = max((schema[k] for k in ("minimum", "exclusiveMinimum") if schema.get(k) is not None),
             default=None)
    hi = min((schema[k] for k in ("maximum", "exclusiveMaximum") if schema.get(k) is not None),
             default=None)
    if lo is not None and hi is not None:
        mid: float = (lo + hi) / 2
        if not integer:
            return mid
        return math.floor(mid) if _fits(math.floor(mid), schema) else math.ceil(mid)
    if _fits(1, schema):
        return 1 if integer else 1.0
    value = lo + 1 if lo is not None else (hi if hi is not None else 2) - 1
    if integer:
        return math.ceil(value) if lo is not None else math.floor(value)
    return float(value)


def _string(schema: JsonObj, name: str) -> str:
    """``"[canned answer from the local Bedrock test server] sample <name>"`` where the
    field allows that many characters (so free text such as a narrative says what it is),
    else ``"sample <name>"`` (padded to ``minLength``, cut to ``maxLength``)."""
    if schema.get("format") in FORMATS:
        return FORMATS[str(schema["format"])]
    longest = schema.get("maxLength")
    canned = f"{CANNED} sample {name}"
    if longest is None or len(canned) <= int(longest):
        return canned.ljust(int(schema.get("minLength", 0)), "x")
    text = f"sample {name}".ljust(int(schema.get("minLength", 0)), "x")
    return text[: int(longest)]
