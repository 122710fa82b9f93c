"""The parallel pull of a stratum 1: catalogs walked, missing objects copied with their hash
checked, and every catalog stored only after everything it references (format doc §9)."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pycvmfs.errors import CvmfsError, FormatError, ObjectNotFoundError
from pycvmfs.format.catalog import Catalog, run_tree_steps
from pycvmfs.format.compression import Compression, stored_bound
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind, parse_object_name
from pycvmfs.format.sqlite import open_database
from pycvmfs.replica.copying import BufferedObject, VerifyingReader
from pycvmfs.storage.base import ObjectStore, Source
from pycvmfs.storage.batch import BatchFetcher
from pycvmfs.storage.http import HttpSource
from pycvmfs.storage.httpcopy import HttpCopier, Job
from pycvmfs.storage.local import LocalStorage
from pycvmfs.storage.objects import (
    HISTORY_LIMIT,
    SMALL_FILE_LIMIT,
    catalog_limit,
    download_verified,
)

__all__ = ["Progress", "PullStats", "Puller"]

#: progress(stage, done, total or None); called from worker threads, at most ~10 times a second.
#: A pull reports "catalogs" (read so far), "objects" (data objects and chunks finished, of those
#: found so far) and "bytes" (their sizes as the catalogs record them, uncompressed). The walk
#: finds more as it reads catalogs: the totals are final once a "catalogs" report has a total.
Progress = Callable[[str, int, int | None], None]

_DONE = "done"
_FAILED = "failed"
_PRESENT = "present"
_SKIPPED = "skipped"
_ZERO = bytes(20)
_PROGRESS_EVERY = 0.1
#: How many objects may be scheduled and not yet finished. Queued objects cost a few hundred
#: bytes each; a large window lets the walker schedule a catalog's objects in long runs and
#: then sleep, instead of waking for every finished transfer and taking the GIL from the
#: thread that stores them (which halved the speed of a snapshot when it was 64).
_WINDOW = 16384
#: Objects of a catalog taken from its database per lock of the bookkeeping (well below half
#: the window: the copies of a run are submitted at its end).
_SCHEDULE_RUN = 1024


@dataclass
class PullStats:
    """What one pull did."""

    objects_fetched: int = 0  # data objects and chunks copied
    bytes_fetched: int = 0  # stored bytes of everything copied (catalogs included)
    objects_present: int = 0  # referenced objects that were on the destination already
    catalogs_fetched: int = 0  # catalogs downloaded and walked
    catalogs_present: int = 0  # catalogs found on the destination (subtree complete)
    skipped_catalogs: list[str] = field(default_factory=list)  # absent on a collectable source
    stored_roots: list[ContentHash] = field(default_factory=list)  # root catalogs stored now


@dataclass
class _Loaded:
    """A downloaded catalog: its verified compressed bytes and the decompressed database."""

    hash: ContentHash
    raw: Path
    db: Path
    previous: ContentHash | None
    nested: list[ContentHash]


class _Node:
    """A catalog waiting for its objects and child catalogs before it can be stored."""

    __slots__ = ("db_users", "dependents", "failed", "loaded", "pending", "root", "state")

    def __init__(self, loaded: _Loaded, root: bool) -> None:
        self.loaded = loaded
        self.root = root
        self.pending = 1  # released when the walker has scheduled everything below
        self.failed = False
        self.dependents: list[_Node] = []
        self.state = ""  # "", _DONE or _FAILED
        self.db_users = 0  # the walker reads the database as a baseline


class _Window:
    """A bound on the objects in flight with hysteresis: :meth:`take` blocks at ``high`` until
    the count is down to half of it, so the taker is woken once per half window, not once per
    finished object."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.low = high // 2
        self._count = 0
        self._lock = threading.Lock()
        self._room = threading.Event()
        self._room.set()
        self._empty = threading.Event()
        self._empty.set()

    def take(self, check: Callable[[], None]) -> None:
        """One more in flight; ``check`` is called while waiting (it raises to give up)."""
        while True:
            with self._lock:
                if self._count < self.high:
                    self._count += 1
                    self._empty.clear()
                    return
                self._room.clear()
            while not self._room.wait(1.0):
                check()

    def give(self) -> None:
        with self._lock:
            self._count -= 1
            if self._count <= self.low and not self._room.is_set():
                self._room.set()
            if self._count == 0:
                self._empty.set()

    def wait_empty(self) -> None:
        """Wait until everything taken was given back."""
        with self._lock:
            if self._count == 0:
                return
            self._empty.clear()
        self._empty.wait()


