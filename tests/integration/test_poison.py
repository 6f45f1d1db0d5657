"""No record can crash the consumer (issue 14, item 3): the poison catalogue of
:mod:`tests.integration.poison_cases` through every adapter, against the real servers.

One single-shard stream holds every poison record between two good purchases of the same
customer. Each adapter must then: not raise; leave exactly the catalogue's dead letters,
each at its position with its specific kind and reason; apply every good purchase (the ones
around each poison record and the good user records of a KPL aggregate beside a poison
one, and the valid records at the schema's edges the catalogue also holds); and move its
checkpoint to the last record. The adapters: the local poller (GetRecords, moto), enhanced
fan-out (SubscribeToShard, kinesis-mock), the Lambda handler
(``caa.entry.lambda_stream.handler`` with the event source mapping's event), the KCL record
processor behind amazon_kclpy's ``KCLProcess`` (the daemon's JSON messages, in process), and
the real Java MultiLangDaemon running that processor (kinesis-mock and moto; about 100 s
each). Under the daemon, what its own de-aggregation does differently is the catalogue's
``under_kcl``, and what stops the daemon is an expected failure (:data:`KCL_CRASHES`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import threading
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from caa import wiring
from caa.aws import Aws
from caa.entry import lambda_stream
from caa.settings import Settings
from consumers.sources.fanout import FanoutPoller
from consumers.sources.kcl_processor import Processor, kcl_processor
from consumers.sources.worker import Worker
from deploy import kcl
from deploy.kcl import JAXB_JAR
from deploy.local.emulator import Emulator
from models.kpl import BadAggregate, deaggregate
from tests.integration import test_fanout
from tests.integration.poison_cases import CUSTOMER, Poison, catalogue, stream
from tests.integration.test_fanout import Spy
from tests.integration.test_kcl import ROOT, _read, _stop, _wait
from tests.integration.test_kpl import checkpoint_of
from tests.integration.test_lambda import kinesis_events
from tests.integration.test_poller import run_worker as run_poller_worker

pytestmark = pytest.mark.integration

efo_settings = test_fanout.efo_settings  # the fixture: fanout mode on kinesis-mock

CASES = catalogue()
#: cases that stop the KCL daemon: case -> the failure
KCL_CRASHES = {
    "kpl_key_index_out_of_table": (
        "the KCL daemon dies on it: AggregatorUtil.deaggregate (KCL 3.1.3, line 190) "
        "formats the bad aggregate for its error log with javax.xml.bind.DatatypeConverter, "
        "which is not on the daemon's classpath (Java 17, no jaxb-api jar beside "
        "amazon_kclpy's): NoClassDefFoundError, 'Caught throwable while processing data', "
        "the daemon exits 1 without a checkpoint, and every restart dies on the same record"),
}
#: a guard against a shard held for ever, never an assertion
PATIENCE_S = 180.0


@dataclass
class Published:
    """Some cases on a stream between good purchases: its shard, each record's sequence
    number."""

    settings: Settings
    cases: list[Poison]
    shard_id: str
    seqs: list[str]

    @property
    def good(self) -> int:
        """Good purchases: the ones around each case and the ones in it."""
        return sum(n for _, _, n in stream(self.cases))

    @property
    def applied(self) -> int:
        return self.good + sum(c.others for c in self.cases)

    def expected_letters(self) -> dict[str, tuple[str, str, str]]:
        """Dead-letter id -> (case, kind, reason fragment)."""
        out = {}
        for i, case in enumerate(self.cases):
            base = f"{self.settings.stream_name}/{self.shard_id}/{self.seqs[3 * i + 1]}"
            for letter in case.letters:
                key = f"{base}/{letter.sub}" if letter.sub else base
                out[key] = (case.name, letter.kind, letter.reason)
        return out


def publish(s: Settings, cases: list[Poison]) -> Published:
    """Every record of :func:`stream` put one by one (in order) on the stream's one shard."""
    kinesis = Aws(s).client("kinesis")
    (shard,) = kinesis.list_shards(StreamName=s.stream_name)["Shards"]
    seqs = [kinesis.put_record(StreamName=s.stream_name, Data=data, PartitionKey=pk)[
        "SequenceNumber"] for pk, data, _ in stream(cases)]
    return Published(s, cases, shard["ShardId"], seqs)


