"""Reading deploy/template.yaml without cfn-lint: its resources, functions and parameters.

CloudFormation's short forms (``!Ref``, ``!Sub``, ``!GetAtt``, ...) load as their long forms
(``{"Ref": ...}``, ``{"Fn::Sub": ...}``), which is all the packaging and the deployment plan
need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    pass


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _tag)


def load(path: Path) -> dict[str, Any]:
    """The template as plain data."""
    data = yaml.load(path.read_text(), Loader=_Loader)  # a SafeLoader subclass
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise ValueError(f"{path}: not a CloudFormation template (no Resources)")
    return data


@dataclass(frozen=True)
class Function:
    """One ``AWS::Lambda::Function`` of the template."""

    logical_id: str
    handler: str | None
    runtime: str | None
    architectures: tuple[str, ...]
    image: bool
    condition: str | None


def functions(template: dict[str, Any]) -> list[Function]:
    """Every Lambda function (``AWS::Lambda::Function`` and ``AWS::Serverless::Function``)."""
    out = []
    for logical_id, res in template["Resources"].items():
        if res.get("Type") not in ("AWS::Lambda::Function", "AWS::Serverless::Function"):
            continue
        props = res.get("Properties") or {}
        code = props.get("Code") or {}
        out.append(Function(
            logical_id=logical_id,
            handler=props.get("Handler") if isinstance(props.get("Handler"), str) else None,
            runtime=props.get("Runtime") if isinstance(props.get("Runtime"), str) else None,
            architectures=tuple(props.get("Architectures") or ("x86_64",)),
            image=props.get("PackageType") == "Image" or (
                isinstance(code, dict) and "ImageUri" in code),
            condition=res.get("Condition"),
        ))
    return out


@dataclass(frozen=True)
class Resource:
    logical_id: str
    type: str
    condition: str | None
    #: the physical name when the template sets one (``*Name`` property), as written
    name: Any


_NAME_KEYS = ("FunctionName", "TableName", "QueueName", "Name", "LogGroupName", "AlarmName",
              "DashboardName", "RoleName", "TopicName", "ScheduleName", "BucketName")


def resources(template: dict[str, Any]) -> list[Resource]:
    out = []
    for logical_id, res in template["Resources"].items():
        props = res.get("Properties") or {}
        # a mapping's or a permission's FunctionName is the function it points at, not its own
        own = res.get("Type") not in ("AWS::Lambda::EventSourceMapping", "AWS::Lambda::Permission")
        name = next((props[k] for k in _NAME_KEYS if k in props), None) if own else None
        out.append(Resource(logical_id, str(res.get("Type")), res.get("Condition"), name))
    return out


def render(value: Any, parameters: dict[str, str]) -> str:
    """A readable value: ``!Sub`` and ``!Ref`` of parameters filled in, the rest named.

    >>> render({"Fn::Sub": "${Prefix}purchases"}, {"Prefix": "caa-"})
    'caa-purchases'
    >>> render({"Ref": "PurchaseStream"}, {})
    '(PurchaseStream)'
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value:
        ref = str(value["Ref"])
        return parameters.get(ref, f"({ref})")
    if isinstance(value, dict) and "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        text: str = value["Fn::Sub"]
        for key, val in parameters.items():
            text = text.replace("${" + key + "}", val)
        return text
    return "(computed)"


def parameter_defaults(template: dict[str, Any]) -> dict[str, str]:
    return {k: str(v["Default"]) for k, v in (template.get("Parameters") or {}).items()
            if isinstance(v, dict) and "Default" in v}


def conditions(template: dict[str, Any], parameters: dict[str, str]) -> dict[str, bool | None]:
    """Each condition's value where it is a plain ``!Equals`` of a parameter and a literal
    (None where it is anything else)."""
    out: dict[str, bool | None] = {}
    for name, expr in (template.get("Conditions") or {}).items():
        value: bool | None = None
        args = expr.get("Fn::Equals") if isinstance(expr, dict) else None
        if isinstance(args, list) and len(args) == 2:
            left, right = (render(a, parameters) for a in args)
            if "(" not in left + right:
                value = left == right
        out[name] = value
    return out
