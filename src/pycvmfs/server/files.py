"""Request targets, byte ranges, cache headers and safe opening of files in a storage directory."""

from __future__ import annotations

import mimetypes
import os
import re
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

__all__ = ["JSON_KIND", "LONG_TTL", "SHORT_TTL", "UNSATISFIABLE", "CachedFile", "Kind",
           "SmallFileCache", "StorageDir", "classify", "open_regular_file", "parse_range",
           "split_target", "usable_name"]

#: Lifetime of ``.cvmfs*`` and ``.json`` files (§1.7; Squid does not cache 60 s or less).
SHORT_TTL = 61
#: Lifetime of everything else, notably the content-addressed ``data/`` objects (3 days).
LONG_TTL = 3 * 24 * 3600

# Characters allowed in a decoded path segment; CernVM-FS storages need no others.
_SEGMENT = re.compile(r"[A-Za-z0-9_.~+=,@-]+")
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_.~+=,@-]+)+")
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")
_DIGITS = re.compile(r"[0-9]*")
_USE_PROC_FD = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")
#: What :func:`parse_range` returns for a range that no byte of the file satisfies.
UNSATISFIABLE = (-1, -1)


class Kind(NamedTuple):
    """How a file is served: its ``Content-Type``, ``Cache-Control`` and lifetime."""

    content_type: str
    cache_control: str
    ttl: int


_CVMFS = Kind("application/x-cvmfs", f"max-age={SHORT_TTL}", SHORT_TTL)
JSON_KIND = Kind("application/json", f"max-age={SHORT_TTL}", SHORT_TTL)
_OBJECT = Kind("application/octet-stream", f"public, max-age={LONG_TTL}, immutable", LONG_TTL)
_OTHER = f"public, max-age={LONG_TTL}"


def classify(rel: Sequence[str]) -> Kind:
    """Content type and lifetime of a storage file, by name (the stock Apache rules)."""
    name = rel[-1]
    if name.startswith(".cvmfs"):
        return _CVMFS
    if name.endswith(".json"):
        return JSON_KIND
    if "." not in name:
        return _OBJECT if rel[0] == "data" else Kind(_OBJECT.content_type, _OTHER, LONG_TTL)
    guessed = mimetypes.guess_type(name, strict=False)[0]
    return Kind(guessed or "application/octet-stream", _OTHER, LONG_TTL)


