"""The lock behind the ``serial`` marker (``tests/serial_lock.py``), checked with non-blocking probes
from a second open file (``flock`` locks belong to an open file, so one process can play two workers)."""

import fcntl
import threading

import pytest
from serial_lock import module_lock


def _can_take(folder, mode) -> bool:
    with open(folder / "serial.lock", "a") as f:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@pytest.mark.parametrize("exclusive", [False, True])
def test_a_serial_module_excludes_every_other_module_and_ordinary_ones_share(tmp_path, exclusive):
    with module_lock(tmp_path, exclusive):
        assert _can_take(tmp_path, fcntl.LOCK_SH) is not exclusive  # another ordinary module
        assert not _can_take(tmp_path, fcntl.LOCK_EX)  # a serial module waits while any module runs
    assert _can_take(tmp_path, fcntl.LOCK_EX)  # released with the module


def test_a_waiting_serial_module_goes_before_ordinary_modules_that_come_later(tmp_path):
    """Without the turnstile the other worker would re-take the shared lock module after module."""
    order = []
    with module_lock(tmp_path, exclusive=False):
        serial = threading.Thread(target=lambda: _hold(tmp_path, True, order, "serial"))
        serial.start()
        while not _turnstile_taken(tmp_path):  # the serial module is now queued
            serial.join(0.01)
        later = threading.Thread(target=lambda: _hold(tmp_path, False, order, "later"))
        later.start()
        later.join(0.2)
        assert order == []  # neither runs while the first module holds the lock
    serial.join(10)
    later.join(10)
    assert order == ["serial", "later"]


def _hold(folder, exclusive, order, name):
    with module_lock(folder, exclusive):
        order.append(name)


def _turnstile_taken(folder) -> bool:
    with open(folder / "serial.turnstile", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
