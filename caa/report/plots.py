"""The report's figures as PNG bytes (matplotlib's Agg canvas; no pyplot, no global state).

Each function takes plain data (already summarised: :mod:`models.timeline`,
:mod:`caa.report.scores`) and returns the PNG. Segment colours are fixed per segment name, so a
segment has the same colour in every figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from caa.report.scores import Bin, Decile
from models.learn.segmentation import FEATURES, SEGMENT_NAMES
from models.timeline import Timeline

__all__ = ["bench", "calibration", "centroids", "costs", "lift", "segment_colour", "timeline",
           "value_and_churn"]

FloatArray = npt.NDArray[np.float64]
_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
            "#666666")
OURS, NAIVE, ANCHOR_COLOURS = "#1f77b4", "#ff7f0e", ("#2ca02c", "#9467bd", "#8c564b")
FEATURE_LABELS = {"recency_days": "days since the last purchase",
                  "frequency": "purchase days (distinct)",
                  "monetary": "average order value"}


def segment_colour(name: str) -> str:
    """A fixed colour per segment name (unknown names share the last one)."""
    i = SEGMENT_NAMES.index(name) if name in SEGMENT_NAMES else len(_PALETTE) - 1
    return _PALETTE[i]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Axes) -> None:
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def timeline(tl: Timeline) -> bytes:
    """Stacked areas: customers per segment at each cut-off."""
    fig = _figure(10, 4.6)
    ax = fig.add_subplot()
    when = np.array(tl.cutoffs, dtype="datetime64[s]")
    names, counts = tl.by_name()  # one area per name a reader can tell apart
    series = np.asarray(counts, dtype=np.float64).T
    ax.stackplot(when, *series, labels=names, colors=[segment_colour(n) for n in names],
                 alpha=0.85)
    ax.set_ylabel("customers who had bought by then")
    ax.set_xlabel(f"cut-off ({tl.step}; the last is the latest purchase in the data)")
    ax.margins(x=0)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    _style(ax)
    fig.autofmt_xdate()
    return _png(fig)


def centroids(names: Sequence[str], centres: Sequence[Mapping[str, float]],
              currency: str = "USD") -> bytes:
    """One horizontal bar per segment for each feature, in original units (order values
    in ``currency``)."""
    fig = _figure(10, 0.5 * len(names) + 1.6)
    axes = fig.subplots(1, len(FEATURES), sharey=True)
    y = np.arange(len(names))
    for ax, f in zip(axes, FEATURES, strict=True):
        values = [float(c[f]) for c in centres]
        ax.barh(y, values, color=[segment_colour(n) for n in names])
        for yi, v in zip(y, values, strict=True):
            ax.annotate(f"{v:,.1f}", (v, yi), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=8)
        ax.set_title(FEATURE_LABELS[f] + (f" ({currency})" if f == "monetary" else ""),
                     fontsize=9)
        ax.margins(x=0.25)
        _style(ax)
    axes[0].set_yticks(y, list(names))
    axes[0].invert_yaxis()
    return _png(fig)


def calibration(curves: Mapping[str, Sequence[Bin]]) -> bytes:
    """Mean actual against mean predicted holdout purchases per bin, one line per model."""
    fig = _figure(7, 5.2)
    ax = fig.add_subplot()
    top = max(max(b.mean_predicted, b.mean_actual) for bins in curves.values() for b in bins)
    top = top * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="#999999", linestyle="--", linewidth=1,
            label="perfect calibration")
    for i, (label, bins) in enumerate(curves.items()):
        colour = OURS if i == 0 else ANCHOR_COLOURS[(i - 1) % len(ANCHOR_COLOURS)]
        ax.plot([b.mean_predicted for b in bins], [b.mean_actual for b in bins], marker="o",
                color=colour, label=label, linewidth=2 if i == 0 else 1.2)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted holdout purchases (bin)")
    ax.set_ylabel("mean actual holdout purchases (bin)")
    ax.legend(frameon=False)
    _style(ax)
    return _png(fig)


def lift(deciles: Sequence[Decile], base_rate: float,
         curves: Mapping[str, tuple[FloatArray, FloatArray]]) -> bytes:
    """Left: share who bought again per score decile against the base rate. Right: the
    cumulative gains curve of each model against random order."""
    fig = _figure(10, 4.4)
    left, right = fig.subplots(1, 2)
    x = np.arange(1, len(deciles) + 1)
    shares = [100 * d.bought_share for d in deciles]
    left.bar(x, shares, color=OURS)
    left.axhline(100 * base_rate, color="#d62728", linestyle="--",
                 label=f"base rate {100 * base_rate:.1f}%")
    for xi, d in zip(x, deciles, strict=True):
        left.annotate(f"{d.lift:.2f}x", (xi, 100 * d.bought_share), xytext=(0, 2),
                      textcoords="offset points", ha="center", fontsize=8)
    left.set_xticks(x)
    left.set_xlabel("decile by score (1 = highest)")
    left.set_ylabel("% who bought again in the holdout")
    left.legend(frameon=False)
    _style(left)
    right.plot([0, 100], [0, 100], color="#999999", linestyle="--", linewidth=1,
               label="random order")
    for i, (label, (gx, gy)) in enumerate(curves.items()):
        colour = OURS if i == 0 else ANCHOR_COLOURS[(i - 1) % len(ANCHOR_COLOURS)]
        right.plot(100 * gx, 100 * gy, color=colour, label=label,
                   linewidth=2 if i == 0 else 1.2)
    right.set_xlabel("% of customers, highest score first")
    right.set_ylabel("% of those who bought again")
    right.set_xlim(0, 100)
    right.set_ylim(0, 100)
    right.legend(frameon=False, loc="lower right")
    _style(right)
    return _png(fig)


def _bars(ax: Axes, x: Sequence[float], values: Sequence[float], colour: str, width: float,
          label: str | None, fmt: str) -> None:
    """Bars with their value written on top; a missing (NaN) value is written "n/a"."""
    for xi, v in zip(x, values, strict=True):
        finite = math.isfinite(v)
        ax.bar(xi, v if finite else 0.0, width, color=colour, label=label)
        label = None
        ax.annotate(format(v, fmt) if finite else "n/a", (xi, v if finite else 0.0),
                    xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)


def bench(ours: Mapping[str, float], naive: Mapping[str, float]) -> bytes:
    """Left: events/s draining a backlog, ours against naive (log scale when one is more than
    20 times the other). Right: p50 and p99 latency in ms."""
    fig = _figure(10, 4.2)
    left, right = fig.subplots(1, 2)
    rates = [float(ours["events_per_s"]), float(naive["events_per_s"])]
    _bars(left, [0], rates[:1], OURS, 0.6, None, ",.0f")
    _bars(left, [1], rates[1:], NAIVE, 0.6, None, ",.0f")
    finite = [r for r in rates if math.isfinite(r) and r > 0]
    if len(finite) == 2 and max(finite) > 20 * min(finite):
        left.set_yscale("log")
    left.set_xticks([0, 1], ["ours", "naive"])
    left.set_ylabel("events/s (drain)")
    _style(left)
    for i, (name, fig_data, colour) in enumerate((("ours", ours, OURS),
                                                  ("naive", naive, NAIVE))):
        values = [float(fig_data["p50_ms"]), float(fig_data["p99_ms"])]
        _bars(right, [i * 0.35 - 0.175, 1 + i * 0.35 - 0.175], values, colour, 0.35, name,
              ",.0f")
    right.set_xticks([0, 1], ["p50", "p99"])
    right.set_ylabel("latency (ms)")
    right.legend(frameon=False)
    _style(right)
    return _png(fig)


def costs(days: Sequence[str], spend_usd: Sequence[float], budget_usd: float) -> bytes:
    """Bedrock spend per day (UTC); the daily budget as a line when spend comes near it
    (at least a tenth of it on some day)."""
    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(days))
    ax.bar(x, list(spend_usd), color=OURS)
    if budget_usd > 0 and max(spend_usd, default=0.0) >= 0.1 * budget_usd:
        ax.axhline(budget_usd, color="#d62728", linestyle="--",
                   label=f"daily budget ${budget_usd:,.2f}")
        ax.legend(frameon=False)
    step = max(1, len(days) // 15)
    ax.set_xticks(x[::step], list(days)[::step], rotation=30, ha="right")
    ax.set_ylabel("spend (USD)")
    _style(ax)
    return _png(fig)


BAND_COLOURS = {"low": "#1b9e77", "medium": "#e6ab02", "high": "#d62728"}


def value_and_churn(clv: Sequence[float] | FloatArray, band_counts: Sequence[int],
                    bands: Sequence[str], currency: str) -> bytes:
    """Left: customers by expected value (in ``currency``; the top 1% folded into the last
    bar, so a few large values do not squash the rest). Right: customers per churn band."""
    fig = _figure(10, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    values = np.asarray(clv, dtype=np.float64)
    cap = float(np.quantile(values, 0.99)) if len(values) else 0.0
    left.hist(np.minimum(values, cap), bins=30, color=OURS)
    left.set_xlabel(f"expected value per customer ({currency}; the top 1% in the last bar)")
    left.set_ylabel("customers")
    _style(left)
    x = np.arange(len(bands))
    total = max(1, sum(band_counts))
    right.bar(x, list(band_counts), color=[BAND_COLOURS.get(b, NAIVE) for b in bands])
    for xi, n in zip(x, band_counts, strict=True):
        right.annotate(f"{n:,} ({100 * n / total:.0f}%)", (xi, n), xytext=(0, 2),
                       textcoords="offset points", ha="center", fontsize=8)
    right.set_xticks(x, list(bands))
    right.set_xlabel("churn risk")
    right.set_ylabel("customers")
    right.margins(y=0.15)
    _style(right)
    return _png(fig)
