"""The crash harness in a reduced form: a slice of CDNOW, a few SIGKILLs, exact totals.

``make chaos`` runs the same harness (deploy/local/chaos.py) on the whole log with at least
ten kills; this keeps the kill/restart/verify loop in every ``make test``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local.chaos import run_chaos
from deploy.local.emulator import Emulator

pytestmark = pytest.mark.integration


@pytest.mark.long
def test_sigkill_at_random_points_loses_nothing_and_counts_nothing_twice(
    emulator: Emulator, tmp_path: Path
) -> None:
    report = run_chaos(emulator.endpoint, limit=4000, kills=4, seed=7, delay_s=(1.5, 4.0),
                       probability=3.0, get_records_limit=200, workdir=tmp_path, say=False)
    assert report.kills >= 4
    assert set(report.kills_by_point) == {"external", "mid_batch_write", "before_checkpoint",
                                          "after_checkpoint"}
    assert report.runs >= report.kills
    assert (report.lost, report.double_counted, report.spend_mismatches) == (0, 0, 0), \
        report.line()
    assert report.rejected == 6  # one dead letter per poison record, however often re-read
    assert report.line() == f"lost=0 double_counted=0 kills={report.kills} rejected=6"
