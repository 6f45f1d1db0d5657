"""moto's server with DynamoDB's item atomicity: what :func:`deploy.local.emulator.launch`
runs (``python -m deploy.local.moto_server -H HOST -p PORT``, moto's own arguments).

DynamoDB applies each request to an item atomically: concurrent ``UpdateItem`` calls of
one item (``ADD`` counters, conditional writes) all count, in some order. moto's server
handles requests in threads (werkzeug, ``threaded=True``) and its DynamoDB backend has no
lock: ``update_item`` reads the item, works out the new one and stores it, and two
threads creating one item both store a fresh one, the second replacing the first's
update. Measured on moto 5.2.5 (``tests/integration/test_emulator_atomicity.py``'s
pattern: 8 threads, 3 ``ADD``s each on a new item): 1 to 3 rounds in 100 lost an update;
the analysis tests' usage ledger lost a call or a settlement in 3 of 5 CI runs of a slow day.
Production code cannot work around this (DynamoDB already is atomic), so the emulator
does it: every DynamoDB request runs under one lock (:func:`atomic`), as one request at a
time. moto's handlers are CPU-bound Python, which never ran in parallel anyway (one GIL),
so this costs the emulator's throughput next to nothing; other services are left as moto
has them.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

#: one DynamoDB request at a time (the whole backend: a transaction spans items and tables)
LOCK = threading.Lock()


def atomic(handler: type[Any], lock: threading.Lock = LOCK) -> None:
    """Make every request of the moto response ``handler`` class run under ``lock``
    (its ``call_action``: the backend's work and the response; moto parses the request
    before). Idempotent."""
    original: Callable[[Any], Any] = handler.call_action
    if getattr(original, "__wrapped_by_lock__", None) is lock:
        return

    @functools.wraps(original)
    def call_action(self: Any) -> Any:
        with lock:
            return original(self)

    call_action.__wrapped_by_lock__ = lock  # type: ignore[attr-defined]
    handler.call_action = call_action


def main(argv: list[str] | None = None) -> None:
    """moto's ``moto.server.main`` with DynamoDB made atomic first."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.server import main as moto_main

    atomic(DynamoHandler)
    moto_main(argv)


if __name__ == "__main__":
    main()
