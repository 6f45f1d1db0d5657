"""The cyclic garbage collector in the consumers' hot loop (issue 17): freeze after a batch.

Why. The states a worker keeps (the state cache, the segment model, the imported code) are
long-lived; CPython's full (generation-2) collections walk all of them, every reference of
every container, each time the survivors of recent collections reach a quarter of them,
and a batch's new states are such survivors: the cost grows with the cache. Replaying
CDNOW through the pure core with every state cached (``bench/core_cpu.py``, 2026-11-30):
390 -> 345 us/event with Pareto/NBD (x1.13), 305 -> 255 with BG/NBD (x1.19); the
synthetic stream x1.13 and x1.18; peak RSS unchanged (301.6 MiB for CDNOW either way).

What. After each applied batch, :meth:`GcPolicy.after_batch` collects the young
generations (what the batch left that is not yet examined: the short-lived cycles, such as
scipy's root-finding closures, die there) and then ``gc.freeze()``: every object alive
moves to the permanent generation, which the collector never walks. A batch's survivors
are thus examined in the young generations and then left alone; full collections only
walk what arrived since the last freeze. Outputs are unchanged (the collector frees only
unreachable objects, and reference counting frees the rest as before).

The cost. A frozen object that becomes part of an unreachable cycle later is not freed
until it is unfrozen (reference counting still frees everything acyclic: evicted cache
states, replaced models). So :meth:`GcPolicy.sweep` unfreezes and runs a full collection
when the interpreter's allocated memory blocks (``sys.getallocatedblocks()``: every live
object of pymalloc, frozen garbage included) have doubled (:attr:`GcPolicy.sweep_growth`
1.0) since the last sweep, and at the latest every :attr:`GcPolicy.sweep_every` batches:
while the cache fills, each object is walked about twice in all (amortised, as a growing
array is copied), and the garbage held frozen is bounded by the live blocks; in a steady
state (a full cache) the sweeps are rare. In the core itself no cycle outlives its batch (a
CDNOW replay leaves nothing for a final full collection): the sweeps are for what the
adapters around it may leave. Measured on the CDNOW replay (2026-12-01): growth by a
quarter (CPython's own share) swept 8 times, 240 us/event; doubling 3 times, 224 us/event;
the same peak RSS (359 MiB). The block count is the allocator's, 0.3 ms a batch
(``gc.get_freeze_count()`` walks the permanent generation: 17 ms with 120,000 objects).

Young collections. Within a batch, CPython collects the youngest generation every 700
net container allocations, walking whatever the batch has built since; what survives is
walked again by the collection after the batch. The policy raises that threshold to
:attr:`GcPolicy.young_threshold` (100,000) while it runs: the short-lived cycles still die
within a batch or at its end, at most that many allocations later (a few MB), and the
collector walks each survivor about once. Instructions per event under cachegrind, first
15,000 CDNOW events (2026-12-01): 749k -> 728k (-2.7%; 20,000: -1.4%; 1,000,000: -2.8%);
the synthetic stream -2.0%.

What the young collection costs and frees (2026-12-02, full CDNOW replay, Pareto/NBD): 23-28
us/event of 290-320 (about 8.5% of the CPU; the time goes to cache misses on the old objects
the batch's new ones refer to: under cachegrind it is 2% of the instructions), and it frees
nothing: the core leaves no cycle (the one it left, a refused record's error held by a frame
of its own traceback, is gone: ``tests/unit/consumers/test_rejection_garbage.py``). In the
local worker (aiobotocore, the stores) it frees 13-707 objects a batch. Freezing without it
would hold those until a sweep (memory for CPU). So the young collection backs off while it
finds nothing: after one that frees nothing, the next comes twice as many batches later (up to
:attr:`GcPolicy.young_every_max`, 64); one that frees something brings it back to every
batch. The pure core thus collects about once in 64 batches, and a worker whose adapters
leave cycles each batch still collects each batch; what a skipped batch leaves is frozen
until the next sweep. The backed-off collections fall at a varying (seeded) batch of each
interval, so garbage left on a regular pattern (every other batch) is found all the same.
Likewise the sweeps on growth: they run only while the last young collection found
garbage; otherwise (no sign of any) only every :attr:`GcPolicy.sweep_every` batches, so
what a backed-off policy freezes is bounded by those batches (not by the live blocks), and a
sweep that frees anything brings the young collections back to every batch.

Replaying CDNOW through the pure core (2026-12-02, interleaved pairs, CPU us/event,
median (range) of 3): collecting every batch 276 (246-286), backing off 232 (229-247); with
the growth sweeps (three, 8% of the CPU by py-spy) skipped too, 170 (170-187) against 195
(189-217) in the same minutes; the synthetic stream (550 customers: a small heap, its two
sweeps cheap) 215 (172-277) against 222 (201-260) over 5 pairs, within this machine's noise;
the same peak RSS (387 MiB for CDNOW, 184 for the synthetic stream).

The collector is the process's: one policy (:data:`DEFAULT`) serves every applier in it.
"""

