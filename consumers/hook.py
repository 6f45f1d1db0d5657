"""The analysis hook: what the effects half asks of the AI analysis, and nothing more.

:class:`~consumers.applier.BatchApplier` and :func:`~consumers.refit.rewrite_predictions`
call it around their writes; :class:`consumers.analysis.enricher.Enricher` is the one
implementation. Keeping the protocol here means the applier does not import the Bedrock
side (clients, prompt, budget) at all, and an adapter without AI analysis passes ``None``.

Order of calls for one batch: ``attach`` before the predictions are written (so each new
statistical prediction carries the customer's latest analysis), then, once the effects
are durable, ``reconcile`` (re-merge analyses that landed during the write) and
``observe`` (file the changed customers for analysis; never blocks, never raises). After a
refit, ``schedule`` queues the recently active customers for a scheduled re-analysis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from consumers.core import BatchResult
from models.prediction import Prediction
from models.state import CustomerState


class AnalysisHook(Protocol):
    """What the applier and the refit need from the AI analysis."""

    async def attach(self, predictions: Sequence[Prediction], erased: Iterable[str] = ()
                     ) -> list[Prediction]:
        """The same predictions, each with its customer's latest analysis merged in, but for
        the ``erased`` customers (an erasure of the batch: their prediction, if any, is a
        re-created customer's, which the erased history's analysis must not reach)."""
        ...

    async def reconcile(self, written: Sequence[Prediction]) -> int:
        """Re-merge analyses newer than the written items; returns how many."""
        ...

    def observe(self, result: BatchResult) -> None:
        """File the customers a durably written batch changed."""
        ...

    def schedule(self, states: Iterable[CustomerState], predictions: dict[str, Prediction],
                 as_of_ts: int) -> int:
        """Queue customers for a scheduled re-analysis after a refit; returns how many."""
        ...


class RequestSink(Protocol):
    """Where durable analysis requests go (:class:`consumers.analysis.requests.RequestQueue`):
    the applier sends a written batch's changed customers there instead of ``observe``."""

    async def send_result(self, result: BatchResult, touched: Iterable[str]) -> int:
        """Send one request per customer ``result`` changed (and per ``touched`` customer
        left unchanged); raises when they could not be sent."""
        ...

    async def send_scheduled(self, states: Iterable[CustomerState], as_of_ts: int) -> int:
        """Send one scheduled re-analysis request per state, due at once (no debounce);
        returns how many; raises when they could not be sent."""
        ...
