"""``caa evaluate``: the CDNOW holdout evaluation, run through the real pipeline.

1. The CDNOW master log's calibration events (dated on or before ``--calibration-end``,
   time-ordered; with ``--limit-customers N`` only the first N customers of the file) are
   published to a stream of the evaluation's own (``<stream>-eval-<run>``, tables
   ``<prefix>eval-<run>-*``) and consumed by the real :class:`consumers.sources.worker.Worker` until
   idle. Its periodic refit is off (``refit_interval_s=0``: a refit at a wall-clock moment
   would make the result depend on the machine's speed), so is the drift-triggered one
   (``drift_delta=0``: it runs beside the consumption, at a moment that depends on timing)
   and the analyzer is statistical.
2. The final refit runs as of the cut-off, passed explicitly (the Worker's own would be as of
   the last event, which on a slice can be days earlier); it rewrites every prediction.
3. States, predictions and both models are read back from DynamoDB. Our expected holdout
   purchases come from the stored parameters of the pipeline's purchase model
   (``CAA_FORECAST_MODEL``: BG/NBD or Pareto/NBD) and each customer's stored state; every
   stored prediction is checked to be as of the cut-off and made by those parameters.
4. :mod:`models.learn.evaluation` scores ours and the batch anchors on the same customers, and the
   segments; :mod:`models.learn.value_evaluation` the holdout spend (ours: the purchase model
   x a Gamma-Gamma fitted here on the calibration repeaters; lifetimes': its fitter of the
   same model x its ``GammaGammaFitter``), the churn calibration (P(no holdout purchase):
   Brier score, reliability table) and the share of segment names that change when the
   final segment model is refitted ``NAME_CHANGE_DAYS`` days later without a purchase. The
   evaluation's stream and tables are deleted (``--keep`` keeps them).

Like ``caa run`` it starts (or reuses) the local emulator, unless ``AWS_ENDPOINT_URL`` is set
or ``CAA_LOCAL_EMULATOR=never``. Needs the dev dependencies (lifetimes, pandas,
scikit-learn), which are imported only here.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.errors import CaaError
from caa.settings import TABLES, Settings

if TYPE_CHECKING:  # the pipeline is imported when the command runs, not with the parser
    from consumers.progress import Progress
    from models.events import PurchaseEvent
    from models.learn.evaluation import Holdout
    from models.learn.forecaster import ForecastParams
    from models.learn.segmentation import SegmentModel
    from models.state import CustomerState

err = Console(stderr=True)
#: the refit "without purchases": every customer's recency grown by this many days
NAME_CHANGE_DAYS = 30.0


class EvaluationError(CaaError):
    """The pipeline's output is not what the evaluation can score honestly."""


def cdnow_events(holdout: Holdout, limit_customers: int | None) -> list[PurchaseEvent]:
    """The log's events up to the end of the holdout, of the first ``limit_customers``
    customers in file order (all by default), in file order."""
    from producers.datasets.cdnow import iter_rows, to_event

    chosen: set[str] = set()
    out = []
    for row in iter_rows():
        if row.customer_id not in chosen:
            if limit_customers is not None and len(chosen) >= limit_customers:
                continue
            chosen.add(row.customer_id)
        event = to_event(row)
        if event.occurred_at.date() <= holdout.end:
            out.append(event)
    return out


@dataclass
class Replay:
    """What the pipeline left in DynamoDB after the replay and the final refit."""

    published: int
    applied: int
    rejected: int
    states: dict[str, CustomerState]
    predictions: dict[str, dict[str, Any]]
    at_last_purchase: dict[str, str]  # segment name stored before the final refit
    params: ForecastParams  # the pipeline's purchase model (its type says which)
    version: int
    segments: SegmentModel  # after the final refit
    streaming: SegmentModel  # as it stood at the cut-off, before the final refit


