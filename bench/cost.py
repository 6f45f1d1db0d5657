"""Dollars per million purchases: Lambda compute, DynamoDB requests and Bedrock tokens,
for the naive one-call-per-purchase policy and ours, on CDNOW and the synthetic stream.

What runs (real code, virtual time, no AWS):

* **Compute.** The pure core (:func:`consumers.core.decode_batch` +
  :func:`consumers.core.process_batch`, as ``bench/pipeline.py`` ``bench_core`` but with the
  Pareto/NBD prior forecaster, the settings' default ``forecast_model``) in batches of
  ``--batch`` records (default 500: deploy/template.yaml's
  ``BatchSize`` of the consumer function's event source mapping, one invocation each), plus the
  CPU work the applier does around it (every changed state through ``state_to_item``, every
  prediction through ``prediction_to_item``, the segment model learning the batch and serialised
  as its snapshot). CPU seconds are measured with ``time.process_time``. Assumptions: this
  machine's core is as fast as a Graviton2 vCPU; a 1,024 MB function gets 1,024 / 1,769 = 0.58
  vCPU (Lambda gives one full vCPU at 1,769 MB, proportionally less below), so CPU-bound wall
  time = CPU / 0.58; to that each invocation adds its sequential DynamoDB round trips (counted
  per batch from the real objects, :data:`DYNAMODB_RTT_S` each). GB-s = wall seconds x 1 GB;
  plus a per-request charge per invocation. Each Bedrock call adds the analyzer function's time
  (deploy/template.yaml: arm64, 1,024 MB, SQS batches of 4 requests handled one at a time): it
  waits for the model, :data:`BEDROCK_LATENCY_S` a call (``bench/analysis_policy.py``'s default
  latency), billed as duration, plus a quarter of an invocation's request charge. Not counted:
  SQS requests (about $0.40 per million; a fraction of a request per purchase), CloudWatch,
  Kinesis.
* **DynamoDB** (on-demand; counted from the real objects, sized as ``bench/state_size.py`` sizes
  an item: :func:`state_size.item_bytes`), per batch as :class:`consumers.applier.BatchApplier`
  writes: a strongly consistent BatchGetItem of the batch's customers (1 RRU per 4 KB of each
  stored state, rounded up per item; 1 RRU for a customer not stored yet); one conditional
  PutItem per changed state (1 WRU per KB, rounded up); a BatchWriteItem of the predictions (1
  WRU per KB per item); the dead letters; the segment model's snapshot save (a conditional
  PutItem of its JSON, when the batch has vectors to learn); one checkpoint write (the poller's
  / KCL's conditional PutItem; a Lambda event source mapping checkpoints itself, so this is an
  upper bound there); the registry's refresh (3 consistent GetItems, counted once per
  invocation: an upper bound, it runs at most once a minute per environment). Per Bedrock call
  the analysis path (enricher or analyzer function) stores the analysis: latest and history
  PutItems and an UpdateItem of the prediction item (the larger of before and after: the item
  with the analysis).
* **Bedrock.** Calls per purchase from ``bench/analysis_policy.py``'s :func:`simulate` (the real
  :class:`~consumers.analysis.trigger.TriggerPolicy` and change-aware cache, default 60 s
  debounce, 25% change, 30 days max age) with every purchase arriving at its event time (CDNOW's
  orders carry dates only, so a customer's same-day orders arrive together), against the naive
  policy (one call per purchase). Tokens per call from real prompts: for a sample of (state,
  prediction) pairs out of the core run, the request
  :meth:`consumers.analysis.bedrock.BedrockAnalyzer.request` would send (system prompt + user
  message + tool spec) counted at :data:`CHARS_PER_TOKEN` characters a token (no Claude
  tokenizer is available offline; the test server and ``bench/analysis_policy.py`` count the
  same way), plus the tool-use system prompt
  Anthropic adds for a forced tool (313 tokens for Claude Haiku 4.5 with ``tool_choice``
  ``tool``: Anthropic's tool-use documentation, pricing section,
  https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/overview). Output tokens: the
  test server's canned answer to that request (:func:`deploy.local.schema_answer.generate`,
  grounded as the server grounds it), at the same 4 characters a token. That answer is minimal
  (one item per list, short texts), so a real model's answer is likely longer:
  ``--output-tokens`` overrides it (the issue assumed ~600). Prices from
  :class:`caa.settings.Settings` (``bedrock_prices`` of ``bedrock_model_id``, USD per million
  tokens). Retries and corrections are not counted. The simulation builds each customer's
  features without the statistical prediction (as bench/analysis_policy.py does), so a segment
  change never invalidates the cache there: ours may make a few more calls in production.

Prices (USD; constants below):

* Lambda arm64: $0.0000133334 per GB-s (first tier) and $0.20 per million requests (AWS Lambda
  pricing page, https://aws.amazon.com/lambda/pricing/; the same list price in eu-central-1).
* DynamoDB on-demand, eu-central-1: $1.525 per million write request units, $0.305 per million
  read request units, the figures this benchmark was specified with (AWS DynamoDB on-demand
  pricing, https://aws.amazon.com/dynamodb/pricing/on-demand/). Note: AWS halved on-demand
  throughput prices on 1 November 2024 (us-east-1 went from $1.25 / $0.25 to $0.625 / $0.125);
  if Frankfurt followed, these DynamoDB figures are twice today's.

Run with ``make bench`` (about 2.5 minutes on a busy 2-core machine: the core and the policy
simulation over about 140,000 purchases); prints one table per stream and writes
out/bench-cost.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

from analysis_policy import KEY, Params, simulate
from state_size import item_bytes

from caa.settings import Settings
from consumers.analysis.analyzer import PriceTable
from consumers.analysis.bedrock import BedrockAnalyzer
from consumers.analysis.trigger import Signature
from consumers.core import ModelView, StreamRecord, decode_batch, process_batch
from consumers.sources.worker import reference_order_value
from consumers.stores.analyses import record_item
from consumers.stores.checkpoints import Checkpoint, checkpoint_item
from consumers.stores.customers import state_to_item
from consumers.stores.dead_letters import dead_letter_item
from consumers.stores.predictions import prediction_to_item
from deploy.local.schema_answer import generate, grounding
from models.analysis import Analysis, AnalysisRecord, tool_spec
from models.events import PurchaseEvent, StreamEvent
from models.learn import pareto_nbd
from models.learn.forecaster import Forecaster, ForecastParams
from models.learn.segmentation import SegmentModel
from models.prediction import Prediction
from models.prompt import PROMPT_VERSION, AnalysisInput, build_input
from models.state import CustomerState
from producers.datasets.cdnow import load_events, time_ordered
from producers.datasets.synthetic import generate_stream

# -- prices and platform assumptions ------------------------------------------------------

#: Lambda arm64 duration, USD per GB-second (first tier), and per request
LAMBDA_GB_S_USD = 0.0000133334
LAMBDA_REQUEST_USD = 0.20 / 1e6
#: the function's memory, and the vCPU share it buys (one full vCPU at 1,769 MB)
LAMBDA_MEMORY_MB = 1024
LAMBDA_FULL_VCPU_MB = 1769
#: DynamoDB on-demand in eu-central-1, USD per write / read request unit
DYNAMODB_WRU_USD = 1.525 / 1e6
DYNAMODB_RRU_USD = 0.305 / 1e6
#: the analyzer function: seconds it waits for one Bedrock call, requests per invocation
BEDROCK_LATENCY_S = Params().latency_s
ANALYZER_BATCH = 4
#: one DynamoDB round trip from Lambda in the same region (single-digit milliseconds)
DYNAMODB_RTT_S = 0.008
#: write unit size, strongly consistent read unit size (bytes)
WRU_BYTES = 1024
RRU_BYTES = 4096
#: the applier's concurrency: conditional puts in flight (CustomerStore.write_concurrency),
#: BatchWriteItem chunks of 25 items in flight (Dynamo.concurrency)
PUT_CONCURRENCY = 32
BATCH_WRITE_CONCURRENCY = 8
#: GetItems of the registry's refresh (segments, BG/NBD, Pareto/NBD snapshots)
REFRESH_READS = 3
#: characters per token (no tokenizer offline: the usual English/JSON approximation)
CHARS_PER_TOKEN = 4
#: the system prompt Anthropic adds for tool use with tool_choice any/tool (Haiku 4.5)
TOOL_USE_SYSTEM_TOKENS = 313


def vcpu_share(memory_mb: int = LAMBDA_MEMORY_MB) -> float:
    return min(1.0, memory_mb / LAMBDA_FULL_VCPU_MB)


def tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def units(size: int, unit: int) -> int:
    """Request units of one item of ``size`` bytes (at least one)."""
    return max(1, math.ceil(size / unit))


# -- the core run: CPU and DynamoDB units, from the real objects --------------------------


@dataclass
class CoreRun:
    """What the stream cost to process (whatever the analysis policy)."""

    events: int = 0
    purchases: int = 0
    invocations: int = 0
    cpu_s: float = 0.0
    round_trips: int = 0
    rru: int = 0
    wru: int = 0
    wru_by: dict[str, int] = field(default_factory=dict)
    #: sampled calls: (input tokens, output tokens, DynamoDB WRU of storing the analysis)
    samples: list[tuple[int, int, int]] = field(default_factory=list)

    def add_wru(self, kind: str, n: int) -> None:
        self.wru += n
        self.wru_by[kind] = self.wru_by.get(kind, 0) + n


def _snapshot_item(model: SegmentModel, version: int) -> dict[str, Any]:
    """The models table's item of the segment snapshot (as ModelStore.save writes it)."""
    return {"name": {"S": "segments"}, "version": {"N": str(version)},
            "body": {"S": json.dumps(model.to_dict(), separators=(",", ":"))},
            "updated_at": {"S": datetime.now(UTC).isoformat()}}


