"""The report's pure parts on synthetic data: segment sizes over time, the evaluation file
contract and its summaries, the bench file, and the page (self-contained, every section)."""

from __future__ import annotations

import base64
import doctest
import io
import json
import math
import random
import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from PIL import Image  # matplotlib depends on pillow

from caa.report import scores as scores_module
from caa.report import words as words_module
from caa.report.build import BenchFileError, read_bench
from caa.report.page import SECTIONS, ReportData, render
from caa.report.scores import ScoreFileError, Scores, calibration_bins, gains, lift_deciles
from caa.report.words import converted, define_segments, jargon_in, money
from models.features import rfm
from models.learn.segmentation import SegmentModel
from models.money import Rates
from models.state import DAY, CustomerState
from models.timeline import cutoffs, rfm_as_of, segment_timeline
from tests.unit.caa.report.test_value import values_of

JAN_1997 = int(datetime(1997, 1, 1, tzinfo=UTC).timestamp()) // DAY


def customer(cid: str, days: list[int], order_cents: int,
             last_ts: int | None = None) -> CustomerState:
    """One USD order of ``order_cents`` on each of ``days`` (a day listed twice: two orders
    that day), the last at ``last_ts`` when given."""
    return CustomerState.sketch(cid, sorted(days), order_cents, "USD", last_ts=last_ts)


def population(n: int = 400, seed: int = 3) -> list[CustomerState]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first = JAN_1997 + rng.randint(0, 300)
        days = sorted({first, *(first + rng.randint(0, 200) for _ in range(rng.randint(0, 7)))})
        orders = [*days, *[days[0]] * rng.randint(0, 2)]  # some days with two orders
        out.append(customer(f"{i:05d}", orders, rng.randint(500, 20_000)))
    return out


def fitted(states: list[CustomerState]) -> SegmentModel:
    as_of = max(s.last_ts for s in states)
    model = SegmentModel(n_clusters=6, warmup=50)
    model.refit([rfm(s, as_of) for s in states])
    return model


# -- segment sizes over time --------------------------------------------------------------
def test_rfm_as_of_keeps_the_days_up_to_the_cutoff_day_and_todays_order_value() -> None:
    s = customer("c", [100, 100, 110, 130], order_cents=2_500, last_ts=130 * DAY + 3600)
    assert (s.purchases, s.purchase_days, s.spend_minor) == (4, 3, {"USD": 10_000})
    assert rfm_as_of(s, 99 * DAY + 80_000) is None  # not a customer yet
    # a purchase dated on the cut-off's day counts (model time runs in whole days)
    assert rfm_as_of(s, 110 * DAY) == {"recency_days": 0.0, "frequency": 2.0, "monetary": 25.0}
    assert rfm_as_of(s, 125 * DAY) == {"recency_days": 15.0, "frequency": 2.0, "monetary": 25.0}
    # every day kept: exactly the live feature function, to the second of the last purchase
    assert rfm_as_of(s, 140 * DAY) == rfm(s, 140 * DAY)
    assert rfm(s, 140 * DAY)["recency_days"] == pytest.approx(10 - 1 / 24)