async def replay(s: Settings, aws: Aws, holdout: Holdout, published: int,
                 progress: Progress) -> Replay:
    """Consume the published events (the phase "consuming", counted, then the worker's
    own), refit as of the cut-off (its phases) and read the tables back."""
    from caa import wiring
    from consumers.refit import refit
    from consumers.registry import PARETO_NBD, SEGMENTS
    from models.learn.bgnbd import BgNbdParams
    from models.learn.pareto_nbd import ParetoNbdParams
    from models.learn.segmentation import SegmentModel

    async with aws.clients("kinesis", "dynamodb") as c:
        progress.phase("consuming", total=published)
        w = wiring.worker(s, c["kinesis"], c["dynamodb"],
                          on_batch=lambda _s, r: progress.advance(len(r.outcomes)))
        await w.run(until_idle=True, final_refit=False, progress=progress)
        before = {p["customer_id"]: str(p["segment"]["name"]) for p in await w.predictions.all()}
        streaming = await w.registry.store.load(SEGMENTS)
        err.print(f"refit as of {holdout.calibration_end}")
        await refit(w.customers, w.predictions, w.registry, rewrite=True,
                    as_of_ts=holdout.cutoff_ts, progress=progress)
        progress.phase("reading the states, predictions and models back")
        states = {x.customer_id: x for x in await w.customers.all() if x.purchases}
        predictions = {p["customer_id"]: p for p in await w.predictions.all()}
        fm = await w.registry.store.load(s.forecast_model)
        seg = await w.registry.store.load(SEGMENTS)
    if fm is None or seg is None or streaming is None:
        raise EvaluationError("the pipeline stored no models: were any events consumed?")
    t = w.applier.totals
    kind = ParetoNbdParams if s.forecast_model == PARETO_NBD else BgNbdParams
    return Replay(published, t.applied, t.rejected, states, predictions, before,
                  kind.from_dict(fm[1]["params"]), fm[0], SegmentModel.from_dict(seg[1]),
                  SegmentModel.from_dict(streaming[1]))


