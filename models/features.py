"""Features derived from a customer's state at a point in (event) time.

Time in the stream is event time: ``as_of`` is a watermark taken from the
events themselves, so a replay of 1997 data is judged as of 1997, not today.

>>> from models.state import CustomerState, DAY
>>> s = CustomerState.new("c")
>>> s.purchases, s.spend_cents, s.days, s.first_ts, s.last_ts = 3, 3000, [0, 7, 14], 0, 14 * DAY
>>> rfm(s, 21 * DAY)
{'recency_days': 7.0, 'frequency': 3.0, 'monetary': 10.0}
>>> bgnbd_inputs(s, 21 * DAY)
(2, 2.0, 3.0)
"""

from __future__ import annotations

from models.state import DAY, CustomerState

WEEK_DAYS = 7.0


def rfm(state: CustomerState, as_of_ts: int) -> dict[str, float]:
    """Recency in days, frequency in distinct purchase days, monetary = mean order value."""
    return {
        "recency_days": max(0.0, (as_of_ts - state.last_ts) / DAY),
        "frequency": float(len(state.days)),
        "monetary": state.spend_cents / 100.0 / max(1, state.purchases),
    }


def bgnbd_inputs(state: CustomerState, as_of_ts: int) -> tuple[int, float, float]:
    """(x, t_x, T) in weeks with same-day purchases merged, as BG/NBD expects.

    Day numbers are whole UTC days; T counts from the first purchase day to the
    day of ``as_of`` (so a customer who bought today has T = 0).
    """
    if not state.days:
        return 0, 0.0, 0.0
    first, last = state.days[0], state.days[-1]
    as_of_day = max(last, as_of_ts // DAY)
    return len(state.days) - 1, (last - first) / WEEK_DAYS, (as_of_day - first) / WEEK_DAYS
