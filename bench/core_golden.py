"""Golden outputs of the pure core (issue 17): what decode_batch + process_batch give today.

Two streams are replayed through the core in batches of :data:`BATCH` records, the way
:class:`consumers.applier.BatchApplier` does it (and ``bench/pipeline.py``'s ``bench_core``):
the changed states of a batch are the next batch's input (a state cache: the same objects),
the erased customers are dropped, the segment model learns ``result.learn`` after each
batch (its version goes up by one when it learns, as the registry's store does), the
watermark carries over (never down). The forecaster is the default Pareto/NBD one with its
prior (``Forecaster(pareto_nbd.DEFAULT_PRIOR)``: what the registry builds before a refit);
the rates are :data:`RATES`; ``now`` is fixed (:data:`NOW`: it stands in for the unknown
arrival times, caps the watermark and is every prediction's ``generated_at``).

* ``cdnow``: the full CDNOW log, time-ordered (69,659 purchases, 23,570 customers);
* ``synthetic``: :func:`producers.datasets.synthetic.generate_stream` (550 customers, 120
  days, seed 42: 20,241 purchases, refunds, cancellations, some refunds before their
  purchase), with a few records of our own spliced in at fixed places: redeliveries of
  earlier records (duplicates), malformed records (dead letters), consent withdrawals and
  erasures (an erased customer's later events start a new customer).

The golden (:data:`GOLDEN`, xz-compressed JSON, committed) holds per stream:

* ``batches``: per batch, sha256 digests of its outcomes, its predictions (in order, as
  ``model_dump_json``), its changed states (every intermediate state, by
  :func:`state_digest`), its learn vectors, and the rest (watermark, checkpoints, counts,
  erased, retired, dead letters). Floats of more than 12 significant digits are rounded to
  12 before hashing (:func:`rounded`): the predictions' floats are all rounded by the
  forecaster to far fewer (so for them this is exact), the learn vectors' features are
  not. A change below the 12th digit is thus not seen there, and one that moves a value
  across a rounding boundary is (the test then names the batch);
* ``states``: per customer, the first 64 bits (:data:`STATE_DIGEST_HEX`) of the sha256 of
  the final state's canonical serialisation (:func:`state_digest`: id, version, body JSON,
  packed order book and event digests, as :func:`consumers.stores.customers.state_to_item`
  stores them);
* ``predictions``: the final prediction of each customer (``prediction_ids``) in full, as
  the predictions table would hold it (the last one written; deleted for erased and retired
  customers), one column per field (:func:`columns`: it compresses far better); the test
  compares them field by field, floats within 1e-12 (relative or absolute);
* ``dead_letters``: every dead letter (sequence number, kind, reason) in order;
* ``totals``: the outcome counts.

Make it from the code to compare against (HEAD, in a worktree of its own)::

    git worktree add /tmp/golden-wt HEAD
    cd /tmp/golden-wt && PYTHONPATH=/tmp/golden-wt /work/main/.venv/bin/python \\
        /work/main/bench/core_golden.py --out /work/main/tests/data/core_golden.json.xz

(``PYTHONPATH`` puts the worktree's packages before the editable install). The test is
``tests/unit/consumers/test_core_equivalence.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from consumers.core import (
    BatchResult,
    ModelView,
    StreamRecord,
    decode_batch,
    process_batch,
)
from models.events import ConsentEvent, ErasureEvent, StreamEvent
from models.learn import pareto_nbd
from models.learn.bgnbd import DEFAULT_PRIOR as BGNBD_PRIOR
from models.learn.forecaster import Forecaster, ForecastParams
from models.learn.segmentation import SegmentModel
from models.money import Rates
from models.state import CustomerState

#: the wall clock of every batch (fixed): arrival time stand-in, watermark cap, generated_at
NOW = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 1000
#: the reporting currency and rates of the models' view (as an operator sets them): the
#: synthetic stream's euros are converted, so its predictions carry spend and value
RATES = Rates("USD", {"EUR": 1.08}, as_of="2024-06-01")
GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "core_golden.json.xz"
PRIORS: dict[str, ForecastParams] = {"pareto_nbd": pareto_nbd.DEFAULT_PRIOR,
                                     "bgnbd": BGNBD_PRIOR}
FORMAT = 1
#: hex digits kept of each final state's sha256 (64 bits: ample to tell a changed state)
STATE_DIGEST_HEX = 16


def _records(events: list[StreamEvent]) -> list[StreamRecord]:
    return [StreamRecord(e.to_bytes(), str(i + 1), e.customer_id, "shard-0")
            for i, e in enumerate(events)]


def cdnow_records() -> list[StreamRecord]:
    from producers.datasets.cdnow import load_events, time_ordered

    return _records(list(time_ordered(load_events())))


def synthetic_records() -> list[StreamRecord]:
    """The synthetic stream with, at fixed places, redeliveries (every 1,500th record
    repeats the one 700 before), malformed records (every 2,000th), consent withdrawals
    (every 2,500th, of the customer of the record before) and erasures (every 5,000th,
    likewise)."""
    from producers.datasets.synthetic import generate_stream

    events = generate_stream(customers=550, days=120, seed=42)
    out: list[tuple[bytes, str]] = []
    for i, e in enumerate(events):
        at = e.occurred_at + timedelta(seconds=1)
        if i and i % 5000 == 0:
            out.append((ErasureEvent(type="erasure", event_id=f"erase-{i}",
                                     customer_id=e.customer_id, occurred_at=at).to_bytes(),
                        e.customer_id))
        if i and i % 2500 == 0:
            out.append((ConsentEvent(type="consent", event_id=f"consent-{i}",
                                     customer_id=e.customer_id, occurred_at=at,
                                     analysis=False).to_bytes(), e.customer_id))
        if i and i % 2000 == 0:
            out.append((b'{"event_id": "broken-' + str(i).encode() + b'", "customer_id"',
                        e.customer_id))
        if i >= 700 and i % 1500 == 0:
            out.append(out[-700])
        out.append((e.to_bytes(), e.customer_id))
    return [StreamRecord(data, str(n + 1), key, "shard-0") for n, (data, key) in enumerate(out)]


STREAMS: dict[str, Callable[[], list[StreamRecord]]] = {
    "cdnow": cdnow_records, "synthetic": synthetic_records}


def replay(records: list[StreamRecord], forecast_model: str = "pareto_nbd",
           batch: int = BATCH, after_batch: Callable[[], None] | None = None,
           states: dict[str, CustomerState] | None = None) -> Iterator[BatchResult]:
    """Each batch's result, as the applier gets them (see the module's text); ``states``
    (the cache) is updated in place; ``after_batch`` is called after each batch (a GC
    policy)."""
    model = SegmentModel()
    segments_version = 0
    params = PRIORS[forecast_model]
    states = {} if states is None else states
    watermark = 0
    for k in range(0, len(records), batch):
        view = ModelView(model, segments_version, Forecaster(params), rates=RATES)
        result = process_batch(decode_batch(records[k:k + batch], now=NOW), states, view,
                               now=NOW, watermark=watermark)
        states.update(result.states)
        for cid in result.erased:
            states.pop(cid, None)
        for x in result.learn:
            model.learn_one(x)
        if result.learn:
            segments_version += 1
        watermark = max(watermark, result.watermark)
        yield result
        if after_batch is not None:
            after_batch()


_LONG_FLOAT = re.compile(r"-?(?=[\d.]{14})\d+\.\d+(?:[eE][-+]?\d+)?")


def _round12(m: re.Match[str]) -> str:
    return repr(float(format(float(m.group()), ".12g")))


def rounded(text: str) -> str:
    """JSON ``text`` with every float of more than 12 significant digits rounded to 12,
    written as Python writes floats (for hashing). The predictions' floats are all rounded
    by the forecaster to far fewer digits (so, as shorter literals are left as they are,
    a change below the 12th digit of one gives the text it had: ``1.0000000000001`` is
    written ``1.0``); the learn vectors' features are full floats, written by ``json``."""
    return _LONG_FLOAT.sub(_round12, text)


