"""``caa report``: write one self-contained HTML page about the customers, models and costs
(the data: :func:`caa.report.build.load`; the page: :func:`caa.report.page.render`).

Needs matplotlib (the ``report`` or ``demo`` extra), imported only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from caa.aws import Aws
from caa.cli import output
from caa.cli.context import current
from caa.cli.output import JsonFlag
from caa.errors import CaaError
from caa.settings import Settings

DEFAULT_OUT = Path("out/report.html")
DEFAULT_EVALUATION = Path("out/evaluation-customers.csv")
DEFAULT_BENCH = Path("out/bench.json")


def report(settings: Settings, aws: Aws, out: Path, evaluation: Path, bench: Path,
           as_json: bool = False) -> int:
    """Write the page to ``out`` and print its path; ``evaluation`` (from ``caa evaluate``)
    and ``bench`` (from ``make bench``) may be missing. 1 without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CaaError("caa report needs matplotlib", "pip install -e '.[report]'") from None
    from caa import wiring
    from caa.report.build import load
    from caa.report.page import render

    fx = wiring.rates(settings)  # a bad rates file fails before anything is read
    with output.progress() as progress:  # on stderr: `--json` output stays parseable
        data = load(settings, aws, evaluation, bench, progress, fx)
        page = render(data, progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    if as_json:
        output.print_json({"out": str(out), "bytes": out.stat().st_size,
                           "evaluation": str(evaluation) if evaluation.exists() else None,
                           "bench": str(bench) if bench.exists() else None})
    else:
        print(out)
    return 0


def _report(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="The page to write.")] = DEFAULT_OUT,
    evaluation: Annotated[Path, typer.Option(
        help="Per-customer evaluation CSV from `caa evaluate` (left out if missing).")
    ] = DEFAULT_EVALUATION,
    bench: Annotated[Path, typer.Option(
        help="Benchmark figures from `make bench` (left out if missing).")] = DEFAULT_BENCH,
    as_json: JsonFlag = False,
) -> int:
    inv = current(ctx)
    return report(inv.settings, inv.aws(), out, evaluation, bench, as_json)


def register(app: typer.Typer) -> None:
    app.command("report", rich_help_panel=output.DATA,
                help="Write one self-contained HTML page: segment sizes over time, centres, "
                     "calibration, lift, throughput and latency, Bedrock cost per day; "
                     "prints its path.")(_report)
