"""A change set against the newest revision; leaving the ``with`` block publishes it as one."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pycvmfs.errors import CvmfsError, PublishError
from pycvmfs.format.catalog import parent_path
from pycvmfs.format.catalog_writer import EntryRow
from pycvmfs.format.dirent import Flags
from pycvmfs.publish.catalog_tree import CatalogTree
from pycvmfs.publish.ingest import Ingested, Ingester, scanned
from pycvmfs.publish.rows import (
    Meta,
    check_name,
    dir_row,
    file_row,
    special_row,
    symlink_row,
)

if TYPE_CHECKING:
    from pycvmfs.publish.repository import Publisher

__all__ = ["PublishSummary", "Transaction", "repo_path"]

MARKER = b".cvmfscatalog"
#: New file entries written to the catalogs in one statement batch at commit.
_BATCH = 4096


def repo_path(path: str | bytes) -> bytes:
    """A repository path as catalogs key it (``b""`` root, else ``b"/a/b"``)."""
    raw = os.fsencode(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise PublishError(f"{os.fsdecode(raw)!r}: '..' is not allowed in repository paths")
    out = b"".join(b"/" + p for p in parts)
    if out:
        check_name(out)
    return out


@dataclass
class PublishSummary:
    """What a publish did (``--json`` output of the CLI)."""

    revision: int | None = None  # None: nothing changed, no new revision
    root_hash: str | None = None
    files: int = 0
    bytes_in: int = 0
    bytes_stored: int = 0
    objects_new: int = 0
    objects_existing: int = 0
    objects_deduplicated: int = 0
    entries_added: int = 0
    entries_removed: int = 0
    catalogs_written: int = 0
    seconds: float = 0.0
    tags: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def dedup_ratio(self) -> float:
        return round(self.bytes_in / self.bytes_stored, 3) if self.bytes_stored else 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["dedup_ratio"] = self.dedup_ratio
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass
class _Pending:
    meta: Meta
    content: Future[Ingested]
    hardlink: tuple[bytes, int] | None = None  # (key of its group, members in its directory)
    #: the path had no entry when the file was added (nothing but this transaction's own
    #: pending entry can appear there meanwhile; a batched insert would refuse one anyway)
    absent: bool = False


class Transaction:
    """Changes to a repository, applied to its newest revision when the block ends.

    Use it as ``with publisher.transaction() as txn:``. Leaving the block normally publishes
    exactly one new revision (none if nothing changed); an exception aborts: the repository stays
    at its revision, and objects already stored are unreferenced garbage (``gc`` removes them).

    ``progress(stage, done, total or None)`` is called from worker threads: "scanning" (files
    found by a tree sync), "ingesting" (bytes of file contents stored, of the bytes announced
    with :meth:`expect_bytes`: a tree sync announces its whole change set before the first
    file is read), "reading" (bytes of a tar archive read, of its size when it is a file),
    "cataloguing" (entries written to the catalogs).
    """

    def __init__(self, publisher: Publisher, *, tag: str | None = None, message: str = "",
                 progress: Callable[[str, int, int | None], None] | None = None) -> None:
        self.pub = publisher
        self.tag = tag
        self.message = message
        self.progress = progress
        #: bytes of file contents announced for ingestion (the "ingesting" progress total)
        self.bytes_expected: int | None = None
        self.summary = PublishSummary()
        self._pending: dict[bytes, _Pending] = {}
        self._groups: dict[bytes, int] = {}  # hard-link group key -> group id
        self._dirs_touched: set[bytes] = set()
        #: directories whose attributes the caller gave (tree sync, mkdir), changed or not
        self.dirs_given: set[bytes] = set()
        self._changed = False
        self._started = 0.0
        self.tree: CatalogTree | None = None
        self.journal = None
        self.ingester: Ingester | None = None
        self._lock_cm = None

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> Transaction:
        self._started = time.monotonic()
        lock = self.pub.signing_lock()
        lock.__enter__()  # refused here when the keys cannot sign a revision
        self._lock_cm = lock
        try:
            self.head = self.pub.head()
            self.journal = self.pub.open_journal(self.head)
            self.tree = self.pub.open_tree(self.head.root_catalog)
            report = None
            if self.progress is not None:
                reported = [0]  # worker threads finish in any order: never go back
                reporting = threading.Lock()

                def report(files: int, size: int) -> None:
                    with reporting:
                        if size >= reported[0]:
                            reported[0] = size
                            self.progress("ingesting", size, self.bytes_expected)
            self.ingester = self.pub.new_ingester(on_progress=report)
            self.ingester.journal = self.journal
        except BaseException:
            self._finish()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        committed = False
        try:
            if exc_type is None:
                self._commit()
            committed = True
        finally:
            aborted = exc_type is not None or not committed
            self._finish(aborted=aborted)

    def _finish(self, *, aborted: bool = True) -> None:
        if self.ingester is not None:
            self.ingester.close()
        if self.tree is not None:
            self.tree.close()
        if self.journal is not None:
            if aborted:  # nothing references what this transaction stored: take it back
                self.journal.discard_objects()
            else:
                self.journal.remove()
            self.pub._journal = None
        if self._lock_cm is not None:
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = None

    # -- the operations ------------------------------------------------------------------
    def expect_bytes(self, size: int) -> None:
        """Announce ``size`` more bytes of contents about to be ingested (progress total)."""
        self.bytes_expected = (self.bytes_expected or 0) + size

    def _now_meta(self, perm: int, *, mtime: int | None = None, uid: int | None = None,
                  gid: int | None = None, xattrs: dict[bytes, bytes] | None = None) -> Meta:
        s = self.pub.settings
        return Meta(perm, int(time.time()) if mtime is None else int(mtime),
                    s.owner_uid if uid is None and s.owner_uid is not None else (uid or 0),
                    s.owner_gid if gid is None and s.owner_gid is not None else (gid or 0),
                    None, xattrs if self.pub.settings.include_xattrs else None)

    def _ensure_parents(self, path: bytes, meta: Meta | None = None) -> None:
        """Create the missing directories above ``path``, outermost first (a loop, not
        recursion: trees thousands of levels deep)."""
        missing = []
        parent = parent_path(path)
        while parent:
            row = self.tree.lookup(parent)
            if row is not None and row.flags & Flags.DIR:
                break
            if parent in self._pending or row is not None:
                raise PublishError(f"{os.fsdecode(parent)}: exists and is not a directory")
            missing.append(parent)
            parent = parent_path(parent)
        for parent in reversed(missing):
            self.tree.put(parent, dir_row(parent, meta or self._now_meta(0o755)))
            self.summary.entries_added += 1
            self._touched(parent)

    def _touched(self, path: bytes) -> None:
        self._changed = True
        self._dirs_touched.add(parent_path(path))

    def _drop_pending_below(self, path: bytes) -> None:
        self._pending.pop(path, None)
        prefix = path + b"/"
        for p in [p for p in self._pending if p.startswith(prefix)]:
            del self._pending[p]

    def mkdir(self, path: str | bytes, *, mode: int = 0o755, mtime: int | None = None,
              uid: int | None = None, gid: int | None = None,
              xattrs: dict[bytes, bytes] | None = None) -> None:
        """Create a directory (and missing parents), or set an existing one's attributes."""
        p = repo_path(path)
        meta = self._now_meta(mode, mtime=mtime, uid=uid, gid=gid, xattrs=xattrs)
        self._put_dir(p, meta)

    def _put_dir(self, p: bytes, meta: Meta, *, size: int = 4096) -> None:
        self.dirs_given.add(p)
        if p in self._pending:
            del self._pending[p]
        old = self.tree.lookup(p)
        if old is None:
            self._ensure_parents(p)
            self.summary.entries_added += 1
        elif old.flags & Flags.DIR and _same_dir(old, dir_row(p, meta, size=size)):
            return
        self.tree.put(p, dir_row(p, meta, size=size))
        self._touched(p)
        self._dirs_touched.add(p)

    def symlink(self, path: str | bytes, target: str | bytes, *, mtime: int | None = None,
                uid: int | None = None, gid: int | None = None) -> None:
        p = repo_path(path)
        self._put_row(p, symlink_row(p, self._now_meta(0o777, mtime=mtime, uid=uid, gid=gid),
                                     os.fsencode(target)))

    def special(self, path: str | bytes, file_type: int, *, mode: int = 0o644, rdev: int = 0,
                mtime: int | None = None, uid: int | None = None, gid: int | None = None) -> None:
        """A FIFO, socket or device node (``file_type`` is ``stat.S_IFIFO`` etc.)."""
        p = repo_path(path)
        meta = self._now_meta(mode, mtime=mtime, uid=uid, gid=gid)
        self._put_row(p, special_row(p, meta, file_type, rdev))

    def _put_row(self, p: bytes, row: EntryRow) -> None:
        if not p:
            raise PublishError("the repository root is a directory")
        self._pending.pop(p, None)
        old = self.tree.lookup(p)
        if old is not None and _same_entry(old, row):
            return
        self._ensure_parents(p)
        if old is None:
            self.summary.entries_added += 1
        self.tree.put(p, row)
        self._touched(p)

    def add_file(self, path: str | bytes, source: str | os.PathLike | bytes, *,
                 mode: int | None = None, mtime: int | None = None, uid: int | None = None,
                 gid: int | None = None, xattrs: dict[bytes, bytes] | None = None) -> None:
        """Add or replace a regular file with the content of a local file or of ``bytes``.

        Without ``mode``/``mtime``/owner, a local file's own attributes are used (``bytes``:
        0644, now, the repository owner).
        """
        p = repo_path(path)
        if isinstance(source, bytes | bytearray):
            meta = self._now_meta(0o644 if mode is None else mode, mtime=mtime, uid=uid,
                                  gid=gid, xattrs=xattrs)
            self.expect_bytes(len(source))
            fut = self.ingester.submit_bytes(bytes(source))
        else:
            try:
                st = os.stat(source)
            except OSError as e:
                raise PublishError(f"{source}: cannot read ({e.strerror})") from None
            if not stat.S_ISREG(st.st_mode):
                raise PublishError(f"{source}: not a regular file")
            meta = Meta(stat.S_IMODE(st.st_mode) if mode is None else mode,
                        int(st.st_mtime) if mtime is None else int(mtime),
                        st.st_uid if uid is None else uid, st.st_gid if gid is None else gid,
                        None, xattrs if self.pub.settings.include_xattrs else None)
            self.expect_bytes(st.st_size)
            fut = self.ingester.submit_path(source, seen=scanned(st), follow_symlinks=True)
        self.add_content(p, meta, fut)

    def add_content(self, p: bytes, meta: Meta, content: Future[Ingested], *,
                    hardlink: tuple[bytes, int] | None = None) -> None:
        """Low level: a regular file whose content is being ingested (used by sync and tar)."""
        old = self.tree.lookup(p)
        if old is not None and old.flags & Flags.DIR:
            self.remove(p)
            old = None
        self._ensure_parents(p)
        self._pending[p] = _Pending(meta, content, hardlink, absent=old is None)
        self._touched(p)

    def remove(self, path: str | bytes, *, missing_ok: bool = False) -> None:
        """Remove a path (a directory with everything below it)."""
        p = repo_path(path)
        if not p:
            raise PublishError("the repository root cannot be removed")
        had_pending = p in self._pending
        self._drop_pending_below(p)
        if self.tree.lookup(p) is None:
            if had_pending or missing_ok:
                return
            raise PublishError(f"{os.fsdecode(p)}: no such path in the repository")
        self.tree.remove(p)
        self.summary.entries_removed += 1
        self._touched(p)

    def add_tree(self, source: str | os.PathLike, to: str | bytes = "/", *,
                 delete: bool = False, checksum: bool = False) -> None:
        """Make ``to`` hold the content of the local directory ``source`` (see ``sync``)."""
        from pycvmfs.publish.sync import sync_directory

        sync_directory(self, Path(source), repo_path(to), delete=delete, checksum=checksum)

    def add_tarball(self, source: str | os.PathLike | BinaryIO, to: str | bytes = "/", *,
                    uid: int | None = None, gid: int | None = None) -> None:
        """Unpack a tar archive (plain, gzip, bzip2 or xz; streamed) below ``to``."""
        from pycvmfs.publish.tarball import ingest_tarball

        ingest_tarball(self, source, repo_path(to), uid=uid, gid=gid)

    # -- producers that give every attribute themselves ----------------------------------
    def put_dir(self, path: str | bytes, meta: Meta) -> None:
        """A directory with exactly ``meta`` (owners and xattrs as given: no repository owner
        or CVMFS_INCLUDE_XATTRS policy applied; the producer decided)."""
        self._put_dir(repo_path(path), meta)

    def put_symlink(self, path: str | bytes, meta: Meta, target: bytes) -> None:
        p = repo_path(path)
        self._put_row(p, symlink_row(p, meta, target))

    def put_special(self, path: str | bytes, meta: Meta, file_type: int, rdev: int = 0) -> None:
        p = repo_path(path)
        self._put_row(p, special_row(p, meta, file_type, rdev))

    def put_file(self, path: str | bytes, meta: Meta, content: Future[Ingested] | Ingested, *,
                 hardlink: tuple[bytes, int] | None = None) -> None:
        """A regular file with ``meta`` whose content is stored already (an :class:`Ingested`,
        e.g. read from a published catalog: nothing is stored twice) or being ingested."""
        if isinstance(content, Ingested):
            done: Future[Ingested] = Future()
            done.set_result(content)
            content = done
        self.add_content(repo_path(path), meta, content, hardlink=hardlink)

    def nested_catalog(self, path: str | bytes, meta: Meta) -> None:
        """Make the directory ``path`` (created with ``meta`` if missing) the root of a nested
        catalog now, with its ``.cvmfscatalog`` marker: what is added below it afterwards goes
        straight into that catalog instead of being moved there at commit (a producer that
        writes a large new subtree saves the move)."""
        p = repo_path(path)
        if not p:
            raise PublishError("the repository root is a catalog already")
        if self.tree.lookup(p) is None:
            self._put_dir(p, meta)
        marker = p + b"/" + MARKER
        if self.tree.lookup(marker) is None and marker not in self._pending:
            self.put_file(marker, Meta(0o644, meta.mtime, meta.uid, meta.gid),
                          self.ingester.submit_bytes(b""))
        if not self.tree.is_catalog_root(p):
            self.tree.make_nested(p)

    # -- lookups the producers need ------------------------------------------------------
    def lookup(self, p: bytes) -> EntryRow | None:
        return self.tree.lookup(p)

    def is_pending(self, p: bytes) -> bool:
        return p in self._pending

    def hardlink_group(self, key: bytes, directory: bytes) -> int:
        gid = self._groups.get(key)
        if gid is None:
            gid = self.tree.new_hardlink_group(directory)
            self._groups[key] = gid
        return gid

    # -- commit --------------------------------------------------------------------------
    def _apply_pending(self) -> None:
        self.ingester.flush()
        total = len(self._pending)
        new: list[tuple[bytes, EntryRow, list | None]] = []  # added in batches, path order
        for n, (p, pend) in enumerate(sorted(self._pending.items())):
            try:
                content = pend.content.result()
            except CvmfsError:
                raise
            group, links = 0, 1
            if pend.hardlink is not None and self.pub.settings.hardlinks and pend.hardlink[1] > 1:
                group = self.hardlink_group(pend.hardlink[0], parent_path(p))
                links = pend.hardlink[1]
            row = file_row(p, pend.meta, content, hardlink_group=group, linkcount=links)
            chunks = list(content.chunks) if content.chunks else None
            old = None if pend.absent else self.tree.lookup(p)
            if old is None:
                self.summary.entries_added += 1
                new.append((p, row, chunks))
                if len(new) >= _BATCH:
                    self.tree.add_new(new)
                    new.clear()
            elif not _same_entry(old, row) or (
                    row.flags & Flags.CHUNKED and self.tree.chunks(p) != chunks):
                self.tree.put(p, row, chunks)
            if self.progress and (n % 256 == 255 or n + 1 == total):
                self.progress("cataloguing", n + 1, total)
        self.tree.add_new(new)
        self._pending.clear()

    def _commit(self) -> None:
        from pycvmfs.publish.nested import apply_catalog_markers, apply_dirtab

        self._apply_pending()
        if self._changed and apply_dirtab(self):
            self._apply_pending()
        apply_catalog_markers(self, self._dirs_touched)
        if self.pub.settings.autocatalogs and self._changed:
            from pycvmfs.publish.autocatalog import balance_catalogs

            balance_catalogs(self)
        st = self.ingester.stats
        for k, v in st.to_dict().items():
            setattr(self.summary, k, v)
        if not self._changed or not self.tree.has_changes():
            self.summary.seconds = time.monotonic() - self._started
            return
        self.pub.check_limits(self.tree)
        try:
            result = self.pub.commit_tree(self.tree, self.head, tag=self.tag,
                                          message=self.message, summary=self.summary)
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            raise PublishError(f"{where}{e.strerror or e}; {self.pub.fqrn} stays at revision "
                               f"{self.head.revision}") from None
        self.summary.revision = result.revision
        self.summary.root_hash = str(result.root_hash)
        self.summary.catalogs_written = result.catalogs_written
        self.summary.seconds = time.monotonic() - self._started


def _same_entry(a: EntryRow, b: EntryRow) -> bool:
    return (a.mode, a.flags & ~(Flags.NESTED_ROOT | Flags.NESTED_MOUNTPOINT), a.size, a.mtime,
            a.mtimens, a.hash, a.symlink, a.uid, a.gid, a.xattr, a.hardlink_group,
            a.linkcount if not a.flags & Flags.DIR else 0) == (
        b.mode, b.flags & ~(Flags.NESTED_ROOT | Flags.NESTED_MOUNTPOINT), b.size, b.mtime,
        b.mtimens, b.hash, b.symlink, b.uid, b.gid, b.xattr, b.hardlink_group,
        b.linkcount if not b.flags & Flags.DIR else 0)


def _same_dir(a: EntryRow, b: EntryRow) -> bool:
    return (a.mode, a.size, a.mtime, a.mtimens, a.uid, a.gid, a.xattr) == (
        b.mode, b.size, b.mtime, b.mtimens, b.uid, b.gid, b.xattr)