def test_cutoffs_are_monthly_for_long_spans_weekly_for_short_ones_and_end_at_the_watermark(
) -> None:
    first = JAN_1997 * DAY + 5 * DAY  # 1997-01-06
    watermark = int(datetime(1997, 7, 30, 12, tzinfo=UTC).timestamp())  # 205 days on
    monthly = cutoffs(first, watermark)
    assert [datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d") for t in monthly[:-1]] == [
        "1997-02-01", "1997-03-01", "1997-04-01", "1997-05-01", "1997-06-01", "1997-07-01"]
    assert monthly[-1] == watermark
    weekly = cutoffs(first, first + 30 * DAY)
    assert [(t - first) // DAY for t in weekly] == [7, 14, 21, 28, 30]
    assert cutoffs(first, first) == [first]
    with pytest.raises(ValueError):
        cutoffs(first, first - 1)


def test_segment_timeline_counts_each_customer_once_with_todays_model() -> None:
    states = population()
    model = fitted(states)
    tl = segment_timeline(states, model)
    assert tl is not None and tl.step == "monthly"
    totals = [sum(row) for row in tl.counts]
    assert totals == sorted(totals)  # customers only join
    for ts, total in zip(tl.cutoffs, totals, strict=True):
        assert total == sum(1 for s in states if s.first_day * DAY <= ts // DAY * DAY)
    names = model.segment_names()
    # the last point is the live features with today's model: what the refit stores
    as_of = max(s.last_ts for s in states)
    assert tl.cutoffs[-1] == as_of
    live: dict[str, int] = {}
    for s in states:
        name = names[model.predict_one(rfm(s, as_of))]
        live[name] = live.get(name, 0) + 1
    assert {k: v for k, v in tl.at(-1).items() if v} == live
    assert sorted(tl.names) == sorted(names.values())
    # and a middle point by hand
    mid = tl.cutoffs[len(tl.cutoffs) // 2]
    by_hand: dict[str, int] = dict.fromkeys(tl.names, 0)
    for s in states:
        x = rfm_as_of(s, mid)
        if x is not None:
            by_hand[names[model.predict_one(x)]] += 1
    assert tl.at(len(tl.cutoffs) // 2) == by_hand


def test_centres_sharing_a_name_are_one_column_of_the_timeline() -> None:
    """The report's "sizes at every cut-off" table and its chart had two columns (and two
    areas) called "Hibernating" when two centres share that name; a reader cannot tell
    them apart. By name, the counts add up, as the refit's stored sizes do."""
    from models.timeline import Timeline

    tl = Timeline(cutoffs=[1, 2], names=["Champions", "Hibernating", "Hibernating"],
                  counts=[[1, 2, 3], [4, 5, 6]], step="given", customers=15)
    assert tl.by_name() == (["Champions", "Hibernating"], [[1, 5], [4, 11]])
    assert tl.at(1) == {"Champions": 4, "Hibernating": 11}  # as the refit's sizes are


def test_segment_timeline_needs_purchases_and_a_ready_model() -> None:
    assert segment_timeline([], fitted(population())) is None
    assert segment_timeline(population(), SegmentModel()) is None


# -- the evaluation file ------------------------------------------------------------------
def test_scores_file_round_trips_with_optional_anchors(tmp_path: Path) -> None:
    s = Scores.of(["a", "b", "c"], [0.1, 1.25, 3.0], [0, 1, 4], [0.2, 0.5, 0.9],
                  {"bgnbd": [0.1, 1.0, math.nan], "naive": [0.0, 2.0, 3.0]})
    path = tmp_path / "out" / "evaluation-customers.csv"
    s.write(path)
    assert path.read_text().splitlines()[0] == "customer_id,predicted,actual,score,bgnbd,naive"
    back = Scores.read(path)
    assert back.customer_ids == ["a", "b", "c"]
    assert back.predicted.tolist() == [0.1, 1.25, 3.0]
    assert back.actual.tolist() == [0, 1, 4]
    assert set(back.anchors) == {"bgnbd", "naive"}
    assert set(back.finite_anchors()) == {"naive"}  # an anchor with a NaN is left out
    assert back.bought.tolist() == [False, True, True]


@pytest.mark.parametrize(("text", "message"), [
    ("customer_id,predicted,actual\na,1,0\n", "missing column(s) score"),
    ("customer_id,predicted,actual,score\n", "no customer rows"),
    ("customer_id,predicted,actual,score\na,x,0,1\n", ":2 predicted: not a number"),
    ("customer_id,predicted,actual,score\na,1,0.5,1\n", "actual: must be whole numbers"),
    ("customer_id,predicted,actual,score\na,-1,0,1\n", "predicted: must be >= 0"),
    ("customer_id,predicted,actual,score\na,1,0,nan\n", "score: every value must be finite"),
    ("customer_id,predicted,actual,score\na,1,0,1\na,2,0,1\n", "not unique"),
])
def test_scores_file_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "e.csv"
    path.write_text(text)
    with pytest.raises(ScoreFileError, match=re.escape(message)):
        Scores.read(path)


def test_calibration_bins_lift_and_gains() -> None:
    predicted = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    actual = np.array([0.0, 0.0, 1.0, 2.0, 1.0, 3.0])
    bins = calibration_bins(predicted, actual, bins=3)
    assert [(b.n, b.mean_predicted, b.mean_actual) for b in bins] == [
        (2, 0.25, 0.0), (2, 1.25, 1.5), (2, 2.25, 2.0)]
    score = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    deciles = lift_deciles(score, actual, groups=3)
    base = 4 / 6
    assert [d.n for d in deciles] == [2, 2, 2]
    assert [d.bought_share for d in deciles] == [1.0, 1.0, 0.0]
    assert [d.lift for d in deciles] == pytest.approx([1 / base, 1 / base, 0.0])
    x, y = gains(score, actual)
    assert x.tolist() == pytest.approx([i / 6 for i in range(7)])
    assert y.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert lift_deciles(score, np.zeros(6))[0].lift == 0.0  # nobody bought again


def test_scores_and_words_module_doctests() -> None:
    assert doctest.testmod(scores_module).failed == 0
    assert doctest.testmod(words_module).failed == 0


# -- plain words ----------------------------------------------------------------------------
def test_amounts_carry_their_currency() -> None:
    assert money(20.468, "USD") == "$20.47" and money(-3, "EUR") == "-€3.00"
    assert money(1.5, "SEK") == "SEK 1.50" and money(math.nan, "USD") == "n/a"
    assert money(6000, "JPY") == "¥6,000" and money(1.2346, "KWD") == "KWD 1.235"
    assert money(40, "EUR", symbol=False) == "EUR 40.00"


ONE_CUSTOMER = {"EUR": 4000, "JPY": 6000, "USD": 1500}  # EUR 40.00 + JPY 6000 + USD 15.00
RATES = Rates("USD", {"EUR": 1.08, "JPY": 0.0067}, as_of="2026-11-30")


def test_spend_in_several_currencies_is_converted_never_summed() -> None:
    shown, note = converted(ONE_CUSTOMER, RATES)
    assert shown == "$98.40" and "6,055" not in shown
    assert note == "in USD at the rates of 2026-11-30, from EUR 40.00, JPY 6,000, USD 15.00"
    shown, note = converted(ONE_CUSTOMER, Rates("USD", {"EUR": 1.08}, "2026-11-30"))
    assert shown == "$58.20"
    assert note is not None and note.endswith("left out for want of a rate: JPY 6,000")
    assert "the rates of 2026-11-30" in note
    # no rates at all: only the reporting currency's amounts, the others named
    shown, note = converted(ONE_CUSTOMER, Rates("USD"))
    assert shown == "$15.00" and note == ("in USD, no exchange rates given; left out for "
                                          "want of a rate: EUR 40.00, JPY 6,000")
    assert converted({"USD": 1500}, RATES) == ("$15.00", None)
    assert converted({}, RATES) == ("$0.00", None)
    # in another reporting currency (JPY: no minor unit)
    assert converted({"JPY": 6000, "USD": 1500}, Rates("JPY", {"USD": 150.0}, "2026-11-30")
                     )[0] == "¥8,250"


def test_the_report_totals_say_the_rates_date_and_what_was_left_out(tmp_path: Path) -> None:
    html = render(synthetic(tmp_path, customers=1, purchases=3, spend_minor=ONE_CUSTOMER,
                            rates=RATES))
    meta = html.split('<p class="meta">')[1].split("</p>")[0]
    assert "spend $98.40 (in USD at the rates of 2026-11-30, from EUR 40.00, JPY 6,000, " \
           "USD 15.00)." in meta
    assert "6,055" not in html and "6055" not in html
    html = render(synthetic(tmp_path, customers=1, purchases=3, spend_minor=ONE_CUSTOMER,
                            rates=Rates("USD", {"EUR": 1.08}, "2026-11-30")))
    meta = html.split('<p class="meta">')[1].split("</p>")[0]
    assert "spend $58.20 (in USD at the rates of 2026-11-30, from EUR 40.00, USD 15.00; " \
           "left out for want of a rate: JPY 6,000)." in meta
    assert "6,055" not in html and "6055" not in html


def test_segment_definitions_come_from_the_centres_not_the_names() -> None:
    centres = [{"recency_days": 8.0, "frequency": 9.0, "monetary": 90.0},
               {"recency_days": 400.0, "frequency": 1.0, "monetary": 12.0},
               {"recency_days": 60.0, "frequency": 3.0, "monetary": 35.0}]
    defs = define_segments(["X", "Y", "Z"], centres, [10, 60, 30], "EUR")
    assert defs["X"].startswith("bought recently, buys often and spends the most per order")
    assert defs["Y"].startswith("has not bought for a long time, has bought on one day only "
                                "and spends the least per order")
    assert "€90.00 an order" in defs["X"] and "1 purchase day," in defs["Y"]
    # renamed segments keep their meaning: it is the centre that speaks
    assert define_segments(["Champions", "b", "c"], centres, [10, 60, 30], "EUR")[
        "Champions"] == defs["X"]


# -- the bench file -----------------------------------------------------------------------
BENCH = {"ours": {"events_per_s": 2400.5, "p50_ms": 180.0, "p99_ms": 410.0},
         "naive": {"events_per_s": 31.2, "p50_ms": 60.0, "p99_ms": math.nan},
         "core_events_per_s": 25000, "peak_rss_mb": {"10000": 150.2, "100000": 160.9}}


def test_read_bench_accepts_the_e2e_shape_with_nan(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(BENCH))  # NaN as json.dumps writes it
    got = read_bench(path)
    assert got["ours"]["events_per_s"] == 2400.5
    assert math.isnan(got["naive"]["p99_ms"])


@pytest.mark.parametrize("bad", ["[]", "{", json.dumps({"ours": BENCH["ours"]}),
                                 json.dumps({**BENCH, "naive": {"events_per_s": "fast"}}),
                                 json.dumps({**BENCH, "peak_rss_mb": {"many": 1}})])
def test_read_bench_refuses_other_shapes(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bench.json"
    path.write_text(bad)
    with pytest.raises(BenchFileError):
        read_bench(path)


# -- the page -----------------------------------------------------------------------------
class Page(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.h2: list[str] = []
        self._in_h2 = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_h2 = tag == "h2"

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False

    def attrs(self, name: str) -> list[str]:
        return [str(a[name]) for _, a in self.tags if a.get(name) is not None]


def synthetic(tmp_path: Path, **over: Any) -> ReportData:
    states = population()
    model = fitted(states)
    rng = np.random.default_rng(1)
    predicted = rng.gamma(1.0, 0.8, len(states))
    actual = rng.poisson(predicted)
    data: dict[str, Any] = dict(
        stream="s", table_prefix="p-", generated_at=datetime(2025, 1, 2, tzinfo=UTC),
        customers=len(states), purchases=sum(s.purchases for s in states),
        spend_minor={"USD": sum(s.spend_minor["USD"] for s in states)}, model=model,
        model_version=3,
        sizes_doc=None, timeline=segment_timeline(states, model),
        evaluation_path=tmp_path / "evaluation-customers.csv",
        scores=Scores.of([s.customer_id for s in states], predicted, actual,
                         predicted + rng.normal(0, 0.1, len(states)),
                         {"bgnbd": predicted * 1.1}),
        bench_path=tmp_path / "bench.json", bench=BENCH,
        usage=[{"day": f"2025-01-0{d}", "spend_usd": 0.25 * d, "calls": 3 * d,
                "input_tokens": 900, "output_tokens": 300, "analyses": 3, "fallbacks": 0,
                "cache_hits": 1} for d in (1, 2, 3)],
        budget_usd=10.0, values=values_of(states))
    data.update(over)
    return ReportData(**data)


def test_page_has_every_section_and_only_embedded_images(tmp_path: Path) -> None:
    html = render(synthetic(tmp_path))
    page = Page(html)
    assert page.h2 == [h for _, h in SECTIONS]
    srcs = page.attrs("src")
    assert len(srcs) == 7  # one figure per section
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert png.format == "PNG" and png.width > 300 and png.height > 200
        assert len(png.getcolors(maxcolors=1 << 20) or []) > 20  # drawn, not blank
    for url in srcs + page.attrs("href"):
        assert not url.lower().startswith(("http:", "https:", "//", "file:"))
    assert all(tag not in ("script", "link", "iframe") for tag, _ in page.tags)
    assert "today&#x27;s segment model" in html or "today's segment model" in html
    assert "2,400" in html and "31" in html  # the bench table
    assert '<td class="n">$0.7500</td>' in html  # a day's spend, in USD
    assert "Pure core (no I/O): 25,000 events per CPU second" in html
    d = synthetic(tmp_path)
    # the reporting currency (default USD): one currency, nothing converted, no note
    assert f"spend {money(d.spend_minor['USD'] / 100, 'USD')}." in html
    # every amount has its currency: the order values of the segments too
    assert d.model is not None
    names = [str(r["name"]) for r in d.model.describe()]
    values = re.findall(r'<td class="n">([^<]*)</td></tr>', html.split('id="centroids"')[1]
                        .split("</table>")[0])
    assert len(values) == len(names) and all(v.startswith("$") for v in values)
    # one plain definition per segment name (centres too alike share one), from its centre
    definitions = re.findall(r'<p class="definition"><strong>([^<]+)</strong>: ([^<]+)</p>',
                             html)
    assert sorted(n for n, _ in definitions) == sorted(set(names))
    assert all(re.match(r"(bought recently|has not bought|last bought)", t) and " an order."
               in t for _, t in definitions)
    # no maths jargon in headings and captions (a footnote may name the technical terms)
    captions = re.findall(r'<p class="caption[^"]*">(.*?)</p>', html) + page.h2
    assert len(captions) >= 10
    for text in captions:
        assert not jargon_in(text), text
    assert "ROC AUC" in html and "BG/NBD" in html  # ... in the footnotes


def test_page_amounts_follow_the_data_and_say_when_bedrock_was_the_test_server(
        tmp_path: Path) -> None:
    server = "test server at http://127.0.0.1:4599 (canned answers)"
    usage = [{"day": "2025-01-01", "spend_usd": 0.5, "calls": 4, "input_tokens": 900,
              "output_tokens": 300, "analyses": 4, "fallbacks": 0, "cache_hits": 0,
              "endpoints": [server]}]
    html = render(synthetic(tmp_path, rates=Rates("EUR"), spend_minor={"EUR": 123_456},
                            usage=usage, analyzer="bedrock"))
    assert "spend €1,234.56." in html
    assert "spend €" in html and "(EUR)" in html and '<td class="n">€' in html
    assert ("Bedrock answers came from the local test server (canned answers), not from a "
            "model; costs shown are what AWS would charge") in html
    assert '<td class="n">$0.5000</td>' in html  # Bedrock bills in USD whatever the data
    aws = render(synthetic(tmp_path, usage=[{**usage[0], "endpoints": []}]))
    assert "test server" not in aws


def test_page_placeholders_say_what_to_run(tmp_path: Path) -> None:
    empty = synthetic(tmp_path, customers=0, purchases=0, spend_minor={}, model=None,
                      timeline=None, scores=None, bench=None, usage=[], values=[])
    html = render(empty)
    page = Page(html)
    assert page.h2 == [h for _, h in SECTIONS]
    assert page.attrs("src") == []
    assert html.count("Run <code>caa evaluate</code> to fill this section") == 2
    assert "Run <code>make bench</code> to fill this section" in html
    # an empty section says why in one line
    assert ('<p class="empty">No Bedrock costs: the AI analysis was off '
            "(CAA_ANALYZER=statistical).</p>") in html
    assert "run <code>caa consume</code>" in html
    on = render(synthetic(tmp_path, usage=[], analyzer="bedrock"))
    assert "no customer has been analysed by Bedrock yet" in on


def test_page_reports_an_unreadable_file_and_the_stored_sizes_check(tmp_path: Path) -> None:
    d = synthetic(tmp_path, scores=None, scores_error="missing column(s) score",
                  bench=None, bench_error="no 'naive' object")
    assert d.timeline is not None
    doc = {"version": 3, "as_of": d.timeline.cutoffs[-1],
           "sizes": {k: v for k, v in d.timeline.at(-1).items() if v}}
    html = render(ReportData(**{**d.__dict__, "sizes_doc": doc}))
    assert "missing column(s) score" in html and "no &#x27;naive&#x27; object" in html
    assert "Check: the last point equals the segment sizes the refit stored" in html
    moved = render(ReportData(**{**d.__dict__, "sizes_doc": {**doc, "version": 2}}))
    assert "not compared with the sizes the last refit stored" in moved
    wrong = render(ReportData(**{**d.__dict__, "sizes_doc": {**doc, "sizes": {"Loyal": 1}}}))
    assert "differs from the sizes the refit stored" in wrong
