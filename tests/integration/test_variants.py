"""A/B variants end to end: every prediction records the customer's variant, the control
variant never reaches the model, and the assignment does not depend on PYTHONHASHSEED."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from caa.settings import Settings
from deploy.local.bedrock_server import BedrockServer
from models.prompt import pseudonym
from models.variant import VariantPlan
from tests.integration.test_analysis import KEY, _event, customer_data, run

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_control_customers_get_the_statistical_analysis_and_every_prediction_its_variant(
    ai_settings: Callable[..., Settings], bedrock_server: BedrockServer,
) -> None:
    s = ai_settings(consent_mode="opt_out", ab_experiment="haiku-vs-stats",
                    ab_variants="bedrock=1,statistical=1")
    plan = VariantPlan.parse("haiku-vs-stats", "bedrock=1,statistical=1")
    customers = [f"ab{i:03d}" for i in range(24)]
    expected = {c: plan.assign(c) for c in customers}
    assert set(expected.values()) == {"bedrock", "statistical"}  # both arms are populated
    out = run(s, [_event(c, d) for c in customers for d in (1, 8)])
    assert {c: p["variant"] for c, p in out.predictions.items()} == expected
    sent = {customer_data(r)["subject"] for r in bedrock_server.requests()}
    treated = {c for c, v in expected.items() if v == "bedrock"}
    assert sent == {pseudonym(KEY, c) for c in treated}
    for c, v in expected.items():
        p = out.predictions[c]
        if v == "statistical":
            assert (p["source"], p["fallback_reason"]) == ("statistical", "ab_control")
        else:
            assert p["source"] == "bedrock"


def test_the_assignment_is_the_same_under_any_hash_seed() -> None:
    code = ("from models.variant import VariantPlan as V;"
            "p = V.parse('e', 'a=3,b=2,c=5');"
            "print(''.join(p.assign(f'{i:05d}')[0] for i in range(2000)))")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, text=True,
                           capture_output=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("0", "1", "12345", "random")}
    assert len(outs) == 1 and len(next(iter(outs)).strip()) == 2000
