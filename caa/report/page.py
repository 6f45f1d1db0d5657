"""The report page: one self-contained HTML document built from data already read (no I/O).

Figures are PNGs from :mod:`caa.report.plots`, embedded as ``data:image/png;base64`` URIs; the CSS
is inline; there is no script and no external resource, so the file can be mailed or
archived as it is. A section whose input is missing shows what to run to fill it, or says
in one line why it is empty. Written for people who market to these customers: amounts carry
their currency (:mod:`caa.report.words`; spend in several currencies is converted into the
reporting currency with the operator's rates, naming their date and what had no rate),
each segment is defined in plain words from its centre, and headings and captions avoid
technical terms (a small footnote names them).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caa.report import plots
from caa.report.scores import Scores, calibration_bins, gains, lift_deciles
from caa.report.words import converted, define_segments, money
from consumers.progress import NO_PROGRESS, Progress
from consumers.stores.usage import non_aws_endpoints, simulated_note
from models.learn.evaluation import roc_auc
from models.learn.segmentation import FEATURES, SEGMENT_NAMES, SegmentModel
from models.money import NO_RATES, Rates
from models.timeline import Timeline

if TYPE_CHECKING:
    from caa.report.value import CustomerValue

__all__ = ["SECTIONS", "ReportData", "render"]

#: (anchor id, heading) of every section, in page order
SECTIONS = (
    ("segment-sizes", "Segment sizes over time"),
    ("centroids", "What each segment means"),
    ("value", "Customer value and churn"),
    ("calibration", "Forecast purchases against what customers did"),
    ("lift", "Who buys again: customers ranked by our score"),
    ("bench", "Throughput and latency"),
    ("costs", "AI analysis cost per day (Bedrock)"),
)
#: the reference forecasts in plain words (their technical names: ANCHOR_FOOTNOTE)
ANCHOR_LABELS = {"bgnbd": "reference forecast 1 (lifetimes)",
                 "pareto_nbd": "reference forecast 2 (lifetimes)",
                 "naive": "simple average so far"}
ANCHOR_FOOTNOTE = ("Reference forecast 1 is the BG/NBD model and 2 the Pareto/NBD model, both "
                   "fitted by the lifetimes library; the simple average is each customer's "
                   "purchases so far divided by their time so far (x/T).")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1060px;padding:24px;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;
padding-bottom:.2em}
img{max-width:100%;height:auto;display:block;margin:12px 0}
table{border-collapse:collapse;margin:10px 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 8px}th{background:#f4f4f4;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.caption{color:#555;font-size:.9em}.meta{color:#666;font-size:.9em}
.placeholder{background:#fff8e1;border:1px dashed #e0b000;padding:14px;border-radius:4px}
.warn{color:#a00}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
.footnote{color:#777;font-size:.8em}.definition{margin:4px 0}
.empty{color:#555;font-style:italic}
"""


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, already read from DynamoDB and the files."""

    stream: str
    table_prefix: str
    generated_at: datetime
    customers: int  # with at least one purchase
    purchases: int
    #: the customers' spend per ISO currency, in minor units (shown converted with ``rates``)
    spend_minor: dict[str, int]
    model: SegmentModel | None
    model_version: int
    sizes_doc: dict[str, Any] | None  # the refit's ``segment-sizes`` document
    timeline: Timeline | None
    evaluation_path: Path
    scores: Scores | None = None
    scores_error: str | None = None
    bench_path: Path = Path("out/bench.json")
    bench: dict[str, Any] | None = None
    bench_error: str | None = None
    usage: list[dict[str, Any]] = field(default_factory=list)  # ``caa costs --json`` rows
    budget_usd: float = 0.0
    #: the exchange rates into the reporting currency every amount is shown in (with their
    #: date); a currency without a rate is left out of the totals and named
    rates: Rates = NO_RATES
    #: ``CAA_ANALYZER``: "statistical" (the AI analysis is off) or "bedrock"
    analyzer: str = "statistical"
    #: each customer's value and churn risk, from the predictions (caa.report.value), and
    #: how many predictions lacked them (written before they were computed)
    values: list[CustomerValue] = field(default_factory=list)
    values_missing: int = 0
    #: the churn bands' thresholds on P(no purchase in 90 days) (CAA_CHURN_MEDIUM, _HIGH)
    churn_medium: float = 0.5
    churn_high: float = 0.8


def _currency(d: ReportData) -> str:
    """The reporting currency of the page's amounts (Bedrock's costs aside: USD)."""
    return d.rates.reporting


def _num(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{float(v):,.{digits}f}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{escape(c)}</td>' if i >= numeric_from
                         else f"<td>{escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _placeholder(html: str) -> str:
    return f'<p class="placeholder">{html}</p>'


def _day(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _sizes(d: ReportData) -> str:
    tl = d.timeline
    if tl is None or d.model is None:
        return _placeholder("No customers with purchases or no segment model yet: run "
                            "<code>caa consume</code> (or <code>make run</code>) to fill "
                            "this section.")
    caption = (
        f"Customers per segment at {len(tl.cutoffs)} {escape(tl.step)} cut-offs from "
        f"{_day(tl.cutoffs[0])} to the latest purchase in the data, {_day(tl.cutoffs[-1])}. "
        f"<strong>Every point uses today's segment model</strong> (version {d.model_version})"
        ": no history of models is kept, so this shows how customers moved through today's "
        "segments, not what was shown at the time. Each customer who had bought by a cut-off "
        "is placed by what they had done by then: how often (their distinct purchase days up "
        "to the cut-off's day) and how recently (days from the last of those to the "
        "cut-off); their order value is today's average (the state keeps no per-order "
        "amounts, so this one figure is not as of the cut-off).")
    out = [_img(plots.timeline(tl), "customers per segment over time"),
           f'<p class="caption">{caption}</p>', _sizes_check(d, tl)]
    names, merged = tl.by_name()
    rows = [[_day(t)[:10], *(f"{c:,}" for c in counts), f"{sum(counts):,}"]
            for t, counts in zip(tl.cutoffs, merged, strict=True)]
    out.append("<details><summary>sizes at every cut-off</summary>"
               + _table(["cut-off", *names, "customers"], rows) + "</details>")
    return "".join(out)


def _sizes_check(d: ReportData, tl: Timeline) -> str:
    """Compare the last point with the sizes the refit stored, when both are comparable."""
    doc = d.sizes_doc
    if not doc:
        return '<p class="meta">No refit has stored segment sizes yet.</p>'
    if int(doc.get("version", -1)) != d.model_version or doc.get("as_of") != tl.cutoffs[-1]:
        return ('<p class="meta">The last point is not compared with the sizes the last refit '
                f"stored (model version {escape(str(doc.get('version')))}): the segment model "
                "or the watermark moved since.</p>")
    stored = {str(k): int(v) for k, v in doc["sizes"].items()}
    ours = {k: v for k, v in tl.at(-1).items() if v}
    if stored == ours:
        return ('<p class="meta">Check: the last point equals the segment sizes the refit '
                f"stored (model version {d.model_version}).</p>")
    return ('<p class="meta warn">The last point differs from the sizes the refit stored '
            f"for model version {d.model_version}: {escape(str(stored))}.</p>")


def _rank(name: str) -> int:
    return SEGMENT_NAMES.index(name) if name in SEGMENT_NAMES else len(SEGMENT_NAMES)


def _centroids(d: ReportData) -> str:
    if d.model is None or not d.model.is_ready:
        return _placeholder("No segment model yet: run <code>caa consume</code> to fill this "
                            "section.")
    rows = sorted(d.model.describe(), key=lambda r: (_rank(str(r["name"])), int(str(r["id"]))))
    at = d.timeline.at(-1) if d.timeline else {}
    names = [str(r["name"]) for r in rows]
    centres: list[dict[str, float]] = [r["centre"] for r in rows]  # type: ignore[misc]
    sizes = [at.get(n, int(str(r["count"]))) for n, r in zip(names, rows, strict=True)]
    meaning = define_segments(names, centres, sizes, _currency(d))
    definitions = "".join(f'<p class="definition"><strong>{escape(n)}</strong>: '
                          f"{escape(meaning[n])}</p>" for n in dict.fromkeys(names))
    shared = {n for n in names if names.count(n) > 1}  # centres too alike to name apart
    table = _table(
        ["segment", "customers now", "days since the last purchase",
         "purchase days", f"average order value ({_currency(d)})"],
        ([f"{n} (centre {r['id']})" if n in shared else n,
          f"{at.get(n, 0):,} in all centres named so" if n in shared else f"{at.get(n, 0):,}",
          _num(c["recency_days"], 1), _num(c["frequency"], 2),
          money(c["monetary"], _currency(d))]
         for n, c, r in zip(names, centres, rows, strict=True)))
    caption = (f"The typical customer of each segment (segment model version "
               f"{d.model_version}); each customer belongs to the segment whose typical "
               "customer they are closest to. \"Customers now\" counts them as of the latest "
               f"purchase in the data. Order values are in {_currency(d)}.")
    footnote = (f"Technical: each row is a k-means centre over {', '.join(FEATURES)}; the "
                "model measures distances on log1p of the features, standardised, so a centre "
                "shown here is expm1 of its log-space centre (a geometric-type mean).")
    return (definitions
            + _img(plots.centroids(names, centres, _currency(d)), "segment centres per feature")
            + table + f'<p class="caption">{escape(caption)}</p>'
            + f'<p class="footnote">{escape(footnote)}</p>')


def _missing_scores(d: ReportData) -> str:
    if d.scores_error:
        return _placeholder(f'<span class="warn">Could not read {escape(str(d.evaluation_path))}'
                            f": {escape(d.scores_error)}</span> Run <code>caa evaluate</code> "
                            "to write it again.")
    return _placeholder(f"Run <code>caa evaluate</code> to fill this section (it writes "
                        f"<code>{escape(str(d.evaluation_path))}</code>, not found).")


def _calibration(s: Scores) -> str:
    curves = {"ours": calibration_bins(s.predicted, s.actual)}
    for name, col in s.finite_anchors().items():
        curves[ANCHOR_LABELS.get(name, name)] = calibration_bins(col, s.actual)
    mae = float(abs(s.predicted - s.actual).mean())
    rows = ([str(i), f"{b.n:,}", _num(b.mean_predicted, 3), _num(b.mean_actual, 3)]
            for i, b in enumerate(curves["ours"], start=1))
    caption = (f"{len(s.customer_ids):,} customers whose later purchases we know, in "
               f"{len(curves['ours'])} groups of equal size by the purchases we forecast for "
               "the test period (fewest first); per group the average forecast against the "
               "average number of days they actually bought on. Points on the dashed line "
               f"are exact forecasts. In all: forecast {_num(s.predicted.sum(), 1)}, actual "
               f"{_num(s.actual.sum())}; a customer's forecast was off by "
               f"{_num(mae, 3)} purchases on average.")
    footnote = ("Technical: calibration by bins of the predicted holdout purchases; the "
                f"average error is the mean absolute error (MAE). {ANCHOR_FOOTNOTE}")
    return (_img(plots.calibration(curves), "mean actual against mean predicted purchases")
            + f'<p class="caption">{escape(caption)}</p>'
            + _table(["group", "customers", "average forecast", "average actual"], rows)
            + f'<p class="footnote">{escape(footnote)}</p>')


def _lift(s: Scores) -> str:
    deciles = lift_deciles(s.score, s.actual)
    base = float(s.bought.mean())
    curves = {"ours (score)": gains(s.score, s.actual)}
    for name, col in s.finite_anchors().items():
        curves[ANCHOR_LABELS.get(name, name)] = gains(col, s.actual)
    auc = roc_auc(s.bought, s.score)
    rows = ([str(i), f"{g.n:,}", f"{100 * g.bought_share:.1f}%", f"{g.lift:.2f}"]
            for i, g in enumerate(deciles, start=1))
    caption = (f"Customers sorted by our score, highest first, in {len(deciles)} groups of "
               "equal size: the share who bought again in the test period against the share "
               f"over everyone, {100 * base:.1f}% ({int(s.bought.sum()):,} of "
               f"{len(s.customer_ids):,}); \"times the average\" says how many times more "
               "likely a group was to buy again. Right: contacting the top x% of customers by "
               "score reaches y% of those who bought again. How often the score ranks a "
               f"customer who bought again above one who did not: "
               f"{_num(None if auc is None else 100 * auc, 1)}% of pairs (50% is chance, "
               "100% perfect).")
    footnote = ("Technical: lift per score decile and the cumulative gains curve; the share "
                f"of pairs ranked right is the ROC AUC ({_num(auc, 3)}). {ANCHOR_FOOTNOTE}")
    return (_img(plots.lift(deciles, base, curves), "buys-again lift by decile and gains")
            + f'<p class="caption">{escape(caption)}</p>'
            + _table(["group", "customers", "bought again", "times the average"], rows)
            + f'<p class="footnote">{escape(footnote)}</p>')


def _bench(d: ReportData) -> str:
    b = d.bench
    if b is None:
        why = (f'<span class="warn">Could not read {escape(str(d.bench_path))}: '
               f"{escape(d.bench_error)}</span> " if d.bench_error else "")
        return _placeholder(f"{why}Run <code>make bench</code> to fill this section (it writes "
                            f"<code>{escape(str(d.bench_path))}</code>"
                            + ("" if why else ", not found") + ").")
    ours, naive = b["ours"], b["naive"]
    rows = [[name, _num(f["events_per_s"]), _num(f["p50_ms"], 1), _num(f["p99_ms"], 1)]
            for name, f in (("ours", ours), ("naive", naive))]
    ratio = (float(ours["events_per_s"]) / float(naive["events_per_s"])
             if float(naive["events_per_s"]) > 0 else math.nan)
    out = [_img(plots.bench(ours, naive), "events per second and latency, ours and naive"),
           _table(["consumer", "events/s (drain)", "p50 latency (ms)", "p99 latency (ms)"],
                  rows),
           f'<p class="caption">Throughput ratio ours/naive: {_num(ratio, 1)}x. '
           + (f"Pure core (no I/O): {_num(b['core_events_per_s'])} events per CPU second. "
              if "core_events_per_s" in b else "")
           + "Definitions in <code>bench/e2e.py</code>.</p>"]
    rss = b.get("peak_rss_mb") or {}
    if rss:
        out.append(_table(["customers", "peak RSS (MiB)"],
                          ([f"{int(k):,}", _num(v, 1)] for k, v in
                           sorted(rss.items(), key=lambda kv: int(kv[0])))))
    return "".join(out)


def _costs(d: ReportData) -> str:
    spent = [r for r in d.usage if float(r.get("spend_usd", 0)) > 0]
    if not spent:
        calls = sum(int(r.get("calls", 0)) for r in d.usage)
        if d.analyzer != "bedrock" and not calls:
            return ('<p class="empty">No Bedrock costs: the AI analysis was off '
                    f"(CAA_ANALYZER={escape(d.analyzer)}).</p>")
        return (f'<p class="empty">No Bedrock costs recorded in <code>'
                f"{escape(d.table_prefix)}usage</code>"
                + (f" ({calls:,} calls, all free)." if calls else
                   ": no customer has been analysed by Bedrock yet.") + "</p>")
    days = [str(r["day"]) for r in d.usage]
    spend = [float(r["spend_usd"]) for r in d.usage]
    rows = ([str(r["day"]), money(float(r["spend_usd"]), "USD", 4), f"{int(r['calls']):,}",
             f"{int(r['input_tokens']):,}", f"{int(r['output_tokens']):,}",
             f"{int(r['analyses']):,}", f"{int(r['fallbacks']):,}", f"{int(r['cache_hits']):,}"]
            for r in d.usage)
    note = simulated_note(non_aws_endpoints(d.usage))
    return (_img(plots.costs(days, spend, d.budget_usd), "Bedrock spend per day")
            + (f'<p class="caption warn">{escape(note)}</p>' if note else "")
            + _table(["day (UTC)", "spend", "calls", "words in (tokens)", "words out (tokens)",
                      "analyses", "answered without the model", "reused earlier analysis"],
                     rows)
            + f'<p class="caption">Total {money(sum(spend), "USD", 4)} over {len(days)} '
              f"day(s); daily budget {money(d.budget_usd, 'USD')}. Bedrock bills in USD. "
              "The same data as <code>caa costs</code>.</p>")


def _value(d: ReportData) -> str:
    from caa.report import value  # it builds on this module's helpers

    return value.section(d)


def render(d: ReportData, progress: Progress = NO_PROGRESS) -> str:
    """The whole page; ``progress`` hears the phase "drawing the report", one step a
    section."""
    makers: dict[str, Callable[[], str]] = {
        "segment-sizes": lambda: _sizes(d),
        "centroids": lambda: _centroids(d),
        "value": lambda: _value(d),
        "calibration": lambda: _calibration(d.scores) if d.scores else _missing_scores(d),
        "lift": lambda: _lift(d.scores) if d.scores else _missing_scores(d),
        "bench": lambda: _bench(d),
        "costs": lambda: _costs(d),
    }
    progress.phase("drawing the report (sections)", total=len(makers))
    bodies: dict[str, str] = {}
    for key, make in makers.items():
        bodies[key] = make()
        progress.advance()
    toc = "".join(f'<li><a href="#{k}">{escape(h)}</a></li>' for k, h in SECTIONS)
    sections = "".join(f'<section id="{k}"><h2>{escape(h)}</h2>{bodies[k]}</section>'
                       for k, h in SECTIONS)
    spend, spend_note = converted(d.spend_minor, d.rates)
    meta = (f"Stream <code>{escape(d.stream)}</code>, tables <code>{escape(d.table_prefix)}*"
            f"</code>: {d.customers:,} customers, {d.purchases:,} purchases, spend "
            f"{escape(spend)}"
            + (f" ({escape(spend_note)})" if spend_note else "")
            + ". Generated "
            f"{escape(d.generated_at.isoformat(timespec='seconds'))} by <code>caa report</code>.")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Customer analytics report</title><style>{CSS}</style></head><body>"
            f"<h1>Customer analytics report</h1><p class=\"meta\">{meta}</p>"
            f"<nav><ul>{toc}</ul></nav>{sections}</body></html>\n")
