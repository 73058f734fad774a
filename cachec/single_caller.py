"""One caller at a time for a runtime: concurrent use is refused, never silently mixed.

A :class:`~cachec.runtime.CacheRuntime` holds one trajectory's caches and policy state per
branch. Two threads stepping it at once overwrite each other's caches (a result off by up to
0.079 on tiny-dit, with no error), and even calls that take turns would splice two trajectories
into one (a second thread's first step resets the first thread's trajectory). Serialising steps
with a lock would hide the first problem and keep the second, so cachec *detects* instead:

* a call (or :meth:`~cachec.runtime.CacheRuntime.reset`) while another thread is inside a step
  raises :class:`~cachec.errors.ConcurrentUseError`;
* a call from another thread than the one running the current trajectory raises too, until that
  trajectory is over: its known number of steps done, or the runtime reset by its owner.

Handing a runtime to another thread between trajectories is fine (``cachec serve`` does: one
sampling thread, ``reset`` before each job). For parallel sampling, give each thread its own
runtime (``cachec.load`` per thread). The check costs a non-blocking lock and a few integer
comparisons per step; it never reads a tensor (no device→host sync).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import ConcurrentUseError

ADVICE = "a CacheRuntime serves one caller at a time; give each thread its own runtime (cachec.load per thread)"


class SingleCaller:
    """The guard: :meth:`enter`/:meth:`exit` around each step, :meth:`claim_reset` in ``reset``."""

    def __init__(self):
        self._busy = threading.Lock()
        self._owner: int | None = None  # thread ident that runs the current trajectory

    def enter(self, mid_trajectory: Callable[[], bool]) -> None:
        me = threading.get_ident()
        if not self._busy.acquire(blocking=False):
            raise ConcurrentUseError(f"this runtime was called while another thread was inside a step; {ADVICE}")
        if self._owner not in (None, me) and mid_trajectory():
            self._busy.release()
            raise ConcurrentUseError("this runtime was called from another thread in the middle of a trajectory "
                                     f"(its steps would be mixed with this call's); {ADVICE}")
        self._owner = me

    def exit(self) -> None:
        self._busy.release()

    def claim_reset(self, mid_trajectory: Callable[[], bool]) -> None:
        """``reset`` from the owner, or between trajectories, frees the runtime for any thread."""
        self.enter(mid_trajectory)
        self._owner = None
        self.exit()
