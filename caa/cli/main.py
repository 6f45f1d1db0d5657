"""``caa``: the command line (typer). :func:`app` declares the root (``--version``,
``--debug``) and lets each command group's module declare its commands; :func:`main` runs
it and turns what went wrong into an exit code.

Exit codes: 0 success; 1 the work failed (a failed job, a dry run that found invalid
records, a missing optional dependency); 2 usage (a bad flag or value: click prints the
command's usage); 3-9 the expected failures of :mod:`caa.errors` (one line ``caa: ...`` on
stderr; ``--debug`` or ``CAA_DEBUG=1`` prints the traceback instead); 130 interrupted;
``caa batch --ingest`` 75 while the job still runs. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import typer

from caa.cli import (
    ai,
    analyzer,
    audience,
    customers,
    daily,
    dlq,
    emulator,
    erase,
    evaluate,
    kcl,
    pipeline,
    replay,
    report,
    serve,
    watch,
)
from caa.cli.context import Invocation
from caa.errors import explain
from caa.target import checked

DESCRIPTION = """\
Customer AI Analytics: purchase events stream through Kinesis; caa keeps each customer's
state in DynamoDB and writes one prediction per customer (segment, purchase forecast,
next purchases, AI analysis) for downstream services.

Start with:

* caa run: the whole pipeline locally, on the CDNOW purchase log

* caa show 00001: one customer's prediction and analysis

* caa segments: the customer segments, their sizes and centres

Settings come from CAA_* and the standard AWS_* variables (README, Configuration).
"""


def _version() -> str:
    try:
        return version("customer-ai-analytics")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"caa {_version()}")
        raise typer.Exit(0)


def _root(ctx: typer.Context,
          debug: Annotated[bool, typer.Option(
              "--debug", envvar="CAA_DEBUG",
              help="On an error, print the traceback instead of one line "
                   "(also CAA_DEBUG=1).")] = False,
          show_version: Annotated[bool, typer.Option(
              "--version", callback=_print_version, is_eager=True,
              help="Print the version and exit.")] = False) -> None:
    if isinstance(ctx.obj, Invocation):
        ctx.obj.debug = ctx.obj.debug or debug


def _exit_with(rc: Any, **_: Any) -> None:
    """The command's return value is the exit code."""
    raise typer.Exit(int(rc or 0))


def app() -> typer.Typer:
    """The whole command line, commands in ``--help`` order."""
    root = typer.Typer(name="caa", help=DESCRIPTION, no_args_is_help=True,
                       add_completion=False, rich_markup_mode="rich",
                       context_settings={"help_option_names": ["-h", "--help"]})
    root.callback(result_callback=_exit_with)(_root)
    for group in (pipeline, customers, audience, watch, erase, ai, analyzer, dlq, daily, replay,
                  evaluate, report, serve, kcl, emulator):
        group.register(root)
    return root


def _code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # SystemExit("message")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run ``caa`` with ``argv`` (default: the process's arguments); the exit code."""
    inv = Invocation(debug=_env_debug())
    command = typer.main.get_command(app())
    try:
        # no AWS clients without a chosen target; on AWS, the account named before creating
        with checked(sys.argv[1:] if argv is None else argv, lambda: inv.settings):
            command.main(args=argv, prog_name="caa", obj=inv, standalone_mode=True)
    except SystemExit as exc:
        return _code(exc.code)
    except Exception as exc:
        err = explain(exc, inv.endpoint())
        if err is None:
            raise  # not an expected failure: a bug, with its traceback
        if inv.debug:
            traceback.print_exc()
        else:
            print(f"caa: {err.line()}", file=sys.stderr)
        return err.exit_code
    return 0


def _env_debug() -> bool:
    import os

    return os.environ.get("CAA_DEBUG", "").lower() in {"1", "true", "yes", "on"}


if __name__ == "__main__":
    sys.exit(main())
