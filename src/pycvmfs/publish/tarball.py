"""Unpacking a tar archive (plain, gzip, bzip2, xz) into a transaction, read once as a stream."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import os
import stat
import tarfile
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeVar

from pycvmfs.errors import CvmfsError, PublishError
from pycvmfs.format.catalog import parent_path
from pycvmfs.format.dirent import Flags
from pycvmfs.publish.ingest import Ingested
from pycvmfs.publish.rows import Meta, check_name, special_row, symlink_row

if TYPE_CHECKING:
    from pycvmfs.publish.transaction import Transaction

__all__ = ["STREAM_OVER", "ArchiveEnd", "ContentSink", "InFlightBudget", "PrefixedStream",
           "StrictTarInfo", "ingest_tarball", "member_content", "member_mtime", "peek_stream"]

STREAM_OVER = 8 << 20  # members larger than this are ingested in the reading thread
_IN_FLIGHT = 256 << 20  # bytes of small members read ahead of the worker threads, at most
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_XATTR = "SCHILY.xattr."
_T = TypeVar("_T")
_SPECIAL = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
            tarfile.FIFOTYPE: stat.S_IFIFO}


def ingest_tarball(txn: Transaction, source: str | os.PathLike | BinaryIO, to: bytes, *,
                   uid: int | None = None, gid: int | None = None) -> None:
    """Unpack the archive ``source`` (a path, or a binary file object such as a pipe) below the
    repository directory ``to`` (``b""`` = root, else ``b"/a/b"``).

    The archive is read once, front to back. Member names are relative to ``to`` (a leading
    ``./`` is dropped; absolute names and ``..`` are refused); later members replace earlier
    ones; missing directories are created. Owners are the archive's unless ``uid``/``gid`` are
    given. Hard links become hard-link groups among names in one directory and independent
    entries with the same content across directories. A ``.`` member sets the attributes of
    ``to`` (not of the repository root). A corrupt or truncated archive (including a bad
    gzip/bzip2/xz check sum or a missing end-of-archive marker) raises PublishError; the
    transaction then aborts.
    """
    if isinstance(source, str | bytes | os.PathLike):
        name = os.fsdecode(source)
        try:
            f = open(source, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise PublishError(f"{name}: cannot read ({e.strerror})") from None
        with f:
            _Unpacker(txn, name, to, uid, gid).run(f)
    else:
        label = getattr(source, "name", None)
        name = (os.fsdecode(label) if isinstance(label, str | bytes)
                else f"<fd {label}>" if isinstance(label, int) else "<stream>")
        _Unpacker(txn, name, to, uid, gid).run(source)


@dataclass(slots=True)
class _Seen:
    """A non-directory member, remembered so that later hard links can name it."""

    meta: Meta
    content: Future[Ingested] | None = None  # regular files
    ident: int = 0  # regular files: which archive member holds the content (its "inode")
    target: bytes = b""  # symbolic links
    file_type: int = 0  # special files
    rdev: int = 0


class ArchiveEnd(Exception):
    """The archive stops where a header should be, or a header is garbage."""


class StrictTarInfo(tarfile.TarInfo):
    """``tarfile`` ends an archive silently at a missing, short or invalid header; we refuse."""

    @classmethod
    def fromtarfile(cls, tf: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tf)
        except tarfile.EOFHeaderError:
            raise  # a zero block: the regular end of the archive
        except tarfile.EmptyHeaderError:
            raise ArchiveEnd("the data ends without an end-of-archive marker") from None
        except tarfile.TruncatedHeaderError:
            raise ArchiveEnd("the data ends inside a header") from None
        except tarfile.InvalidHeaderError as e:
            raise ArchiveEnd(f"invalid header ({e})") from None


class PrefixedStream:
    """A stream whose first bytes were already read (to recognise the compression)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                out, self._head = self._head + self._rest.read(), b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._rest.read(size)


def peek_stream(raw: BinaryIO, size: int) -> tuple[bytes, PrefixedStream]:
    """The first ``size`` bytes of ``raw`` (fewer when it ends sooner) and a stream that reads
    ``raw`` from its start again (to recognise a compression by its magic bytes)."""
    head = b""
    while len(head) < size:
        piece = raw.read(size - len(head))
        if not piece:
            break
        head += piece
    return head, PrefixedStream(head, raw)


