"""The mount's download process: read-ahead run in a child process, on the second core.

A mount's event loop (FUSE requests) and its downloads (libcurl callbacks, hashing, inflating,
writing cache files) are both Python work; in one process they take turns on the interpreter
lock, and every hand-over is a futex round trip. Here the downloads run in a child process
(``python -m pycvmfs.client.fetcher``) that writes into the same cache directory, which is
safe for several processes already (as for mounts sharing a cache). The mount sends it the
objects to fetch, one line each, and it answers each with one line when the object is in the
cache (verified, moved into place) or was given up. A reader that needs an object in flight
waits for that answer instead of downloading it a second time
(:attr:`~pycvmfs.client.cache.ObjectCache.elsewhere`); a failure is only a hint: the reader
then fetches the object itself, through the mount's own source with its fail-over and error
accounting.

Lines from the mount: ``<object name> <compression code> <size or -1>[ u]`` (the storage name:
hash text plus kind suffix; ``u``: urgent), and ``hurry <object name>`` (a reader waits for an
object asked for before: it becomes urgent; not answered). Answers: ``ok <hash text>`` or
``fail <hash text> <reason>``. The first line the child reads is the JSON of its settings (the
source's, the cache directory, the quota limit).

The child hands only a few requests more than its parallel transfers to the transfer engine at
a time; the rest wait in two queues, urgent ones first: the next chunks of a file being read,
and objects a reader is blocked on, never wait behind the hundreds of files a tree scan's
read-ahead asked for (measured on the benchmark tree: readers waited 3.1 s of a 9 s cold read
for chunks queued that way).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import IO, Any

from pycvmfs.client.cache import ObjectCache
from pycvmfs.errors import CvmfsError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind, parse_object_name
from pycvmfs.storage.http import HttpSource

__all__ = ["FetchProcess", "main"]

log = logging.getLogger("pycvmfs.fetcher")

#: transfers at once in the child, and objects the mount may have asked for and not heard of
PARALLEL = 16
BACKLOG = 1024
_STOP_WAIT = 10.0  # seconds the child gets to finish its transfers when the mount ends


class FetchProcess:
    """The mount's side: a read-ahead queue (the interface of
    :class:`~pycvmfs.client.files.Prefetcher`: ``submit``, ``has_room``, ``close``, ``stats``)
    served by a child process. Requests beyond ``backlog`` unanswered ones are dropped, and
    recently requested hashes are not asked for again. If the child dies, read-ahead stops
    (readers fetch by themselves) and the reason is logged."""

    def __init__(self, source: HttpSource, cache: ObjectCache, *, parallel: int = PARALLEL,
                 backlog: int = BACKLOG, remember: int = 8192) -> None:
        self._cache = cache
        self._backlog = backlog
        self._remember = remember
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self._kinds: dict[str, ObjectKind] = {}  # of the objects in flight, until hurried
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        self.stats = {"submitted": 0, "fetched": 0, "failed": 0}
        settings = {"source": source.settings(), "cache": str(cache.directory),
                    "quota": cache.quota.limit if cache.quota is not None else None,
                    "quota_on": cache.quota is not None, "parallel": parallel,
                    "level": logging.getLogger().getEffectiveLevel(),
                    "log_file": next((h.baseFilename for h in logging.getLogger().handlers
                                      if isinstance(h, logging.FileHandler)), None)}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "pycvmfs.client.fetcher"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, close_fds=True)
        self._stdin: IO[bytes] = self._proc.stdin  # type: ignore[assignment]
        self._stdin.write(json.dumps(settings).encode() + b"\n")
        self._stdin.flush()
        self._reader = threading.Thread(target=self._answers, name="pycvmfs-fetcher-answers",
                                        daemon=True)
        self._reader.start()
        cache.elsewhere = self.waiter

    @property
    def pid(self) -> int:
        return self._proc.pid

    def has_room(self) -> bool:
        """Whether a request would be sent now (the child is alive and not too far behind)."""
        return not self._closed and len(self._inflight) < self._backlog

    def submit(self, h: ContentHash | None, kind: ObjectKind,
               compression: Compression = Compression.ZLIB, size: int | None = None, *,
               urgent: bool = False) -> bool:
        """Ask the child for ``h`` (of at most ``size`` bytes, when given) unless it was asked
        for recently or too much is pending; ``urgent``: ahead of the requests that are not
        (a reader is about to need it)."""
        if h is None:
            return False
        key = str(h)
        with self._lock:
            if self._closed or key in self._recent or len(self._inflight) >= self._backlog:
                return False
            self._recent[key] = None
            if len(self._recent) > self._remember:
                self._recent.popitem(last=False)
            self._inflight[key] = threading.Event()
            self.stats["submitted"] += 1
            try:  # a short line into a pipe that the backlog keeps far from full
                self._stdin.write(f"{key}{kind.suffix} {compression.value} "
                                  f"{-1 if size is None else size}"
                                  f"{' u' if urgent else ''}\n".encode())
                self._kinds[key] = kind
                self._stdin.flush()
            except (OSError, ValueError) as e:
                self._inflight.pop(key).set()
                self._stop(f"cannot reach the download process: {e}")
                return False
        return True

    def waiter(self, h: ContentHash) -> threading.Event | None:
        """The event set when the child is done with ``h`` (None: it is not fetching it). A
        caller is about to wait for it: the child is told to fetch it next (once per request:
        other waiters of the same object add nothing)."""
        key = str(h)
        with self._lock:
            event = self._inflight.get(key)
            kind = self._kinds.pop(key, None)  # (the kind is only kept until the hurry)
            if event is not None and kind is not None and not self._closed:
                with contextlib.suppress(OSError, ValueError):
                    self._stdin.write(f"hurry {key}{kind.suffix}\n".encode())
                    self._stdin.flush()
        return event

    def _answers(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        for line in stdout:
            words = line.decode(errors="replace").split(" ", 2)
            if len(words) < 2:
                continue
            verdict, key = words[0], words[1].strip()
            with self._lock:
                event = self._inflight.pop(key, None)
                self._kinds.pop(key, None)
                if verdict == "ok":
                    self.stats["fetched"] += 1
                else:
                    self._recent.pop(key, None)  # free to be asked for again
                    self.stats["failed"] += 1
            if verdict != "ok":
                log.debug("read-ahead of %s failed: %s", key,
                          words[2].strip() if len(words) > 2 else "")
            if event is not None:
                event.set()
        code = self._proc.wait()
        self._stop(None if self._closed else f"the download process exited (status {code})")

    def _stop(self, reason: str | None) -> None:
        """No more requests; wake every reader waiting for an answer."""
        with self._lock:
            self._closed = True
            pending, self._inflight = self._inflight, {}
            self._kinds.clear()
        for event in pending.values():
            event.set()
        if reason is not None:
            log.warning("read-ahead stopped: %s", reason)

    def close(self) -> None:
        """Let the child finish its transfers (briefly), then stop it."""
        if self._cache.elsewhere == self.waiter:
            self._cache.elsewhere = None
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()  # the child finishes its transfers, then ends
        try:
            self._proc.wait(_STOP_WAIT)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(_STOP_WAIT)
        self._stop(None)


#: (hash, kind, compression, size): one request waiting in the child
_Request = tuple[ContentHash, ObjectKind, Compression, int | None]


class _Queue:
    """The child's requests not yet handed to the transfer engine: urgent ones first, then
    the others in the order they came; at most ``limit`` are with the engine at once (started
    and not ended). ``start(request)`` hands one over; :meth:`ended` must follow each."""

    def __init__(self, start: Callable[[_Request], None], limit: int) -> None:
        self._start = start
        self._limit = limit
        self._lock = threading.Lock()
        self._urgent: OrderedDict[str, _Request] = OrderedDict()
        self._normal: OrderedDict[str, _Request] = OrderedDict()
        self._running = 0
        self._feeding = False  # a thread is handing requests over
        self._closed = False

    def put(self, name: str, request: _Request, urgent: bool) -> None:
        with self._lock:
            (self._urgent if urgent else self._normal)[name] = request
        self._feed()

    def hurry(self, name: str) -> None:
        """Make a waiting request urgent (nothing when it was handed over already)."""
        with self._lock:
            request = self._normal.pop(name, None)
            if request is not None:
                self._urgent[name] = request

    def ended(self) -> None:
        with self._lock:
            self._running -= 1
        self._feed()

    def close(self) -> list[_Request]:
        """Hand nothing more over; returns the requests that were still waiting."""
        with self._lock:
            self._closed = True
            left = [*self._urgent.values(), *self._normal.values()]
            self._urgent.clear()
            self._normal.clear()
        return left

    def _feed(self) -> None:
        """Hand requests over while there is room. One thread at a time does it (a request
        that ends at once, a cached object, calls back into here from ``start``)."""
        with self._lock:
            if self._feeding:
                return
            self._feeding = True
        try:
            while True:
                with self._lock:
                    if (self._closed or self._running >= self._limit
                            or not (self._urgent or self._normal)):
                        self._feeding = False
                        return
                    _name, request = (self._urgent or self._normal).popitem(last=False)
                    self._running += 1
                self._start(request)
        except BaseException:
            with self._lock:
                self._feeding = False
            raise


def _serve(settings: dict[str, Any], requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child: fetch what is asked for into the cache, answer each request once."""
    from pycvmfs.client.files import Prefetcher
    from pycvmfs.storage.batch import BatchFetcher

    quota = None
    if settings["quota_on"]:
        from pycvmfs.client.quota import QuotaManager

        quota = QuotaManager(settings["cache"], settings["quota"])
    cache = ObjectCache(settings["cache"], quota=quota)
    source = HttpSource(**settings["source"], pool_size=4)
    out_lock = threading.Lock()

    def answer(h: ContentHash, error: object | None) -> None:
        if error is None:
            line = f"ok {h}\n"
        else:
            reason = (str(error).splitlines() or ["?"])[0][:200]
            line = f"fail {h} {reason}\n"
        with out_lock, contextlib.suppress(OSError, ValueError):
            answers.write(line.encode())
            answers.flush()

    batch = BatchFetcher(source, parallel=settings["parallel"],
                         on_error=lambda e: log.warning("transfer engine: %s", e))
    def ended(h: ContentHash, error: object | None) -> None:
        answer(h, error)
        queue.ended()

    # every request is answered, so nothing is remembered or dropped here: the mount bounds
    # what it asks for, and a request for a cached object is answered at once
    prefetcher = Prefetcher(lambda h, kind, comp, size: None, cache.contains, batch=batch,
                            begin=cache.begin_download, backlog=1 << 30, remember=0,
                            ended=ended)

    def start(request: _Request) -> None:
        if not prefetcher.submit(*request):
            ended(request[0], "not queued")

    queue = _Queue(start, settings["parallel"] + 4)
    try:
        for raw in requests:
            line = raw.decode(errors="replace").split()
            try:
                if line and line[0] == "hurry":
                    queue.hurry(line[1])
                    continue
                h, kind = parse_object_name(line[0])
                compression = Compression(int(line[1]))
                size = int(line[2]) if len(line) > 2 and line[2] != "-1" else None
            except (IndexError, ValueError, CvmfsError) as e:
                log.warning("bad request %r: %s", raw[:100], e)
                continue
            queue.put(line[0], (h, kind, compression, size), len(line) > 3 and line[3] == "u")
    finally:
        for request in queue.close():  # the mount has gone: what did not start is dropped
            answer(request[0], "cancelled")
        prefetcher.close()  # finishes the transfers in flight
        source.close()
        if quota is not None:
            quota.close()


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    settings = json.loads(stdin.readline())
    logging.basicConfig(level=settings.get("level", logging.WARNING),
                        filename=settings.get("log_file"),
                        format="%(asctime)s %(name)s[fetcher] %(levelname)s %(message)s")
    try:
        _serve(settings, stdin, stdout)
    except KeyboardInterrupt:
        pass
    finally:  # the mount's reader sees the end at once
        with contextlib.suppress(OSError):
            os.close(1)


if __name__ == "__main__":
    main()
