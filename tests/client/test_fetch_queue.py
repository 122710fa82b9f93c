"""The download process's queue: urgent requests (a file's next chunks, an object a reader
waits for) start before a tree scan's backlog, and only a few more than the parallel transfers
are handed to the transfer engine at once."""

from __future__ import annotations

import os
import socket
import threading

from pycvmfs.client.cache import ObjectCache
from pycvmfs.client.fetcher import _Queue, _serve
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.http import HttpSource


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


def test_the_child_reads_urgent_fields_and_hurries_and_cancels_what_never_started(tmp_path):
    """``_serve`` through pipes, against a server that never answers: with four transfers
    (eight handed to the engine) the requests after the eighth wait; a line ending in `` u``
    and a ``hurry`` put theirs first, a bad line is skipped, and when the mount's pipe closes
    the waiting ones are answered ``fail <name> cancelled`` (urgent first), the started ones
    fail by the server's silence."""
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/repo"
        settings = {"source": HttpSource([url], timeout=2.0).settings(),
                    "cache": str(tmp_path / "cache"), "quota": None, "quota_on": False,
                    "parallel": 4}
        ObjectCache(tmp_path / "cache")
        requests_r, requests_w = os.pipe()
        answers_r, answers_w = os.pipe()
        with open(requests_r, "rb") as requests, open(answers_w, "wb") as answers:
            child = threading.Thread(target=_serve, args=(settings, requests, answers))
            child.start()
            with open(requests_w, "wb") as mount:
                lines = [f"{_name(i)} {Compression.ZLIB.value} -1\n" for i in range(11)]
                lines += [f"{_name(20)}P {Compression.ZLIB.value} 100 u\n",  # a chunk, urgent
                          "not an object\n", f"hurry {_name(9)}\n"]
                mount.write("".join(lines).encode())
            child.join(60)
            assert not child.is_alive()
        with open(answers_r, "rb") as got:
            answers_seen = [line.split(" ", 2) for line in got.read().decode().splitlines()]
    assert all(verdict == "fail" for verdict, _name_, _reason in answers_seen)
    cancelled = [name for _v, name, reason in answers_seen if reason == "cancelled"]
    failed = sorted(name for _v, name, reason in answers_seen if reason != "cancelled")
    assert cancelled == [_name(20), _name(9), _name(8), _name(10)]  # urgent, hurried, in order
    assert failed == [_name(i) for i in range(8)]  # started: the silent server timed out
