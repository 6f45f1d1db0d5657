"""The applier's GC policy: freeze after a batch, a raised young threshold, all undone."""

from __future__ import annotations

import gc
import sys
import weakref

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


class _Node:
    """A container that can take part in a reference cycle (and a weak reference)."""

    def __init__(self) -> None:
        self.other: object = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_young_collections_back_off_while_they_find_nothing_and_return_with_garbage() -> None:
    gc.collect()
    policy = GcPolicy(young_every_max=16)
    try:
        for _ in range(200):  # batches that leave no cycle
            policy.after_batch()
        idle = policy.young_collections
        assert idle < 50  # about 1, 2, 4, 8, then every 16th: some 16 (every batch: 200)
        cycles = []
        for _ in range(100):  # batches that each leave a cycle
            cycles.append(_cycle())
            policy.after_batch()
        # within the backed-off interval a collection finds the garbage; from then on,
        # every batch is collected again and its cycle freed before it is frozen
        assert policy.young_collections - idle >= 100 - 16
        assert all(ref() is None for ref in cycles[16:])
        policy.sweep()
        assert all(ref() is None for ref in cycles)  # what was frozen goes with a sweep
    finally:
        policy.release()


def test_growth_sweeps_only_while_young_collections_find_garbage() -> None:
    gc.collect()
    kept: list[list[object]] = []

    def grow(policy: GcPolicy, garbage: bool) -> None:
        for _ in range(3):  # each batch adds a tenth to the interpreter's allocated blocks
            kept.append([[i] for i in range(sys.getallocatedblocks() // 10)])
            if garbage:
                _cycle()
            policy.after_batch()

    idle = GcPolicy(sweep_growth=0.05)
    try:
        grow(idle, garbage=False)
        assert idle.sweeps < 3  # none (or one, two: stray garbage of another thread)
    finally:
        idle.release()
    kept.clear()
    gc.collect()
    busy = GcPolicy(sweep_growth=0.05)
    try:
        grow(busy, garbage=True)
        assert busy.sweeps == 3  # the first batch's, then one per growth by 5%
    finally:
        busy.release()


def test_garbage_left_every_other_batch_is_found_by_the_backed_off_collections() -> None:
    gc.collect()
    policy = GcPolicy(young_every_max=16)
    refs = []
    try:
        for batch in range(1, 401):
            if batch % 2 == 0:
                refs.append(_cycle())
            policy.after_batch()
        freed = sum(ref() is None for ref in refs)
        print(f"freed {freed} of {len(refs)} cycles before a sweep; "
              f"{policy.young_collections} young collections in 400 batches")
        assert freed >= len(refs) // 5  # collections at odd batches only would free none
    finally:
        policy.release()
