"""The next-order date found day by day (models.learn.pareto_nbd_next_order) is the date the
brentq root gave: for random histories and parameters, both quantiles, every as-of day; at
a root placed on a half day, the function answers with brentq's own root; beyond the last
day cell, and when the probability is never reached, likewise."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from models.learn import pareto_nbd_next_order as nod
from models.learn.pareto_nbd import ParetoNbdParams, p_alive
from models.learn.pareto_nbd_next_order import DAY_CELLS, next_order_day
from models.learn.pareto_nbd_windows import _buy_if_alive, _pi_now, next_order_quantile

CDNOW_PNBD = ParetoNbdParams(r=0.5533, alpha=10.578, s=0.6062, beta=11.668)


def _date(as_of_day: int, weeks: float | None) -> int | None:
    return None if weeks is None else round(as_of_day + weeks * 7.0)


#: fits like CDNOW's and the synthetic stream's (customers who buy again within a year)
params_st = st.builds(ParetoNbdParams, st.floats(0.2, 3.0), st.floats(1.0, 40.0),
                      st.floats(0.05, 2.0), st.floats(1.0, 60.0))


@settings(max_examples=400, deadline=None)
@given(params=params_st, x=st.integers(0, 60), t_x=st.integers(0, 500),
       extra=st.integers(0, 120), as_of=st.integers(0, 25_000),
       q=st.sampled_from([0.5, 0.8, 0.2, 0.95]))
def test_the_same_date_as_brentq(params: ParetoNbdParams, x: int, t_x: int, extra: int,
                                 as_of: int, q: float) -> None:
    if x == 0:
        t_x = 0
    tx_w, big_t = t_x / 7.0, (t_x + extra) / 7.0
    root = next_order_quantile(params, q, x, tx_w, big_t)
    day = next_order_day(params, q, x, tx_w, big_t)
    assert _date(as_of, day) == _date(as_of, root)
    if day is not None and root is not None and root * 7.0 < DAY_CELLS - 1:
        assert abs(day * 7.0 - root * 7.0) <= 0.5 + 1e-6


def test_a_grid_of_histories_mostly_by_cells() -> None:
    """Every date equal, and most found from the cells (not brentq's fallback)."""
    by_cell = total = 0
    for x in range(1, 30, 3):
        for t_x in range(7, 400, 37):
            for recency in (0, 3, 11, 30):
                for q in (0.5, 0.8):
                    args = (CDNOW_PNBD, q, x, t_x / 7.0, (t_x + recency) / 7.0)
                    root, day = next_order_quantile(*args), next_order_day(*args)
                    for as_of in (0, 9_862, 20_000):
                        assert _date(as_of, day) == _date(as_of, root)
                    total += root is not None
                    by_cell += (day is not None and day != root
                               and abs(day * 7.0 - round(day * 7.0)) < 1e-9)
    assert total > 300 and by_cell > 0.95 * total


def test_a_root_on_a_half_day_is_brentq_own() -> None:
    """q chosen so that the root is 10.5 days exactly: the cell is not taken."""
    x, t_x, big_t = 3, 20 / 7.0, 30 / 7.0
    alive = p_alive(CDNOW_PNBD, x, t_x, big_t)
    q = alive * _buy_if_alive(CDNOW_PNBD, 10.5 / 7.0, x, big_t)
    got = next_order_day(CDNOW_PNBD, q, x, t_x, big_t)
    assert got == next_order_quantile(CDNOW_PNBD, q, x, t_x, big_t)
    assert got is not None and math.isclose(got * 7.0, 10.5, abs_tol=1e-7)


def test_beyond_the_last_cell_and_never() -> None:
    x, t_x, big_t = 0, 0.0, 300 / 7.0  # a one-off buyer long gone: slow to buy again
    limit = p_alive(CDNOW_PNBD, x, t_x, big_t) * _pi_now(CDNOW_PNBD, x, big_t)
    far = next_order_quantile(CDNOW_PNBD, 0.99 * limit, x, t_x, big_t)
    assert far is not None and far * 7.0 > DAY_CELLS
    assert next_order_day(CDNOW_PNBD, 0.99 * limit, x, t_x, big_t) == far
    assert next_order_day(CDNOW_PNBD, limit, x, t_x, big_t) is None
    assert next_order_day(CDNOW_PNBD, 0.0, x, t_x, big_t) == 0.0


def test_histories_with_the_same_x_and_t_share_the_cells() -> None:
    nod._cell_ends.cache_clear()
    x, big_t = 4, 40 / 7.0
    for t_x in (10, 20, 30, 40):
        for q in (0.5, 0.8):
            next_order_day(CDNOW_PNBD, q, x, t_x / 7.0, big_t)
    assert nod._cell_ends.cache_info().currsize == 1
    kept = sum(not math.isnan(v) for v in nod._cell_ends(CDNOW_PNBD, x, big_t))
    assert kept < 8 * math.ceil(math.log2(DAY_CELLS))  # fewer than 8 separate searches
