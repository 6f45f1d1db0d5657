"""A naive Kinesis -> DynamoDB consumer, written only to be measured against ours.

It is the design a first attempt would use, kept correct enough to produce the same
prediction items as our consumer for a stream without duplicates:

* one process, synchronous boto3, one shard after the other: GetRecords (``Limit`` 10,000,
  from TRIM_HORIZON) on each shard in turn, sleeping ``poll_interval`` when no shard had
  anything;
* per event, in the order read:

  1. decode and validate it (:func:`models.events.decode_event`, the same decoder as ours);
  2. one ``UpdateItem`` on the customer that ADDs the counters (purchases, spend, quantity,
     orders per channel, per product and per category) and the purchase day to number sets
     (the customer's, and each product's and category's), SETs first/last purchase time,
     and returns the whole item (``ReturnValues=ALL_NEW``). It keeps only what the analysis
     reads: no quantity or spend per product (the forecaster does not use them; each ADD
     clause costs moto's expression parser about 1 ms, which real DynamoDB does not);
  3. one analysis of that customer, computed for this event alone (no batching, no cache):
     the state rebuilt from the returned item, RFM features, the segment model learns and
     predicts, and the BG/NBD forecaster predicts, i.e. the statistical prediction our
     consumer writes (:class:`models.learn.forecaster.Forecaster`);
  4. one ``PutItem`` of the prediction (the same item layout as ours,
     :func:`consumers.stores.predictions.prediction_to_item`).

What it leaves out, all in its favour for speed: no event-id de-duplication (ADD counts a
redelivered event twice), no checkpoints (a restart reads the stream again from the start),
no dead letters (undecodable records are counted and skipped), no persisted segment model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consumers.stores.predictions import prediction_to_item
from models.events import EventRejected, PurchaseEvent, decode_event
from models.features import rfm
from models.item_stats import ItemStats
from models.learn.forecaster import DEFAULT_PRIOR, Forecaster
from models.learn.segmentation import SegmentModel
from models.order_book import Compacted
from models.prediction import SegmentRef
from models.state import DAY, CustomerState

#: called once per event after its prediction PutItem returned: (record, acknowledged at,
#: epoch seconds)
OnWritten = Callable[[dict[str, Any], float], None]

def update_args(event: PurchaseEvent) -> dict[str, Any]:
    """The one UpdateItem that folds ``event`` into its customer's item."""
    ts = int(event.occurred_at.timestamp())
    day = ts // DAY
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    adds: list[str] = []

    def add(attr: str, value: dict[str, Any]) -> None:
        n = f"#a{len(names)}"
        v = f":v{len(values)}"
        names[n] = attr
        values[v] = value
        adds.append(f"{n} {v}")

    add("purchases", {"N": "1"})
    add("spend_cents", {"N": str(int(event.total * 100))})
    add("quantity", {"N": str(sum(i.quantity for i in event.items))})
    add("days", {"NS": [str(day)]})
    add(f"ch#{event.channel}", {"N": "1"})
    keys = dict.fromkeys((kind, key) for i in event.items
                         for kind, key in (("p", i.product_id), ("c", i.category)))
    for kind, key in keys:  # an order counts once per product and category
        add(f"{kind}#{key}#o", {"N": "1"})
        add(f"{kind}#{key}#d", {"NS": [str(day)]})
    values[":ts"] = {"N": str(ts)}
    values[":eid"] = {"S": event.event_id}
    values[":cur"] = {"S": event.currency}
    sets = ["first_ts = if_not_exists(first_ts, :ts)", "last_ts = :ts", "last_event_id = :eid",
            "currency = :cur"]
    if event.consent is not None:
        values[":consent"] = {"BOOL": event.consent}
        sets.append("consent = :consent")
    return {
        "Key": {"customer_id": {"S": event.customer_id}},
        "UpdateExpression": f"ADD {', '.join(adds)} SET {', '.join(sets)}",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValues": "ALL_NEW",
    }


