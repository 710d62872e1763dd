"""Ctrl-C that survives libraries which swallow KeyboardInterrupt.

OpenVINO's model conversion calls Python code (its telemetry, e.g. openvino_telemetry's
``is_docker()``, which reads files inside a bare ``except:``) from C++ and from ``try`` blocks that
catch everything: a KeyboardInterrupt raised there is lost, or comes back as a RuntimeError, and the
build goes on. Inside :func:`deferred_interrupt` a SIGINT is only recorded; when the block ends it
is raised as KeyboardInterrupt, whatever the library did with it. A second Ctrl-C raises at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


@contextmanager
def deferred_interrupt(what: str) -> Iterator[None]:
    """Record SIGINT during the block and raise KeyboardInterrupt when it ends (main thread only: other
    threads cannot set signal handlers, and Python delivers signals to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):  # interrupts are ignored (nohup, a parent's choice): keep it so
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: Any) -> None:
        if received:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("interrupted: stopping once %s returns (Ctrl-C again to stop at once)", what)

    signal.signal(signal.SIGINT, record)
    try:
        yield
    except BaseException as exc:
        signal.signal(signal.SIGINT, previous)
        if received and not isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt from exc  # e.g. OpenVINO's RuntimeError wrapping the interrupt
        raise
    signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
