"""Reading one image layer as a stream: digests, decompression, tar entries and whiteouts (§6.1)."""

from __future__ import annotations

import enum
import gzip
import hashlib
import math
import os
import tarfile
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import BinaryIO, TypeVar

import zstandard

from pycvmfs.containers.mediatypes import Compression, layer_compression, sniff_compression
from pycvmfs.containers.model import Descriptor, check_digest
from pycvmfs.errors import ContainerError, CvmfsError
from pycvmfs.publish.ingest import Ingested
from pycvmfs.publish.tarball import (
    ArchiveEnd,
    ContentSink,
    InFlightBudget,
    StrictTarInfo,
    member_content,
    member_mtime,
    peek_stream,
)

__all__ = ["ContentSink", "Entry", "Kind", "LayerChanges", "normalise_path", "read_layer"]

WHITEOUT = b".wh."
OPAQUE = b".wh..wh..opq"
_IN_FLIGHT = 128 << 20  # bytes of small files read ahead of the sink's workers, at most
_BLOCK = 1 << 20
_XATTR = "SCHILY.xattr."
_T = TypeVar("_T")
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, zstandard.ZstdError)


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


_KINDS = {tarfile.DIRTYPE: Kind.DIR, tarfile.SYMTYPE: Kind.SYMLINK,
          tarfile.LNKTYPE: Kind.HARDLINK, tarfile.CHRTYPE: Kind.CHAR,
          tarfile.BLKTYPE: Kind.BLOCK, tarfile.FIFOTYPE: Kind.FIFO}


@dataclass(slots=True)
class Entry:
    """One path of a layer's final state (whiteout markers are not entries)."""

    path: bytes  # relative and normalised, never empty
    kind: Kind
    mode: int  # permission bits including 0o7000, no type bits
    uid: int
    gid: int
    mtime: int
    mtimens: int | None  # nanoseconds, when a PAX mtime records them
    size: int = 0
    target: bytes = b""  # SYMLINK: verbatim; HARDLINK: normalised path in a lower layer
    rdev: int = 0  # CHAR/BLOCK: os.makedev(major, minor)
    xattrs: dict[bytes, bytes] | None = None
    content: Future[Ingested] | None = None  # FILE
    link: int | None = None  # FILE: hard-link group within this layer


@dataclass
class LayerChanges:
    """What a layer does to the tree below it: deletions first, then ``entries`` in order."""

    whiteouts: list[bytes]  # paths deleted from lower layers, sorted
    opaque: list[bytes]  # directories whose lower children are dropped (b"" = the root), sorted
    entries: list[Entry]  # each path once, by last occurrence, parents before children
    diff_id: str
    compressed_digest: str
    uncompressed_size: int
    warnings: list[str] = field(default_factory=list)
    root: Entry | None = None  # a "./" directory member: attributes for the root (path b"")


