"""The analysis queue from the command line (``CAA_ANALYSIS_QUEUE``,
consumers.analysis.requests): ``caa analyzer`` reads and analyses it, as the analyzer function
does on AWS, and ``caa analyze`` sends its on-demand request there and waits for the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from contextlib import AsyncExitStack
from typing import Annotated, Any

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.errors import BadInput
from caa.settings import Settings

#: how often `caa analyze` looks for its answer in the analyses table
_POLL_S = 0.5


def _need_queue(settings: Settings, what: str) -> str:
    if not settings.analysis_queue:
        raise BadInput(f"{what} reads the analysis queue: set CAA_ANALYSIS_QUEUE (its name or "
                       "URL; `caa setup` creates it)")
    return settings.analysis_queue


async def run_analyzer(settings: Settings, until_empty: bool) -> dict[str, Any]:
    """Analyse requests from the queue until SIGTERM/SIGINT (or, ``until_empty``, until
    nothing is left in it); the analyzer's and the enricher's counts."""
    from caa import wiring

    stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        analyzer = await wiring.open_request_analyzer(settings, stack, read_queue=True)
        enricher = analyzer.enricher

        def on_signal() -> None:  # retries end at once; calls in flight get their grace
            enricher.abandon_queued()
            stop.set()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)

        async def flush() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.usage_flush_s)
                await enricher.flush_counters()

        flushing = asyncio.create_task(flush())
        try:
            if until_empty:
                with output.progress() as progress:
                    work = asyncio.create_task(analyzer.drain(progress))
                    await asyncio.wait([work, asyncio.create_task(stop.wait())],
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not work.done():  # a signal: the drain's worker winds down
                        work.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await work
            else:
                await analyzer.run(stop)
        finally:
            stop.set()
            await flushing
    return {"requests": analyzer.summary(), "ai": enricher.summary()}


def analyzer_command(settings: Settings, until_empty: bool, as_json: bool) -> int:
    """``caa analyzer``."""
    queue = _need_queue(settings, "caa analyzer")
    if not until_empty:
        output.note(f"analysing requests from {queue} until Ctrl-C or SIGTERM")
    out = asyncio.run(run_analyzer(settings, until_empty))
    if as_json:
        output.print_json(out)
    else:
        output.pairs("analyzer", [*((f"requests {k}", str(v)) for k, v in out["requests"].items()),
                                  *((k, str(v)) for k, v in out["ai"].items()
                                    if not isinstance(v, dict | list))])
    return 0


async def queued_analysis(settings: Settings, aws: Aws, customer_id: str,
                          wait_s: float) -> dict[str, Any] | None:
    """Send an on-demand request for ``customer_id`` (None when it has no prediction) and
    wait up to ``wait_s`` for an on-demand analysis at least as new in the analyses table:
    that record (without its signature), or ``{"queued": ...}`` when none came in time."""
    from caa import wiring
    from consumers.stores.predictions import PredictionStore
    from models.prediction import Prediction

    async with aws.clients("dynamodb", "sqs") as c:
        db = wiring.dynamo(settings, c["dynamodb"])
        stored = await PredictionStore(db, settings.tables.predictions).get(customer_id)
        if stored is None:
            return None
        as_of = int(Prediction.model_validate(stored).as_of.timestamp())
        req = await wiring.request_queue(settings, c["sqs"]).send_now(customer_id, as_of)
        store = wiring.analysis_store(settings, db)
        deadline = time.monotonic() + wait_s
        while True:
            rec = (await store.latest([customer_id])).get(customer_id)
            # made after the request was sent (clocks kept by NTP, as AWS's hosts are)
            if (rec is not None and rec.trigger == "on_demand"
                    and rec.at.timestamp() >= req.enqueued_at):
                out = rec.model_dump(mode="json")
                out.pop("signature", None)
                return out
            if time.monotonic() >= deadline:
                return {"queued": settings.analysis_queue, "customer_id": customer_id,
                        "waited_s": wait_s}
            await asyncio.sleep(_POLL_S)


Wait = Annotated[float, typer.Option(
    "--wait", min=0, metavar="SECONDS",
    help="With CAA_ANALYSIS_QUEUE: how long to wait for the analyzer's answer.")]


def _analyzer(
    ctx: typer.Context,
    until_empty: Annotated[bool, typer.Option(
        "--until-empty", help="Stop once the queue holds nothing (delayed requests are "
                              "waited for); default: run until Ctrl-C or SIGTERM.")] = False,
    as_json: JsonFlag = False,
) -> int:
    return analyzer_command(current(ctx).settings, until_empty, as_json)


def register(app: typer.Typer) -> None:
    app.command("analyzer", rich_help_panel=output.AI,
                help="Analyse the requests on the analysis queue (CAA_ANALYSIS_QUEUE), as the "
                     "analyzer function does on AWS.")(_analyzer)