class _Counted:
    """A stream that counts the bytes read from it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        return data


def _stream_size(raw: BinaryIO) -> int | None:
    """The bytes left in ``raw`` when it is a regular file, else None (a pipe)."""
    try:
        st = os.fstat(raw.fileno())
        return st.st_size - raw.tell() if stat.S_ISREG(st.st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


def _decompressed(raw: BinaryIO, name: str) -> BinaryIO:
    """The tar stream inside ``raw``: the format is recognised by its magic bytes. The stdlib
    decompressors check the gzip CRC/size, bzip2 CRCs and xz integrity checks and raise on a
    stream that stops early (``tarfile``'s own ``r|*`` checks none of these)."""
    head, src = peek_stream(raw, 6)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=src, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(src)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(src, format=lzma.FORMAT_XZ)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise PublishError(f"{name}: zstd-compressed archives are not supported "
                           "(decompress it first: zstd -dc ... |)")
    return src


class InFlightBudget:
    """Bytes of small members handed to the workers and not yet stored."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._used == 0 or self._used + n <= self._limit)
            self._used += n

    def give(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class ContentSink(Protocol):
    """Where file contents go (``pycvmfs.publish.ingest.Ingester`` is one)."""

    max_file_size: int | None

    def submit_bytes(self, data: bytes) -> Future[Ingested]: ...

    def ingest_stream(self, read: Callable[[int], bytes], size: int, *, what: str) -> Ingested: ...


def member_content(tf: tarfile.TarFile, ti: tarfile.TarInfo, sink: ContentSink,
                   budget: InFlightBudget, *, what: str) -> Future[Ingested]:
    """The content of the regular member ``ti`` stored through ``sink``: a large one chunked
    and stored while it is read (bounded memory), a small one read and handed to the workers
    within ``budget``. A member shorter than its header says raises ``tarfile.ReadError``."""
    f = tf.extractfile(ti)
    assert f is not None  # a regular member
    if ti.size > STREAM_OVER:
        fut: Future[Ingested] = Future()
        fut.set_result(sink.ingest_stream(f.read, ti.size, what=what))
        return fut
    data = f.read(ti.size)
    if len(data) != ti.size:
        raise tarfile.ReadError(f"got {len(data)} of {ti.size} bytes")
    n = len(data)
    budget.take(n)
    fut = sink.submit_bytes(data)
    fut.add_done_callback(lambda _f: budget.give(n))
    return fut


class _Unpacker:
    def __init__(self, txn: Transaction, name: str, to: bytes, uid: int | None,
                 gid: int | None) -> None:
        self.txn = txn
        self.name = name
        self.to = to
        self.uid = uid
        self.gid = gid
        s = txn.pub.settings
        self.xattrs = s.include_xattrs
        self.mtime_ns = s.mtime_ns
        self.ignore_special = s.ignore_special_files
        self.dir_meta = txn._now_meta(0o755, uid=uid, gid=gid)  # directories we make up
        self.seen: dict[bytes, _Seen] = {}
        self.budget = InFlightBudget(_IN_FLIGHT)
        self.idents = 0
        self.linked: set[int] = set()  # contents that hard links name
        self.dirs: set[bytes] = set()  # directories known to exist (members and parents)
        # hard-link group keys are shared by the whole transaction: make ours unique
        self.group_prefix = b"tar:" + os.urandom(8).hex().encode() + b":"
        self.last: str | None = None  # the member read before, and the one being read
        self.current: str | None = None
        self.report: Callable[[], None] | None = None  # the "reading" progress, if wanted

    def _count_reads(self, raw: BinaryIO) -> BinaryIO:
        """``raw`` with its reads counted for the transaction's "reading" progress (of the
        archive's size when it is a file)."""
        progress = self.txn.progress
        if progress is None:
            return raw
        total = _stream_size(raw)
        counted = _Counted(raw)
        self.report = lambda: progress("reading", counted.count, total)
        return counted

    # -- the archive ---------------------------------------------------------------------
    def run(self, raw: BinaryIO) -> None:
        self._prepare_target()
        raw = self._count_reads(raw)
        try:
            stream = _decompressed(raw, self.name)
            with self._checked(lambda: tarfile.open(
                    fileobj=stream, mode="r|", tarinfo=StrictTarInfo, encoding="utf-8",
                    errors="surrogateescape")) as tf:
                self._members(tf)
            while stream.read(1 << 20):  # to the end: compressed streams check their sums
                pass
            if self.report is not None:
                self.report()
        except _READ_ERRORS as e:
            if isinstance(e, CvmfsError):
                raise
            where = (f"reading member {self.current!r}" if self.current is not None
                     else self._where())
            raise PublishError(f"{self.name}: corrupt or truncated archive ({where}): "
                               f"{e or type(e).__name__}") from None
        self._group_hardlinks()

    def _members(self, tf: tarfile.TarFile) -> None:
        while True:
            ti = self._checked(tf.next)
            tf.members.clear()  # stream mode keeps every header otherwise
            if ti is None:
                return
            self.current = ti.name
            try:
                self._member(tf, ti)
            except CvmfsError as e:
                raise PublishError(f"{self.name}: member {ti.name!r}: {e}") from None
            self.last, self.current = ti.name, None
            if self.report is not None:
                self.report()

    def _where(self) -> str:
        return f"after member {self.last!r}" if self.last is not None else "at its start"

    def _checked(self, read_header: Callable[[], _T]) -> _T:
        """Header parsing: what ``tarfile`` lets through as an end or a ValueError is refused."""
        try:
            return read_header()
        except (ArchiveEnd, ValueError) as e:
            raise PublishError(f"{self.name}: corrupt or truncated archive ({self._where()}): "
                               f"{e}") from None

    def _prepare_target(self) -> None:
        if not self.to:
            return
        row = self.txn.lookup(self.to)
        if row is not None and row.flags & Flags.DIR:
            return
        if row is not None or self.txn.is_pending(self.to):
            raise PublishError(f"{os.fsdecode(self.to)}: exists and is not a directory "
                               f"(cannot unpack {self.name} there)")
        self.txn._ensure_parents(self.to, self.dir_meta)
        self.txn._put_dir(self.to, self.dir_meta)

    # -- one member ----------------------------------------------------------------------
    def _member(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        rel = self._relative(ti.name, "name")
        p = self.to + b"/" + rel if rel else self.to
        if ti.isdir():
            if p:  # '.' at the repository root: the root keeps its attributes
                check_name(p)
                self.seen.pop(p, None)
                self._parents(p)
                self.txn._put_dir(p, self._meta(ti))
                self.dirs.add(p)
            return
        if not rel:
            raise PublishError(f"only a directory can stand for {os.fsdecode(self.to) or '/'}")
        check_name(p)
        if ti.isreg():
            meta = self._meta(ti)
            self.idents += 1
            seen = _Seen(meta, self._content(tf, ti), ident=self.idents)
            self._put_file(p, seen)
        elif ti.islnk():
            target = self._relative(ti.linkname, "hard link target")
            tp = self.to + b"/" + target if target else self.to
            seen = self.seen.get(tp)
            if seen is None:
                raise PublishError(f"hard link to {ti.linkname!r}, which is not an earlier "
                                   "non-directory member of the archive")
            if tp == p:
                return
            if seen.content is not None:
                self.linked.add(seen.ident)
                self._put_file(p, seen)
            elif seen.file_type:
                self._put_special(p, seen)
            else:
                self._put_symlink(p, seen)
        elif ti.issym():
            self._put_symlink(p, _Seen(self._meta(ti), target=ti.linkname.encode(
                "utf-8", "surrogateescape")))
        elif ti.type in _SPECIAL:
            if self.ignore_special:
                return
            rdev = os.makedev(ti.devmajor, ti.devminor) if not ti.isfifo() else 0
            self._put_special(p, _Seen(self._meta(ti), file_type=_SPECIAL[ti.type], rdev=rdev))
        else:
            raise PublishError(f"unsupported member type {ti.type!r}")

    def _content(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> Future[Ingested]:
        ing = self.txn.ingester
        limit = ing.max_file_size
        if limit is not None and ti.size > limit:
            raise PublishError(f"{ti.size} bytes is over the file size limit of "
                               f"{limit // (1 << 20)} MiB (CVMFS_FILE_MBYTE_LIMIT)")
        return member_content(tf, ti, ing, self.budget, what=f"{self.name}:{ti.name}")

    def _put_file(self, p: bytes, seen: _Seen) -> None:
        self._replace(p, check_tree=False)  # add_content removes a directory it finds
        self._parents(p)
        self.txn.add_content(p, seen.meta, seen.content)
        self.seen[p] = seen

    def _put_symlink(self, p: bytes, seen: _Seen) -> None:
        row = symlink_row(p, seen.meta, seen.target)
        self._replace(p, check_tree=True)
        self._parents(p)
        self.txn._put_row(p, row)
        self.seen[p] = seen

    def _put_special(self, p: bytes, seen: _Seen) -> None:
        row = special_row(p, seen.meta, seen.file_type, seen.rdev)
        self._replace(p, check_tree=True)
        self._parents(p)
        self.txn._put_row(p, row)
        self.seen[p] = seen

    def _parents(self, p: bytes) -> None:
        """Make missing parents of ``p`` (owned like the members); each is checked once."""
        parent = parent_path(p)
        if not parent or parent in self.dirs:
            return
        self.txn._ensure_parents(p, self.dir_meta)
        while parent and parent not in self.dirs:
            self.dirs.add(parent)
            parent = parent_path(parent)

    def _replace(self, p: bytes, *, check_tree: bool) -> None:
        """A non-directory member goes to ``p``: forget what it replaces (tar semantics: the
        later member wins). Every member's parents are in ``dirs``, so a directory that is not
        has no members below it: only the transaction's own entries (``check_tree``)."""
        self.seen.pop(p, None)
        if p in self.dirs:
            self.txn.remove(p)
            prefix = p + b"/"
            self.dirs = {d for d in self.dirs if d != p and not d.startswith(prefix)}
            for k in [k for k in self.seen if k.startswith(prefix)]:
                del self.seen[k]
        elif check_tree:
            row = self.txn.lookup(p)
            if row is not None and row.flags & Flags.DIR:
                self.txn.remove(p)

    def _group_hardlinks(self) -> None:
        """Names of one content in one directory become a hard-link group (format §4.7)."""
        groups: dict[tuple[int, bytes], list[bytes]] = defaultdict(list)
        for p, seen in self.seen.items():
            if seen.content is not None and seen.ident in self.linked:
                groups[(seen.ident, parent_path(p))].append(p)
        for (ident, directory), paths in groups.items():
            if len(paths) < 2:
                continue
            key = self.group_prefix + b"%d:" % ident + directory
            seen = self.seen[paths[0]]
            for p in paths:
                self.txn.add_content(p, seen.meta, seen.content, hardlink=(key, len(paths)))

    # -- attributes ----------------------------------------------------------------------
    def _relative(self, name: str, what: str) -> bytes:
        raw = name.encode("utf-8", "surrogateescape")
        if raw.startswith(b"/"):
            raise PublishError(f"absolute {what} {name!r} refused (members must stay below "
                               f"{os.fsdecode(self.to) or '/'})")
        parts = [x for x in raw.split(b"/") if x and x != b"."]
        if b".." in parts:
            raise PublishError(f"{what} {name!r} with '..' refused (members must stay below "
                               f"{os.fsdecode(self.to) or '/'})")
        return b"/".join(parts)

    def _meta(self, ti: tarfile.TarInfo) -> Meta:
        mtime, mtimens = member_mtime(ti, self.mtime_ns)
        xattrs = None
        if self.xattrs:
            xattrs = {k[len(_XATTR):].encode("utf-8", "surrogateescape"):
                      v.encode("utf-8", "surrogateescape")
                      for k, v in ti.pax_headers.items() if k.startswith(_XATTR + "user.")}
        return Meta(ti.mode & 0o7777, mtime, ti.uid if self.uid is None else self.uid,
                    ti.gid if self.gid is None else self.gid, mtimens, xattrs or None)


def member_mtime(ti: tarfile.TarInfo, want_ns: bool) -> tuple[int, int | None]:
    """Whole seconds (rounded down), and the nanoseconds when they are recorded (pax ``mtime``
    is decimal text; ``tarfile`` turns it into a float, which loses the nanoseconds)."""
    raw = ti.pax_headers.get("mtime")
    if raw is not None:
        try:
            d = Decimal(raw)
            sec = math.floor(d)
            return sec, int((d - sec) * 1_000_000_000) if want_ns else None
        except (InvalidOperation, ValueError, OverflowError):
            pass
    return math.floor(ti.mtime), 0 if want_ns else None