class _Digesting:
    """A stream that hashes and counts what is read through it, refusing more than ``limit``."""

    def __init__(self, raw: BinaryIO, limit: int | None = None) -> None:
        self._raw = raw
        self.limit = limit
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size if size is not None and size >= 0 else _BLOCK)
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise _TooLong(self.count)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(_BLOCK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _TooLong(Exception):
    """The compressed blob goes on past its descriptor's size."""


def normalise_path(name: str | bytes, what: str) -> bytes:
    """A member name as a relative path (§6.1): leading ``/`` and ``./`` go, ``.`` and ``..``
    collapse lexically; NUL and names escaping the root are refused. b"" is the root."""
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ContainerError(f"{what} {raw!r} contains a NUL byte")
    if not (raw.startswith((b"/", b".")) or raw.endswith(b"/") or b"/." in raw
            or b"//" in raw):
        return raw  # nothing to drop or collapse (the common case, without a loop)
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part == b"..":
            if not parts:
                raise ContainerError(f"{what} {raw!r} escapes the root with '..'")
            parts.pop()
        elif part and part != b".":
            parts.append(part)
    return b"/".join(parts)


def _split(path: bytes) -> tuple[bytes, bytes]:
    head, _, tail = path.rpartition(b"/")
    return head, tail


def _under(path: bytes, top: bytes) -> bool:
    return path.startswith(top + b"/")


class _LayerState:
    """A layer's members folded into its final state, order-exact (see LayerChanges)."""

    def __init__(self, label: str, sink: ContentSink, keep_xattrs: bool) -> None:
        self.label = label
        self.sink = sink
        self.keep_xattrs = keep_xattrs
        self.entries: dict[bytes, Entry] = {}
        self.whiteouts: set[bytes] = set()
        self.opaque: set[bytes] = set()
        self.clear: set[bytes] = set()  # paths known to be directories (made up or entries)
        self.warnings: list[str] = []
        self.root: Entry | None = None
        self.links = 0
        self.budget = InFlightBudget(_IN_FLIGHT)

    def warn(self, text: str) -> None:
        self.warnings.append(f"{self.label}: {text}")

    # -- members ---------------------------------------------------------------------------
    def member(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        path = normalise_path(ti.name, "member name")
        parent, base = _split(path)
        if WHITEOUT in path and any(p.startswith(WHITEOUT) for p in parent.split(b"/")):
            raise ContainerError(f"whiteout name used as a directory in {path!r}")
        if base.startswith(WHITEOUT):
            self.whiteout(parent, base[len(WHITEOUT):], path)
            return
        kind = Kind.FILE if ti.isreg() else _KINDS.get(ti.type)
        if kind is None:
            self.warn(f"member {path!r} of unsupported tar type {ti.type!r} skipped")
            return
        if not path:
            if kind is not Kind.DIR:
                raise ContainerError(f"member {ti.name!r} names the root but is not a directory")
            self.root = self.entry(ti, b"", kind)
            return
        if kind is Kind.HARDLINK:
            entry = self.hardlink(ti, path)
            if entry is None:
                return
        else:
            entry = self.entry(ti, path, kind)
            if kind is Kind.FILE:
                entry.content = self.content(tf, ti, path)
        self.put(entry)

    def whiteout(self, parent: bytes, name: bytes, path: bytes) -> None:
        if not name:
            self.warn(f"bare whiteout marker {path!r} skipped (it names nothing)")
        elif WHITEOUT + name == OPAQUE:
            self.opaque.add(parent)
        elif name in (b".", b".."):
            raise ContainerError(f"whiteout marker {path!r} names {name.decode()!r}")
        else:
            self.whiteouts.add(parent + b"/" + name if parent else name)

    def entry(self, ti: tarfile.TarInfo, path: bytes, kind: Kind) -> Entry:
        if "mtime" in ti.pax_headers:
            mtime, mtimens = member_mtime(ti, True)
        else:
            mtime, mtimens = math.floor(ti.mtime), None
        e = Entry(path, kind, ti.mode & 0o7777, ti.uid, ti.gid, mtime, mtimens,
                  xattrs=self.xattrs(ti))
        if kind is Kind.FILE:
            e.size = ti.size
        elif kind is Kind.SYMLINK:
            e.target = ti.linkname.encode("utf-8", "surrogateescape")
            if b"\0" in e.target:
                raise ContainerError(f"symbolic link {path!r}: target contains a NUL byte")
        elif kind in (Kind.CHAR, Kind.BLOCK):
            e.rdev = os.makedev(ti.devmajor, ti.devminor)
        return e

    def xattrs(self, ti: tarfile.TarInfo) -> dict[bytes, bytes] | None:
        if not self.keep_xattrs:
            return None
        out = {}
        for key, value in ti.pax_headers.items():
            if not key.startswith(_XATTR):
                continue
            name = key[len(_XATTR):]
            if name.startswith("trusted.overlay.") or not (
                    name.startswith(("user.", "trusted.")) or name == "security.capability"):
                continue
            out[name.encode("utf-8", "surrogateescape")] = value.encode(
                "utf-8", "surrogateescape")
        return out or None

    def content(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, path: bytes) -> Future[Ingested]:
        limit = self.sink.max_file_size
        if limit is not None and ti.size > limit:
            raise ContainerError(f"file {path!r}: {ti.size} bytes is over the file size limit "
                                 f"of {limit // (1 << 20)} MiB (CVMFS_FILE_MBYTE_LIMIT)")
        return member_content(tf, ti, self.sink, self.budget,
                              what=f"{self.label}:{os.fsdecode(path)}")

    def hardlink(self, ti: tarfile.TarInfo, path: bytes) -> Entry | None:
        target = normalise_path(ti.linkname, f"hard link {path!r}: target")
        if not target:
            raise ContainerError(f"hard link {path!r} points at the root")
        if target == path:
            self.warn(f"hard link {path!r} to itself skipped")
            return None
        seen = self.entries.get(target)
        if seen is None:  # a lower layer's file, resolved when the layer is applied
            e = self.entry(ti, path, Kind.HARDLINK)
            e.target = target
            return e
        if seen.kind is Kind.DIR:
            raise ContainerError(f"hard link {path!r} points at the directory {target!r}")
        if seen.kind is Kind.FILE and seen.link is None:
            self.links += 1
            seen.link = self.links
        return replace(seen, path=path, xattrs=dict(seen.xattrs) if seen.xattrs else None)

    # -- the final state -------------------------------------------------------------------
    def put(self, e: Entry) -> None:
        self.make_parents(e.path)
        old = self.entries.pop(e.path, None)
        if old is not None:
            self.warn(f"{e.path!r} appears more than once; the last one wins")
            if old.kind is not Kind.DIR and e.kind is Kind.DIR:
                self.opaque.add(e.path)  # the non-dir had removed the lower directory
        if e.kind is not Kind.DIR:
            if e.path in self.clear or (old is not None and old.kind is Kind.DIR):
                self.drop_below(e.path)  # a directory of this layer (listed or made up)
            self.opaque.discard(e.path)
        self.entries[e.path] = e

    def make_parents(self, path: bytes) -> None:
        """A parent that is a non-directory of this layer becomes a made-up directory (as a
        sequential extraction would make it, replacing the file and what was below it).
        Parents checked once are remembered in ``clear`` until a non-directory replaces one."""
        parent = _split(path)[0]
        checked = []
        while parent and parent not in self.clear:
            old = self.entries.get(parent)
            if old is not None and old.kind is not Kind.DIR:
                self.warn(f"{parent!r} was not a directory; replaced by one to hold {path!r}")
                del self.entries[parent]
                self.entries[parent] = Entry(parent, Kind.DIR, 0o755, 0, 0, 0, None)
                self.opaque.add(parent)
            checked.append(parent)
            parent = _split(parent)[0]
        self.clear.update(checked)

    def drop_below(self, top: bytes) -> None:
        for p in [p for p in self.entries if _under(p, top)]:
            del self.entries[p]
        self.opaque = {p for p in self.opaque if p != top and not _under(p, top)}
        self.clear = {p for p in self.clear if p != top and not _under(p, top)}

    def ordered(self) -> list[Entry]:
        """Last-occurrence order, a directory moved just before its first child if needed."""
        out: list[Entry] = []
        done: set[bytes] = set()
        for e in self.entries.values():
            if e.path in done:
                continue
            chain = [e]  # e and its ancestors of this layer not yet placed, deepest first
            parent = _split(e.path)[0]
            while parent and parent not in done and parent in self.entries:
                chain.append(self.entries[parent])
                parent = _split(parent)[0]
            for x in reversed(chain):
                done.add(x.path)
                out.append(x)
        return out


def read_layer(raw: BinaryIO, desc: Descriptor, diff_id: str, sink: ContentSink, *, what: str,
               keep_xattrs: bool = True) -> LayerChanges:
    """Read the layer blob ``raw`` once: check its digest and size against ``desc`` and its
    uncompressed digest against ``diff_id``, store file contents through ``sink`` and return
    the layer's changes. Any mismatch or a corrupt, truncated or hostile archive raises
    ContainerError naming ``what`` and the layer digest (the submitted contents are then
    garbage of an aborted transaction)."""
    label = f"{what}: layer {desc.digest}"
    check_digest(diff_id, f"{label}: DiffID")
    declared = layer_compression(desc.media_type, label)
    compressed = _Digesting(raw, desc.size)
    state = _LayerState(label, sink, keep_xattrs)
    current: list[str | None] = [None, None]  # the member being read, the last one
    try:
        stream, found, warning = _decompressing(compressed, declared)
        if warning:
            state.warn(warning)
        # a plain tar is hashed once: its DiffID is its digest
        plain = compressed if found is Compression.NONE else _Digesting(stream)
        reader = stream if found is Compression.NONE else plain
        tf = _header(lambda: tarfile.open(  # noqa: SIM115 - stream mode, nothing to close
            fileobj=reader, mode="r|", tarinfo=StrictTarInfo, encoding="utf-8",
            errors="surrogateescape"))
        _members(tf, state, current)
        while reader.read(_BLOCK):  # what follows the end of the archive is in the DiffID
            pass
        compressed.drain()
    except _TooLong:
        raise ContainerError(f"{label}: more than the {desc.size} bytes the manifest says"
                             ) from None
    except (*_READ_ERRORS, _ArchiveError, CvmfsError) as e:
        _check_blob(compressed, desc, label)  # a wrong blob says so rather than "corrupt"
        if isinstance(e, CvmfsError):
            raise ContainerError(f"{label}: {_at(current)}{e}") from None
        raise ContainerError(f"{label}: corrupt or truncated layer ({_at(current)}"
                             f"{e or type(e).__name__})") from None
    _check_blob(compressed, desc, label)
    if plain.digest != diff_id:
        raise ContainerError(f"{label}: the uncompressed layer's sha256 is {plain.digest}, "
                             f"the image config's DiffID says {diff_id}")
    entries = state.ordered()
    opaque = sorted(p for p in state.opaque  # not a marker below what ends up a non-dir
                    if p not in state.entries or state.entries[p].kind is Kind.DIR)
    return LayerChanges(sorted(state.whiteouts), opaque, entries,
                        diff_id, desc.digest, plain.count, state.warnings, state.root)


class _ArchiveError(Exception):
    """A header ``tarfile`` lets through as an end of the archive or a ValueError."""


def _header(read_header: Callable[[], _T]) -> _T:
    try:
        return read_header()
    except (ArchiveEnd, ValueError) as e:
        raise _ArchiveError(str(e)) from None


def _members(tf: tarfile.TarFile, state: _LayerState, current: list[str | None]) -> None:
    while True:
        ti = _header(tf.next)
        tf.members.clear()  # stream mode keeps every header otherwise
        if ti is None:
            return
        current[0] = ti.name
        state.member(tf, ti)
        current[1] = ti.name
        current[0] = None


def _at(current: list[str | None]) -> str:
    if current[0] is not None:
        return f"member {current[0]!r}: "
    return f"after member {current[1]!r}: " if current[1] is not None else "at its start: "


def _check_blob(compressed: _Digesting, desc: Descriptor, label: str) -> None:
    """The whole blob was as the manifest says (read to its end, at most its size)."""
    try:
        compressed.drain()
    except _TooLong:
        raise ContainerError(f"{label}: more than the {desc.size} bytes the manifest says"
                             ) from None
    except OSError as e:
        raise ContainerError(f"{label}: reading the blob failed ({e})") from None
    if compressed.count != desc.size:
        raise ContainerError(f"{label}: {compressed.count} bytes, the manifest says {desc.size}")
    if compressed.digest != desc.digest:
        raise ContainerError(f"{label}: the blob's sha256 is {compressed.digest} "
                             f"(digest mismatch)")


def _decompressing(compressed: _Digesting, declared: Compression
                   ) -> tuple[BinaryIO, Compression, str]:
    """The tar stream inside the blob, its compression, and a warning when its magic bytes
    contradict the media type (the magic bytes win)."""
    head, src = peek_stream(compressed, 4)
    found = sniff_compression(head)
    warning = ""
    if found is not declared:
        warning = (f"the media type says {declared.value} but the data is "
                   f"{found.value}; read as {found.value}")
    if found is Compression.GZIP:
        return gzip.GzipFile(fileobj=src, mode="rb"), found, warning  # type: ignore[arg-type]
    if found is Compression.ZSTD:
        return zstandard.ZstdDecompressor().stream_reader(
            src, read_across_frames=True, closefd=False), found, warning
    return src, found, warning  # type: ignore[return-value]
