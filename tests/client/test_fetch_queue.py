"""The download process's queue: urgent requests (a file's next chunks, an object a reader
waits for) start before a tree scan's backlog, and only a few more than the parallel transfers
are handed to the transfer engine at once."""

from __future__ import annotations

from pycvmfs.client.fetcher import _Queue
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind


def _request(i: int):
    return (ContentHash.parse(f"{i:040x}"), ObjectKind.FILE, Compression.ZLIB, None)


def _name(i: int) -> str:
    return f"{i:040x}"


def test_urgent_and_hurried_requests_start_first_within_the_limit():
    started = []
    q = _Queue(started.append, limit=2)
    for i in range(6):
        q.put(_name(i), _request(i), urgent=False)
    assert started == [_request(0), _request(1)]  # the limit: two with the engine
    q.put(_name(10), _request(10), urgent=True)
    q.hurry(_name(4))  # a reader waits for it
    q.hurry(_name(0))  # started already: nothing to do
    q.ended()
    q.ended()
    assert started[2:] == [_request(10), _request(4)]
    for _ in range(4):
        q.ended()
    assert started[4:] == [_request(2), _request(3), _request(5)]


def test_a_request_ending_at_once_lets_the_next_start_without_recursion():
    started = []
    q = _Queue(lambda r: (started.append(r), q.ended()), limit=1)  # e.g. cached objects
    for i in range(5000):
        q.put(_name(i), _request(i), urgent=False)
    assert len(started) == 5000


def test_close_hands_nothing_more_over_and_returns_what_waited():
    started = []
    q = _Queue(started.append, limit=1)
    for i in range(3):
        q.put(_name(i), _request(i), urgent=i == 2)
    assert started == [_request(0)]
    assert q.close() == [_request(2), _request(1)]
    q.ended()
    assert started == [_request(0)]