def call_sample(x: AnalysisInput, prediction: Prediction, analyzer: BedrockAnalyzer,
                ) -> tuple[int, int, int]:
    """(input tokens, output tokens, WRU of storing the answer) of one Bedrock call for ``x``:
    the real request, the test server's canned answer to it, the analysis records as stored."""
    req = analyzer.request(x)
    tool = req["toolConfig"]["tools"][0]["toolSpec"]
    chars = (len(req["system"][0]["text"]) + len(req["messages"][0]["content"][0]["text"])
             + len(json.dumps(tool)))
    answer = generate(tool["inputSchema"]["json"], grounded=tuple(grounding(req)))
    tokens_in = TOOL_USE_SYSTEM_TOKENS + tokens(chars)
    tokens_out = tokens(len(json.dumps(answer)))
    analysis = Analysis.model_validate(answer)
    now = datetime.now(UTC)
    rec = AnalysisRecord(
        customer_id=prediction.customer_id, at=now, as_of=x.as_of, source="bedrock",
        model=analyzer.model, trigger="purchase", input_tokens=tokens_in,
        output_tokens=tokens_out, cost_usd=analyzer.prices.cost(analyzer.model, tokens_in,
                                                                  tokens_out),
        latency_ms=3000.0, attempts=1, analysis=analysis,
        signature=Signature.of(x, f"{analyzer.model}|p{PROMPT_VERSION}").to_dict())
    latest = item_bytes(record_item(rec))
    history = latest + len("expires_at") + 6 + 7  # a TTL number and a '#suffix' on its key
    merged = prediction.model_copy(update={"analysis": analysis, "analysis_at": now,
                                           "analysis_model": analyzer.model})
    update = item_bytes(prediction_to_item(merged))
    return tokens_in, tokens_out, sum(units(b, WRU_BYTES) for b in (latest, history, update))