class Puller:
    """Copies catalog trees from ``source`` to ``dest`` with ``workers`` parallel fetchers.

    :meth:`pull` walks one tree in the calling thread and hands the objects to the pool; a
    catalog is written to ``dest`` by whichever thread finishes its last dependency, so a
    catalog on the destination always means its whole subtree is there (a killed pull resumes
    where it stopped). Objects a catalog shares with its previous revision are not looked at
    when that revision is complete on the destination or pulled in the same run. ``tmp_dir``
    holds the catalogs in flight. Call :meth:`wait` once everything is scheduled.
    """

    def __init__(self, source: Source, dest: ObjectStore, tmp_dir: Path, *, workers: int = 16,
                 garbage_collectable: bool = False, progress: Progress | None = None) -> None:
        self.source = source
        self.dest = dest
        self.tmp = Path(tmp_dir)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.gc = garbage_collectable
        self.stats = PullStats()
        self._workers = max(1, workers)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="pycvmfs-pull")
        # Over HTTP, objects travel through libcurl's multi interface; the pool then only walks
        # catalogs and retries what that fast path could not fetch (with fail-over). Into a
        # local directory, the whole copy of an object (transfer, hash check, store) is done
        # by compiled threads (storage/httpcopy.py, started with the first object to copy);
        # into a remote store (S3), bodies come through a BatchFetcher, and the pool uploads.
        self._direct = isinstance(source, HttpSource) and isinstance(dest, LocalStorage)
        self._copier: HttpCopier | None = None
        self._batch = (BatchFetcher(source, parallel=self._workers, on_error=self._fail)
                       if isinstance(source, HttpSource) and not self._direct else None)
        self._window = _Window(max(_WINDOW, self._workers * 4))
        # the walker holds up to a run of objects before it hands them over: it must never
        # wait for room that only those could free
        assert self._window.low > _SCHEDULE_RUN
        self._uploads = threading.BoundedSemaphore(self._workers * 2)
        self._lock = threading.Lock()
        self._objects: dict[str, str | list[_Node]] = {}
        #: the catalog's size of each object scheduled and not finished: caps its download
        self._sizes: dict[str, int | None] = {}
        #: recorded (uncompressed) catalog sizes: the root's from the manifest, the others from
        #: their parents' nested_catalogs rows; each catalog download is capped by its size
        self._catalog_sizes: dict[ContentHash, int] = {}
        self._catalogs: dict[str, str | _Node] = {}
        self._prefetch: dict[str, Future] = {}
        self._error: BaseException | None = None
        self._scheduled = 0
        self._finished = 0
        self._scheduled_bytes = 0  # catalog sizes of the objects scheduled, and finished
        self._finished_bytes = 0
        self._walked = False  # every pull() scheduled: the totals are final
        self._reporting = threading.Lock()
        self._progress = progress
        self._last_progress = 0.0

    # -- public ------------------------------------------------------------------------------

    def pull(self, h: ContentHash, *, history: bool, optional: bool = False,
             root: bool = True, size: int = 0) -> None:
        """Schedule the tree of catalog ``h`` (and, with ``history``, its previous revisions
        back to one the destination has). ``optional``: a missing ``h`` is skipped. ``size``:
        the catalog's recorded size (manifest ``B``), its download's cap (0: unknown)."""
        if size:
            self._catalog_sizes[h] = size
        run_tree_steps(self._tree(h, None, history=history, optional=optional, root=root))

    def wait(self) -> None:
        """Wait for every scheduled copy; raise the first error."""
        self._walked = True
        self._report(force=True)
        self._window.wait_empty()  # (pool and batch hand objects to each other until then)
        if self._copier is not None:
            self._copier.close()
        if self._batch is not None:
            self._batch.close()  # their failures are retried in the pool: close that after
        self._pool.shutdown(wait=True)
        self._report(force=True)
        if self._error is not None:
            raise self._error
        with self._lock:
            stuck = [n for n in self._catalogs.values() if isinstance(n, _Node)]
        if stuck:  # cannot happen unless the bookkeeping is wrong; never store a manifest then
            raise CvmfsError(f"{stuck[0].loaded.hash.describe(ObjectKind.CATALOG)}: "
                             "not stored although the pull finished")

    def close(self) -> None:
        """Stop (cancelling what did not start) and remove the temporary files."""
        with self._lock:
            if self._error is None:
                self._error = CvmfsError("pull cancelled")
        if self._copier is not None:
            self._copier.cancel()
        if self._batch is not None:
            self._batch.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for p in self.tmp.glob("pull.*"):
            p.unlink(missing_ok=True)

    def copy_object(self, h: ContentHash, kind: ObjectKind, *, check_zlib: bool = False) -> int:
        """Copy one object unless the destination has it; its stored bytes (0 if present).
        ``check_zlib`` also requires a complete zlib stream (certificate, meta-info)."""
        relpath = h.object_path(kind)
        if self.dest.exists(relpath):
            return 0
        what = self._what(h, kind)
        if check_zlib:  # (small objects: capped as the stock client caps them)
            stored = bytearray()
            download_verified(self.source, h, kind, Compression.ZLIB, None, what=what,
                              raw=stored, max_size=SMALL_FILE_LIMIT)
            self.dest.put_bytes(relpath, bytes(stored))
            n = len(stored)
        else:
            n = self._copy(h, kind, relpath)
        with self._lock:
            self.stats.bytes_fetched += n
        return n

    def load_database(self, h: ContentHash, kind: ObjectKind) -> Path:
        """A decompressed copy of a small SQLite object (history): from the destination when it
        has it, else fetched verified and stored there unchanged."""
        relpath = h.object_path(kind)
        name = h.object_name(kind)
        if self.dest.exists(relpath):
            return self._from_dest(h, kind, self.tmp / f"pull.{name}.db")
        loaded_raw, db = self._download(h, kind, HISTORY_LIMIT)
        with open(loaded_raw, "rb") as f:
            self.dest.put_file(relpath, f)
        with self._lock:
            self.stats.bytes_fetched += loaded_raw.stat().st_size
        loaded_raw.unlink()
        return db

    # -- the walk (calling thread) -----------------------------------------------------------

    def _tree(self, h: ContentHash, parent: _Node | None, *, history: bool, optional: bool,
              root: bool) -> Generator[Any, Any, None]:
        """Schedule a catalog's tree; a generator for :func:`run_tree_steps` (it yields the
        walks of nested catalogs instead of recursing, so any nesting depth is followed)."""
        self._check()
        chain: list[_Loaded] = []
        anchor: _Node | None = None  # a pending catalog the oldest new one waits for
        base: Path | None = None  # its database, or that of a complete previous revision
        base_from_dest = False
        cur: ContentHash | None = h
        cur_optional = optional
        while cur is not None:
            state = self._catalog_state(cur)
            if isinstance(state, _Node):
                anchor = state
                break
            if state == _DONE:
                if chain:
                    base, base_from_dest = self._from_dest(cur, ObjectKind.CATALOG), True
                break
            loaded = self._load(cur, optional=cur_optional)
            if loaded is None:
                break
            chain.append(loaded)
            prev = loaded.previous
            if not history:
                if prev is not None and self._catalog_state(prev) == _DONE:
                    base, base_from_dest = self._from_dest(prev, ObjectKind.CATALOG), True
                elif prev is not None and isinstance(self._catalog_state(prev), _Node):
                    anchor = self._catalog_state(prev)  # type: ignore[assignment]
                break
            cur, cur_optional = prev, self.gc  # a collected old revision may be gone
        if not chain:
            if anchor is not None and parent is not None:
                self._depend(parent, anchor)
            return
        if anchor is not None:
            with self._lock:
                anchor.db_users += 1
            base = anchor.loaded.db
        try:
            newest = yield from self._walk_chain(chain, anchor, base, history=history,
                                                 root=root)
        finally:
            if anchor is not None:
                self._drop_db_user(anchor)
            if base_from_dest and base is not None:
                base.unlink(missing_ok=True)
        if parent is not None:
            self._depend(parent, newest)
        self._release(newest, ok=True)

    def _walk_chain(self, chain: list[_Loaded], anchor: _Node | None, base: Path | None, *,
                    history: bool, root: bool) -> Generator[Any, Any, _Node]:
        """Schedule the catalogs of a previous-revision chain, oldest first; returns the newest
        node with one extra pending count that the caller releases."""
        prev_node = anchor
        node: _Node | None = None
        for i, loaded in enumerate(reversed(chain)):
            node = _Node(loaded, root)
            node.pending += 1 if i == len(chain) - 1 else 0  # the caller's hold on the newest
            with self._lock:
                self._catalogs[loaded.hash.object_name(ObjectKind.CATALOG)] = node
                node.db_users += 1
            if prev_node is not None:
                self._depend(node, prev_node)
            try:
                self._schedule_objects(node, base)
                self._report()
                for child in loaded.nested:
                    self._start_prefetch(child)
                for child in loaded.nested:
                    yield self._tree(child, node, history=history, optional=False,
                                     root=False)
            finally:
                if prev_node is not None and prev_node is not anchor:
                    self._drop_db_user(prev_node)
            base = loaded.db
            prev_node = node
            self._release(node, ok=True)
        assert node is not None
        if node is not anchor:
            self._drop_db_user(node)
        return node

    def _catalog_state(self, h: ContentHash) -> str | _Node | None:
        """_DONE when the destination has the catalog, its node while pending, else None."""
        name = h.object_name(ObjectKind.CATALOG)
        with self._lock:
            state = self._catalogs.get(name)
        if isinstance(state, _Node) or state == _DONE:
            return state
        fut = self._prefetch.get(name)
        if fut is not None and fut.done() and fut.exception() is None and \
                fut.result() == _PRESENT:
            present = True
        else:
            present = self.dest.exists(h.object_path(ObjectKind.CATALOG))
        if present:
            with self._lock:
                self._catalogs[name] = _DONE
                self.stats.catalogs_present += 1
            return _DONE
        return None

    def _load(self, h: ContentHash, *, optional: bool) -> _Loaded | None:
        name = h.object_name(ObjectKind.CATALOG)
        fut = self._prefetch.pop(name, None)
        try:
            got = fut.result() if fut is not None else self._fetch_catalog(h, check=False)
        except ObjectNotFoundError:
            if not optional:
                raise
            self.stats.skipped_catalogs.append(str(h))
            return None
        if got == _PRESENT:
            return None
        assert isinstance(got, _Loaded)
        return got

    def _start_prefetch(self, h: ContentHash) -> None:
        name = h.object_name(ObjectKind.CATALOG)
        with self._lock:
            if name in self._catalogs or name in self._prefetch:
                return
        self._prefetch[name] = self._pool.submit(self._fetch_catalog, h, check=True)

    def _fetch_catalog(self, h: ContentHash, *, check: bool) -> _Loaded | str:
        if check and self.dest.exists(h.object_path(ObjectKind.CATALOG)):
            return _PRESENT
        raw, db = self._download(h, ObjectKind.CATALOG,
                                 catalog_limit(self._catalog_sizes.get(h)))
        what = self._what(h, ObjectKind.CATALOG)
        with Catalog.open(db, what=what, hash=h) as cat:
            previous = cat.previous_revision
            nested = []
            for r in cat.nested_catalogs():
                if r.hash is not None:
                    nested.append(r.hash)
                    if r.size:
                        self._catalog_sizes[r.hash] = r.size
        with self._lock:
            self.stats.catalogs_fetched += 1
            self.stats.bytes_fetched += raw.stat().st_size
        return _Loaded(h, raw, db, previous, nested)

    # -- objects -----------------------------------------------------------------------------

    def _schedule_objects(self, node: _Node, base: Path | None) -> None:
        rows = _referenced(node.loaded.db, base, what=self._what(node.loaded.hash,
                                                                 ObjectKind.CATALOG))
        while chunk := list(itertools.islice(rows, _SCHEDULE_RUN)):
            self._check()
            new: list[tuple[ContentHash, ObjectKind, str]] = []
            with self._lock:  # once per run of objects, not once per object
                for h, kind, size in chunk:
                    name = h.object_name(kind)
                    state = self._objects.get(name)
                    if state == _DONE:
                        continue
                    if state == _FAILED:
                        raise self._error or CvmfsError(f"{name}: failed")
                    node.pending += 1
                    if isinstance(state, list):
                        state.append(node)
                        continue
                    self._objects[name] = [node]
                    self._sizes[name] = size
                    self._scheduled += 1
                    self._scheduled_bytes += size or 0
                    new.append((h, kind, name))
            copies: list[Job] = []
            present: list[str] = []
            try:
                for h, kind, name in new:
                    self._window.take(self._check)
                    try:
                        if self._direct:
                            relpath = h.object_path(kind)
                            if self.dest.exists(relpath):
                                present.append(name)
                            else:
                                copies.append((relpath, h.algorithm.value, h.digest, name,
                                               _stored_cap(self._sizes.get(name))))
                        elif self._batch is None:
                            self._pool.submit(self._object_task, h, kind, name)
                        else:  # asking a remote store is a round trip: many at once
                            self._pool.submit(self._probe, h, kind, name)
                    except BaseException:
                        self._window.give()
                        raise
            finally:
                if present:  # (the walker still holds the catalog: none is stored here)
                    with self._lock:
                        self.stats.objects_present += len(present)
                    for name in present:
                        self._object_done(name, ok=True)
                if copies:
                    self._submit_copies(copies)

    def _submit_copies(self, copies: list[Job]) -> None:
        """Hand objects missing from the local destination to the copy engines (all or none:
        when this raises, none of them was taken)."""
        try:
            if self._copier is None:
                assert isinstance(self.source, HttpSource)
                assert isinstance(self.dest, LocalStorage)
                self._copier = HttpCopier(self.source, self.dest, self._copied,
                                          parallel=self._workers)
            self._copier.submit(copies)
        except BaseException:
            for _ in copies:
                self._window.give()
            raise

    def _copied(self, results: list[tuple[str, int, str | None]]) -> None:
        """The copy engine finished objects (a collector thread): each stored, or fetched
        again through the pool (``source.fetch`` with its fail-over and no-cache rules)."""
        stored = [(name, size) for name, size, error in results if error is None]
        if stored:
            with self._lock:
                self.stats.objects_fetched += len(stored)
                self.stats.bytes_fetched += sum(size for _, size in stored)
        for name, _size, error in results:  # every one reaches _object_done (the window)
            if error is None or self._error is not None:
                try:
                    self._object_done(name, ok=error is None)
                except BaseException as e:  # (it gave the window back)
                    self._fail(e)
                continue
            try:
                h, kind = parse_object_name(name)
                self._pool.submit(self._object_task, h, kind, name)
            except BaseException as e:  # (the pool was shut down): fail, and close the books
                self._fail(e)
                with contextlib.suppress(BaseException):
                    self._object_done(name, ok=False)

    def _batch_done(self, obj: BufferedObject, error: str | None) -> None:
        """A fast-path transfer for a remote store ended (driver thread). Verified bytes are
        uploaded by the pool (its round trips must not stall the transfers); anything else
        is fetched again in the pool through ``source.fetch`` with its fail-over and no-cache
        rules."""
        if self._error is None and error is None and obj.verified():
            self._uploads.acquire()  # bounds the bodies waiting in memory for the pool
            self._pool.submit(self._store_fetched, obj)
            return
        obj.discard()
        if self._error is not None:
            self._object_done(obj.name, ok=False)
        else:
            self._pool.submit(self._object_task, obj.h, obj.kind, obj.name)

    def _store_fetched(self, obj: BufferedObject) -> None:
        ok = False
        try:
            if self._error is None:
                obj.store(self.dest)
                with self._lock:
                    self.stats.objects_fetched += 1
                    self.stats.bytes_fetched += obj.size
                ok = True
        except BaseException as e:
            self._fail(e)
        finally:
            obj.discard()
            self._uploads.release()
            self._object_done(obj.name, ok=ok)

    def _probe(self, h: ContentHash, kind: ObjectKind, name: str) -> None:
        """(pool) Count an object the remote destination has, hand a missing one to the
        batch fetcher."""
        try:
            if self._error is None and not self.dest.exists(h.object_path(kind)):
                assert self._batch is not None
                self._batch.submit(BufferedObject(h, kind, name, self.tmp, self._batch_done),
                                   _stored_cap(self._sizes.get(name)))
                return
        except BaseException as e:
            self._fail(e)
            self._object_done(name, ok=False)
            return
        if self._error is not None:
            self._object_done(name, ok=False)
            return
        with self._lock:
            self.stats.objects_present += 1
        self._object_done(name, ok=True)

    def _object_task(self, h: ContentHash, kind: ObjectKind, name: str) -> None:
        ok = False
        try:
            if self._error is None:
                relpath = h.object_path(kind)
                if self.dest.exists(relpath):
                    with self._lock:
                        self.stats.objects_present += 1
                else:
                    n = self._copy(h, kind, relpath, self._sizes.get(name))
                    with self._lock:
                        self.stats.objects_fetched += 1
                        self.stats.bytes_fetched += n
                ok = True
        except BaseException as e:
            self._fail(e)
        finally:
            self._object_done(name, ok=ok)

    def _object_done(self, name: str, *, ok: bool) -> None:
        try:
            with self._lock:
                waiters = self._objects[name]
                self._objects[name] = _DONE if ok else _FAILED
                self._finished_bytes += self._sizes.pop(name, None) or 0
                self._finished += 1
            assert isinstance(waiters, list)
            for n in waiters:
                self._release(n, ok=ok)  # (may store a catalog whose last object this was)
            self._report()
        finally:
            self._window.give()  # last: an empty window means all bookkeeping is done

    def _copy(self, h: ContentHash, kind: ObjectKind, relpath: str,
              max_size: int | None = None) -> int:
        """Copy the stored bytes of one object; with ``max_size`` (its size in the catalog) a
        body longer than zlib can make of that size fails as soon as it is."""
        what = self._what(h, kind)

        def consume(blocks: Iterator[bytes]) -> int:
            reader = VerifyingReader(blocks, h, what, max_size)
            try:
                self.dest.put_file(relpath, reader)  # type: ignore[arg-type]
            except BaseException:
                if reader.error is not None:  # a store may wrap what the stream raised
                    raise reader.error from None
                raise
            if not reader.eof:  # the store stopped reading early: never keep unchecked bytes
                self.dest.delete(relpath)
                raise CvmfsError(f"{what}: {self.dest.describe(relpath)} did not read the "
                                 "whole object")
            return reader.count

        return self.source.fetch(relpath, consume, what=what)

    def _download(self, h: ContentHash, kind: ObjectKind, max_size: int) -> tuple[Path, Path]:
        """Fetch a compressed SQLite object: its verified bytes and its decompressed file (of
        at most ``max_size`` bytes: a larger one fails when it gets there, leaving nothing)."""
        name = h.object_name(kind)
        raw, db = self.tmp / f"pull.{name}", self.tmp / f"pull.{name}.db"
        what = self._what(h, kind)
        try:
            with open(raw, "wb") as fr, open(db, "wb") as fd:
                download_verified(self.source, h, kind, Compression.ZLIB, fd, raw=fr, what=what,
                                  max_size=max_size)
        except BaseException:
            raw.unlink(missing_ok=True)
            db.unlink(missing_ok=True)
            raise
        return raw, db

    def _from_dest(self, h: ContentHash, kind: ObjectKind, dest_path: Path | None = None) -> Path:
        """The decompressed copy of an object the destination has (a baseline catalog)."""
        path = dest_path or self.tmp / f"pull.{h.object_name(kind)}.base"
        with open(path, "wb") as f:
            download_verified(self.dest, h, kind, Compression.ZLIB, f,
                              what=f"{h.describe(kind)} on {self.dest.describe()}")
        return path

    # -- completion (any thread) -------------------------------------------------------------

    def _depend(self, waiter: _Node, on: _Node) -> None:
        with self._lock:
            if on.state == _DONE:
                return
            waiter.pending += 1
            if on.state == _FAILED:
                waiter.pending -= 1
                waiter.failed = True
                return
            on.dependents.append(waiter)

    def _release(self, node: _Node, *, ok: bool) -> None:
        """One dependency of ``node`` is done; a node with none left is stored, and releases
        its dependents in turn (a loop, not recursion: a chain of thousands of revisions)."""
        work = [(node, ok)]
        while work:
            node, ok = work.pop()
            with self._lock:
                node.pending -= 1
                if not ok:
                    node.failed = True
                if node.pending > 0:
                    continue
                ok = not node.failed and self._error is None
            if ok:
                try:
                    self._store(node)
                except BaseException as e:
                    self._fail(e)
                    ok = False
            with self._lock:
                node.state = _DONE if ok else _FAILED
                self._catalogs[node.loaded.hash.object_name(ObjectKind.CATALOG)] = node.state
                dependents, node.dependents = node.dependents, []
                unlink = node.db_users == 0
            if unlink:
                with contextlib.suppress(OSError):
                    node.loaded.db.unlink(missing_ok=True)
            work.extend((d, ok) for d in reversed(dependents))

    def _store(self, node: _Node) -> None:
        loaded = node.loaded
        with open(loaded.raw, "rb") as f:
            self.dest.put_file(loaded.hash.object_path(ObjectKind.CATALOG), f)
        loaded.raw.unlink(missing_ok=True)
        if node.root:
            with self._lock:
                self.stats.stored_roots.append(loaded.hash)

    def _drop_db_user(self, node: _Node) -> None:
        with self._lock:
            node.db_users -= 1
            gone = node.db_users == 0 and node.state in (_DONE, _FAILED)
        if gone:
            node.loaded.db.unlink(missing_ok=True)

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = e

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _what(self, h: ContentHash, kind: ObjectKind) -> str:
        return f"{h.describe(kind)} ({self.source.describe(h.object_path(kind))})"

    def _report(self, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_EVERY:
            return
        # one report at a time, its numbers read inside: they never go back
        if not self._reporting.acquire(blocking=force):
            return
        try:
            self._last_progress = now
            catalogs = self.stats.catalogs_fetched
            with contextlib.suppress(Exception):
                self._progress("catalogs", catalogs, catalogs if self._walked else None)
                self._progress("objects", self._finished, self._scheduled)
                self._progress("bytes", self._finished_bytes, self._scheduled_bytes)
        finally:
            self._reporting.release()


_ALGORITHMS = {code: Algorithm.from_flag_code(code) for code in range(3)}


def _referenced(db: Path, base: Path | None, *,
                what: str) -> Iterator[tuple[ContentHash, ObjectKind, int | None]]:
    """The data objects and chunks a catalog references (external files excluded), minus those
    its ``base`` catalog references too, with their (uncompressed) sizes."""
    conn = open_database(db, what=what)
    try:
        schemas = ["main"]
        if base is not None:
            conn.execute("ATTACH DATABASE ? AS base",
                         (f"file:{quote(str(base.resolve()))}?mode=ro&immutable=1",))
            schemas.append("base")
        for kind, build in ((ObjectKind.FILE, _files_sql), (ObjectKind.PARTIAL, _chunks_sql)):
            parts = [build(s) for s in schemas if _has_table(conn, s, _TABLES[kind])]
            if not parts or not _has_table(conn, "main", _TABLES[kind]):
                continue
            sql = parts[0] + (" EXCEPT " + parts[1] if len(parts) > 1 else "")
            for digest, code, size in conn.execute(sql):
                if not isinstance(digest, bytes) or len(digest) != 20 or digest == _ZERO:
                    continue
                algorithm = _ALGORITHMS.get(code)
                if algorithm is None:
                    raise FormatError(f"{what}: unknown hash algorithm code {code} in flags")
                yield (ContentHash(algorithm, digest), kind,
                       size if isinstance(size, int) and size >= 0 else None)
    except sqlite3.DatabaseError as e:
        raise CvmfsError(f"{what}: cannot list the referenced objects ({e})") from None
    finally:
        conn.close()


_TABLES = {ObjectKind.FILE: "catalog", ObjectKind.PARTIAL: "chunks"}


def _stored_cap(size: int | None) -> int | None:
    """The most stored bytes of an object of ``size`` bytes in its catalog (None: unknown)."""
    return None if size is None else stored_bound(size)


def _has_table(conn: sqlite3.Connection, schema: str, table: str) -> bool:
    row = conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?",
                       (table,)).fetchone()
    return row is not None


def _files_sql(schema: str) -> str:
    return (f"SELECT hash, (flags >> 8) & 7, size FROM {schema}.catalog "
            "WHERE hash IS NOT NULL AND (flags & 128) = 0")


def _chunks_sql(schema: str) -> str:
    return (f"SELECT c.hash, (k.flags >> 8) & 7, c.size FROM {schema}.chunks AS c "
            f"JOIN {schema}.catalog AS k ON c.md5path_1 = k.md5path_1 "
            "AND c.md5path_2 = k.md5path_2 WHERE (k.flags & 128) = 0")
