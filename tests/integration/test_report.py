"""`caa report` on a CDNOW slice consumed by the real Worker on moto, rendered by Chromium.

The inputs are all produced here from the consumed data: the evaluation file from the stored
predictions (our expected purchases in 90 days) against what the customers did in the 90 days
after the watermark according to the source file; the bench file from timing the Worker that
consumed the slice and a one-request-per-event reader of the same stream; the Bedrock spend
from on-demand analyses (`caa analyze`) against the Bedrock-protocol test server.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from caa import wiring
from caa.aws import Aws
from caa.settings import Settings
from deploy.local.bedrock_server import BedrockServer
from models.features import WEEK_DAYS, bgnbd_inputs
from models.learn.evaluation import naive_expectation
from models.state import DAY, CustomerState
from producers.datasets.cdnow import iter_rows, time_ordered, to_event
from producers.publisher import Publisher

pytest.importorskip("matplotlib")

from PIL import Image  # matplotlib depends on pillow

from caa.report.page import SECTIONS
from caa.report.scores import Scores
from caa.report.words import jargon_in

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
N_CUSTOMERS = 500
CALIBRATION_END = "19970930"  # the slice is consumed up to here (CDNOW days are YYYYMMDD)
HORIZON_DAYS = 90  # expected_purchases_90d
NAIVE_EVENTS = 150
#: on the load event (which waits for every image), sets data-images-decoded="<ok>/<all>" on
#: <body>: an image counts when the browser decoded it (naturalWidth > 0; a corrupt PNG has 0).
#: Synchronous on purpose: HTMLImageElement.decode()'s promise can settle after --dump-dom.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesDecoded = ok + "/" + images.length;
});
</script>"""


@dataclass
class Drain:
    """When each event was acknowledged, in seconds since its consumer was started."""

    started: float = field(default_factory=time.perf_counter)
    acked: list[float] = field(default_factory=list)

    def ack(self, n: int = 1) -> None:
        self.acked += [time.perf_counter() - self.started] * n

    def figures(self, seconds: float) -> dict[str, float]:
        """events/s over ``seconds``; p50/p99 (nearest rank) of the time to acknowledgement."""
        xs = sorted(self.acked)
        pct = [1000 * xs[max(0, math.ceil(p * len(xs)) - 1)] for p in (0.5, 0.99)]
        return {"events_per_s": len(xs) / seconds, "p50_ms": pct[0], "p99_ms": pct[1]}


def consume(s: Settings) -> tuple[Drain, float, dict[str, CustomerState], dict[str, Any]]:
    async def run() -> tuple[Drain, float, dict[str, CustomerState], dict[str, Any]]:
        async with Aws(s).clients("kinesis", "dynamodb") as c:
            drain = Drain()
            w = wiring.worker(s, c["kinesis"], c["dynamodb"], on_batch=lambda _s, r: drain.ack(
                sum(o.status == "applied" for o in r.outcomes)))
            drain.started = time.perf_counter()
            await w.run(until_idle=True)
            states = {x.customer_id: x for x in await w.customers.all()}
            predictions = {p["customer_id"]: p for p in await w.predictions.all()}
            return drain, w.consume_seconds, states, predictions

    return asyncio.run(run())


