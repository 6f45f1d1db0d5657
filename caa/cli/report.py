"""``caa report``: write one self-contained HTML page about the customers, models and costs
(the data: :func:`caa.report.build.load`; the page: :func:`caa.report.page.render`).

Needs matplotlib (the ``report`` or ``demo`` extra), imported only when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from caa.aws import Aws
from caa.settings import Settings

DEFAULT_OUT = Path("out/report.html")
DEFAULT_EVALUATION = Path("out/evaluation-customers.csv")
DEFAULT_BENCH = Path("out/bench.json")


def report(settings: Settings, aws: Aws, out: Path, evaluation: Path, bench: Path) -> int:
    """Write the page to ``out`` and print its path; ``evaluation`` (from ``caa evaluate``)
    and ``bench`` (from ``make bench``) may be missing. 2 without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("caa report needs matplotlib: pip install -e '.[report]'", file=sys.stderr)
        return 2
    from caa.report.build import load
    from caa.report.page import render

    data = load(settings, aws, evaluation, bench)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    print(out)
    return 0