def assert_dead_letters(p: Published, letters: list[dict[str, Any]]) -> None:
    expected = p.expected_letters()
    got = {str(d["id"]): d for d in letters}
    missing = {k: v[0] for k, v in expected.items() if k not in got}
    unexpected = {k: (d["kind"], str(d["reason"])[:120]) for k, d in got.items()
                  if k not in expected}
    assert not missing and not unexpected, (missing, unexpected)
    wrong = {name: (got[k]["kind"], str(got[k]["reason"])[:160])
             for k, (name, kind, reason) in expected.items()
             if got[k]["kind"] != kind or reason not in str(got[k]["reason"])}
    assert not wrong, wrong


def assert_applied(p: Published) -> None:
    """Every good purchase is in the customer's state (once each); every poison user record
    is a dead letter with its kind and reason."""
    states, letters = asyncio.run(_read(p.settings))
    assert {x.customer_id: x.purchases for x in states} == {CUSTOMER: p.good}
    assert_dead_letters(p, letters)


def within(patience_s: float, coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, patience_s))


# -- the adapters: each consumes a published stream, raising nothing, and checks the
# -- checkpoint it keeps ---------------------------------------------------------------


def by_poller(p: Published, patience_s: float) -> None:
    """The local poller (GetRecords on moto), until idle; a restart re-reads nothing."""
    w, _ = within(patience_s, run_poller_worker(p.settings, {}))
    t = w.applier.totals
    assert (t.applied, t.duplicate, t.rejected) == (p.applied, 0, len(p.expected_letters()))
    assert checkpoint_of(p.settings) == {p.shard_id: p.seqs[-1]}
    w2, _ = within(patience_s, run_poller_worker(p.settings, {}))
    assert w2.applier.totals.records == 0


async def run_fanout_worker(s: Settings) -> tuple[Worker, Spy]:
    """A worker in fanout mode until idle. (Not test_fanout's: its record of what was
    applied parses every record sharing an applied one's sequence number, which a KPL
    aggregate's poison user record does.)"""
    async with Aws(s).clients("kinesis", "dynamodb") as c:
        spy = Spy(c["kinesis"])
        w = wiring.worker(s, spy, c["dynamodb"])
        assert isinstance(w.poller, FanoutPoller)
        w.poller.discovery_interval = 0.5
        await w.run(until_idle=True, final_refit=False)
        return w, spy


def by_fanout(p: Published, patience_s: float) -> None:
    """Enhanced fan-out (SubscribeToShard on kinesis-mock), until idle."""
    w, spy = within(patience_s, run_fanout_worker(p.settings))
    t = w.applier.totals
    assert (t.applied, t.duplicate, t.rejected) == (p.applied, 0, len(p.expected_letters()))
    assert spy.get_records_records == 0  # every record came by SubscribeToShard
    assert checkpoint_of(p.settings) == {p.shard_id: p.seqs[-1]}