def state_digest(state: CustomerState) -> str:
    """sha256 of the state as stored: id, version, body JSON, order book, event digests."""
    orders, events = state.book.pack()
    h = hashlib.sha256()
    for part in (state.customer_id.encode(), str(state.version).encode(),
                 state.to_json().encode(), orders, events):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _sha(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def batch_digests(r: BatchResult, predictions: list[str]) -> dict[str, str]:
    """The digests of one batch's result (``predictions``: its predictions' JSON)."""
    rest = {"watermark": r.watermark, "checkpoints": r.checkpoints, "counts": r.counts,
            "erased": sorted(r.erased), "retired": sorted(r.retired),
            "dead_letters": [[d.record.sequence_number, d.kind, d.reason]
                             for d in r.dead_letters]}
    return {
        "outcomes": _sha(f"{o.shard_id} {o.sequence_number} {o.status} {o.reason}"
                         for o in r.outcomes),
        "predictions": _sha(map(rounded, predictions)),
        "states": _sha(f"{cid} {state_digest(s)}" for cid, s in r.states.items()),
        "learn": _sha(rounded(json.dumps(x)) for x in r.learn),
        "rest": _sha([json.dumps(rest, sort_keys=True)]),
    }


def _flat(x: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _flat(v, f"{path}/{k}")
    else:
        yield path, x


def columns(predictions: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """Predictions (customer id -> ``model_dump(mode="json")``, in id order) as one column
    per leaf field path (``/value/clv``; lists are leaves): they compress far better."""
    out: dict[str, list[Any]] = {}
    for i, p in enumerate(predictions.values()):
        for path, v in _flat(p):
            if path not in out:
                out[path] = [None] * len(predictions)
            out[path][i] = v
    return out


def summarise(records: list[StreamRecord], forecast_model: str = "pareto_nbd",
              after_batch: Callable[[], None] | None = None) -> dict[str, Any]:
    """The golden of one stream (see the module's text); ``after_batch`` as in
    :func:`replay`."""
    states: dict[str, CustomerState] = {}
    final: dict[str, str] = {}
    batches: list[dict[str, str]] = []
    letters: list[list[str]] = []
    totals = {"applied": 0, "duplicate": 0, "duplicate_order": 0, "rejected": 0}
    for r in replay(records, forecast_model, after_batch=after_batch, states=states):
        dumped = [p.model_dump_json() for p in r.predictions]
        batches.append(batch_digests(r, dumped))
        letters += [[d.record.sequence_number, d.kind, d.reason] for d in r.dead_letters]
        for k, v in r.counts.items():
            totals[k] += v
        final.update(zip((p.customer_id for p in r.predictions), dumped, strict=True))
        for cid in r.erased | r.retired:
            final.pop(cid, None)
    predictions = {cid: json.loads(final[cid]) for cid in sorted(final)}
    return {
        "forecast_model": forecast_model,
        "records": len(records),
        "totals": totals,
        "batches": batches,
        "states": {cid: state_digest(s)[:STATE_DIGEST_HEX] for cid, s in sorted(states.items())},
        "prediction_ids": list(predictions),
        "predictions": columns(predictions),
        "dead_letters": letters,
    }


def golden() -> dict[str, Any]:
    return {"format": FORMAT, "now": NOW.isoformat(), "batch": BATCH, "rates": repr(RATES),
            "streams": {name: summarise(make()) for name, make in STREAMS.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=GOLDEN)
    args = ap.parse_args()
    started = time.perf_counter()
    data = golden()
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(lzma.compress(raw, preset=9))
    import consumers.core

    print(f"{args.out}: {args.out.stat().st_size:,} bytes ({len(raw):,} raw) from "
          f"{consumers.core.__file__} in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