from __future__ import annotations

import gc
import random
import sys
from dataclasses import dataclass, field


@dataclass
class GcPolicy:
    enabled: bool = True
    #: sweep when the frozen objects have grown by this share since the last sweep
    sweep_growth: float = 1.0
    #: the youngest generation's threshold while the policy runs (CPython's is 700): net
    #: container allocations between two collections of it
    young_threshold: int = 100_000
    #: and at the latest after this many batches
    sweep_every: int = 500
    #: the most batches between two young collections (they back off while finding nothing)
    young_every_max: int = 64
    young_collections: int = 0
    batches: int = 0
    sweeps: int = 0
    #: allocated blocks after the last sweep (0: none yet: the first batch whose young
    #: collection finds garbage sweeps)
    _base: int = 0
    _since: int = 0
    #: the interpreter's thresholds before the policy raised the young one (None: not yet)
    _thresholds: tuple[int, ...] | None = None
    #: batches between young collections now (1, 2, 4, ... young_every_max), and until the next
    _young_every: int = 1
    _young_due: int = 1
    #: where in each backed-off interval the collection falls (seeded: reproducible), so
    #: garbage a worker leaves every other batch, say, is not always in the skipped ones
    _jitter: random.Random = field(default_factory=lambda: random.Random(17), repr=False)

    def after_batch(self) -> None:
        """Collect the young generations when due (see the module's text), freeze everything
        alive; sweep when due."""
        if not self.enabled:
            return
        self.batches += 1
        self._since += 1
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            gc.set_threshold(self.young_threshold, *self._thresholds[1:])
        self._young_due -= 1
        if self._young_due <= 0:
            found = gc.collect(1)
            self.young_collections += 1
            self._young_every = 1 if found else min(2 * self._young_every,
                                                    self.young_every_max)
            # due within the next interval, at a varying batch of it (on average every
            # _young_every batches)
            self._young_due = self._jitter.randint(1, 2 * self._young_every - 1)
        gc.freeze()
        # growth sweeps only while young collections find garbage (see the module's text)
        if (self._since >= self.sweep_every
                or (self._young_every == 1
                    and sys.getallocatedblocks() > self._base * (1 + self.sweep_growth))):
            self.sweep()

    def sweep(self) -> None:
        """A full collection over every object, frozen ones included; then freeze again."""
        gc.unfreeze()
        if gc.collect():  # frozen garbage: the young collections are due every batch again
            self._young_every = self._young_due = 1
        gc.freeze()
        self._base = sys.getallocatedblocks()
        self._since = 0
        self.sweeps += 1

    def release(self) -> None:
        """Back to CPython's own collections (the frozen objects are unfrozen)."""
        self.enabled = False
        gc.unfreeze()
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None


#: the process's policy, called by :meth:`consumers.applier.BatchApplier.apply`
DEFAULT = GcPolicy()
