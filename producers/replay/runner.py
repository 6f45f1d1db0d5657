"""``caa replay``: backfill from files, an S3 prefix or the stream itself, onto the stream
or straight into the processor, as a resumable job.

The loop reads a chunk of records after the job's cursor, checks each with the
consumer's decoder (:func:`producers.replay.tally.check`), hands the chunk to the target
(:mod:`producers.replay.targets`), and once the target acknowledged all of it commits the new
cursor and the job's tallies in one write (:mod:`producers.replay.job`). Nothing is committed
ahead of the target, so an interruption (an error, Ctrl-C, SIGKILL) costs at most the
chunk in flight, which the next run sends again and the consumer's per-customer
event-id digests count once. After the last chunk a job is ``finishing`` (the direct
target's refit) and then ``complete``; running a complete job again does nothing, and
``--restart`` replays it from the beginning.

Replaying the same history twice changes nothing: event ids are deterministic (CDNOW,
synthetic, and whatever the archived events carry), the consumer and the direct
target apply an event id once per customer, and dead letters are keyed by position.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from consumers.admission import TimeRule
from consumers.progress import NO_PROGRESS, Progress
from consumers.refit import RefitReport
from producers.replay.job import JobMismatch, JobState, ReplayJob, digest
from producers.replay.sources import Cursor, Source, SourceRecord
from producers.replay.tally import Checked, ReplayReport, check
from producers.replay.targets import RejectedLog, Target


class Meter(Protocol):
    """Progress: bytes to read (None: unknown), bytes read, records acknowledged."""

    def total(self, nbytes: int | None) -> None: ...

    def read(self, nbytes: int) -> None: ...

    def sent(self, records: int) -> None: ...


class NoMeter:
    def total(self, nbytes: int | None) -> None:
        pass

    def read(self, nbytes: int) -> None:
        pass

    def sent(self, records: int) -> None:
        pass


@dataclass
class ProgressMeter:
    """A :class:`Meter` over a :class:`~consumers.progress.Progress`: the phase "replaying"
    counts the bytes read (its total the sources' size, when known), so one progress display
    can show a replay from its first chunk to the end of its refit."""

    progress: Progress
    name: str = "replaying (bytes read)"

    def total(self, nbytes: int | None) -> None:
        self.progress.phase(self.name, total=nbytes)

    def read(self, nbytes: int) -> None:
        self.progress.advance(nbytes)

    def sent(self, records: int) -> None:
        pass


@dataclass
class Outcome:
    job: str
    status: Literal["complete", "already_complete"]
    report: ReplayReport
    refit: RefitReport | None
    #: records read and acknowledged by this run, and the seconds that took
    sent: int
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def _size(source: Source) -> int | None:
    sizes = [p.size for p in source.parts()]
    return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


async def _renew(job: ReplayJob, target: Target, every_s: float) -> None:
    """However long a chunk takes, the job's lock and the target's lease stay ours (a
    failed renewal is tried again next time: a lease outlives three of them; a lease
    another process took ends this task with GroupBusy, which stops the job)."""
    while True:
        await asyncio.sleep(every_s)
        with contextlib.suppress(ClientError, BotoCoreError):
            await job.lock(time.time())
            await target.renew(time.time())


#: the consumer's defaults (1990 on, 300 s ahead of arrival)
DEFAULT_TIMES = TimeRule()


def _check(record: SourceRecord, max_event_bytes: int, times: TimeRule) -> Checked:
    return check(record, max_event_bytes, future_tolerance_s=times.future_tolerance_s,
                 earliest_ts=times.earliest_ts)


def _take(records: Iterator[SourceRecord], n: int) -> list[SourceRecord]:
    return list(itertools.islice(records, n))


def dry_run(source: Source, max_event_bytes: int, meter: Meter | None = None,
            times: TimeRule = DEFAULT_TIMES) -> ReplayReport:
    """Read and check everything (event times by ``times``, as the consumer's settings
    have them); write nothing anywhere."""
    m = meter or NoMeter()
    report = ReplayReport(runs=1)
    m.total(_size(source))
    for record in source.records(None, m.read):
        report.add(_check(record, max_event_bytes, times))
        if report.records % 1000 == 0:
            m.sent(1000)
    m.sent(report.records % 1000)
    return report


async def _pump(records: Iterator[SourceRecord], target: Target, job: ReplayJob,
                state: JobState, report: ReplayReport, m: Meter, log: RejectedLog | None,
                max_event_bytes: int, chunk_size: int, renewing: asyncio.Task[None],
                times: TimeRule) -> int:
    """Send chunk after chunk, committing each once acknowledged; returns records sent.
    Stops (raising its error) when the lock could not be kept."""

    def prepare() -> list[Checked]:
        return [_check(r, max_event_bytes, times) for r in _take(records, chunk_size)]

    sent = 0
    ahead = asyncio.create_task(asyncio.to_thread(prepare))
    try:
        while checked := await ahead:
            # read and check the next chunk while this one is sent (and paced)
            ahead = asyncio.create_task(asyncio.to_thread(prepare))
            if renewing.done():
                renewing.result()  # GroupBusy: another process has the job or the group
            for c in checked:
                report.add(c)
            await target.send(checked, report)  # acknowledged from here
            last = checked[-1].record
            state.cursor = Cursor(last.part, last.position)
            state.tallies = report.tallies()
            state.rejected_bytes = log.size if log is not None else 0
            await job.save(state)
            sent += len(checked)
            m.sent(len(checked))
    finally:
        ahead.cancel()
    return sent


async def run(
    job: ReplayJob,
    make_source: Callable[[datetime], Source],
    target: Target,
    *,
    summary: str,
    max_event_bytes: int,
    chunk_size: int | None = None,
    restart: bool = False,
    meter: Meter | None = None,
    log: RejectedLog | None = None,
    renew_every_s: float = 10.0,
    progress: Progress = NO_PROGRESS,
    times: TimeRule = DEFAULT_TIMES,
) -> Outcome:
    """Run (or resume) ``job``: ``make_source(started)`` builds the source bounded by the
    job's start time; ``chunk_size`` records are committed at a time (by default the
    target's choice). The job's lock and the target's lease are renewed meanwhile.
    ``meter`` hears the bytes read and records sent; ``progress`` the phases after them
    ("finishing", then the target's own: the direct target's refit). With
    ``meter=ProgressMeter(progress)`` one progress display shows it all."""
    m = meter or NoMeter()
    await job.lock(time.time())
    renewing = asyncio.create_task(_renew(job, target, renew_every_s))
    try:
        state = None if restart else await job.load()
        if state is None:
            state = JobState(job.name, time.time())
        source = make_source(datetime.fromtimestamp(state.created_at, UTC))
        identity = digest(source.identity(), target.name)
        if state.identity and state.identity != identity:
            what = ("its source changed since it started (a file's size or modification "
                    "time, or the set of files or objects, is not what it was)"
                    if state.summary == summary else
                    f"it changed since it started (now: {summary})")
            raise JobMismatch(
                f"job {job.name!r} replays {state.summary}, and {what}; use another --job "
                "name, or --restart to replay this job from the beginning")
        state.identity, state.summary = identity, summary
        report = ReplayReport.from_tallies(state.tallies)
        if state.status == "complete":
            return Outcome(job.name, "already_complete", report, None, 0, 0.0)
        report.runs += 1
        if log is not None:
            log.open(state.rejected_bytes)
        await target.start()
        await job.save(state)
        started, sent = time.perf_counter(), 0
        if state.status == "running":
            m.total(_size(source))
            records = source.records(state.cursor, m.read)
            sent = await _pump(records, target, job, state, report, m, log,
                               max_event_bytes, chunk_size or target.chunk, renewing, times)
            state.status = "finishing"
            await job.save(state)
        seconds = time.perf_counter() - started
        progress.phase("finishing the replay")
        refitted = await target.finish(progress)
        state.status = "complete"
        await job.save(state)
        return Outcome(job.name, "complete", report, refitted, sent, seconds)
    finally:
        renewing.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await renewing  # its error, if any, was raised by _pump already
        await target.close()
        await job.unlock()
