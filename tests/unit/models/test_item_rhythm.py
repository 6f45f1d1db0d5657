"""An item's kept rhythm (``ItemStats.of_days``) is never stale: after any sequence of
purchases, returns, compactions and copy-on-write clones, the kept result is what a fresh
computation gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from models.item_stats import ItemStats, ItemTable
from models.learn.forecaster import _rhythm

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from("abc"), st.integers(0, 60), st.booleans()),
    st.tuples(st.just("back"), st.sampled_from("abc"), st.integers(0, 60), st.booleans()),
    st.tuples(st.just("compact"), st.just("a"), st.integers(0, 60), st.just(False)),
    st.tuples(st.just("clone"), st.just("a"), st.just(0), st.booleans()),
), max_size=60)


def _fresh(stats: ItemStats) -> object:
    return _rhythm(ItemStats(stats.orders, stats.quantity, dict(stats.spend), stats.early,
                             stats.first_day, list(stats.days)))


@settings(max_examples=200, deadline=None)
@given(ops=ops)
def test_the_kept_rhythm_is_never_stale(ops: list[tuple[str, str, int, bool]]) -> None:
    table = ItemTable(2)  # two keys of three: evictions too
    for op, key, day, flag in ops:
        if op == "add":
            table.add(key, day, 1, 100, "EUR", new_order=flag)
        elif op == "back":
            table.take_back(key, 1, 100, "EUR", whole_order=flag)
        elif op == "compact":
            table.compact(day)
        else:
            twin = table.clone()
            if flag:  # go on with the clone; the original must keep its own
                for stats in twin.values():
                    stats.of_days(_rhythm)
                table = twin
        for stats in table.values():
            assert stats.of_days(_rhythm) == _fresh(stats)


def test_one_result_is_kept_and_reused() -> None:
    stats = ItemStats()
    for day in (1, 8, 15):
        stats.add_day(day)
    calls: list[int] = []

    def counted(s: ItemStats) -> int:
        calls.append(1)
        return s.day_count

    assert stats.of_days(counted) == stats.of_days(counted) == 3 and len(calls) == 1
    stats.add_day(8)  # a day it has: nothing changes
    assert stats.of_days(counted) == 3 and len(calls) == 1
    stats.add_day(20)
    assert stats.of_days(counted) == 4 and len(calls) == 2
    stats.compact(9)
    assert stats.of_days(counted) == 4 and len(calls) == 3  # days moved to early