def run_core(events: Sequence[StreamEvent], analyzer: BedrockAnalyzer, batch: int = 500,
             samples: int = 1000, prior: ForecastParams = pareto_nbd.DEFAULT_PRIOR) -> CoreRun:
    """Process ``events`` through the pure core in batches of ``batch`` records, measuring
    CPU seconds and counting DynamoDB units per batch; sample about ``samples`` calls."""
    records = [StreamRecord(e.to_bytes(), str(i), e.customer_id, "shard-0")
               for i, e in enumerate(events)]
    run = CoreRun(events=len(records),
                  purchases=sum(isinstance(e, PurchaseEvent) for e in events))
    every = max(1, run.purchases // max(1, samples))
    model = SegmentModel()
    states: dict[str, CustomerState] = {}
    stored: dict[str, int] = {}  # customer id -> bytes of its stored state item
    now = datetime.now(UTC)
    watermark = version = seen = 0
    for k in range(0, len(records), batch):
        chunk = records[k:k + batch]
        started = time.process_time()
        view = ModelView(model, 0, Forecaster(prior))
        decoded = decode_batch(chunk, now=now)
        r = process_batch(decoded, states, view, now=now, watermark=watermark)
        state_items = {cid: state_to_item(s) for cid, s in r.states.items()}
        prediction_items = [prediction_to_item(p) for p in r.predictions]
        letters = [dead_letter_item(d) for d in r.dead_letters]
        for x in r.learn:
            model.learn_one(x)
        snapshot = _snapshot_item(model, version + 1) if r.learn else None
        run.cpu_s += time.process_time() - started

        # requests and units (not timed: sizing is the benchmark's work, not the Lambda's)
        run.invocations += 1
        read = decoded.customer_ids
        run.rru += sum(units(stored[c], RRU_BYTES) if c in stored else 1 for c in read)
        run.rru += REFRESH_READS
        for cid, item in state_items.items():
            stored[cid] = item_bytes(item)
            run.add_wru("states", units(stored[cid], WRU_BYTES))
        run.add_wru("predictions", sum(units(item_bytes(i), WRU_BYTES)
                                       for i in prediction_items))
        run.add_wru("dead_letters", sum(units(item_bytes(i), WRU_BYTES) for i in letters))
        if snapshot is not None:
            version += 1
            run.add_wru("segment_snapshot", units(item_bytes(snapshot), WRU_BYTES))
        # a real Kinesis sequence number has 56 digits
        at = chunk[-1].sequence_number.zfill(56)
        checkpoint = checkpoint_item("caa-consumer", Checkpoint("shard-0", at, False))
        run.add_wru("checkpoint", units(item_bytes(checkpoint), WRU_BYTES))
        chunks = math.ceil(len(prediction_items) / 25)
        run.round_trips += (REFRESH_READS + 1 + math.ceil(len(state_items) / PUT_CONCURRENCY)
                            + math.ceil(chunks / BATCH_WRITE_CONCURRENCY)
                            + (snapshot is not None) + 1)

        ref = reference_order_value(model) or 30.0
        for p in r.predictions:
            seen += 1
            if seen % every == 0 and p.customer_id in r.states:
                st = r.states[p.customer_id]
                features = build_input(st, p, as_of_ts=st.last_ts, key=KEY,
                                       reference_order_value=ref)
                run.samples.append(call_sample(features, p, analyzer))
        watermark = r.watermark
        states.update(r.states)
    return run


# -- the arithmetic ----------------------------------------------------------------------


@dataclass(frozen=True)
class Prices:
    gb_s: float = LAMBDA_GB_S_USD
    request: float = LAMBDA_REQUEST_USD
    wru: float = DYNAMODB_WRU_USD
    rru: float = DYNAMODB_RRU_USD
    #: USD per million input / output tokens
    tokens_in: float = 1.10
    tokens_out: float = 5.50


def per_call(run: CoreRun, output_tokens: int | None = None) -> dict[str, float]:
    """Mean input tokens, output tokens and analysis WRU of one call (the sampled calls)."""
    n = max(1, len(run.samples))
    return {
        "input_tokens": sum(s[0] for s in run.samples) / n,
        "output_tokens": (float(output_tokens) if output_tokens is not None
                          else sum(s[1] for s in run.samples) / n),
        "analysis_wru": sum(s[2] for s in run.samples) / n,
    }


def dollars(run: CoreRun, calls: int, call: dict[str, float], prices: Prices,
            memory_mb: int = LAMBDA_MEMORY_MB) -> dict[str, float]:
    """USD per million purchases of ``run`` when it makes ``calls`` Bedrock calls."""
    scale = 1e6 / run.purchases
    wall_s = run.cpu_s / vcpu_share(memory_mb) + run.round_trips * DYNAMODB_RTT_S
    gb = memory_mb / 1024
    stream = wall_s * gb * prices.gb_s + run.invocations * prices.request
    analyzer = calls * (BEDROCK_LATENCY_S * gb * prices.gb_s + prices.request / ANALYZER_BATCH)
    dynamodb = (run.rru * prices.rru + run.wru * prices.wru
                + calls * call["analysis_wru"] * prices.wru)
    bedrock = calls * (call["input_tokens"] * prices.tokens_in
                       + call["output_tokens"] * prices.tokens_out) / 1e6
    bedrock_out = calls * call["output_tokens"] * prices.tokens_out / 1e6
    out = {"compute": stream + analyzer, "compute_stream": stream,
           "compute_analyzer": analyzer, "dynamodb": dynamodb, "bedrock": bedrock,
           "bedrock_output": bedrock_out, "total": stream + analyzer + dynamodb + bedrock}
    return {k: v * scale for k, v in out.items()}


# -- streams and policies ----------------------------------------------------------------


def streams(args: argparse.Namespace) -> dict[str, list[StreamEvent]]:
    """The synthetic grocery stream (with cancellations and refunds; the burst-heavy knobs of
    bench/analysis_policy.py: 60% of shops split into up to 4 orders 5-50 s apart) and the
    full CDNOW log in time order."""
    syn = generate_stream(customers=args.customers, days=args.days, seed=7, burst_rate=0.6,
                          burst_gap_s=(5, 50), burst_orders=4)
    cdnow: list[StreamEvent] = list(time_ordered(load_events(limit=args.cdnow_limit)))
    return {"cdnow": cdnow, "synthetic": syn}


def event_time(e: PurchaseEvent) -> float:
    return e.occurred_at.timestamp()


def calls_by_policy(purchases: list[PurchaseEvent], params: Params,
                    arrival: Callable[[PurchaseEvent], float] = event_time,
                    ) -> dict[str, dict[str, float]]:
    """Calls of the naive policy (one per purchase, by definition: bench/analysis_policy.py's
    simulation with ``naive=True`` makes exactly these, see the unit test) and of ours
    (that simulation: the real trigger policy and cache), purchases at event time."""
    n = len(purchases)
    naive = {"purchases": n, "calls": n, "calls_per_1000": 1000.0 if n else 0.0}
    return {"naive": naive, "ours": simulate(purchases, arrival, params, naive=False)}


def _table(name: str, run: CoreRun, result: dict[str, Any]) -> None:
    call = result["per_call"]
    print(f"\n{name}: {run.purchases:,} purchases in {run.events:,} events, "
          f"{run.invocations:,} invocations of {result['batch']} records, "
          f"{run.cpu_s / run.events * 1e6:.0f} us CPU/event; per call "
          f"{call['input_tokens']:.0f} tokens in, {call['output_tokens']:.0f} out "
          f"({len(run.samples)} sampled prompts), {call['analysis_wru']:.1f} WRU stored")
    print(f"  {'policy':<7} {'calls/1000':>10} {'compute $':>10} {'(stream)':>9} "
          f"{'DynamoDB $':>11} {'Bedrock $':>10} {'(output)':>9} {'total $':>10}"
          "   per million purchases")
    for policy in ("naive", "ours"):
        r = result[policy]
        d = r["usd_per_million_purchases"]
        print(f"  {policy:<7} {r['calls_per_1000']:>10.1f} {d['compute']:>10.2f} "
              f"{d['compute_stream']:>9.3f} {d['dynamodb']:>11.2f} {d['bedrock']:>10,.0f} "
              f"{d['bedrock_output']:>9,.0f} {d['total']:>10,.0f}")


def _stream(name: str, events: list[StreamEvent], analyzer: BedrockAnalyzer, params: Params,
            prices: Prices, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = run_core(events, analyzer, args.batch, args.samples)
    t1 = time.perf_counter()
    call = per_call(run, args.output_tokens)
    purchases = [e for e in events if isinstance(e, PurchaseEvent)]
    result: dict[str, Any] = {"batch": args.batch, "per_call": call, "core": {
        k: v for k, v in asdict(run).items() if k != "samples"}}
    for policy, sim in calls_by_policy(purchases, params).items():
        calls = int(sim["calls"])
        result[policy] = {"calls": calls, "calls_per_1000": sim["calls_per_1000"],
                          "usd_per_million_purchases": dollars(run, calls, call, prices)}
    result["run_s"] = {"core": round(t1 - t0, 1), "policy": round(time.perf_counter() - t1, 1)}
    _table(name, run, result)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=3000, help="synthetic customers")
    ap.add_argument("--days", type=int, default=60, help="synthetic days")
    ap.add_argument("--cdnow-limit", type=int, help="CDNOW rows (default: all)")
    ap.add_argument("--batch", type=int, default=500, help="records per Lambda invocation")
    ap.add_argument("--samples", type=int, default=1000, help="prompts sampled per stream")
    ap.add_argument("--output-tokens", type=int,
                    help="output tokens per call (default: the canned answer's, measured)")
    ap.add_argument("--out", type=Path, default=Path("out/bench-cost.json"))
    args = ap.parse_args()
    started = time.perf_counter()
    settings = Settings()
    table = PriceTable.parse(settings.bedrock_prices)
    model = settings.bedrock_model_id
    pin, pout = table.prices[model]
    prices = Prices(tokens_in=pin, tokens_out=pout)
    analyzer = BedrockAnalyzer(None, model, max_tokens=settings.bedrock_max_tokens,
                               prices=table)
    params = Params(debounce_s=settings.analysis_debounce_s)
    print(f"model {model}: ${pin:g} / ${pout:g} per million tokens in / out; Lambda arm64 "
          f"{LAMBDA_MEMORY_MB} MB ({vcpu_share():.2f} vCPU); DynamoDB on-demand "
          f"${DYNAMODB_WRU_USD * 1e6:g} / ${DYNAMODB_RRU_USD * 1e6:g} per million WRU / RRU")
    results: dict[str, Any] = {}
    # the schema of the tool is the same for every request: built once here (the analyzer
    # builds it per call, about 20 ms of CPU each), so sampling many prompts stays quick
    with mock.patch("consumers.analysis.bedrock.tool_spec", functools.cache(tool_spec)):
        for name, events in streams(args).items():
            results[name] = _stream(name, events, analyzer, params, prices, args)
    elapsed = time.perf_counter() - started
    print(f"\n(run time {elapsed:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": model, "prices": asdict(prices), "lambda_memory_mb": LAMBDA_MEMORY_MB,
        "vcpu_share": vcpu_share(), "dynamodb_rtt_s": DYNAMODB_RTT_S,
        "chars_per_token": CHARS_PER_TOKEN, "tool_use_system_tokens": TOOL_USE_SYSTEM_TOKENS,
        "debounce_s": params.debounce_s, "results": results, "run_s": round(elapsed, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
