"""Fetching content-addressed objects from a source with their hash checked on the way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

from pycvmfs.errors import FetchError, HashMismatchError, IntegrityError
from pycvmfs.format.compression import Compression, Inflater, stored_bound, too_many_stored
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.base import Source

__all__ = ["CATALOG_LIMIT", "HISTORY_LIMIT", "SMALL_FILE_LIMIT", "CheckedBody", "catalog_limit",
           "download_verified", "fetch_object_bytes"]

# Size caps of the downloads whose size no signed record gives (decompressed bytes; a body
# past its cap is stopped there). The stock client reads the manifest, whitelist, certificate
# and meta-info into memory sinks of at most 1 MiB (``MemSink::kMaxMemSize``); they are a few
# hundred bytes to a few KiB.
SMALL_FILE_LIMIT = 1 << 20
#: the tag database: about 150 bytes a tag
HISTORY_LIMIT = 256 << 20
#: a catalog whose size is not recorded (0 in a schema-0 parent or a manifest without B)
CATALOG_LIMIT = 4 << 30


def catalog_limit(recorded: int | None) -> int:
    """The size cap of a catalog: its recorded (uncompressed) size from the parent's
    ``nested_catalogs`` row or the manifest's ``B``, else :data:`CATALOG_LIMIT`."""
    return recorded if recorded else CATALOG_LIMIT

Sink = Callable[[bytes], None]
#: Where decompressed bytes go: a bytearray, a writable binary file, or a callable (which may
#: have a ``reset()`` to start over), or None to discard them.
Output = bytearray | BinaryIO | Sink | None


def _output(out: Output, what: str) -> tuple[Sink | None, Callable[[], None]]:
    """``out``'s write function and how to take back what one attempt wrote: a source retries
    a download (next server, no-cache) by reading the body again from its start."""
    if out is None:
        return None, lambda: None
    if isinstance(out, bytearray):
        start = len(out)

        def drop() -> None:
            del out[start:]

        return out.extend, drop
    if hasattr(out, "truncate") and hasattr(out, "write"):
        start = out.tell()

        def rewind() -> None:
            out.seek(start)
            out.truncate()

        return out.write, rewind
    reset = getattr(out, "reset", None)
    if reset is not None:
        return out, reset

    def refuse() -> None:
        raise FetchError(what, ["the body had to be read again, but its output cannot be "
                                "taken back (pass a file, a bytearray or a sink with reset())"])

    return out, refuse


class CheckedBody:
    """One object body checked as it arrives: the stored bytes hashed, the decompression
    carried along into ``write``. A decompression error is held back and raised by
    :meth:`finish` only when the hash is right: a wrong hash says more (wrong bytes: another
    server may have the right ones).

    With ``max_size`` (the most decompressed bytes the object may have: its size in the
    catalog, or a fixed cap) a body whose stored bytes exceed what zlib can make of that size
    (:func:`stored_bound`) raises :class:`SizeLimitError` at once. A body that inflates past
    ``max_size`` stops being inflated there (at most ``max_size + 1`` bytes are inflated and
    kept) but is still hashed, up to that bound of stored bytes, so that :meth:`finish` can say
    which it is: bytes that are not the object (:class:`HashMismatchError`: another server may
    have the right ones) or the right object bigger than its recorded size
    (:class:`SizeLimitError`)."""

    __slots__ = ("_broken", "_hasher", "_inflater", "_max_stored", "h", "stored", "what")

    def __init__(self, h: ContentHash, compression: Compression, what: str,
                 max_size: int | None = None) -> None:
        self.h, self.what = h, what
        self._hasher = h.algorithm.new()
        self._inflater = Inflater(compression, what=what, limit=max_size)
        self._max_stored = -1 if max_size is None else stored_bound(max_size, compression)
        self._broken: IntegrityError | None = None
        self.stored = 0  # compressed bytes seen

    def feed(self, block: bytes, write: Sink | None) -> int:
        """Take the next block; returns the decompressed bytes it completed."""
        self._hasher.update(block)
        self.stored += len(block)
        if 0 <= self._max_stored < self.stored:
            raise too_many_stored(self.what, self.stored, self._inflater.limit or 0)
        if self._broken is not None:
            return 0
        plain = 0
        try:
            for piece in self._inflater.feed(block):
                plain += len(piece)
                if write is not None:
                    write(piece)
        except IntegrityError as e:  # a SizeLimitError too: nothing more is inflated
            self._broken = e
        return plain

    def finish(self, write: Sink | None) -> int:
        """Check the hash, then the end of the compressed stream (raises
        :class:`HashMismatchError` / :class:`IntegrityError`); returns the last decompressed
        bytes, handed to ``write``."""
        actual = ContentHash(self.h.algorithm, self._hasher.digest())
        if actual != self.h:
            raise HashMismatchError(self.what, str(self.h), str(actual))
        if self._broken is not None:
            raise self._broken
        tail = self._inflater.finish()
        if tail and write is not None:
            write(tail)
        return len(tail)


def download_verified(source: Source, h: ContentHash, kind: ObjectKind,
                      compression: Compression, sink: Output, *,
                      what: str | None = None, raw: Output = None,
                      max_size: int | None = None) -> tuple[int, int]:
    """Stream object ``h`` from ``source`` into ``sink`` (see :data:`Output`), checking its hash
    over the compressed bytes as they arrive; ``raw`` also gets the stored (compressed) bytes.
    ``max_size`` bounds the decompressed size (see :class:`CheckedBody`).

    Returns ``(stored bytes, decompressed bytes)``. When the source reads the body again (after
    bad bytes, from another server), what the earlier attempt wrote is taken back first. Raises
    :class:`HashMismatchError` (after the source tried its alternatives) when the bytes are bad;
    the sink may then have seen garbage, so callers write to a temporary file and keep it only
    on success.
    """
    label = what or h.describe(kind)
    write, restart = _output(sink, label)
    write_raw, restart_raw = _output(raw, label)
    attempts = 0

    def consume(blocks: Iterator[bytes]) -> tuple[int, int]:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            restart()
            restart_raw()
        body = CheckedBody(h, compression, label, max_size)
        plain = 0
        for block in blocks:
            if write_raw is not None:
                write_raw(block)
            plain += body.feed(block, write)
        plain += body.finish(write)
        return body.stored, plain

    return source.fetch(h.object_path(kind), consume, what=label)


def fetch_object_bytes(source: Source, h: ContentHash, kind: ObjectKind,
                       compression: Compression = Compression.ZLIB, *,
                       max_size: int | None = None) -> bytes:
    """A whole (small) object, verified and decompressed, in memory (at most ``max_size``
    bytes of it: see :class:`CheckedBody`)."""
    out = bytearray()
    download_verified(source, h, kind, compression, out, max_size=max_size)
    return bytes(out)


