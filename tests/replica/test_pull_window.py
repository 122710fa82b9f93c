"""The bound on objects in flight during a pull: a full window blocks the walker until half of
it has finished, then lets it schedule a long run again."""

from __future__ import annotations

import threading
import time

import pytest

from pycvmfs.replica.pull import _Window


def _no_error() -> None:
    return None


def test_a_full_window_blocks_until_half_is_done() -> None:
    w = _Window(8)
    for _ in range(8):
        w.take(_no_error)
    taken = threading.Event()

    def walker() -> None:
        w.take(_no_error)
        taken.set()

    t = threading.Thread(target=walker)
    t.start()
    for _ in range(3):  # 5 still in flight: above half, the walker keeps waiting
        w.give()
    assert not taken.wait(0.2)
    w.give()  # 4 = half: room again
    assert taken.wait(5)
    t.join()
    for _ in range(3):  # and it may take a long run without waiting
        w.take(_no_error)


def test_a_waiting_walker_gives_up_when_the_pull_failed() -> None:
    w = _Window(2)
    w.take(_no_error)
    w.take(_no_error)
    failed = threading.Event()

    def check() -> None:
        if failed.is_set():
            raise RuntimeError("pull failed")

    threading.Timer(0.1, failed.set).start()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="pull failed"):
        w.take(check)
    assert time.monotonic() - t0 < 5
