"""The report page: one self-contained HTML document built from data already read (no I/O).

Figures are PNGs from :mod:`caa.report.plots`, embedded as ``data:image/png;base64`` URIs; the CSS
is inline; there is no script and no external resource, so the file can be mailed or
archived as it is. A section whose input is missing shows what to run to fill it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from caa.report import plots
from caa.report.scores import Scores, calibration_bins, gains, lift_deciles
from models.learn.evaluation import roc_auc
from models.learn.segmentation import FEATURES, SEGMENT_NAMES, SegmentModel
from models.timeline import Timeline

__all__ = ["SECTIONS", "ReportData", "render"]

#: (anchor id, heading) of every section, in page order
SECTIONS = (
    ("segment-sizes", "Segment sizes over time"),
    ("centroids", "Segment centroids"),
    ("calibration", "Predicted against actual purchases"),
    ("lift", "Lift: who buys again"),
    ("bench", "Throughput and latency"),
    ("costs", "Bedrock cost per day"),
)
ANCHOR_LABELS = {"bgnbd": "BG/NBD (lifetimes)", "pareto_nbd": "Pareto/NBD (lifetimes)",
                 "naive": "naive x/T"}

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
"""


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, already read from DynamoDB and the files."""

    stream: str
    table_prefix: str
    generated_at: datetime
    customers: int  # with at least one purchase
    purchases: int
    spend_cents: int
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
        f"{_day(tl.cutoffs[0])} to the stream's watermark {_day(tl.cutoffs[-1])}. "
        f"<strong>Every point uses today's segment model</strong> (version {d.model_version})"
        ": no history of models is kept, so this shows how customers moved through today's "
        "segments, not what was shown at the time. Each customer who had bought by a cut-off "
        "is rebuilt from their stored state: frequency = their distinct purchase days up to "
        "the cut-off's day; recency = days from the last of those to the cut-off; monetary = "
        "today's mean order value (the state keeps no per-order amounts, so this one feature "
        "is not as of the cut-off).")
    out = [_img(plots.timeline(tl), "customers per segment over time"),
           f'<p class="caption">{caption}</p>', _sizes_check(d, tl)]
    rows = [[_day(t)[:10], *(f"{c:,}" for c in counts), f"{sum(counts):,}"]
            for t, counts in zip(tl.cutoffs, tl.counts, strict=True)]
    out.append("<details><summary>sizes at every cut-off</summary>"
               + _table(["cut-off", *tl.names, "customers"], rows) + "</details>")
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
    table = _table(
        ["segment", "id", "customers at the watermark", "recency (days)",
         "frequency (purchase days)", "monetary (mean order value)"],
        ([n, str(r["id"]), f"{at.get(n, 0):,}", _num(c["recency_days"], 1),
          _num(c["frequency"], 2), _num(c["monetary"], 2)]
         for n, r, c in zip(names, rows, centres, strict=True)))
    caption = (f"Centres of segment model version {d.model_version} in original units "
               f"(the model works on log1p of {', '.join(FEATURES)}, standardised; a centre "
               "shown here is expm1 of its log-space centre, a geometric-type mean).")
    return (_img(plots.centroids(names, centres), "segment centres per feature") + table
            + f'<p class="caption">{escape(caption)}</p>')


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
    caption = (f"{len(s.customer_ids):,} evaluated customers, binned by our predicted holdout "
               f"purchases into {len(curves['ours'])} groups of equal size (lowest first); per "
               "bin the mean predicted against the mean actual. Totals: predicted "
               f"{_num(s.predicted.sum(), 1)}, actual {_num(s.actual.sum())}; MAE "
               f"{_num(mae, 3)}.")
    return (_img(plots.calibration(curves), "mean actual against mean predicted purchases")
            + f'<p class="caption">{escape(caption)}</p>'
            + _table(["bin", "customers", "mean predicted", "mean actual"], rows))


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
               "equal size: the share who bought again in the holdout (actual ≥ 1) against "
               "the base rate "
               f"{100 * base:.1f}% ({int(s.bought.sum()):,} of {len(s.customer_ids):,}); "
               f"right, the cumulative gains. ROC AUC of the score: {_num(auc, 3)}.")
    return (_img(plots.lift(deciles, base, curves), "buys-again lift by decile and gains")
            + f'<p class="caption">{escape(caption)}</p>'
            + _table(["decile", "customers", "bought again", "lift"], rows))


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
           + (f"Pure core (no I/O): {_num(b['core_events_per_s'])} events/s. "
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
        return _placeholder(
            f"No Bedrock spend recorded in <code>{escape(d.table_prefix)}usage</code>"
            + (f" ({calls:,} calls, all free)" if calls else "")
            + ": the analyzer is statistical. <code>CAA_ANALYZER=bedrock</code> turns Bedrock "
            "on (<code>make run-ai</code> tries it against the local test server); "
            "<code>caa costs</code> shows the same table.")
    days = [str(r["day"]) for r in d.usage]
    spend = [float(r["spend_usd"]) for r in d.usage]
    rows = ([str(r["day"]), f"{float(r['spend_usd']):.4f}", f"{int(r['calls']):,}",
             f"{int(r['input_tokens']):,}", f"{int(r['output_tokens']):,}",
             f"{int(r['analyses']):,}", f"{int(r['fallbacks']):,}", f"{int(r['cache_hits']):,}"]
            for r in d.usage)
    return (_img(plots.costs(days, spend, d.budget_usd), "Bedrock spend per day")
            + _table(["day (UTC)", "spend USD", "calls", "tokens in", "tokens out", "analyses",
                      "fallbacks", "cache hits"], rows)
            + f'<p class="caption">Total ${sum(spend):,.4f} over {len(days)} day(s); daily '
              f"budget ${d.budget_usd:,.2f}. The same data as <code>caa costs</code>.</p>")


def render(d: ReportData) -> str:
    """The whole page."""
    bodies = {
        "segment-sizes": _sizes(d),
        "centroids": _centroids(d),
        "calibration": _calibration(d.scores) if d.scores else _missing_scores(d),
        "lift": _lift(d.scores) if d.scores else _missing_scores(d),
        "bench": _bench(d),
        "costs": _costs(d),
    }
    toc = "".join(f'<li><a href="#{k}">{escape(h)}</a></li>' for k, h in SECTIONS)
    sections = "".join(f'<section id="{k}"><h2>{escape(h)}</h2>{bodies[k]}</section>'
                       for k, h in SECTIONS)
    meta = (f"Stream <code>{escape(d.stream)}</code>, tables <code>{escape(d.table_prefix)}*"
            f"</code>: {d.customers:,} customers, {d.purchases:,} purchases, spend "
            f"{d.spend_cents / 100:,.2f}. Generated "
            f"{escape(d.generated_at.isoformat(timespec='seconds'))} by <code>caa report</code>.")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>Customer analytics report</title><style>{CSS}</style></head><body>"
            f"<h1>Customer analytics report</h1><p class=\"meta\">{meta}</p>"
            f"<nav><ul>{toc}</ul></nav>{sections}</body></html>\n")
