"""What ``caa report`` (:mod:`caa.cli.report`) shows: one self-contained HTML page about the
customers, models and costs.

Reads the customer states, the predictions (value and churn: :mod:`caa.report.value`), the
segment model and the refit's segment sizes from DynamoDB (each table one scan),
the Bedrock usage table (as ``caa costs`` does: :func:`consumers.stores.usage.daily_usage`), the
evaluation file (``--evaluation``, contract in :mod:`caa.report.scores`; written by
``caa evaluate``) and the benchmark figures (``--bench``, ``out/bench.json`` from
``make bench``) into :class:`caa.report.page.ReportData` (:func:`load`); then
:func:`caa.report.page.render` builds the page (no I/O) and :mod:`caa.cli.report` writes it to
``--out``. A missing file leaves its sections with a note saying what to run.

Needs matplotlib (the ``report`` or ``demo`` extra), imported only when the command runs.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caa.aws import Aws
from caa.settings import Settings
from consumers.progress import NO_PROGRESS, Progress
from models.money import NO_RATES, Rates

if TYPE_CHECKING:
    from caa.report.page import ReportData
    from consumers.stores.customers import CustomerStore
    from consumers.stores.model_snapshots import ModelStore
    from models.learn.segmentation import SegmentModel
    from models.state import CustomerState

BENCH_FIGURES = ("events_per_s", "p50_ms", "p99_ms")

__all__ = ["BenchFileError", "load", "read_bench", "read_models", "read_states", "read_tables"]


class BenchFileError(ValueError):
    """out/bench.json is not in the shape bench/e2e.py writes."""


def read_bench(path: Path) -> dict[str, Any]:
    """``{"ours": {events_per_s, p50_ms, p99_ms}, "naive": {...}, "core_events_per_s",
    "peak_rss_mb": {customers: MiB}}``; the last two are optional. NaN is allowed (a figure
    that could not be measured) and shown as n/a."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BenchFileError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BenchFileError("not a JSON object")
    for name in ("ours", "naive"):
        figures = data.get(name)
        if not isinstance(figures, dict):
            raise BenchFileError(f"no {name!r} object")
        for key in BENCH_FIGURES:
            v = figures.get(key)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise BenchFileError(f"{name}.{key} is not a number: {v!r}")
    rss = data.get("peak_rss_mb", {})
    if not isinstance(rss, dict) or not all(str(k).isdigit() for k in rss):
        raise BenchFileError("peak_rss_mb must map customer counts to MiB")
    return data


async def read_states(customers: CustomerStore,
                      progress: Progress = NO_PROGRESS) -> list[CustomerState]:
    """Every customer state with a purchase (ids and bodies only: no event digests);
    ``progress`` counts the customers read."""
    return [s for s in await customers.all(digests=False, progress=progress) if s.purchases]


async def read_models(models: ModelStore
                      ) -> tuple[SegmentModel | None, int, dict[str, Any] | None]:
    """(segment model or None, its version, the refit's segment-sizes document or None)."""
    from consumers.refit import SIZES
    from consumers.registry import SEGMENTS
    from models.learn.segmentation import SegmentModel

    seg, sizes = await models.load(SEGMENTS), await models.load(SIZES)
    model = SegmentModel.from_dict(seg[1]) if seg else None
    return model, seg[0] if seg else 0, sizes[1] if sizes else None


async def read_tables(settings: Settings, aws: Aws, progress: Progress = NO_PROGRESS,
                      ) -> tuple[list[CustomerState],
                                 tuple[SegmentModel | None, int, dict[str, Any] | None],
                                 list[dict[str, Any]], list[dict[str, Any]]]:
    """What the page shows from DynamoDB: the states, the models, the usage per day and the
    predictions (``progress``: "reading customer states", counted, "reading models and
    costs", then "reading predictions", counted)."""
    from consumers.stores.customers import CustomerStore
    from consumers.stores.dynamo import Dynamo
    from consumers.stores.model_snapshots import ModelStore
    from consumers.stores.predictions import prediction_from_item
    from consumers.stores.usage import daily_usage

    t = settings.tables
    async with aws.clients("dynamodb") as c:
        db = Dynamo(c["dynamodb"])
        progress.phase("reading customer states")
        states = await read_states(CustomerStore(db, t.customers), progress)
        progress.phase("reading models and costs")
        models = await read_models(ModelStore(db, t.models))
        usage = await daily_usage(db, t.usage, settings.daily_budget_usd)
        progress.phase("reading predictions")
        predictions = [prediction_from_item(i)
                       for i in await db.scan(t.predictions, progress=progress)]
        return states, models, usage, predictions


def load(settings: Settings, aws: Aws, evaluation: Path, bench: Path,
         progress: Progress = NO_PROGRESS, rates: Rates = NO_RATES) -> ReportData:
    """Everything the page shows; a missing or unreadable file is noted, not fatal.
    ``progress`` hears the phases: reading customer states (counted), reading models and
    costs, reading predictions (counted), segment sizes over time (counted in cut-offs);
    :func:`caa.report.page.render` takes it too. Spend is kept per currency and shown in the
    reporting currency of ``rates`` (:func:`caa.wiring.rates`), naming what was left out
    for want of a rate."""
    from caa.report.page import ReportData
    from caa.report.scores import ScoreFileError, Scores
    from caa.report.value import customer_values
    from consumers.refit import spend_by_currency
    from models.timeline import segment_timeline

    def cutoff_done(done: int, of: int) -> None:
        if done:
            progress.advance()
        else:
            progress.phase("segment sizes over time (cut-offs)", total=of)

    states, (model, version, sizes), usage, predictions = asyncio.run(
        read_tables(settings, aws, progress))
    values, values_missing = customer_values(predictions,
                                             {s.customer_id: s.last_ts for s in states})
    scores = scores_error = bench_data = bench_error = None
    if evaluation.is_file():
        try:
            scores = Scores.read(evaluation)
        except (ScoreFileError, OSError) as exc:
            scores_error = str(exc)
            print(f"caa report: {evaluation}: {exc}", file=sys.stderr)
    if bench.is_file():
        try:
            bench_data = read_bench(bench)
        except (BenchFileError, OSError) as exc:
            bench_error = str(exc)
            print(f"caa report: {bench}: {exc}", file=sys.stderr)
    return ReportData(
        stream=settings.stream_name, table_prefix=settings.table_prefix,
        generated_at=datetime.now(UTC), customers=len(states),
        purchases=sum(s.purchases for s in states),
        spend_minor=spend_by_currency(states), model=model, model_version=version,
        sizes_doc=sizes,
        timeline=(segment_timeline(states, model, step_done=cutoff_done, rates=rates)
                  if model else None),
        evaluation_path=evaluation, scores=scores, scores_error=scores_error,
        bench_path=bench, bench=bench_data, bench_error=bench_error,
        usage=usage, budget_usd=settings.daily_budget_usd, rates=rates,
        analyzer=settings.analyzer, values=values, values_missing=values_missing,
        churn_medium=settings.churn_medium, churn_high=settings.churn_high,
    )
