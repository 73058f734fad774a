"""SIGTERM as an exception, so that every ``finally`` removing a partial output runs.

Python's default SIGTERM ends the process at once: a compile's temporary folder (as large as the
weights) or a half-written file would stay. While :func:`terminate_raises` is active, SIGTERM
raises :class:`Terminated` in the main thread instead (as Ctrl-C raises ``KeyboardInterrupt``);
the CLI prints one line and exits 143 (128 + SIGTERM), 130 for Ctrl-C. A second SIGTERM while the
first one's cleanup runs is ignored, so the cleanup itself is not cut short; SIGKILL cannot be
caught, and the next compile removes what it leaves (:func:`cachec.output_dir.clean_stale`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(BaseException):
    """Raised by SIGTERM inside :func:`terminate_raises` (a BaseException, like KeyboardInterrupt:
    ``except Exception`` handlers must not swallow it)."""


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs (main thread only: Python
    delivers signals there; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
