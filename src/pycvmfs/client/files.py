"""Reading a regular file of a revision: whole objects or chunks, fetched on demand and cached."""

from __future__ import annotations

import bisect
import io
import logging
import os
import stat
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from pycvmfs.errors import CvmfsError
from pycvmfs.format.catalog import Chunk
from pycvmfs.format.compression import Compression
from pycvmfs.format.dirent import DirectoryEntry
from pycvmfs.format.hashes import ContentHash, ObjectKind

__all__ = ["Prefetcher", "RepoFile"]

log = logging.getLogger("pycvmfs.prefetch")

#: fetch(hash, kind) -> path of the verified, decompressed object in the cache
ObjectFetcher = Callable[[ContentHash, ObjectKind, int], Path]
#: lookup(hash, kind) -> path of the object if cached (pinned like fetch), never downloading
ObjectLookup = Callable[[ContentHash, ObjectKind], Path | None]
#: readahead(hash, kind, compression, size) -> None: start fetching an object (of at most
#: ``size`` bytes) into the cache in the background
ReadAhead = Callable[[ContentHash, ObjectKind, Compression, int | None], object]

#: sequential reads of a chunked file keep this many bytes of chunks downloading ahead
READAHEAD_BYTES = 32 << 20
READAHEAD_CHUNKS = 4
#: how a cached object is opened to be served: no symlink followed, no FIFO or device
#: waited on (the caller then refuses what is not a regular file)
OBJECT_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def open_cached_object(path: str | os.PathLike, size: int, what: str) -> int:
    """A descriptor of the verified cached object at ``path`` (opened with
    :data:`OBJECT_OPEN_FLAGS`: never through a link, never blocking on a planted FIFO), after
    checking it is a regular file of the ``size`` the catalog records; ``what`` names it in
    the error."""
    fd = os.open(path, OBJECT_OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        have = st.st_size if stat.S_ISREG(st.st_mode) else -1
        if have != size:
            raise CvmfsError(f"{what} has {have} bytes, the catalog says {size}")
    except BaseException:
        os.close(fd)
        raise
    return fd


class WouldBlock(Exception):
    """Raised by :meth:`RepoFile.pread_nowait` when the bytes are not in the cache yet."""


class Sink(Protocol):
    """Where a batch download puts an object (:class:`pycvmfs.client.cache.Download`)."""

    relpath: str

    def write(self, block: bytes) -> None: ...

    def finish(self) -> object: ...

    def abort(self) -> None: ...


class Batch(Protocol):
    """Runs transfers (:class:`pycvmfs.storage.batch.BatchFetcher`)."""

    def submit(self, transfer: _BatchTransfer) -> None: ...

    def close(self) -> None: ...


#: begin(hash, kind, compression, max_size=size) -> a sink for the object's body (of at most
#: ``size`` bytes), or None to skip it
BeginDownload = Callable[..., Sink | None]


class Prefetcher:
    """Downloads objects into the cache in the background (read-ahead).

    Either in threads: ``fetch(hash, kind, compression, size)`` does the work (the cache's
    verified download, capped at the object's size in the catalog when it is given) and
    ``cached(hash)`` tells whether it can be skipped; or, with ``batch`` and ``begin``, as
    transfers of a :class:`~pycvmfs.storage.batch.BatchFetcher` (many at once, the HTTP work
    in C): ``begin`` returns the cache's :class:`~pycvmfs.client.cache.Download`
    of the object (None when it is cached or in flight already), fed as the body arrives and
    finished (verified, moved into the cache) when it is complete; a failed transfer is just
    dropped. An object is in flight at most once, recently requested hashes are remembered so
    repeated requests cost a dict lookup, and requests beyond ``backlog`` queued ones are
    dropped (read-ahead is a hint). Nothing is pinned or served from here: readers fetch
    through the cache as always and find the object in place (or wait for the download in
    flight: the cache holds its lock on the object meanwhile), and report errors themselves.
    """

    def __init__(self, fetch: Callable[[ContentHash, ObjectKind, Compression, int | None], object],
                 cached: Callable[[ContentHash], bool], *, workers: int = 6,
                 backlog: int = 64, remember: int = 8192, batch: Batch | None = None,
                 begin: BeginDownload | None = None,
                 ended: Callable[[ContentHash, object | None], None] | None = None) -> None:
        if (batch is None) != (begin is None):
            raise ValueError("Prefetcher: batch and begin go together")
        self._fetch = fetch
        self._cached = cached
        self._batch = batch
        self._begin = begin
        self._pool = (ThreadPoolExecutor(max(1, workers), thread_name_prefix="pycvmfs-ahead")
                      if batch is None else None)
        self._backlog = backlog
        self._remember = remember
        self._recent: OrderedDict[ContentHash, None] = OrderedDict()
        self._queued = 0
        self._lock = threading.Lock()
        self._closed = False
        self._on_ended = ended
        self.stats = {"submitted": 0, "fetched": 0, "failed": 0}

    def has_room(self) -> bool:
        """Whether a request would be queued now (the backlog is not full)."""
        return not self._closed and self._queued < self._backlog

    def submit(self, h: ContentHash | None, kind: ObjectKind,
               compression: Compression = Compression.ZLIB, size: int | None = None, *,
               urgent: bool = False) -> bool:
        """Queue ``h`` unless it was requested recently or the queue is full; ``size`` (its
        size in the catalog) caps its download. ``urgent`` is a hint this queue does not act
        on (requests start in order; see :class:`~pycvmfs.client.fetcher.FetchProcess`)."""
        if h is None:
            return False
        with self._lock:
            if self._closed or h in self._recent or self._queued >= self._backlog:
                return False
            self._recent[h] = None
            if len(self._recent) > self._remember:
                self._recent.popitem(last=False)
            self._queued += 1
            self.stats["submitted"] += 1
        if self._pool is not None:
            self._pool.submit(self._run, h, kind, compression, size)
        else:
            self._start(h, kind, compression, size)
        return True

    def _run(self, h: ContentHash, kind: ObjectKind, compression: Compression,
             size: int | None) -> None:
        try:
            fetched = not self._cached(h)
            if fetched:
                self._fetch(h, kind, compression, size)
        except Exception as e:  # the reader fetches again and reports the error
            self._ended(h, e)
        else:
            self._ended(h, None, fetched)

    def _start(self, h: ContentHash, kind: ObjectKind, compression: Compression,
               size: int | None) -> None:
        sink: Sink | None = None
        try:
            sink = self._begin(h, kind, compression, max_size=size)
            if sink is None:  # cached, or being downloaded already
                self._ended(h, None)
                return
            self._batch.submit(_BatchTransfer(h, sink, self._ended))
        except Exception as e:
            if sink is not None:
                sink.abort()
            self._ended(h, e)

    def _ended(self, h: ContentHash, error: object | None, fetched: bool = False) -> None:
        with self._lock:
            self._queued -= 1
            if error is not None:
                self._recent.pop(h, None)
                self.stats["failed"] += 1
            elif fetched:
                self.stats["fetched"] += 1
        if error is not None:
            log.debug("read-ahead of %s failed: %s", h, error)
        if self._on_ended is not None:
            self._on_ended(h, error)

    def close(self) -> None:
        """Stop taking requests; wait for the downloads in flight (they finish or are dropped)."""
        with self._lock:
            self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._batch is not None:
            self._batch.close()


class _BatchTransfer:
    """A read-ahead download run by a batch fetcher: the body goes into the cache's sink as it
    arrives; a complete body is verified and moved into the cache, anything else is dropped."""

    __slots__ = ("_ended", "_error", "h", "relpath", "sink")

    def __init__(self, h: ContentHash, sink: Sink,
                 ended: Callable[[ContentHash, object | None, bool], None]) -> None:
        self.h = h
        self.sink = sink
        self.relpath = sink.relpath
        self._ended = ended
        self._error: BaseException | None = None

    def write(self, block: bytes) -> int | None:
        try:
            self.sink.write(block)
        except Exception as e:  # e.g. a full disk: abort the transfer
            self._error = e
            return 0
        return None

    def done(self, error: str | None) -> None:
        failure: object | None = self._error or error
        try:
            if failure is None:
                self.sink.finish()  # verifies; aborts itself on failure
        except Exception as e:
            failure = e
        finally:
            self.sink.abort()  # a no-op after a successful finish
            self._ended(self.h, failure, failure is None)


class RepoFile(io.RawIOBase):
    """A seekable, read-only binary file over a repository file's object or chunks.

    Only the objects covering the bytes actually read are fetched: a read at any offset of a
    chunked file downloads just the chunks it spans. With ``release``, ``fetch`` pins each
    object it returns and the file releases the pin when it moves to another object or closes.
    """

    def __init__(self, path: str, entry: DirectoryEntry, chunks: list[Chunk] | None,
                 fetch: ObjectFetcher,
                 release: Callable[[ContentHash], None] | None = None, *,
                 lookup: ObjectLookup | None = None,
                 readahead: ReadAhead | None = None) -> None:
        super().__init__()
        if entry.is_external:
            raise CvmfsError(f"{path}: external files (served from CVMFS_EXTERNAL_URL) are not "
                             "supported by this reader yet")
        self.name = path
        self._entry = entry
        self._size = entry.size
        self._chunks = chunks
        self._starts = [c.offset for c in chunks] if chunks else []
        self._fetch = fetch
        self._lookup = lookup
        self._readahead = readahead
        self._ahead = -1  # chunks up to this index were handed to read-ahead
        self._last_chunk = -2  # index of the chunk read last (sequential-read detection)
        self._unpin = release
        self._pos = 0
        # object hash -> [fd, readers]: positional reads (os.preadv) make concurrent reads of
        # one file safe (the kernel reads ahead in parallel); a descriptor in use is never
        # closed under a reader. Closing a descriptor releases the object's pin.
        self._fds: dict[ContentHash, list[int]] = {}
        self._fd_lock = threading.Lock()

    # -- io.RawIOBase --------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position", self.name)
        self._pos = pos
        return pos

    @property
    def size(self) -> int:
        return self._size

    def readinto(self, buffer) -> int:
        mv = memoryview(buffer).cast("B")
        n = self.pread_into(mv, self._pos)
        self._pos += n
        return n

    def readall(self) -> bytes:
        return self.read(max(0, self._size - self._pos))

    def close(self) -> None:
        with self._fd_lock:
            for h, (fd, _readers) in list(self._fds.items()):
                os.close(fd)
                if self._unpin is not None:
                    self._unpin(h)
            self._fds.clear()
        super().close()

    # -- random access -------------------------------------------------------------------
    def pread(self, size: int, offset: int) -> bytes:
        return self._pread(size, offset, True)

    def pread_nowait(self, size: int, offset: int) -> bytes:
        """:meth:`pread` if every object it needs is in the cache; else :class:`WouldBlock`
        (no download is started: call :meth:`pread` from a thread)."""
        return self._pread(size, offset, False)

    def _pread(self, size: int, offset: int, wait: bool) -> bytes:
        want = max(0, min(size, self._size - offset))
        if self._chunks is None and want and not self.closed:
            # one whole-file object: a single pread straight into the bytes returned
            fd = self._acquire(self._entry.hash, ObjectKind.FILE, self._size, wait)
            try:
                data = os.pread(fd, want, offset)
            finally:
                self._done_with(self._entry.hash)  # type: ignore[arg-type]
            if len(data) != want:
                raise CvmfsError(f"{self.name}: cached object {self._entry.hash} is shorter "
                                 f"than the catalog says ({offset + len(data)} < {self._size} "
                                 "bytes)")
            return data
        buf = bytearray(want)
        n = self.pread_into(memoryview(buf), offset, wait=wait)
        return bytes(buf[:n])

    def pread_into(self, mv: memoryview, offset: int, *, wait: bool = True) -> int:
        """Fill ``mv`` from ``offset``; returns the number of bytes read (0 at end of file)."""
        if self.closed:
            raise ValueError("I/O operation on closed file")
        want = min(len(mv), max(0, self._size - offset))
        done = 0
        while done < want:
            pos = offset + done
            if self._chunks is None:
                obj, base, length = self._entry.hash, 0, self._size
                kind = ObjectKind.FILE
            else:
                i = bisect.bisect_right(self._starts, pos) - 1
                c = self._chunks[i]
                obj, base, length = c.hash, c.offset, c.size
                kind = ObjectKind.PARTIAL
                if i != self._last_chunk:
                    if self._readahead is not None and i in (0, self._last_chunk + 1):
                        self._read_ahead(i)
                    self._last_chunk = i
            n = min(want - done, base + length - pos)
            fd = self._acquire(obj, kind, length, wait)
            try:
                got = os.preadv(fd, [mv[done:done + n]], pos - base)
            finally:
                self._done_with(obj)
            if got != n:
                raise CvmfsError(f"{self.name}: cached object {obj} is shorter than the catalog "
                                 f"says ({pos - base + got} < {length} bytes)")
            done += n
        return done

    # -- chunks read by the FUSE session in C ---------------------------------------------
    def chunk_offsets(self) -> bytes | None:
        """Each chunk's start and then the file size, as native 64-bit integers (what the
        FUSE session reads a chunked file by); None for a file of one object."""
        if not self._chunks:  # (an empty chunked file has no chunk: read as one object)
            return None
        return array("q", [*self._starts, self._size]).tobytes()

    def open_chunk(self, i: int) -> int:
        """A new descriptor of chunk ``i``'s verified object in the cache (downloaded if
        needed; pinned, with ``release``, until :meth:`close_chunk`); the caller closes it.
        Entering chunk 0 or the one after the last one opened keeps the next ones downloading."""
        chunks = self._chunks
        if chunks is None or not 0 <= i < len(chunks):
            raise CvmfsError(f"{self.name}: no chunk {i}")
        c = chunks[i]
        if c.hash is None:
            raise CvmfsError(f"{self.name}: chunk {i} has no content hash")
        if self._readahead is not None and i in (0, self._last_chunk + 1):
            self._read_ahead(i)
        self._last_chunk = i
        path = self._fetch(c.hash, ObjectKind.PARTIAL, c.size)  # verified (and pinned)
        try:
            return open_cached_object(path, c.size, f"{self.name}: cached chunk {c.hash}")
        except BaseException:
            if self._unpin is not None:
                self._unpin(c.hash)
            raise

    def close_chunk(self, i: int) -> None:
        """The descriptor of chunk ``i`` handed out by :meth:`open_chunk` was closed."""
        chunks = self._chunks
        if self._unpin is not None and chunks is not None and 0 <= i < len(chunks):
            h = chunks[i].hash
            if h is not None:
                self._unpin(h)

    def _read_ahead(self, i: int) -> None:
        """Sequential reading entered chunk ``i``: keep the next chunks downloading."""
        chunks = self._chunks or []
        start = max(i + 1, self._ahead + 1)
        ahead = 0
        j = i + 1
        while j < len(chunks) and j <= i + READAHEAD_CHUNKS and ahead < READAHEAD_BYTES:
            if j >= start and chunks[j].hash is not None:
                self._readahead(chunks[j].hash, ObjectKind.PARTIAL, self._entry.compression,
                                chunks[j].size)
                self._ahead = j
            ahead += chunks[j].size
            j += 1

    def _acquire(self, h: ContentHash | None, kind: ObjectKind, size: int,
                 wait: bool = True) -> int:
        """A descriptor of object ``h`` (of ``size`` bytes in the catalog: its download's cap)."""
        if h is None:
            raise CvmfsError(f"{self.name}: file has no content hash")
        with self._fd_lock:
            slot = self._fds.get(h)
            if slot is not None:
                slot[1] += 1
                return slot[0]
        if wait:
            path = self._fetch(h, kind, size)  # downloads, verifies (and pins) outside the lock
        else:
            found = self._lookup(h, kind) if self._lookup is not None else None
            if found is None:
                raise WouldBlock(h)
            path = found
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            if self._unpin is not None:
                self._unpin(h)
            raise
        with self._fd_lock:
            slot = self._fds.get(h)
            if slot is not None:  # another reader opened it meanwhile (and pinned it once)
                os.close(fd)
                if self._unpin is not None:
                    self._unpin(h)
                slot[1] += 1
                return slot[0]
            self._close_idle()
            self._fds[h] = [fd, 1]
            return fd

    def _done_with(self, h: ContentHash) -> None:
        with self._fd_lock:
            slot = self._fds.get(h)
            if slot is not None:
                slot[1] -= 1

    def _close_idle(self) -> None:
        """Keep few descriptors: close those no reader uses (called with the lock held)."""
        if len(self._fds) < 4:
            return
        for key in [k for k, (_fd, readers) in self._fds.items() if readers == 0]:
            os.close(self._fds.pop(key)[0])
            if self._unpin is not None:
                self._unpin(key)
