"""Object compression: zlib streams (RFC 1950) exactly as the stock tools write them, or none."""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable, Iterator

# Inflating: zlib-ng (the zlib API, about 2.3x faster here, GIL released as by zlib). Any
# correct inflater gives the same bytes; deflating stays with zlib, whose output the stock
# tools' object names depend on.
from zlib_ng import zlib_ng as _inflating

from pycvmfs.errors import FormatError, IntegrityError, SizeLimitError

__all__ = ["Compression", "Inflater", "compress", "decompress", "inflate_stream", "stored_bound"]

# Output produced per decompress() call is bounded so a small "zip bomb" cannot blow up memory.
_MAX_PIECE = 1 << 20


class Compression(enum.Enum):
    """Compression algorithms; values are the catalog flag codes (flags bits 11-13)."""

    ZLIB = 0
    NONE = 1

    @property
    def config_name(self) -> str:
        return "zlib" if self is Compression.ZLIB else "none"

    @classmethod
    def from_config_name(cls, name: str) -> Compression:
        n = name.strip().lower()
        if n in ("zlib", "default"):
            return cls.ZLIB
        if n == "none":
            return cls.NONE
        raise FormatError(f"unknown compression algorithm {name!r} (expected zlib or none)")

    @classmethod
    def from_flag_code(cls, code: int) -> Compression:
        found = _BY_CODE.get(code)  # (a dict lookup: every file's entry asks)
        if found is None:
            raise FormatError(f"unknown compression code {code} in catalog flags")
        return found


_BY_CODE = {c.value: c for c in Compression}


def compress(data: bytes | bytearray | memoryview,
             compression: Compression = Compression.ZLIB) -> bytes:
    """Compress one object. zlib at the default level in one stream: the stock bytes exactly."""
    if compression is Compression.NONE:
        return bytes(data)
    return zlib.compress(data)


def stored_bound(size: int, compression: Compression = Compression.ZLIB) -> int:
    """The most stored bytes an object of ``size`` decompressed bytes can have: the size itself
    uncompressed, else zlib's ``compressBound`` (stored blocks' overhead plus the wrapper)."""
    if compression is Compression.NONE:
        return size
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13


def too_many_stored(what: str, stored: int, limit: int) -> SizeLimitError:
    """The error for a body of ``stored`` bytes, more than :func:`stored_bound` of ``limit``
    decompressed bytes allows: no object of that size has that many stored bytes."""
    return SizeLimitError(f"{what}: {stored} stored bytes, more than its size limit of {limit} "
                          "bytes can take; stopped there")


def _too_large(what: str, limit: int) -> SizeLimitError:
    return SizeLimitError(f"{what}: decompresses to more than its size limit of {limit} bytes; "
                          "stopped there")


def decompress(data: bytes | bytearray | memoryview, compression: Compression = Compression.ZLIB,
               *, what: str = "object", limit: int | None = None) -> bytes:
    """Decompress one whole object; a stream that is broken, truncated or followed by junk fails,
    so does one that inflates past ``limit`` bytes (without inflating the rest)."""
    if compression is Compression.NONE:
        if limit is not None and len(data) > limit:
            raise _too_large(what, limit)
        return bytes(data)
    d = _inflating.decompressobj()
    try:
        out = d.decompress(data) if limit is None else d.decompress(data, limit + 1)
    except _inflating.error as e:
        raise IntegrityError(f"{what}: not a valid zlib stream ({e})") from None
    if limit is not None and len(out) > limit:
        raise _too_large(what, limit)
    if not d.eof:
        raise IntegrityError(f"{what}: zlib stream is truncated")
    if d.unused_data:
        raise IntegrityError(f"{what}: {len(d.unused_data)} bytes after the end of the zlib stream")
    return out


class Inflater:
    """Incremental decompression of one object with bounded output per step. With ``limit``,
    a stream that inflates past that many bytes raises :class:`SizeLimitError` as soon as it
    does (at most ``limit + 1`` bytes are inflated)."""

    def __init__(self, compression: Compression = Compression.ZLIB, *,
                 what: str = "object", limit: int | None = None) -> None:
        self.compression = compression
        self.what = what
        self.limit = limit
        self._left = -1 if limit is None else limit  # output still allowed (-1: no limit)
        self._d = _inflating.decompressobj() if compression is Compression.ZLIB else None

    def _count(self, n: int) -> None:
        if self._left >= 0:
            self._left -= n
            if self._left < 0:
                raise _too_large(self.what, self.limit or 0)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Yield the decompressed pieces that ``data`` completes."""
        if self._d is None:
            if data:
                self._count(len(data))
                yield bytes(data)
            return
        if self._d.eof:
            if data:
                raise IntegrityError(f"{self.what}: data after the end of the zlib stream")
            return
        buf = data
        try:
            while True:
                out = self._d.decompress(
                    buf, _MAX_PIECE if self._left < 0 else min(_MAX_PIECE, self._left + 1))
                if out:
                    self._count(len(out))
                    yield out
                buf = self._d.unconsumed_tail
                if not buf or self._d.eof:
                    break
        except _inflating.error as e:
            raise IntegrityError(f"{self.what}: not a valid zlib stream ({e})") from None
        if self._d.eof and (self._d.unused_data or buf):
            raise IntegrityError(f"{self.what}: data after the end of the zlib stream")

    def finish(self) -> bytes:
        """Check that the stream ended properly; returns any remaining output."""
        if self._d is None:
            return b""
        try:
            out = self._d.flush()  # (what a fed stream holds back is a few hundred bytes)
        except _inflating.error as e:
            raise IntegrityError(f"{self.what}: not a valid zlib stream ({e})") from None
        self._count(len(out))
        if not self._d.eof:
            raise IntegrityError(f"{self.what}: zlib stream is truncated")
        return out


def inflate_stream(pieces: Iterable[bytes], compression: Compression = Compression.ZLIB,
                   *, what: str = "object", limit: int | None = None) -> Iterator[bytes]:
    """Decompress a stream of compressed pieces, yielding decompressed pieces (at most
    ``limit`` bytes of them: see :class:`Inflater`)."""
    inf = Inflater(compression, what=what, limit=limit)
    for piece in pieces:
        yield from inf.feed(piece)
    tail = inf.finish()
    if tail:
        yield tail
