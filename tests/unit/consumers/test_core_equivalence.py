"""The pure core's outputs are those of the golden (issue 17: faster, outputs identical).

Both streams of ``bench/core_golden.py`` (the full CDNOW log, time-ordered, and a
synthetic stream with refunds, cancellations, early refunds, redeliveries, malformed
records, consent withdrawals and erasures) are replayed through ``decode_batch`` +
``process_batch`` in batches of 1,000 as the applier runs them (states carried over, the
segment model learning ``result.learn``, the default Pareto/NBD forecaster, a fixed
``now``) and compared with ``tests/data/core_golden.json.xz``, made by that script from
the code before the optimisations: every batch's outcomes, predictions, changed states,
learn vectors, watermark, checkpoints, counts, erased and retired customers and dead
letters (by digest; floats of more than 12 significant digits rounded to 12, see
``rounded`` in bench/core_golden.py), every customer's final state (by digest) and final
prediction (field by field, floats within 1e-12), every dead letter.

An intended change of the core's outputs means a new golden (the script's docstring says
how), made and reviewed on purpose. The replays run with the applier's GC policy
(:mod:`consumers.gc_policy`), which must not change anything either.
"""

from __future__ import annotations

import importlib.util
import json
import lzma
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumers.gc_policy import GcPolicy
from producers.datasets.cdnow import DatasetMissing


def _script() -> Any:
    """bench/core_golden.py (by path: bench/ is scripts, not a package)."""
    path = Path(__file__).resolve().parents[3] / "bench" / "core_golden.py"
    spec = importlib.util.spec_from_file_location("bench_core_golden", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_script = _script()
BATCH, FORMAT, GOLDEN, NOW = (golden_script.BATCH, golden_script.FORMAT, golden_script.GOLDEN,
                              golden_script.NOW)
STATE_DIGEST_HEX, STREAMS = golden_script.STATE_DIGEST_HEX, golden_script.STREAMS
summarise = golden_script.summarise
TOLERANCE = 1e-12


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(lzma.decompress(GOLDEN.read_bytes()))
    assert (data["format"], data["now"], data["batch"], data["rates"]) == (
        FORMAT, NOW.isoformat(), BATCH, repr(golden_script.RATES)), (
        "bench/core_golden.py changed its replay: make the golden again (see its docstring)")
    assert sorted(data["streams"]) == sorted(STREAMS)
    return data


@pytest.fixture(scope="module", params=sorted(STREAMS))
def replayed(request: pytest.FixtureRequest, golden: dict[str, Any]
             ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(golden, actual) of one stream."""
    want = golden["streams"][request.param]
    try:
        records = STREAMS[request.param]()
    except DatasetMissing as exc:  # the CDNOW log ships in the 'lifetimes' package
        pytest.skip(str(exc))
    policy = GcPolicy()
    try:
        got = summarise(records, want["forecast_model"], after_batch=policy.after_batch)
    finally:
        policy.release()
    yield want, got


def close(a: Any, b: Any) -> bool:
    """Equal, floats within :data:`TOLERANCE` (relative or absolute), types alike."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_records_totals_and_dead_letters(replayed: tuple[dict[str, Any], dict[str, Any]]
                                         ) -> None:
    want, got = replayed
    assert got["records"] == want["records"]
    assert got["totals"] == want["totals"]
    assert got["dead_letters"] == want["dead_letters"]


def test_every_batch(replayed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Outcomes, predictions, changed states, learn vectors and the rest, batch by batch."""
    want, got = replayed
    assert len(got["batches"]) == len(want["batches"])
    differing = [(n, sorted(k for k in w if g.get(k) != w[k]))
                 for n, (w, g) in enumerate(zip(want["batches"], got["batches"], strict=True))
                 if w != g]
    assert not differing, (
        f"{len(differing)} batch(es) differ from the golden; first (batch index, parts): "
        f"{differing[:5]} (batch n holds records {BATCH}n+1 to {BATCH}(n+1))")


def test_final_states(replayed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    want, got = replayed
    assert all(len(d) == STATE_DIGEST_HEX for d in want["states"].values())
    assert got["states"].keys() == want["states"].keys(), "not the same customers"
    differing = [c for c, d in want["states"].items() if got["states"][c] != d]
    assert not differing, f"{len(differing)} final state(s) differ, first: {differing[:10]}"


def test_final_predictions(replayed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    want, got = replayed
    assert got["prediction_ids"] == want["prediction_ids"], "not the same customers predicted"
    assert got["predictions"].keys() == want["predictions"].keys(), "not the same fields"
    ids = want["prediction_ids"]
    differing = [(ids[i], field, w, g)
                 for field, column in want["predictions"].items()
                 for i, (w, g) in enumerate(zip(column, got["predictions"][field], strict=True))
                 if not close(w, g)]
    assert not differing, (f"{len(differing)} field(s) of final predictions differ; first "
                           f"(customer, field, golden, now): {differing[:10]}")


def test_close() -> None:
    assert close({"a": [1.0, 2]}, {"a": [1.0 + 1e-13, 2]})
    assert not close(1.0, 1.0 + 1e-9)
    assert not close(2, 2.0) and not close(True, 1) and not close({"a": 1}, {"b": 1})
