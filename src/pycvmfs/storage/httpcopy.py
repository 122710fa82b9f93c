"""HttpCopier: objects copied from an HTTP source into a local storage directory, each body
checked against its name before it is kept, by compiled engine threads.

The per-object work of a copy (libcurl transfer callbacks, hashing, creating, writing and
renaming a file) runs in C (``pycvmfs.storage._httpcopy``) on threads that never take the
interpreter lock: with two engines it runs on both cores, while Python only schedules objects
and keeps their books. A body is kept in memory up to 1 MiB, spilled into a file beyond, and
given its object's name only after the transfer ended with a 200 and its hash matched (so
readers and resumed replications never see partial or unverified files). The file is a
nameless one (``O_TMPFILE``) in the object's own folder, linked into place: a killed copy
leaves nothing behind, and no rename between folders (which takes a lock of the whole file
system, and made two engines slower than one on ext4) is needed. Where the file system cannot
make nameless files (or with ``named_files=True``) it is a named file in ``data/txn``, renamed
into place.

Transfers follow the source's ``low_speed_limit`` (bytes/s over its timeout) and ``deadline``
as libcurl's ``CURLOPT_LOW_SPEED_LIMIT``/``_TIME`` and ``CURLOPT_TIMEOUT``; a job's ``max_size``
bounds its stored bytes (the zlib bound of its size in the catalog): a longer body fails as soon
as it is, before it fills the disk.

Only the source's current server and proxy are used: a failure is handed back (``on_done``
with its reason), and the caller retries through :meth:`HttpSource.fetch` with its fail-over
and no-cache rules; when that moved the source on, transfers that start afterwards follow.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pycvmfs.storage._httpcopy import Engine
from pycvmfs.storage.http import DIRECT, HttpSource
from pycvmfs.storage.local import FILE_MODE, TXN_DIR, LocalStorage

__all__ = ["Done", "HttpCopier", "Job"]

log = logging.getLogger("pycvmfs.httpcopy")

#: (relpath, hash algorithm code, digest, token[, max_size]): one object to copy; a body of more
#: than ``max_size`` stored bytes (when given and not None) fails as soon as it is
Job = tuple[str, int, bytes, Any] | tuple[str, int, bytes, Any, int | None]
#: ``on_done(results)``: a list of (token, stored bytes, None) or (token, 0, reason), called from
#: a collector thread (one per engine) for every batch of finished jobs
Done = Callable[[list[tuple[Any, int, str | None]]], None]


class HttpCopier:
    """``parallel`` transfers at once from ``source`` into ``dest``, split over ``engines``
    threads (by the first byte of the digest). :meth:`submit` queues jobs and returns at once;
    every job is answered once through ``on_done``. :meth:`close` finishes what was submitted,
    :meth:`cancel` ends the rest with the reason ``cancelled``."""

    def __init__(self, source: HttpSource, dest: LocalStorage, on_done: Done, *,
                 parallel: int = 16, engines: int | None = None,
                 named_files: bool = False) -> None:
        if engines is None:
            engines = 2 if (os.cpu_count() or 1) >= 2 and parallel >= 2 else 1
        engines = max(1, min(engines, parallel))
        # the engines write below the root by path: its object folders must stay inside it
        for folder in [TXN_DIR, *(f"data/{i:02x}" for i in range(256))]:
            dest.write_path(f"{folder}/-")  # (raises ConfigError)
        root = str(dest.root)  # (resolved)
        os.makedirs(os.path.join(root, TXN_DIR), exist_ok=True)
        self.source = source
        self._on_done = on_done
        self._route = self._current_route()
        self._route_lock = threading.Lock()
        fix_mode = bool(dest.umask & FILE_MODE)
        self._engines = []
        try:
            for i in range(engines):
                share = parallel // engines + (1 if i < parallel % engines else 0)
                self._engines.append(Engine(
                    root, *self._route, source.user_agent, share, dest.fsync, fix_mode,
                    named_files, max(1, source.low_speed_limit), int(source.deadline * 1000)))
        except BaseException:
            for e in self._engines:
                e.stop(True)
            raise
        self._collectors = [threading.Thread(target=self._collect, args=(e,), daemon=True,
                                             name=f"pycvmfs-httpcopy-{i}")
                            for i, e in enumerate(self._engines)]
        for t in self._collectors:
            t.start()
        self._counted = False

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue jobs. All or none: a malformed job (a relpath that is not the object path of
        its hash, a bad hash) raises ValueError, and nothing of the list is queued then."""
        if len(self._engines) == 1:
            self._engines[0].submit(jobs)
            return
        n = len(self._engines)
        parts: list[list[Job]] = [[] for _ in range(n)]
        for job in jobs:
            parts[job[2][0] % n].append(job)
        for engine, part in zip(self._engines, parts, strict=True):
            engine.validate(part)
        for engine, part in zip(self._engines, parts, strict=True):
            if part:
                engine.submit(part)

    @property
    def unfinished(self) -> int:
        """Jobs submitted and not answered yet (in the engines)."""
        return sum(e.unfinished for e in self._engines)

    def close(self) -> None:
        """Finish every job submitted, answer it, stop."""
        self._end(cancel=False)

    def cancel(self) -> None:
        """Stop now: unfinished jobs are answered with the reason ``cancelled``."""
        self._end(cancel=True)

    def __enter__(self) -> HttpCopier:
        return self

    def __exit__(self, *exc: object) -> None:
        self._end(cancel=exc[0] is not None)

    def _end(self, *, cancel: bool) -> None:
        for e in self._engines:  # (again, from any thread: see Engine.stop)
            e.stop(cancel)
        for t in self._collectors:
            t.join()
        with self._route_lock:
            counted, self._counted = self._counted, True
        if not counted:
            self.source.count_request(sum(e.requests for e in self._engines))

    # -- collector threads ------------------------------------------------------------------

    def _collect(self, engine: Engine) -> None:
        """(a collector thread) Hand every batch of results to ``on_done``; nothing here may
        end the loop before the engine has ended, or jobs would go unanswered."""
        while True:
            try:
                results = engine.results()
            except MemoryError:
                time.sleep(0.1)  # the results wait in the engine for the next call
                continue
            if results is None:
                return
            if not results:
                continue
            if any(r[2] is not None for r in results):
                try:
                    self._follow_source()
                except Exception:
                    log.exception("HTTP copy: cannot follow the source to its new server")
            try:
                self._on_done(results)
            except Exception:  # the caller's books: keep collecting
                log.exception("HTTP copy: handling finished copies failed")

    def _current_route(self) -> tuple[str, str, int, int]:
        proxy = self.source.current_proxy
        timeout = self.source.timeout_for(proxy)
        return (self.source.current_url, "" if proxy == DIRECT else proxy,
                int(timeout * 1000), max(1, int(timeout)))

    def _follow_source(self) -> None:
        """After failures: transfers that start from now on use the source's current server
        and proxy (the retries through ``source.fetch`` may have moved them on)."""
        route = self._current_route()
        with self._route_lock:  # (two collectors: the engines get the routes in order)
            if route == self._route:
                return
            for e in self._engines:
                e.set_route(*route)
            self._route = route

