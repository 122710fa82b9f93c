"""Fetching content-addressed objects from a source with their hash checked on the way."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pycvmfs.errors import HashMismatchError, IntegrityError
from pycvmfs.format.compression import Compression, Inflater
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.base import Source

__all__ = ["download_verified", "fetch_object_bytes"]

Sink = Callable[[bytes], None]


def download_verified(source: Source, h: ContentHash, kind: ObjectKind,
                      compression: Compression, sink: Sink | None, *,
                      what: str | None = None) -> tuple[int, int]:
    """Stream object ``h`` from ``source`` into ``sink`` (a callable taking decompressed blocks,
    or None to discard), checking its hash over the compressed bytes as they arrive.

    Returns ``(stored bytes, decompressed bytes)``. Raises :class:`HashMismatchError` (after the
    source tried its alternatives) when the bytes are bad; the sink may then have seen garbage,
    so callers write to a temporary file and keep it only on success.
    """
    label = what or h.describe(kind)

    def consume(blocks: Iterator[bytes]) -> tuple[int, int]:
        hasher = h.algorithm.new()
        inflater = Inflater(compression, what=label)
        if sink is not None and hasattr(sink, "reset"):
            sink.reset()
        stored = plain = 0
        broken: IntegrityError | None = None  # a zlib error is reported only if the hash is right
        for block in blocks:
            hasher.update(block)
            stored += len(block)
            if broken is not None:
                continue
            try:
                for piece in inflater.feed(block):
                    plain += len(piece)
                    if sink is not None:
                        sink(piece)
            except IntegrityError as e:
                broken = e
        actual = ContentHash(h.algorithm, hasher.digest())
        if actual != h:
            raise HashMismatchError(label, str(h), str(actual))
        if broken is not None:
            raise broken
        tail = inflater.finish()
        if tail:
            plain += len(tail)
            if sink is not None:
                sink(tail)
        return stored, plain

    return source.fetch(h.object_path(kind), consume, what=label)


def fetch_object_bytes(source: Source, h: ContentHash, kind: ObjectKind,
                       compression: Compression = Compression.ZLIB) -> bytes:
    """A whole (small) object, verified and decompressed, in memory."""
    out = bytearray()
    download_verified(source, h, kind, compression, out.extend)
    return bytes(out)


