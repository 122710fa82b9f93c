"""The storage interfaces: where a repository's files come from (read) and go to (write)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol, TypeVar, runtime_checkable

from pycvmfs.errors import SizeLimitError

T = TypeVar("T")

#: Size of the blocks a source yields when streaming a file.
BLOCK_SIZE = 1 << 20

#: A consumer receives the file's bytes as an iterator of blocks and returns a result. It raises
#: :class:`pycvmfs.errors.IntegrityError` when the bytes are bad (hash mismatch, broken zlib); a
#: source with several servers then tries the next one.
Consumer = Callable[[Iterator[bytes]], T]


@runtime_checkable
class Source(Protocol):
    """Read access to one repository's files, addressed relative to its base URL.

    ``relpath`` is e.g. ``.cvmfspublished`` or ``data/43/4e27...C``.
    """

    def fetch(self, relpath: str, consume: Consumer[T], *, what: str, fresh: bool = False) -> T:
        """Stream ``relpath`` into ``consume`` and return what it returns.

        ``what`` names the object in error messages. ``fresh`` asks caches on the way (HTTP
        proxies) for a fresh copy, as for the manifest and whitelist. Raises
        :class:`~pycvmfs.errors.ObjectNotFoundError` when no source has the file,
        :class:`~pycvmfs.errors.FetchError` when none could deliver it, and re-raises the last
        :class:`~pycvmfs.errors.IntegrityError` when every source delivered bad bytes.
        """
        ...

    def describe(self, relpath: str = "") -> str:
        """A human-readable location (URL or path) for messages."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ObjectStore(Source, Protocol):
    """A writable repository storage: content-addressed objects plus a few mutable files."""

    def exists(self, relpath: str) -> bool: ...

    def put_bytes(self, relpath: str, data: bytes) -> None:
        """Store ``data`` under ``relpath`` atomically (readers never see a partial file)."""
        ...

    def put_file(self, relpath: str, src: BinaryIO) -> None:
        """Store a stream under ``relpath`` atomically."""
        ...

    def delete(self, relpath: str) -> None: ...

    def list(self, prefix: str) -> Iterator[str]:
        """Relative paths of the files below ``prefix`` (e.g. ``data/4e``)."""
        ...


def fetch_bytes(source: Source, relpath: str, *, what: str, limit: int | None = None,
                fresh: bool = False) -> bytes:
    """Fetch a whole (small) file into memory; ``limit`` bounds its size: a larger body raises
    :class:`SizeLimitError` (bad bytes: a source tries its next server) as soon as it is."""

    def consume(blocks: Iterator[bytes]) -> bytes:
        buf = bytearray()
        for b in blocks:
            buf += b
            if limit is not None and len(buf) > limit:
                raise SizeLimitError(f"{what}: larger than its size limit of {limit} bytes; "
                                     "stopped there")
        return bytes(buf)

    return source.fetch(relpath, consume, what=what, fresh=fresh)
