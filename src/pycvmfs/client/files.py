"""Reading a regular file of a revision: whole objects or chunks, fetched on demand and cached."""

from __future__ import annotations

import bisect
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pycvmfs.errors import CvmfsError
from pycvmfs.format.catalog import Chunk
from pycvmfs.format.dirent import DirectoryEntry
from pycvmfs.format.hashes import ContentHash, ObjectKind

__all__ = ["RepoFile"]

#: fetch(hash, kind) -> path of the verified, decompressed object in the cache
ObjectFetcher = Callable[[ContentHash, ObjectKind], Path]


class RepoFile(io.RawIOBase):
    """A seekable, read-only binary file over a repository file's object or chunks.

    Only the objects covering the bytes actually read are fetched: a read at any offset of a
    chunked file downloads just the chunks it spans. With ``release``, ``fetch`` pins each
    object it returns and the file releases the pin when it moves to another object or closes.
    """

    def __init__(self, path: str, entry: DirectoryEntry, chunks: list[Chunk] | None,
                 fetch: ObjectFetcher,
                 release: Callable[[ContentHash], None] | None = None) -> None:
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
        buf = bytearray(max(0, min(size, self._size - offset)))
        n = self.pread_into(memoryview(buf), offset)
        return bytes(buf[:n])

    def pread_into(self, mv: memoryview, offset: int) -> int:
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
            n = min(want - done, base + length - pos)
            fd = self._acquire(obj, kind)
            try:
                got = os.preadv(fd, [mv[done:done + n]], pos - base)
            finally:
                self._done_with(obj)
            if got != n:
                raise CvmfsError(f"{self.name}: cached object {obj} is shorter than the catalog "
                                 f"says ({pos - base + got} < {length} bytes)")
            done += n
        return done

    def _acquire(self, h: ContentHash | None, kind: ObjectKind) -> int:
        if h is None:
            raise CvmfsError(f"{self.name}: file has no content hash")
        with self._fd_lock:
            slot = self._fds.get(h)
            if slot is not None:
                slot[1] += 1
                return slot[0]
        path = self._fetch(h, kind)  # downloads, verifies (and pins) outside the lock
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