def naive_drain(s: Settings, limit: int) -> dict[str, float]:
    """A naive consumer of the same stream: GetRecords shard by shard, then one PutItem per
    event (its raw payload, into a table of its own), until ``limit`` events."""
    aws = Aws(s)
    kinesis, ddb = aws.client("kinesis"), aws.client("dynamodb")
    table = f"{s.table_prefix}naive"
    ddb.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    drain = Drain()
    for shard in kinesis.list_shards(StreamName=s.stream_name)["Shards"]:
        it = kinesis.get_shard_iterator(StreamName=s.stream_name, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        while it and len(drain.acked) < limit:
            resp = kinesis.get_records(ShardIterator=it, Limit=100)
            for r in resp["Records"][: limit - len(drain.acked)]:
                ddb.put_item(TableName=table, Item={"id": {"S": r["SequenceNumber"]},
                                                    "data": {"B": r["Data"]}})
                drain.ack()
            it = resp.get("NextShardIterator") if resp["Records"] else None
    return drain.figures(drain.acked[-1])


def holdout_days(ids: set[str], as_of_day: int) -> dict[str, int]:
    """Each customer's distinct purchase days in (as_of_day, as_of_day + 90], from the file."""
    days: dict[str, set[int]] = {c: set() for c in ids}
    for row in iter_rows():
        if row.customer_id in days:
            day = int(datetime.strptime(row.day + "+0000", "%Y%m%d%z").timestamp()) // DAY
            if as_of_day < day <= as_of_day + HORIZON_DAYS:
                days[row.customer_id].add(day)
    return {c: len(d) for c, d in days.items()}


def chromium(tmp: Path, *args: str) -> str:
    profile = tmp / f"chromium-profile-{time.monotonic_ns()}"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout


def report(capsys: pytest.CaptureFixture[str], out: Path, evaluation: Path,
           bench: Path) -> str:
    from caa.cli import main as cli

    assert cli.main(["report", "--out", str(out), "--evaluation", str(evaluation),
                     "--bench", str(bench)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    return out.read_text(encoding="utf-8")


def write_evaluation(path: Path, states: dict[str, CustomerState],
                     predictions: dict[str, dict[str, Any]]) -> int:
    """The contract's file from the stored predictions (as of the final refit's watermark:
    predicted = expected purchases in 90 days, score = in 30 days) against the source file;
    with the naive anchor x/T from the stored states. Returns the actual total."""
    (as_of,) = {p["as_of"] for p in predictions.values()}
    as_of_ts = int(datetime.fromisoformat(as_of).timestamp())
    ids = sorted(states)
    actual = holdout_days(set(ids), as_of_ts // DAY)
    inputs = np.array([bgnbd_inputs(states[c], as_of_ts) for c in ids], dtype=float)
    Scores.of(ids, [predictions[c]["expected_purchases_90d"] for c in ids],
              [actual[c] for c in ids], [predictions[c]["expected_purchases_30d"] for c in ids],
              {"naive": naive_expectation(inputs[:, 0], inputs[:, 2],
                                          HORIZON_DAYS / WEEK_DAYS)}).write(path)
    return sum(actual.values())


def bedrock_spend(ids: list[str], server: BedrockServer, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """On-demand analyses (`caa analyze`) against the Bedrock-protocol test server; returns
    what `caa costs --json` then shows."""
    from caa.cli import main as cli

    server.reset()
    for key, value in {"CAA_ANALYZER": "bedrock", "CAA_CONSENT_MODE": "opt_out",
                       "CAA_PSEUDONYM_KEY": "test-key-0123456789abcdef0123456789",
                       "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": server.endpoint}.items():
        monkeypatch.setenv(key, value)
    for cid in ids:
        assert cli.main(["analyze", cid]) == 0
    capsys.readouterr()
    assert cli.main(["costs", "--json"]) == 0
    costs: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert costs and all(day["spend_usd"] > 0 for day in costs)
    return costs


def check_in_chromium(tmp: Path, path: Path, images: int) -> None:
    """Every <img> decodes (the probe script, in a copy of the page), every heading is in the
    DOM, and a screenshot of the page itself is drawn from top to bottom."""
    probe = tmp / "probe.html"
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                     encoding="utf-8")
    dom = chromium(tmp, "--virtual-time-budget=15000", "--dump-dom", probe.as_uri())
    assert f'data-images-decoded="{images}/{images}"' in dom
    assert re.findall(r"<h2>(.*?)</h2>", dom) == [h for _, h in SECTIONS]
    shot = tmp / "report.png"
    chromium(tmp, f"--screenshot={shot}", "--window-size=1280,4000", path.as_uri())
    with Image.open(shot) as png:
        assert png.size == (1280, 4000)
        rgb = png.convert("RGB")
        assert len(rgb.getcolors(maxcolors=1 << 24) or []) > 200  # text, tables and plots
        for top in range(0, 4000, 1000):  # no blank band: every quarter has content
            assert len(rgb.crop((0, top, 1280, top + 1000)).getcolors(1 << 24) or []) > 20


def test_report_on_a_consumed_cdnow_slice_renders_in_chromium(
    fresh_settings: Callable[..., Settings], bedrock_server: BedrockServer,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    s = fresh_settings(segment_warmup="50")
    events = time_ordered([to_event(r) for r in iter_rows() if int(r.customer_id) <= N_CUSTOMERS
                           and r.day <= CALIBRATION_END])
    Publisher(Aws(s).client("kinesis"), s.stream_name).publish(events)
    drain, seconds, states, predictions = consume(s)
    assert len(drain.acked) == len(events) and set(predictions) == set(states)
    evaluation, bench = tmp_path / "evaluation-customers.csv", tmp_path / "bench.json"

    # 1. only what DynamoDB holds: segment sections, placeholders for the rest
    page = report(capsys, tmp_path / "first.html", evaluation, bench)
    assert page.count("Run <code>caa evaluate</code> to fill this section") == 2
    assert "Run <code>make bench</code> to fill this section" in page
    assert ('<p class="empty">No Bedrock costs: the AI analysis was off '
            "(CAA_ANALYZER=statistical).</p>") in page
    assert page.count("<img ") == 3  # segment sizes, centres, customer value and churn
    assert "together expected to spend <strong>$" in page and "<h3>Win back</h3>" in page

    # 2. every input, produced from the consumed data
    actual = write_evaluation(evaluation, states, predictions)
    ours = drain.figures(seconds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    bench.write_text(json.dumps({  # no pure-core figure: it is optional
        "ours": ours, "naive": naive_drain(s, NAIVE_EVENTS),
        "peak_rss_mb": {str(len(states)): peak}}))
    costs = bedrock_spend(sorted(states)[:3], bedrock_server, monkeypatch, capsys)

    path = tmp_path / "report.html"
    page = report(capsys, path, evaluation, bench)
    for _, heading in SECTIONS:
        assert f"<h2>{heading}</h2>" in page
    assert "Run <code>" not in page and "No Bedrock costs" not in page
    images = page.count("<img ")
    assert images == 7
    assert re.findall(r'src="([^"]{0,22})', page) == ["data:image/png;base64,"] * images
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        with Image.open(io.BytesIO(base64.b64decode(data))) as png:
            png.load()  # the whole PNG, not only its header
    assert not re.search(r'(?:src|href)="(?:https?:|//|file:)', page, re.IGNORECASE)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    spend = sum(x.spend_minor.get("USD", 0) for x in states.values()) / 100
    assert f"{len(states):,} customers, {len(events):,} purchases, spend ${spend:,.2f}." in page
    # one plain-words definition per segment name (centres too alike to tell apart share
    # one), its order value in dollars (CDNOW is USD)
    definitions = re.findall(r'<p class="definition"><strong>([^<]+)</strong>: ([^<]+)</p>',
                             page)
    names = [n for n, _ in definitions]
    assert 2 <= len(names) <= s.n_segments and len(set(names)) == len(names)
    assert all(re.search(r", \$[\d,]+\.\d\d an order\.$", text) for _, text in definitions)
    for text in re.findall(r'<p class="caption[^"]*">(.*?)</p>', page) + re.findall(
            r"<h2>(.*?)</h2>", page):
        assert not jargon_in(text), text
    # the costs came from the test server, and the page says so
    assert "Bedrock answers came from the local test server (canned answers)" in page
    # the last point of the segment series is what the refit stored for today's model
    assert "Check: the last point equals the segment sizes the refit stored" in page
    assert "today&#x27;s segment model" in page or "today's segment model" in page
    assert f"actual {actual:,}" in page
    assert f"<td>ours</td><td class=\"n\">{ours['events_per_s']:,.0f}</td>" in page
    for day in costs:
        assert f"<td>{day['day']}</td><td class=\"n\">${day['spend_usd']:.4f}</td>" in page

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (CI does) to "
                    "render the report")
    check_in_chromium(tmp_path, path, images)
