"""Reading a regular file of a revision: whole objects or chunks, fetched on demand and cached."""

from __future__ import annotations

import bisect
import io
import os
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
    chunked file downloads just the chunks it spans.
    """

    def __init__(self, path: str, entry: DirectoryEntry, chunks: list[Chunk] | None,
                 fetch: ObjectFetcher) -> None:
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
        self._pos = 0
        self._open_key: ContentHash | None = None
        self._open_file: io.BufferedReader | None = None

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
        if self._open_file is not None:
            self._open_file.close()
            self._open_file = None
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
            f = self._object(obj, kind)
            f.seek(pos - base)
            n = min(want - done, base + length - pos)
            got = f.readinto(mv[done:done + n])
            if got != n:
                raise CvmfsError(f"{self.name}: cached object {obj} is shorter than the catalog "
                                 f"says ({pos - base + (got or 0)} < {length} bytes)")
            done += n
        return done

    def _object(self, h: ContentHash | None, kind: ObjectKind) -> io.BufferedReader:
        if h is None:
            raise CvmfsError(f"{self.name}: file has no content hash")
        if self._open_key != h or self._open_file is None:
            if self._open_file is not None:
                self._open_file.close()
            self._open_file = open(self._fetch(h, kind), "rb")  # noqa: SIM115
            self._open_key = h
        return self._open_file
