"""How a replica copies one object: its bytes checked against its name before they are kept."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pycvmfs.errors import HashMismatchError
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.base import ObjectStore

__all__ = ["BufferedObject", "VerifyingReader"]

#: A body larger than this is spilled to a temporary file instead of kept in memory.
SPILL_AT = 1 << 20


class VerifyingReader:
    """A read-only stream over a body's blocks that fails at its end if the hash is wrong, so
    that an atomic ``put_file`` never keeps bad bytes."""

    def __init__(self, blocks: Iterator[bytes], h: ContentHash, what: str) -> None:
        self._blocks = blocks
        self._hasher = h.algorithm.new()
        self._hash = h
        self._what = what
        self._buf = b""
        self.eof = False  # the end was reached and the hash matched
        self.error: HashMismatchError | None = None
        self.count = 0

    def readable(self) -> bool:
        return True

    def _next(self) -> bytes:
        for block in self._blocks:
            if block:
                self._hasher.update(block)
                self.count += len(block)
                return block
        if not self.eof:
            actual = ContentHash(self._hash.algorithm, self._hasher.digest())
            if actual != self._hash:
                self.error = HashMismatchError(self._what, str(self._hash), str(actual))
                raise self.error
            self.eof = True
        return b""

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buf]
            while block := self._next():
                parts.append(block)
            self._buf = b""
            return b"".join(parts)
        if not self._buf:
            self._buf = self._next()
        out, self._buf = self._buf[:size], self._buf[size:]
        return out



class BufferedObject:
    """One object fetched by a :class:`~pycvmfs.storage.batch.BatchFetcher`: its body hashed
    as it arrives and kept (in memory, or in a temporary file in ``tmp`` past
    :data:`SPILL_AT`) until :meth:`store` has checked the hash; ``on_done(self, error)`` is
    called when the transfer ends."""

    __slots__ = ("_file", "_hasher", "_parts", "_tmp", "h", "kind", "name", "on_done",
                 "relpath", "size")

    def __init__(self, h: ContentHash, kind: ObjectKind, tmp: Path,
                 on_done: Callable[[BufferedObject, str | None], None]) -> None:
        self.h, self.kind = h, kind
        self.name = h.object_name(kind)
        self.relpath = h.object_path(kind)
        self.on_done = on_done
        self.size = 0
        self._tmp = tmp
        self._hasher = h.algorithm.new()
        self._parts: list[bytes] = []
        self._file: BinaryIO | None = None

    def write(self, block: bytes) -> None:
        self._hasher.update(block)
        self.size += len(block)
        if self._file is not None:
            self._file.write(block)
            return
        self._parts.append(block)
        if self.size > SPILL_AT:
            self._file = tempfile.TemporaryFile(dir=self._tmp, prefix="pull.")  # noqa: SIM115
            for part in self._parts:
                self._file.write(part)
            self._parts = []

    def done(self, error: str | None) -> None:
        self.on_done(self, error)

    def verified(self) -> bool:
        """Whether the body hashes to the object's name."""
        return ContentHash(self.h.algorithm, self._hasher.digest()) == self.h

    def store(self, dest: ObjectStore) -> None:
        """Put the verified body into ``dest`` (atomically, as every store does)."""
        if self._file is None:
            dest.put_bytes(self.relpath, b"".join(self._parts))
        else:
            self._file.flush()
            self._file.seek(0)
            dest.put_file(self.relpath, self._file)

    def discard(self) -> None:
        self._parts = []
        if self._file is not None:
            self._file.close()
            self._file = None