def by_lambda(p: Published, patience_s: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """``caa.entry.lambda_stream.handler`` on the event source mapping's event: no batch
    item failures is Lambda's checkpoint past the batch; Lambda delivers at least once, so
    a second delivery must change nothing."""
    (event,) = kinesis_events(p.settings)
    assert [r["kinesis"]["sequenceNumber"] for r in event["Records"]] == p.seqs
    monkeypatch.setattr(lambda_stream, "_runtime", [])  # a cold start, settings from env
    try:
        for _ in range(2):
            assert lambda_stream.handler(event) == {"batchItemFailures": []}
            assert_applied(p)
    finally:
        if lambda_stream._runtime:
            lambda_stream._runtime[0].close()


def daemon_records(p: Published) -> list[dict[str, Any]]:
    """The shard's records as the MultiLangDaemon sends them: a valid KPL aggregate as its
    user records (sub-sequence numbers 0, 1, ...), anything else whole. (The daemon's own
    de-aggregation passes a record with a wrong MD5 or protobuf through whole too; the
    processor must dead-letter whatever it is given.)"""
    kinesis = Aws(p.settings).client("kinesis")
    it = kinesis.get_shard_iterator(StreamName=p.settings.stream_name, ShardId=p.shard_id,
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    out: list[dict[str, Any]] = []
    for r in kinesis.get_records(ShardIterator=it, Limit=10_000)["Records"]:
        try:
            users = deaggregate(r["Data"])
        except BadAggregate:
            users = None
        parts = [(u.partition_key, u.data) for u in users] if users else [
            (r["PartitionKey"], r["Data"])]
        out.extend({
            "action": "record", "data": base64.b64encode(data).decode(),
            "partitionKey": pk, "sequenceNumber": r["SequenceNumber"], "subSequenceNumber": i,
            "approximateArrivalTimestamp": int(r["ApproximateArrivalTimestamp"].timestamp()
                                               * 1000),
        } for i, (pk, data) in enumerate(parts))
    return out


class Daemon:
    """The MultiLangDaemon's side of amazon_kclpy's protocol: ``readline`` gives the
    processor its next message, and each checkpoint it writes is answered (a success)
    before the next message; everything it writes is kept, parsed."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.pending = list(messages)
        self.written: list[dict[str, Any]] = []

    def readline(self) -> str:
        return json.dumps(self.pending.pop(0)) + "\n" if self.pending else ""

    def write(self, text: str) -> None:
        for line in filter(str.strip, text.splitlines()):
            message = json.loads(line)
            self.written.append(message)
            if message["action"] == "checkpoint":
                self.pending.insert(0, {**message, "error": None})

    def flush(self) -> None:
        pass


def by_kcl(p: Published, patience_s: float) -> None:
    """The KCL record processor behind amazon_kclpy's ``KCLProcess``, given the daemon's
    messages (initialize, the records, shutdown requested): it must checkpoint the last
    user record, twice (after the batch, at shutdown). amazon_kclpy swallows a processor's
    exception into stderr: none may be there."""
    from amazon_kclpy import kcl as kclpy

    records = daemon_records(p)
    daemon = Daemon([
        {"action": "initialize", "shardId": p.shard_id, "sequenceNumber": None,
         "subSequenceNumber": None},
        {"action": "processRecords", "records": records, "millisBehindLatest": 0},
        {"action": "shutdownRequested"}])
    stderr = io.StringIO()
    loop = asyncio.new_event_loop()
    stack = AsyncExitStack()
    applier = loop.run_until_complete(wiring.open_applier(p.settings, stack))
    core = Processor(applier, p.settings.stream_name, loop, max_pause_s=1.0)
    process = kclpy.KCLProcess(kcl_processor(core), daemon, daemon, stderr)
    thread = threading.Thread(target=process.run, daemon=True)
    try:
        thread.start()
        thread.join(patience_s)
        core.stopping = True  # a processor still retrying gives up at its next failure
        thread.join(10.0)
        assert not thread.is_alive(), "the processor did not return"
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
    assert "Caught exception" not in stderr.getvalue(), stderr.getvalue()
    last = records[-1]
    assert [(m["sequenceNumber"], m["subSequenceNumber"]) for m in daemon.written
            if m["action"] == "checkpoint"] == [
        (last["sequenceNumber"], last["subSequenceNumber"])] * 2
    assert [m["responseFor"] for m in daemon.written if m["action"] == "status"] == [
        "initialize", "processRecords", "shutdownRequested"]


ADAPTERS = ["poller", "fanout", "lambda", "kcl"]


def consume(adapter: str, cases: list[Poison], patience_s: float,
            request: pytest.FixtureRequest) -> None:
    """Publish ``cases`` on a fresh one-shard stream, consume it with ``adapter``, check."""
    if adapter == "fanout":
        s = request.getfixturevalue("efo_settings")(shard_count="1")
    else:
        s = request.getfixturevalue("fresh_settings")(shard_count="1", refit_interval_s="0")
    p = publish(s, cases)
    if adapter == "poller":
        by_poller(p, patience_s)
    elif adapter == "fanout":
        by_fanout(p, patience_s)
    elif adapter == "lambda":
        by_lambda(p, patience_s, request.getfixturevalue("monkeypatch"))
    else:
        by_kcl(p, patience_s)
    assert_applied(p)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_poison_is_a_dead_letter_and_the_shard_goes_on(
    adapter: str, request: pytest.FixtureRequest,
) -> None:
    consume(adapter, CASES, PATIENCE_S, request)


def by_daemon(cases: list[Poison], kinesis_mock: Emulator, emulator: Emulator,
              request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``cases`` through the real Java MultiLangDaemon (its own de-aggregation, its JSON
    protocol, its lease table's checkpoint) and our processor; about 100 s before the KCL
    hands out the lease."""
    request.getfixturevalue("monkeypatch").setenv("AWS_ENDPOINT_URL_KINESIS",
                                                  kinesis_mock.endpoint)  # DynamoDB: moto
    s = request.getfixturevalue("fresh_settings")(shard_count="1", refit_interval_s="0")
    p = publish(s, [c if c.under_kcl is None else replace(c, letters=c.under_kcl)
                    for c in cases])
    app = f"kcl-{uuid.uuid4().hex[:8]}"
    props = tmp_path / "app.properties"
    props.write_text(kcl.properties(s.stream_name, s.region, kcl.KclOptions(
        app, kinesis_endpoint=kinesis_mock.endpoint, dynamodb_endpoint=emulator.endpoint,
        metrics_level="NONE", idle_between_reads_ms=250, failover_ms=5000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    dynamodb = Aws(s).client("dynamodb")

    def checkpointed() -> bool:
        try:  # (not list_tables: it pages at 100 names, and the emulator holds many)
            items = dynamodb.scan(TableName=app)["Items"]
        except dynamodb.exceptions.ResourceNotFoundException:
            return False
        return [i.get("checkpoint", {}).get("S") for i in items] == [p.seqs[-1]]

    log = tmp_path / "daemon.log"
    daemon = kcl.launch(props, ROOT, env, log)
    try:
        _wait("the last record's checkpoint", checkpointed, daemon, log)
    finally:
        _stop(daemon)
    assert "Caught exception" not in log.read_text(errors="replace")
    assert_applied(p)


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java 17")


@pytest.mark.long
@needs_java
def test_the_kcl_daemon_dead_letters_every_poison_and_checkpoints_the_last_record(
    kinesis_mock: Emulator, emulator: Emulator, request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    by_daemon([c for c in CASES if c.name not in KCL_CRASHES], kinesis_mock, emulator,
              request, tmp_path)


@pytest.mark.long
@needs_java
@pytest.mark.parametrize("case", sorted(KCL_CRASHES))
def test_what_stops_the_kcl_daemon(case: str, kinesis_mock: Emulator, emulator: Emulator,
                                   request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if not JAXB_JAR.exists():  # `make test` installs it (Debian's libjaxb-api-java)
        request.applymarker(pytest.mark.xfail(strict=True, reason=KCL_CRASHES[case]))
    by_daemon([c for c in CASES if c.name == case], kinesis_mock, emulator, request, tmp_path)


def test_the_catalogue_covers_the_issue() -> None:
    names = {c.name for c in CASES}
    assert len(names) == len(CASES)
    for kind in ("empty_bytes", "not_utf8", "utf8_bom", "invalid_json", "json_list",
                 "json_string", "json_number", "json_null", "deeply_nested_list",
                 "huge_record", "kpl_bad_md5", "kpl_truncated", "kpl_one_poison_two_good",
                 "unknown_schema_version", "unknown_type", "extra_field", "missing_field",
                 "nan_literal", "infinity_literal", "amount_1e309", "negative_quantity",
                 "total_mismatch", "currency_abc", "jpy_with_decimals", "far_future",
                 "utc_year_0", "before_1970", "no_timezone", "id_with_control_characters",
                 "10k_char_id", "partition_key_not_the_customer", "refund_without_amount",
                 "lone_surrogate_escape", "duplicate_keys"):
        assert kind in names
    assert all(c.letters or c.good or c.others for c in CASES)
    assert set(KCL_CRASHES) <= names
