"""``caa watch``: tail the prediction change feed (docs/change-feed.md)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.errors import NotSetUp
from caa.settings import Settings
from consumers.ops.changefeed import ChangeFeed, FeedItem, FeedProblem, StartAt, stream_arn


def _arrow(old: object, new: object) -> str:
    return str(new) if old == new else f"{old} -> {new}"


def render(item: FeedItem) -> str:
    """One line for a person."""
    if isinstance(item, FeedProblem):
        return f"skipped {item.sequence or '-'} ({item.customer_id or '?'}): {item.reason}"
    o, n = item.old, item.new
    seg = _arrow(o.segment.name if o else None, n.segment.name if n else None)
    alive = _arrow(o.p_alive if o else None, n.p_alive if n else None)
    return (f"{item.at:%Y-%m-%d %H:%M:%S}  {item.kind:<7}  {item.customer_id}  segment {seg}  "
            f"p_alive {alive}  changed: {', '.join(item.changed) or '-'}")


async def watch(settings: Settings, aws: Aws, *, start: StartAt = "trim_horizon",
                follow: bool = False, customer_id: str | None = None, limit: int | None = None,
                emit: Callable[[FeedItem], None], stop: asyncio.Event | None = None,
                opened: Callable[[], None] | None = None) -> int:
    """Emit the feed's changes (and problems); returns how many changes, or -1 when the
    predictions table has no stream. ``opened`` is called once the start position is
    fixed (with ``latest``, changes after that are seen)."""
    if limit is not None and limit <= 0:
        return 0
    async with aws.clients("dynamodb", "dynamodbstreams") as c:
        arn = await stream_arn(c["dynamodb"], settings.table("predictions"))
        if arn is None:
            return -1
        feed = ChangeFeed(c["dynamodbstreams"], arn, start=start,
                          poll_interval_s=settings.poll_interval_s,
                          idle_polls=settings.idle_polls)
        await feed.open()
        if opened is not None:
            opened()
        n = 0
        async for item in feed.changes(follow=follow, stop=stop, customer_id=customer_id):
            emit(item)
            if not isinstance(item, FeedProblem):
                n += 1
                if limit is not None and n >= limit:
                    break
        return n


def tail(settings: Settings, aws: Aws, start: StartAt, as_json: bool, customer_id: str | None,
         limit: int | None, follow: bool) -> int:
    """``caa watch``: print the changes (one line each, or PredictionChange JSON), problems to
    stderr; 1 when the predictions table has no stream."""
    def emit(item: FeedItem) -> None:
        if isinstance(item, FeedProblem):
            print(output.safe(render(item)), file=sys.stderr)
        else:
            print(item.model_dump_json() if as_json else output.safe(render(item)), flush=True)

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await watch(settings, aws, start=start, follow=follow,
                           customer_id=customer_id, limit=limit, emit=emit, stop=stop)

    n = asyncio.run(run())
    if n < 0:
        raise NotSetUp(f"table {settings.table('predictions')} has no stream",
                       "run `caa setup`")
    output.note(f"{n} change(s)")
    return 0


def _watch(
    ctx: typer.Context,
    start: Annotated[StartAt, typer.Option(
        "--from",
        help="trim_horizon: every change still in the stream (24 h); latest: new "
                       "changes only (with --follow).")] = "trim_horizon",
    as_json: Annotated[bool, typer.Option(
        "--json",
        help="One PredictionChange JSON object per line (docs/change-feed.md).")
    ] = False,
    customer: Annotated[str | None, typer.Option(
        help="Only this customer's changes.", metavar="ID")] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, help="Stop after this many changes.", metavar="N")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow",
        help="Keep waiting for new changes (Ctrl-C stops).")] = False,
) -> int:
    inv = current(ctx)
    return tail(inv.settings, inv.aws(), start, as_json, customer, limit, follow)


def register(app: typer.Typer) -> None:
    app.command("watch", rich_help_panel=output.CUSTOMERS,
                help="Tail the prediction change feed (DynamoDB Streams): one line per "
                     "change, old and new.")(_watch)
