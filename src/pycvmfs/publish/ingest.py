"""The content pipeline: read -> chunk -> compress -> hash -> store, on every core, each distinct
content compressed once."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import stat
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.errors import IngestError
from pycvmfs.format.catalog import Chunk
from pycvmfs.format.chunking import Chunker, ChunkingParams
from pycvmfs.format.compression import Compression, compress
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind
from pycvmfs.storage.local import FILE_MODE, LocalStorage, _umask

if TYPE_CHECKING:  # worker processes are imported when they start (a small publish: never)
    from concurrent.futures import ProcessPoolExecutor

__all__ = ["IngestError", "IngestStats", "Ingested", "Ingester", "Scanned", "scanned"]

_READ_BLOCK = 1 << 20
#: How an input file is opened: never through a symlink, never blocking (a FIFO put in its
#: place must not hang the publish).
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: How a temporary object file is created: a new name, never through a link planted there.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
#: What must still hold for a file read after a scan: (st_dev, st_ino, st_size, st_mtime_ns).
Scanned = tuple[int, int, int, int]


def scanned(st: os.stat_result) -> Scanned:
    """The identity of a regular file as a scan saw it (:meth:`Ingester.submit_path`)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True, slots=True)
class Ingested:
    """A stored file content: one object (``hash``) or a chunk list."""

    size: int
    hash: ContentHash | None
    chunks: tuple[Chunk, ...] | None
    compression: Compression
    algorithm: Algorithm


