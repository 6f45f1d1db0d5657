"""deploy.local.moto_server.atomic: a moto handler's requests run one at a time."""

from __future__ import annotations

import threading
import time
from typing import Any

from deploy.local.moto_server import atomic


def _handler_class() -> type[Any]:
    """A stand-in for a moto response class whose ``call_action`` records how many calls
    run at once (each waits long enough for the others to start)."""

    class Handler:
        running = 0
        most = 0
        guard = threading.Lock()

        def call_action(self) -> str:
            with Handler.guard:
                Handler.running += 1
                Handler.most = max(Handler.most, Handler.running)
            time.sleep(0.02)
            with Handler.guard:
                Handler.running -= 1
            return "done"

    return Handler


def _most_at_once(handler: type[Any], calls: int = 8) -> int:
    start = threading.Barrier(calls)
    results: list[str] = []

    def call() -> None:
        start.wait()
        results.append(handler().call_action())

    threads = [threading.Thread(target=call) for _ in range(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["done"] * calls
    return int(handler.most)


def test_without_the_lock_requests_overlap() -> None:
    """The control: the stand-in does overlap when left alone (so the next test can fail)."""
    assert _most_at_once(_handler_class()) > 1


def test_under_the_lock_one_request_runs_at_a_time() -> None:
    handler = _handler_class()
    atomic(handler, threading.Lock())
    assert _most_at_once(handler) == 1


def test_wrapping_twice_with_the_same_lock_wraps_once() -> None:
    handler = _handler_class()
    lock = threading.Lock()
    atomic(handler, lock)
    wrapped = handler.call_action
    atomic(handler, lock)
    assert handler.call_action is wrapped
    assert handler().call_action() == "done"
