"""A refused record leaves no reference cycle behind (issue 17's GC finding).

An exception kept in a local of a frame its own traceback holds is a cycle: the frames,
the traceback and the record's text then live until the cyclic collector runs, which the
applier's GC policy makes rare (young threshold 100,000). Every poison of the catalogue
goes through :func:`consumers.admission.admit` with the collector off; a full collection
afterwards must find nothing to free (reference counting freed it all).
"""

from __future__ import annotations

import contextlib
import gc

import pytest

from consumers.admission import admit
from models.events import EventRejected
from tests.integration.poison_cases import T0, Poison, catalogue

CASES = catalogue()


def _admit(case: Poison) -> None:
    with contextlib.suppress(EventRejected):
        admit(case.data, case.partition_key, arrival_ts=None, now_ts=T0.timestamp() + 3600)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_refused_record_leaves_no_cyclic_garbage(case: Poison) -> None:
    _admit(case)  # the first call may fill caches (pydantic's, the decoders')
    gc.collect()
    gc.disable()
    try:
        _admit(case)
        assert gc.collect() == 0
    finally:
        gc.enable()