@dataclass
class IngestStats:
    files: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0  # compressed bytes of objects newly written
    objects_new: int = 0
    objects_existing: int = 0  # already in the storage
    objects_deduplicated: int = 0  # identical content met again in this run

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Ingester:
    """Stores file contents as CernVM-FS objects through a pool of threads.

    zlib and the hash functions release the GIL on large buffers, and the chunker's rolling hash
    runs in numpy, so the threads keep every core busy on big files; small files cost a little
    Python each. Identical contents met twice in one run (whole small files, or chunks) are
    compressed once: a SHA-1 of the raw bytes finds them before zlib runs.
    """

    def __init__(self, store: LocalStorage, *, algorithm: Algorithm = Algorithm.SHA1,
                 compression: Compression = Compression.ZLIB,
                 chunking: ChunkingParams | None = None, max_file_size: int | None = None,
                 workers: int | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.store = store
        self._root = str(store.root)
        self._txn = os.path.join(self._root, "data", "txn")
        os.makedirs(self._txn, exist_ok=True)
        self._names = itertools.count()  # temporary file names in _txn
        self._umask = _umask()
        self.algorithm = algorithm
        self.compression = compression
        self.chunking = chunking
        self.max_file_size = max_file_size
        self.workers = workers or os.cpu_count() or 2
        self.on_progress = on_progress
        self._done_files = 0
        self._done_bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix="pycvmfs-ingest")
        self._lock = threading.Lock()
        self._known: dict[bytes, Future] = {}  # raw digest + kind -> Future[ContentHash]
        self.stats = IngestStats()
        self._procs: list[ProcessPoolExecutor] = []
        self._batches: list[list] = []
        self.journal = None  # an ObjectJournal; workers collect into _new_objects instead
        self._new_objects: list[str] = []
        self._processes_after: int | None = None
        self._submitted = 0
        self._starting: threading.Thread | None = None  # start_processes_soon() under way
        self._flusher: tuple[threading.Thread, threading.Event] | None = None
        # bound the work queued ahead so memory stays flat on huge trees
        self._slots = threading.BoundedSemaphore(self.workers * 4)

    # -- public --------------------------------------------------------------------------
    def prefer_processes(self, after: int = 256) -> None:
        """Switch to worker processes once ``after`` files were submitted (a big tree): small
        change sets never pay for starting them. Contents met before the switch may be
        compressed once more by a worker (at most ``after`` files)."""
        self._processes_after = after

    def submit_path(self, path: str | os.PathLike, size: int | None = None, *,
                    seen: Scanned | None = None,
                    follow_symlinks: bool = False) -> Future[Ingested]:
        """Ingest the regular file at ``path``. It is opened without following a symlink there
        (unless ``follow_symlinks``) and without blocking; it must be a regular file, and with
        ``seen`` (:func:`scanned`) the very file a scan saw, unchanged: anything else fails
        with :class:`IngestError` naming the path. Nothing else is ever opened."""
        if seen is not None:
            size = seen[2]
        if self._starting is not None:
            self._await_start()
        if self._processes_after is not None and not self._procs:
            self._submitted += 1
            if self._submitted > self._processes_after:
                self.start_processes()
        if self._procs:
            return self._submit_proc(Path(path), size, seen, follow_symlinks)
        self._slots.acquire()
        fut = self._pool.submit(self._guard, self._ingest_path, Path(path), size, seen,
                                follow_symlinks)
        return fut

    def submit_bytes(self, data: bytes) -> Future[Ingested]:
        self._slots.acquire()
        return self._pool.submit(self._guard, self._ingest_bytes, data)

    def ingest_stream(self, read: Callable[[int], bytes], size: int, *, what: str) -> Ingested:
        """Ingest ``size`` bytes from a stream in the calling thread (e.g. a tar member)."""
        return self._from_reader(read, size, what=what)

    # -- process mode (tree syncs: per-file Python work would hold the GIL) ----------------
    def start_processes_soon(self, count: int | None = None) -> None:
        """Start the worker processes in the background (a scan goes on meanwhile); the next
        :meth:`submit_path` waits until they answer."""
        if self._procs or self._starting is not None:
            return
        self._starting = threading.Thread(target=self.start_processes, args=(count,),
                                          name="pycvmfs-ingest-start", daemon=True)
        self._starting.start()

    def sync_in_background(self, flush: Callable[[], None], every: float = 1.0) -> None:
        """Call ``flush`` (a ``syncfs`` of the storage) every ``every`` seconds until
        :meth:`close`: the disk takes what the workers stored while they go on, so the flush
        that must come before the manifest finds little left to write. A failing flush stops
        the loop quietly; the one before the manifest reports."""
        if self._flusher is not None:
            return
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                try:
                    flush()
                except OSError:
                    return

        thread = threading.Thread(target=loop, name="pycvmfs-ingest-flush", daemon=True)
        self._flusher = (thread, stop)
        thread.start()

    def _await_start(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.join()

    def start_processes(self, count: int | None = None) -> None:
        """Ingest later :meth:`submit_path` calls in worker processes.

        Files are routed to a worker by their size, so identical contents (which have equal
        sizes) always meet the same worker's dedup table: each distinct content is still
        compressed once. Small files travel in batches to keep the IPC cost low.
        """
        n = count if count is not None else (os.cpu_count() or 1)
        if n < 2 or self._procs:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("forkserver")
        args = (self._root, self.algorithm.value, self.compression.value,
                None if self.chunking is None else (self.chunking.min_size,
                                                    self.chunking.avg_size,
                                                    self.chunking.max_size),
                self.max_file_size)
        procs = [ProcessPoolExecutor(1, mp_context=ctx, initializer=_proc_init, initargs=args)
                 for _ in range(n)]
        # multiprocessing would re-run the caller's main module in the fork server and in
        # every worker (by path, or by name for `python -m`), so that functions defined there
        # can be found. The workers need only pycvmfs: hide the main module while they start,
        # so a script that publishes at its top level without `if __name__ == "__main__":`
        # is not run again in each of them (a program read from stdin or -c has no file to
        # import at all).
        main = sys.modules.get("__main__")
        hidden = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
        for k in hidden:
            if k == "__file__":
                delattr(main, k)
            else:
                setattr(main, k, None)
        try:
            for p in procs:
                p.submit(_proc_ping).result(timeout=120)
        except Exception:  # no worker processes here: stay with threads
            for p in procs:
                p.shutdown(wait=False, cancel_futures=True)
            return
        finally:
            for k, v in hidden.items():
                setattr(main, k, v)
        self._procs = procs
        self._batches = [[] for _ in range(n)]
        self._batch_bytes = [0] * n
        self._route: dict[int, int] = {}  # file size -> the worker that ingests that size
        self._queued = [0] * n  # bytes sent to each worker and not yet done
        self._inflight = threading.BoundedSemaphore(4 * n)

    def _submit_proc(self, path: Path, size: int | None, seen: Scanned | None,
                     follow_symlinks: bool) -> Future[Ingested]:
        if size is None:
            try:
                size = os.stat(path, follow_symlinks=follow_symlinks).st_size
            except OSError as e:
                raise IngestError(f"{path}: cannot read ({e.strerror})") from None
        # Identical contents have equal sizes: one size always goes to the same worker, so its
        # dedup table sees every copy. A size met first goes to the least loaded worker.
        w = self._route.get(size)
        with self._lock:
            if w is None:
                w = min(range(len(self._queued)), key=self._queued.__getitem__)
                self._route[size] = w
            self._queued[w] += size
        fut: Future[Ingested] = Future()
        self._batches[w].append((str(path), size, fut, seen, follow_symlinks))
        self._batch_bytes[w] += size
        if len(self._batches[w]) >= 64 or self._batch_bytes[w] >= 16 << 20:
            self._flush(w)
        return fut

    def _flush(self, w: int) -> None:
        items = self._batches[w]
        if not items:
            return
        self._batches[w] = []
        self._batch_bytes[w] = 0
        self._inflight.acquire()
        bf = self._procs[w].submit(_proc_batch, [(p, n, s, f) for p, n, _, s, f in items])
        bf.add_done_callback(lambda f, items=items, w=w: self._batch_done(f, items, w))

    def _batch_done(self, f: Future, items: list, w: int) -> None:
        self._inflight.release()
        with self._lock:
            self._queued[w] -= sum(item[1] for item in items)
        try:
            results, delta, created = f.result()
            if self.journal is not None:
                self.journal.record_many(created)
        except BaseException as e:  # a worker died: every file of the batch fails
            err = IngestError(f"ingest worker failed ({e})")
            for item in items:
                item[2].set_exception(err)
            return
        with self._lock:
            for k, v in delta.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)
            self._done_files += sum(1 for r in results if not isinstance(r, BaseException))
            self._done_bytes += sum(r.size for r in results if not isinstance(r, BaseException))
            files, size = self._done_files, self._done_bytes
        for (_p, _n, fut, _s, _f), r in zip(items, results, strict=True):
            if isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)
        if self.on_progress is not None:
            self.on_progress(files, size)

    def flush(self) -> None:
        """Send every queued batch to the workers (before waiting on their futures)."""
        for w in range(len(self._batches)):
            self._flush(w)

    def close(self) -> None:
        self._await_start()
        if self._flusher is not None:
            thread, stop = self._flusher
            stop.set()
            thread.join()
            self._flusher = None
        self.flush()
        for p in self._procs:
            p.shutdown(wait=True)
        self._procs = []
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Ingester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _guard(self, fn, *args) -> Ingested:
        try:
            result = fn(*args)
            if self.on_progress is not None:
                with self._lock:
                    self._done_files += 1
                    self._done_bytes += result.size
                    files, size = self._done_files, self._done_bytes
                self.on_progress(files, size)
            return result
        finally:
            self._slots.release()

    def _check_size(self, size: int, what: str) -> None:
        if self.max_file_size is not None and size > self.max_file_size:
            raise IngestError(f"{what}: {size} bytes is over the file size limit of "
                              f"{self.max_file_size // (1 << 20)} MiB (CVMFS_FILE_MBYTE_LIMIT)")

    def _ingest_path(self, path: Path, size: int | None, seen: Scanned | None = None,
                     follow_symlinks: bool = False) -> Ingested:
        what = str(path)
        try:
            fd = os.open(path, _OPEN_FLAGS & ~os.O_NOFOLLOW if follow_symlinks else _OPEN_FLAGS)
        except OSError as e:
            if e.errno == errno.ELOOP and not follow_symlinks:
                raise IngestError(f"{what}: is a symbolic link now (it was a regular file "
                                  f"when scanned); not followed") from None
            raise IngestError(f"{what}: cannot read ({e.strerror})") from None
        try:
            with open(fd, "rb", closefd=False) as f:
                st = os.fstat(fd)
                _check_opened(what, st, seen)
                real = st.st_size
                if size is not None and real != size:
                    raise IngestError(f"{what}: changed while publishing ({size} -> {real} bytes)")
                result = self._from_reader(f.read, real, what=what)
                if os.fstat(fd).st_size != real:
                    raise IngestError(f"{what}: changed while publishing")
                return result
        except OSError as e:
            raise IngestError(f"{what}: cannot read ({e.strerror})") from None
        finally:
            os.close(fd)

    def _ingest_bytes(self, data: bytes) -> Ingested:
        return self._from_reader(_BytesReader(data).read, len(data), what="<data>")

    def _chunked(self, size: int) -> bool:
        return self.chunking is not None and size > self.chunking.min_size

    def _from_reader(self, read: Callable[[int], bytes], size: int, *, what: str) -> Ingested:
        self._check_size(size, what)
        with self._lock:
            self.stats.files += 1
            self.stats.bytes_in += size
        if not self._chunked(size):
            if size <= 64 << 20:
                data = _read_exactly(read, size, what)
                h = self._store_piece(data, ObjectKind.FILE)
                return Ingested(size, h, None, self.compression, self.algorithm)
            h = self._store_stream(read, size, what)  # chunking off: stream big files
            return Ingested(size, h, None, self.compression, self.algorithm)
        chunker = Chunker(self.chunking)
        pieces: list[Chunk] = []
        first: list[bytes] = []  # held back until a second chunk shows the file is chunked
        offset = 0
        remaining = size

        def emit(chunk: bytes) -> None:
            nonlocal offset
            if not pieces and not first:
                first.append(chunk)
                return
            if first:
                head = first.pop()
                pieces.append(Chunk(0, len(head), self._store_piece(head, ObjectKind.PARTIAL)))
                offset = len(head)
            pieces.append(Chunk(offset, len(chunk), self._store_piece(chunk, ObjectKind.PARTIAL)))
            offset += len(chunk)

        while remaining > 0:
            block = read(min(_READ_BLOCK, remaining))
            if not block:
                raise IngestError(f"{what}: ended after {size - remaining} of {size} bytes")
            remaining -= len(block)
            for chunk in chunker.feed(block):
                emit(chunk)
        for chunk in chunker.finish():
            if chunk:
                emit(chunk)
        if first:  # the sole-piece rule: no cut found, store as one ordinary object
            h = self._store_piece(first.pop(), ObjectKind.FILE)
            return Ingested(size, h, None, self.compression, self.algorithm)
        return Ingested(size, None, tuple(pieces), self.compression, self.algorithm)

    def _created(self, rel: str) -> None:
        if self.journal is not None:
            self.journal.record(rel)
        else:
            with self._lock:
                self._new_objects.append(rel)

    def _store_piece(self, data: bytes, kind: ObjectKind) -> ContentHash:
        key = hashlib.sha1(data).digest() + kind.value.encode()
        with self._lock:
            fut = self._known.get(key)
            mine = fut is None
            if mine:
                fut = Future()
                self._known[key] = fut
            else:
                self.stats.objects_deduplicated += 1
        if not mine:
            return fut.result()
        try:
            blob = compress(data, self.compression)
            h = self.algorithm.new()
            h.update(blob)
            ch = ContentHash(self.algorithm, h.digest())
            self._put(ch.object_path(kind), blob)
            fut.set_result(ch)
            return ch
        except BaseException as e:
            fut.set_exception(e)
            with self._lock:
                self._known.pop(key, None)
            raise

    def _put(self, rel: str, blob: bytes) -> None:
        # rel is data/XX/<hash><suffix>, made from a hash: written directly (a temporary file
        # in data/txn, renamed into place; the publish flushes the file system once before
        # its manifest names any of them)
        dest = os.path.join(self._root, rel)
        if os.path.exists(dest):
            with self._lock:
                self.stats.objects_existing += 1
            return
        tmp = None
        try:
            fd, tmp = self._temporary()
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view):]
                if self._umask & FILE_MODE:  # the umask took bits away at creation
                    os.fchmod(fd, FILE_MODE)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, dest)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(tmp, dest)
        except BaseException as e:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            if isinstance(e, OSError):
                raise IngestError(f"storage {self._root}: cannot write {rel} "
                                  f"({e.strerror})") from None
            raise
        self._created(rel)
        with self._lock:
            self.stats.objects_new += 1
            self.stats.bytes_stored += len(blob)

    def _temporary(self) -> tuple[int, str]:
        """A new file in data/txn named after this process and thread (cheaper than
        ``mkstemp``); a name a killed process of the same ids left behind is passed over."""
        prefix = os.path.join(self._txn, f"ingest.{os.getpid()}.{threading.get_ident()}.")
        for _ in range(1000):
            tmp = f"{prefix}{next(self._names)}"
            try:
                return os.open(tmp, _CREATE_FLAGS, FILE_MODE), tmp
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", f"{prefix}*")

    def _store_stream(self, read: Callable[[int], bytes], size: int, what: str) -> ContentHash:
        txn = self.store.root / "data" / "txn"
        txn.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=txn, prefix="ingest.")
        try:
            h = self.algorithm.new()
            z = zlib.compressobj() if self.compression is Compression.ZLIB else None
            with os.fdopen(fd, "wb") as out:
                remaining = size
                while remaining > 0:
                    block = read(min(_READ_BLOCK, remaining))
                    if not block:
                        raise IngestError(f"{what}: ended early")
                    remaining -= len(block)
                    piece = z.compress(block) if z else block
                    h.update(piece)
                    out.write(piece)
                if z:
                    tail = z.flush()
                    h.update(tail)
                    out.write(tail)
            ch = ContentHash(self.algorithm, h.digest())
            rel = ch.object_path(ObjectKind.FILE)
            if self.store.exists(rel):
                os.unlink(tmp)
            else:
                dest = self.store.root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
                self._created(rel)
                with self._lock:
                    self.stats.objects_new += 1
                    self.stats.bytes_stored += dest.stat().st_size
            return ch
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise IngestError(f"storage {self._root}: cannot write an object for {what} "
                                  f"({e.strerror})") from None
            raise