def score(run: Replay, events: list[PurchaseEvent], holdout: Holdout
          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Everything ``--json`` prints, and one row per customer (raises
    :class:`EvaluationError` on inconsistent data)."""
    from models.features import rfm
    from models.learn import evaluation as ev
    from models.learn import value_evaluation as vev
    from models.learn.forecaster import model_name
    from models.learn.segmentation import SEGMENT_NAMES

    summary = ev.calibration_summary(
        ((e.customer_id, e.occurred_at.date()) for e in events), holdout)
    ids = [str(c) for c in summary.index]
    if run.applied != run.published or set(ids) != set(run.states):
        raise EvaluationError(f"published {run.published}, applied {run.applied} (rejected "
                              f"{run.rejected}); {len(run.states)} customers in the table, "
                              f"{len(ids)} in the calibration")
    forecast_model = model_name(run.params)
    stale = ev.inconsistent_predictions(run.predictions, run.states, run.params,
                                        run.version, holdout)
    if stale:
        raise EvaluationError(f"{len(stale)} stored prediction(s) are not as of the cut-off "
                              f"with {forecast_model} version {run.version}, e.g. {stale[:3]}")
    actual = summary["frequency_holdout"].to_numpy(dtype=float)
    ours = [ev.holdout_expectation(run.params, run.states[c], holdout) for c in ids]
    anchors = ev.fit_anchors(summary, float(holdout.weeks))
    features = [rfm(run.states[c], holdout.cutoff_ts) for c in ids]
    stored = [run.predictions[c]["segment"] for c in ids]
    if [int(g["id"]) for g in stored] != [run.segments.predict_one(f) for f in features]:
        raise EvaluationError("the stored segments are not the stored segment model's")
    ari, silhouette = ev.segment_agreement(run.segments, features, [int(g["id"]) for g in stored])
    after = [str(g["name"]) for g in stored]
    old = run.streaming.segment_names()
    unrefitted = [run.streaming.predict_one(f) for f in features]
    sizes: dict[str, int] = {}
    for n in after:
        sizes[n] = sizes.get(n, 0) + 1
    named = [i for i, c in enumerate(ids) if run.at_last_purchase[c] in SEGMENT_NAMES]
    segments = ev.SegmentScore(
        ari=ari, silhouette=silhouette,
        stability=ev.changed_share([run.at_last_purchase[ids[i]] for i in named],
                                   [after[i] for i in named]) if named else None,
        stability_customers=len(named),
        refit_churn=ev.changed_share([old.get(g, "unnamed") for g in unrefitted], after),
        streaming_ari=ev.adjusted_rand(unrefitted, [int(g["id"]) for g in stored]),
        sizes=dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
    spend = vev.spend_summary(
        ((e.customer_id, e.occurred_at.date(), float(e.total)) for e in events), holdout)
    if spend.customer_ids != ids or spend.holdout_purchases.tolist() != actual.tolist():
        raise EvaluationError("the spend summary's customers or holdout purchases are not "
                              "lifetimes' calibration summary's")
    value = vev.evaluate_value(run.params, spend, float(holdout.weeks),
                               lifetimes_expected=getattr(anchors, forecast_model))
    name_change = vev.name_change_share(run.segments, features, NAME_CHANGE_DAYS)
    variants = [run.predictions[c].get("variant") for c in ids]
    models: dict[str, Sequence[float] | ev.FloatArray] = {
        "ours": ours, "bgnbd": anchors.bgnbd, "pareto_nbd": anchors.pareto_nbd,
        "naive": anchors.naive}
    rows = [{"customer_id": c, "predicted": ours[i], "actual": float(actual[i]),
             "score": ours[i], "bgnbd": float(anchors.bgnbd[i]),
             "pareto_nbd": float(anchors.pareto_nbd[i]), "variant": variants[i] or ""}
            for i, c in enumerate(ids)]
    return {
        "by_variant": ev.by_group(variants, models, actual),
        "ours": ev.score(ours, actual).as_dict(),
        "bgnbd": ev.score(anchors.bgnbd, actual).as_dict(),
        "pareto_nbd": ev.score(anchors.pareto_nbd, actual).as_dict(),
        "naive": ev.score(anchors.naive, actual).as_dict(),
        "total_actual": int(actual.sum()),
        "segments": segments.as_dict(),
        "value": {k: v for k, v in value.as_dict().items() if k != "churn"},
        "churn": value.churn.as_dict(),
        "segment_name_change": {"recency_days_added": NAME_CHANGE_DAYS, "share": name_change},
        "customers": len(ids),
        "calibration_end": holdout.calibration_end.isoformat(),
        "holdout_end": holdout.end.isoformat(),
        "holdout_weeks": holdout.weeks,
        "forecast_model": forecast_model,
        "calibration_events": run.published,
        "inputs_differ": len(ev.inputs_differ(summary, run.states, holdout)),
        "params": {"ours": run.params.to_dict(), "bgnbd": anchors.bgnbd_params,
                   "pareto_nbd": anchors.pareto_nbd_params},
    }, rows


@contextmanager
def evaluation_resources(settings: Settings, aws: Aws, keep: bool) -> Iterator[Settings]:
    """A stream and tables of the evaluation's own, deleted afterwards unless ``keep``."""
    from caa.wiring import ensure_resources

    run = secrets.token_hex(4)
    s = settings.model_copy(update={
        "stream_name": f"{settings.stream_name}-eval-{run}",
        "table_prefix": f"{settings.table_prefix}eval-{run}-",
        "refit_interval_s": 0.0, "drift_delta": 0.0, "analyzer": "statistical"})
    kinesis, dynamodb = aws.client("kinesis"), aws.client("dynamodb")
    ensure_resources(s, kinesis, dynamodb)
    try:
        yield s
    finally:
        if keep:
            err.print(f"kept stream {s.stream_name} and tables {s.table_prefix}*")
        else:
            kinesis.delete_stream(StreamName=s.stream_name, EnforceConsumerDeletion=True)
            for t in TABLES:
                with suppress(dynamodb.exceptions.ResourceNotFoundException):
                    dynamodb.delete_table(TableName=s.table(t))


def evaluate(settings: Settings, holdout: Holdout, limit_customers: int | None,
             keep: bool = False, aws: Aws | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from producers.datasets.cdnow import time_ordered
    from producers.publisher import Publisher

    events = cdnow_events(holdout, limit_customers)
    calibration = time_ordered([e for e in events if holdout.in_calibration(e.occurred_at.date())])
    if not calibration:
        raise EvaluationError(f"no purchase on or before {holdout.calibration_end}")
    aws = aws or Aws(settings)
    with output.progress() as progress:  # on stderr: `--json` output stays parseable
        with evaluation_resources(settings, aws, keep) as s:
            progress.phase("publishing", total=len(calibration))
            Publisher(aws.client("kinesis"), s.stream_name).publish(
                calibration, progress=progress.advance)
            run = asyncio.run(replay(s, aws, holdout, len(calibration), progress))
        progress.phase("scoring against the lifetimes models")
        return score(run, events, holdout)


def write_customers(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["customer_id"])
        w.writeheader()
        w.writerows(rows)
    err.print(f"per-customer figures in {path}")


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def print_report(out: dict[str, Any]) -> None:
    ours = {"bgnbd": "BG/NBD", "pareto_nbd": "Pareto/NBD"}.get(out.get("forecast_model", ""), "")
    rows = []
    for key, label in (("ours", f"ours (streaming {ours})"), ("bgnbd", "BG/NBD (lifetimes)"),
                       ("pareto_nbd", "Pareto/NBD (lifetimes)"), ("naive", "naive x/T")):
        m = out[key]
        rows.append((label, _fmt(m["mae"]), _fmt(m["rmse"]), _fmt(m["pearson"]),
                     _fmt(m["auc"]), _fmt(m["total_predicted"], 0)))
    columns = ("model", "MAE", "RMSE", "Pearson", "AUC", "total predicted")
    output.table(f"holdout {out['calibration_end']} + {out['holdout_weeks']} weeks "
                 f"({out['customers']:,} customers, {out['total_actual']:,} actual repeat "
                 f"purchases)", columns, rows, right=set(columns[1:]))
    for key, label in (("bgnbd", "BG/NBD"), ("pareto_nbd", "Pareto/NBD"), ("ours", "ours")):
        if out[key]["non_finite"]:
            print(f"{label}: {out[key]['non_finite']:,} prediction(s) not finite")
    g = out["segments"]
    output.pairs("segments at the cut-off", [
        ("ARI against scikit-learn KMeans", _fmt(g["ari"])),
        ("silhouette", _fmt(g["silhouette"])),
        (f"stability: changed since the last purchase (of {g['stability_customers']:,})",
         _fmt(g["stability"])),
        ("refit churn: changed by the final refit alone", _fmt(g["refit_churn"])),
        ("ARI streaming model at the cut-off vs refit", _fmt(g["streaming_ari"])),
        *((f"segment: {name}", f"{n:,}") for name, n in g["sizes"].items())])
    print_value(out)
    if "by_variant" in out:
        columns = ("variant", "customers", "MAE", "AUC", "predicted", "actual")
        output.table("by A/B variant (ours; anchors in --json)", columns, [
            (name, f"{v['customers']:,}", _fmt(v["ours"]["mae"]), _fmt(v["ours"]["auc"]),
             _fmt(v["ours"]["total_predicted"], 0), _fmt(v["total_actual"], 0))
            for name, v in out["by_variant"].items()], right=set(columns[1:]))


def print_value(out: dict[str, Any]) -> None:
    """The holdout spend, churn calibration and name-change sections of the report."""
    v, c = out["value"], out["churn"]
    model = {"bgnbd": "BG/NBD", "pareto_nbd": "Pareto/NBD"}.get(out.get("forecast_model", ""), "")
    columns = ("model", "MAE", "RMSE", "Pearson", "total predicted")
    output.table(
        f"customer value (holdout spend, ${v['total_actual']:,.0f} actual)", columns,
        [(label, _fmt(v[k]["mae"]), _fmt(v[k]["rmse"]), _fmt(v[k]["pearson"]),
          _fmt(v[k]["total_predicted"], 0))
         for k, label in (("ours", f"ours (Gamma-Gamma x {model})"),
                          ("lifetimes", f"lifetimes (Gamma-Gamma x {model})"))],
        right=set(columns[1:]),
        caption=f"monetary-frequency correlation {_fmt(v['monetary_frequency_correlation'])}")
    header = ("P(no purchase)", "customers", "mean predicted", "observed")
    output.table(
        f"churn calibration: P(no purchase in the holdout), Brier {_fmt(c['brier'])} "
        f"(constant {_fmt(c['base_rate'], 3)}: {_fmt(c['brier_constant'])})", header,
        [(f"{b['lower']:.1f}-{b['upper']:.1f}", f"{b['n']:,}", _fmt(b["mean_predicted"], 3),
          _fmt(b["observed"], 3)) for b in c["reliability"]], right=set(header[1:]))
    g = out["segment_name_change"]
    output.pairs("segment names at a refit without purchases", [
        (f"changed with recency + {g['recency_days_added']:g} days", _fmt(g["share"]))])


def run_evaluation(settings: Settings, calibration_end: date, holdout_weeks: int,
                   limit_customers: int | None, as_json: bool, by_variant: bool,
                   customers_csv: Path, keep: bool,
                   connect: Callable[[], Aws] | None = None) -> int:
    """``caa evaluate``: the holdout of ``holdout_weeks`` after ``calibration_end``, on the
    first ``limit_customers`` customers (all by default); per-customer figures to
    ``customers_csv``; ``keep`` keeps the evaluation's stream and tables; ``connect`` makes
    the AWS clients once the emulator runs. 1 without the dev dependencies."""
    try:
        import lifetimes  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise CaaError(f"caa evaluate needs the dev dependencies ({exc.name})",
                       "pip install -e '.[dev]'") from None
    if settings.endpoint_url is None and settings.local_emulator == "auto":
        from caa.cli.pipeline import ensure_emulator

        ensure_emulator(settings, "`caa emulator stop` stops it")
    from models.learn.evaluation import Holdout

    holdout = Holdout(calibration_end, holdout_weeks)
    out, rows = evaluate(settings, holdout, limit_customers, keep=keep,
                         aws=connect() if connect else None)
    write_customers(customers_csv, rows)
    if not by_variant:
        out.pop("by_variant")
    if as_json:
        output.print_json(out)
    else:
        print_report(out)
    return 0


def _iso_date(value: str | date) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"not a date (YYYY-MM-DD): {value!r}") from None


def _evaluate(
    ctx: typer.Context,
    calibration_end: Annotated[date, typer.Option(
        parser=_iso_date, metavar="YYYY-MM-DD",
        help="The last day of the calibration period.")] = date(1997, 9, 30),
    holdout_weeks: Annotated[int, typer.Option(min=1, help="The holdout's length.")] = 39,
    limit_customers: Annotated[int | None, typer.Option(
        min=1, metavar="N", help="Only the first N customers of the log (fast runs).")] = None,
    as_json: JsonFlag = False,
    by_variant: Annotated[bool, typer.Option(
        "--by-variant",
        help="Also score each A/B variant's customers (CAA_AB_EXPERIMENT, "
             "CAA_AB_VARIANTS).")] = False,
    customers_csv: Annotated[Path, typer.Option(
        help="Where to write per-customer predicted and actual holdout purchases, for "
             "`caa report`.")] = Path("out/evaluation-customers.csv"),
    keep: Annotated[bool, typer.Option(
        "--keep",
        help="Keep the evaluation's stream and tables (their names go to stderr).")] = False,
) -> int:
    inv = current(ctx)
    return run_evaluation(inv.settings, calibration_end, holdout_weeks, limit_customers,
                          as_json, by_variant, customers_csv, keep, inv.aws)


def register(app: typer.Typer) -> None:
    app.command("evaluate", rich_help_panel=output.DATA,
                help="The CDNOW holdout evaluation of the forecasts and segments through the "
                     "pipeline, beside batch anchors (lifetimes, scikit-learn).")(_evaluate)
