"""How a replica copies one object: its bytes checked against its name before they are kept."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pycvmfs.errors import HashMismatchError, IntegrityError
from pycvmfs.format.compression import stored_bound, too_many_stored
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.base import ObjectStore

__all__ = ["BufferedObject", "TempSpill", "VerifyingReader"]

#: A body larger than this is spilled to a temporary file instead of kept in memory.
SPILL_AT = 1 << 20


class VerifyingReader:
    """A read-only stream over a body's blocks that fails at its end if the hash is wrong, so
    that an atomic ``put_file`` never keeps bad bytes. With ``max_size`` (the object's size in
    its catalog) a body longer than zlib can make of that size fails as soon as it is."""

    def __init__(self, blocks: Iterator[bytes], h: ContentHash, what: str,
                 max_size: int | None = None) -> None:
        self._blocks = blocks
        self._hasher = h.algorithm.new()
        self._hash = h
        self._what = what
        self._max_size = max_size
        self._max_stored = None if max_size is None else stored_bound(max_size)
        self._buf = b""
        self.eof = False  # the end was reached and the hash matched
        self.error: IntegrityError | None = None
        self.count = 0

    def readable(self) -> bool:
        return True

    def _next(self) -> bytes:
        for block in self._blocks:
            if block:
                self.count += len(block)
                if self._max_stored is not None and self.count > self._max_stored:
                    self.error = too_many_stored(self._what, self.count, self._max_size)
                    raise self.error
                self._hasher.update(block)
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



class TempSpill:
    """Where a large body waits until its hash is checked: an anonymous temporary file in
    ``tmp``, copied into a store by :meth:`commit`."""

    def __init__(self, tmp: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=tmp, prefix="pull.")  # noqa: SIM115

    def write(self, block: bytes) -> None:
        self._file.write(block)

    def commit(self, dest: ObjectStore, relpath: str) -> None:
        self._file.flush()
        self._file.seek(0)
        dest.put_file(relpath, self._file)
        self._file.close()

    def abort(self) -> None:
        self._file.close()


class BufferedObject:
    """One object fetched by a :class:`~pycvmfs.storage.batch.BatchFetcher`: its body hashed
    as it arrives and kept in memory, or past :data:`SPILL_AT` in a :class:`TempSpill` in
    ``tmp``, until
    :meth:`store` has checked the hash; ``on_done(self, error)`` is called when the transfer
    ends. Nothing is allocated for the body before the transfer starts, so that many can
    wait in a queue cheaply."""

    __slots__ = ("_hasher", "_parts", "_spill", "h", "kind", "name", "on_done", "relpath",
                 "size", "tmp")

    def __init__(self, h: ContentHash, kind: ObjectKind, name: str, tmp: Path,
                 on_done: Callable[[BufferedObject, str | None], None]) -> None:
        self.h, self.kind, self.name = h, kind, name
        self.relpath = h.object_path(kind)
        self.tmp = tmp
        self.on_done = on_done
        self.size = 0
        self._hasher: Any = None
        self._parts: list[bytes] = []
        self._spill: TempSpill | None = None

    def write(self, block: bytes) -> None:
        if self._hasher is None:
            self._hasher = self.h.algorithm.new()
        self._hasher.update(block)
        self.size += len(block)
        if self._spill is not None:
            self._spill.write(block)
            return
        self._parts.append(block)
        if self.size > SPILL_AT:
            self._spill = TempSpill(self.tmp)
            for part in self._parts:
                self._spill.write(part)
            self._parts = []

    def done(self, error: str | None) -> None:
        self.on_done(self, error)

    def verified(self) -> bool:
        """Whether the body hashes to the object's name."""
        hasher = self._hasher if self._hasher is not None else self.h.algorithm.new()
        return hasher.digest() == self.h.digest

    def store(self, dest: ObjectStore) -> None:
        """Put the verified body into ``dest`` (atomically, as every store does)."""
        if self._spill is None:
            dest.put_bytes(self.relpath, b"".join(self._parts))
        else:
            spill, self._spill = self._spill, None
            spill.commit(dest, self.relpath)

    def discard(self) -> None:
        self._parts = []
        if self._spill is not None:
            self._spill.abort()
            self._spill = None
