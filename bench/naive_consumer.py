"""A naive Kinesis -> DynamoDB consumer, written only to be measured against ours.

It is the simple read-modify-write consumer a competent engineer would write first. It
writes the same prediction items as our consumer (the same layout, the same statistical
forecast from the same prior, short of the conversion and variants listed below; the
segment ids come from its own segment model, which learns event by event) and keeps
each customer's state in our customers table's layout:

* one thread per shard (``run`` starts them; synchronous boto3, the clients shared, which
  boto3 allows), each reading its shard from TRIM_HORIZON with GetRecords (``Limit``
  10,000) and sleeping ``poll_interval`` when it got nothing; a customer's events are all on
  one shard (partition key = customer id), so no two threads touch the same customer;
* per event, in the order read:

  1. decode and validate it (:func:`models.events.decode_event`, the same decoder as ours);
  2. one ``GetItem`` of the customer's state (``ConsistentRead``), in our customers table's
     layout (:func:`consumers.stores.customers.state_from_item`), or a new state;
  3. the event folded in (:meth:`models.state.CustomerState.apply`, the same domain code
     as ours: it ignores an event id it has seen, so a redelivery changes nothing and
     nothing is written for it);
  4. one ``PutItem`` of the whole updated state, its version up by one as ours
     (:func:`consumers.stores.customers.state_to_item`; no condition: the thread owns the
     customer);
  5. one analysis of that customer, computed for this event alone (no batching, no cache):
     RFM features, the segment model (one for the process, behind a lock) learns and
     predicts, and the forecaster (``forecast_model``: Pareto/NBD, the production default,
     or BG/NBD, with its prior) predicts, i.e. the statistical prediction our consumer
     writes (:class:`models.learn.forecaster.Forecaster`);
  6. one ``PutItem`` of the prediction (the same item layout as ours,
     :func:`consumers.stores.predictions.prediction_to_item`).

What it leaves out, all in its favour for speed: no checkpoints (a restart reads the stream
again from the start), no dead letters (undecodable records, and erasure events, which it
does not handle, are counted in ``rejected`` and skipped), no conditional writes (a second
consumer on the same shard would lose updates), no persisted segment model, no currency
conversion and no A/B variants in the forecast. ``seconds`` sums, over the shard threads,
the wall time of each step (thread-seconds: with 4 threads they add up to about 4x the run).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.stores.customers import customer_key, state_from_item, state_to_item
from consumers.stores.predictions import prediction_to_item
from models.events import ErasureEvent, EventRejected, decode_event
from models.features import rfm
from models.learn import bgnbd, pareto_nbd
from models.learn.forecaster import Forecaster, ForecastParams
from models.learn.segmentation import SegmentModel
from models.prediction import SegmentRef
from models.state import CustomerState

#: called once per event after its prediction PutItem returned: (record, acknowledged at,
#: epoch seconds); from the shard's thread
OnWritten = Callable[[dict[str, Any], float], None]

PRIORS: dict[str, ForecastParams] = {"pareto_nbd": pareto_nbd.DEFAULT_PRIOR,
                                     "bgnbd": bgnbd.DEFAULT_PRIOR}
STEPS = ("get_records", "decode", "get_item", "put_state", "analysis", "put_prediction",
         "idle")


@dataclass
class NaiveConsumer:
    kinesis: Any  # boto3 client
    dynamodb: Any  # boto3 client
    stream_name: str
    customers_table: str
    predictions_table: str
    poll_interval: float = 0.25
    on_written: OnWritten | None = None
    forecast_model: str = "pareto_nbd"
    segmenter: SegmentModel = field(default_factory=lambda: SegmentModel(n_clusters=6, seed=42,
                                                                         warmup=500))
    watermark: int = 0
    written: int = 0
    rejected: int = 0
    #: applied nothing (a redelivery, an out-of-horizon event): nothing written
    skipped: int = 0
    #: thread-seconds spent in each step (where the time goes), summed over the threads
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.forecaster = Forecaster(PRIORS[self.forecast_model])

    @property
    def done(self) -> int:
        return self.written + self.rejected + self.skipped

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def handle(self, record: dict[str, Any], sec: dict[str, float]) -> None:
        """One event: GetItem, apply, PutItem (state), analysis, PutItem (prediction)."""
        t0 = time.perf_counter()
        try:
            event = decode_event(record["Data"])
        except EventRejected:
            self._count("rejected")
            return
        if isinstance(event, ErasureEvent):  # not this consumer's
            self._count("rejected")
            return
        t1 = time.perf_counter()
        resp = self.dynamodb.get_item(TableName=self.customers_table,
                                      Key=customer_key(event.customer_id), ConsistentRead=True)
        t2 = time.perf_counter()
        state = (state_from_item(resp["Item"]) if "Item" in resp
                 else CustomerState.new(event.customer_id))
        if state.apply(event) not in ("applied", "applied_refund_dropped"):
            self._count("skipped")
            return
        state.version += 1  # as ours: the durable writes so far
        self.dynamodb.put_item(TableName=self.customers_table, Item=state_to_item(state))
        t3 = time.perf_counter()
        with self._lock:
            self.watermark = watermark = max(self.watermark, state.last_ts)
            features = rfm(state, watermark)
            self.segmenter.learn_one(features)
            seg = self.segmenter.predict_one(features)
            name = self.segmenter.segment_names().get(seg, f"segment {seg}")
        prediction = self.forecaster.predict(state, SegmentRef(id=seg, name=name), watermark,
                                             datetime.now(UTC))
        item = prediction_to_item(prediction)
        t4 = time.perf_counter()
        self.dynamodb.put_item(TableName=self.predictions_table, Item=item)
        acked = time.time()
        t5 = time.perf_counter()
        sec["decode"] += t1 - t0
        sec["get_item"] += t2 - t1
        sec["put_state"] += t3 - t2
        sec["analysis"] += t4 - t3
        sec["put_prediction"] += t5 - t4
        self._count("written")
        if self.on_written is not None:
            self.on_written(record, acked)

    def _shard(self, shard_id: str, expected: int, deadline: float,
               errors: list[Exception]) -> None:
        sec = dict.fromkeys(STEPS, 0.0)
        try:
            iterator = self.kinesis.get_shard_iterator(
                StreamName=self.stream_name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while self.done < expected and time.monotonic() < deadline and not errors:
                t0 = time.perf_counter()
                resp = self.kinesis.get_records(ShardIterator=iterator, Limit=10_000)
                sec["get_records"] += time.perf_counter() - t0
                iterator = resp["NextShardIterator"]
                for record in resp["Records"]:
                    self.handle(record, sec)
                if not resp["Records"]:
                    time.sleep(self.poll_interval)
                    sec["idle"] += self.poll_interval
        except Exception as exc:  # noqa: BLE001  (re-raised by run())
            errors.append(exc)
        finally:
            with self._lock:
                for k, v in sec.items():
                    self.seconds[k] += v

    def run(self, expected: int, timeout_s: float) -> None:
        """Read every shard, each in its own thread, until ``expected`` events were handled
        (written, rejected or skipped) or the timeout passed."""
        shards = [s["ShardId"] for s in
                  self.kinesis.list_shards(StreamName=self.stream_name)["Shards"]]
        deadline = time.monotonic() + timeout_s
        errors: list[Exception] = []
        threads = [threading.Thread(target=self._shard, args=(sid, expected, deadline, errors),
                                    name=f"naive-{sid}", daemon=True) for sid in shards]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
