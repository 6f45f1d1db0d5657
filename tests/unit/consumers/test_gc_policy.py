"""The applier's GC policy: freeze after a batch, a raised young threshold, all undone."""

from __future__ import annotations

import gc

from consumers.gc_policy import GcPolicy


def test_a_batch_freezes_what_is_alive_and_raises_the_young_threshold_until_release() -> None:
    before = gc.get_threshold()
    policy = GcPolicy(young_threshold=54_321)
    try:
        policy.after_batch()
        assert gc.get_threshold() == (54_321, *before[1:])
        assert gc.get_freeze_count() > 0
        policy.after_batch()  # a second batch keeps the interpreter's own values to restore
        assert policy.batches == 2
    finally:
        policy.release()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_disabled_policy_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    policy = GcPolicy(enabled=False)
    policy.after_batch()
    assert gc.get_threshold() == before
    assert policy.batches == 0