_WORKER: Ingester | None = None


def _proc_init(root: str, algorithm: int, compression: int, chunking: tuple | None,
               max_file_size: int | None) -> None:
    global _WORKER
    _WORKER = Ingester(LocalStorage(root, fsync=False), algorithm=Algorithm(algorithm),
                       compression=Compression(compression),
                       chunking=ChunkingParams(*chunking) if chunking else None,
                       max_file_size=max_file_size, workers=1)


def _proc_ping() -> bool:
    return _WORKER is not None


def _proc_batch(items: list[tuple[str, int, Scanned | None, bool]],
                ) -> tuple[list, dict[str, int], list[str]]:
    w = _WORKER
    before = w.stats.to_dict()
    out: list = []
    for path, size, seen, follow_symlinks in items:
        try:
            out.append(w._ingest_path(Path(path), size, seen, follow_symlinks))
        except IngestError as e:
            out.append(e)
    after = w.stats.to_dict()
    created, w._new_objects = w._new_objects, []
    return out, {k: after[k] - before[k] for k in after}, created


def _check_opened(what: str, st: os.stat_result, seen: Scanned | None) -> None:
    """Refuse an opened input that is not a regular file, or not the one a scan saw."""
    if not stat.S_ISREG(st.st_mode):
        raise IngestError(f"{what}: not a regular file (mode {stat.filemode(st.st_mode)}); "
                          f"special files are never read")
    if seen is None:
        return
    if (st.st_dev, st.st_ino) != seen[:2]:
        raise IngestError(f"{what}: replaced by another file after it was scanned")
    if (st.st_size, st.st_mtime_ns) != seen[2:]:
        raise IngestError(f"{what}: changed after it was scanned ({seen[2]} -> {st.st_size} "
                          f"bytes, mtime {seen[3]} -> {st.st_mtime_ns} ns)")


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._mv = memoryview(data)
        self._pos = 0

    def read(self, n: int) -> bytes:
        out = self._mv[self._pos:self._pos + n]
        self._pos += len(out)
        return bytes(out)


def _read_exactly(read: Callable[[int], bytes], size: int, what: str) -> bytes:
    parts = []
    remaining = size
    while remaining > 0:
        block = read(remaining)
        if not block:
            raise IngestError(f"{what}: ended after {size - remaining} of {size} bytes")
        parts.append(block)
        remaining -= len(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)