def split_target(target: str) -> list[str] | None:
    """The decoded path segments of an HTTP request target, or ``None`` if it is not acceptable.

    Refused: anything but origin-form or absolute-form, empty, ``.`` or ``..`` segments (also
    percent-encoded), encoded slashes or backslashes, NUL, and any character outside
    ``[A-Za-z0-9_.~+=,@-]`` after decoding. The query string is ignored.
    """
    if not target.startswith("/"):
        m = _ABSOLUTE_FORM.match(target)
        if m is None:
            return None
        target = target[m.end():]
        if not target.startswith("/"):
            return None
    for sep in "?#":
        cut = target.find(sep)
        if cut >= 0:
            target = target[:cut]
    if "%" not in target:
        if not _PLAIN_PATH.fullmatch(target):
            return None
        segments = target[1:].split("/")
        return None if "." in segments or ".." in segments else segments
    segments = []
    for raw in target[1:].split("/"):
        try:
            seg = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            return None
        if not _SEGMENT.fullmatch(seg) or seg in (".", ".."):
            return None
        segments.append(seg)
    return segments


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``(start, count)`` for a ``Range`` header on a file of ``size`` bytes.

    ``None`` means "ignore the header, send the whole file" (invalid syntax, another unit, or
    several ranges); ``(-1, -1)`` means unsatisfiable (answer 416). Linear in the length of
    ``value`` (no backtracking regular expression: a header full of blanks costs one pass).
    """
    unit, eq, spec = value.partition("=")
    if not eq or unit.strip().lower() != "bytes":
        return None
    first, dash, last = spec.partition("-")
    first, last = first.strip(), last.strip()
    if not dash or not _DIGITS.fullmatch(first) or not _DIGITS.fullmatch(last):
        return None
    if not first:
        if not last:
            return None
        suffix = int(last) if len(last) <= 18 else size
        if suffix == 0 or size == 0:
            return UNSATISFIABLE
        start = max(0, size - suffix)
        return start, size - start
    if len(first) > 18:
        return UNSATISFIABLE
    start = int(first)
    if last and len(last) <= 18 and int(last) < start:
        return None  # invalid: last-byte-pos before first-byte-pos
    if start >= size:
        return UNSATISFIABLE
    end = size - 1 if not last or len(last) > 18 else min(int(last), size - 1)
    return start, end - start + 1


class StorageDir(NamedTuple):
    """A storage directory by its real path; ``data/txn/`` in it is never served."""

    path: Path  # as configured
    prefix: str  # real path of the storage directory, with a trailing slash
    txn: str  # real path of data/txn/, with a trailing slash

    @classmethod
    def of(cls, path: Path) -> StorageDir:
        real = os.path.realpath(path)
        prefix = real.rstrip("/") + "/"
        return cls(Path(path), prefix, prefix + "data/txn/")

    def contains(self, real: str) -> bool:
        return real.startswith(self.prefix) and not real.startswith(self.txn)


def usable_name(name: str) -> bool:
    """Whether ``name`` can be one path segment of a URL as this server parses it."""
    return bool(_SEGMENT.fullmatch(name)) and name not in (".", "..")


def open_regular_file(storage: StorageDir, rel: str) -> tuple[int, os.stat_result] | None:
    """An fd and ``fstat`` for a regular file whose real path lies inside ``storage``, else
    ``None``.

    On Linux the file is first opened with ``O_PATH`` (no side effects on devices or FIFOs) and
    its real path is read back from ``/proc/self/fd``, so the check applies to the very file that
    is then reopened for reading: no window for a symlink swap.
    """
    path = storage.prefix + rel
    if _USE_PROC_FD:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode):
                return None
            proc = f"/proc/self/fd/{pfd}"
            if not storage.contains(os.readlink(proc)):
                return None
            fd = os.open(proc, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        finally:
            os.close(pfd)
        return fd, st
    try:
        real = os.path.realpath(path, strict=True)
    except OSError:
        return None
    if not storage.contains(real):
        return None
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class CachedFile:
    """A small file's bytes with its prebuilt ``200`` head, valid while the file is unchanged."""

    __slots__ = ("body", "head", "identity", "kind", "path")

    def __init__(self, path: str, st: os.stat_result, kind: Kind, head: bytes,
                 body: bytes) -> None:
        self.path = path
        self.identity = _identity(st)
        self.kind = kind
        self.head = head
        self.body = body


class SmallFileCache:
    """Small files by request target, so that a hit costs one ``lstat`` instead of the checked
    open, read and close.

    A hit is served only if ``lstat`` of the file's path still shows the very inode that was
    checked and read (same device, inode, size, mtime and ctime); a replaced, rewritten or
    removed file, or one turned into a symlink, is a miss. Files changed less than
    :attr:`SETTLE` seconds ago are not cached (timestamps are coarser than nanoseconds). At most
    ``max_bytes`` are held (file bytes, targets and :attr:`OVERHEAD` per entry); the oldest
    entries go first.
    """

    SETTLE = 2.0
    OVERHEAD = 512

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: dict[bytes, CachedFile] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, target: bytes) -> CachedFile | None:
        entry = self._entries.get(target)
        if entry is None:
            return None
        try:
            st = os.lstat(entry.path)
        except OSError:
            st = None
        if st is None or _identity(st) != entry.identity:
            self._drop(target)
            return None
        return entry

    def put(self, target: bytes, entry: CachedFile) -> None:
        size = len(entry.body) + len(entry.head) + len(target) + self.OVERHEAD
        st_time = max(entry.identity[3], entry.identity[4]) / 1e9
        if size > self.max_bytes or st_time > time.time() - self.SETTLE:
            return
        self._drop(target)
        while self._bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[target] = entry
        self._bytes += size

    def _drop(self, target: bytes) -> None:
        entry = self._entries.pop(target, None)
        if entry is not None:
            self._bytes -= len(entry.body) + len(entry.head) + len(target) + self.OVERHEAD