def state_from_item(item: dict[str, Any]) -> CustomerState:
    """The customer's state rebuilt from the item the UpdateItem returned: its orders as
    compacted sums (the naive item keeps no order one by one), one currency (the last)."""
    days = sorted(int(d) for d in item["days"]["NS"])
    purchases, currency = int(item["purchases"]["N"]), item["currency"]["S"]
    channels: dict[str, int] = {}
    s = CustomerState.new(item["customer_id"]["S"])
    for attr, value in item.items():
        parts = attr.split("#")
        if parts[0] == "ch" and len(parts) == 2:
            channels[parts[1]] = int(value["N"])
        elif parts[0] in ("p", "c") and len(parts) == 3:
            table = s.products if parts[0] == "p" else s.categories
            stats = table.setdefault(parts[1], ItemStats())
            if parts[2] == "o":
                stats.orders = int(value["N"])
            elif parts[2] == "d":
                stats.days = sorted(int(d) for d in value["NS"])
                stats.first_day = stats.days[0]
    s.book.base = Compacted(0, purchases, len(days), int(item["first_ts"]["N"]),
                            int(item["last_ts"]["N"]), int(item["quantity"]["N"]),
                            {currency: int(item["spend_cents"]["N"])}, {currency: purchases},
                            channels)
    s.last_event_id, s.last_event_ts = item["last_event_id"]["S"], int(item["last_ts"]["N"])
    if "consent" in item:
        s.consent = bool(item["consent"]["BOOL"])
    return s


@dataclass
class NaiveConsumer:
    kinesis: Any  # boto3 client
    dynamodb: Any  # boto3 client
    stream_name: str
    customers_table: str
    predictions_table: str
    poll_interval: float = 0.25
    on_written: OnWritten | None = None
    segmenter: SegmentModel = field(default_factory=lambda: SegmentModel(n_clusters=6, seed=42,
                                                                         warmup=500))
    forecaster: Forecaster = field(default_factory=lambda: Forecaster(DEFAULT_PRIOR))
    watermark: int = 0
    written: int = 0
    rejected: int = 0
    #: seconds spent in each step (where the time goes)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("get_records", "decode", "update_item", "analysis", "put_item", "idle"), 0.0))

    def handle(self, record: dict[str, Any]) -> None:
        """One event: UpdateItem, analysis, PutItem."""
        sec = self.seconds
        t0 = time.perf_counter()
        try:
            event = decode_event(record["Data"])
        except EventRejected:
            self.rejected += 1
            return
        if not isinstance(event, PurchaseEvent):  # consent/erasure: not this benchmark's
            self.rejected += 1
            return
        t1 = time.perf_counter()
        resp = self.dynamodb.update_item(TableName=self.customers_table, **update_args(event))
        t2 = time.perf_counter()
        state = state_from_item(resp["Attributes"])
        self.watermark = max(self.watermark, state.last_ts)
        features = rfm(state, self.watermark)
        self.segmenter.learn_one(features)
        seg = self.segmenter.predict_one(features)
        names = self.segmenter.segment_names()
        prediction = self.forecaster.predict(
            state, SegmentRef(id=seg, name=names.get(seg, f"segment {seg}")),
            self.watermark, datetime.now(UTC))
        item = prediction_to_item(prediction)
        t3 = time.perf_counter()
        self.dynamodb.put_item(TableName=self.predictions_table, Item=item)
        acked = time.time()
        t4 = time.perf_counter()
        sec["decode"] += t1 - t0
        sec["update_item"] += t2 - t1
        sec["analysis"] += t3 - t2
        sec["put_item"] += t4 - t3
        self.written += 1
        if self.on_written is not None:
            self.on_written(record, acked)

    def run(self, expected: int, timeout_s: float) -> None:
        """Read every shard in turn until ``expected`` predictions were written (or the
        timeout passed)."""
        shards = [s["ShardId"] for s in
                  self.kinesis.list_shards(StreamName=self.stream_name)["Shards"]]
        iterators = {
            sid: self.kinesis.get_shard_iterator(
                StreamName=self.stream_name, ShardId=sid, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for sid in shards
        }
        deadline = time.monotonic() + timeout_s
        while self.written + self.rejected < expected and time.monotonic() < deadline:
            got = 0
            for sid in shards:
                t0 = time.perf_counter()
                resp = self.kinesis.get_records(ShardIterator=iterators[sid], Limit=10_000)
                self.seconds["get_records"] += time.perf_counter() - t0
                iterators[sid] = resp["NextShardIterator"]
                for record in resp["Records"]:
                    self.handle(record)
                got += len(resp["Records"])
            if not got:
                time.sleep(self.poll_interval)
                self.seconds["idle"] += self.poll_interval
