"""Synchronising a local directory into a transaction: only what changed is re-read."""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.format.dirent import Flags
from pycvmfs.format.xattr import encode_xattrs
from pycvmfs.publish.ingest import Scanned, scanned
from pycvmfs.publish.rows import (
    Meta,
    PublishError,
    check_name,
    meta_from_stat,
    special_row,
    symlink_row,
)
from pycvmfs.publish.signing import sync_storage
from pycvmfs.storage.local import LocalStorage

if TYPE_CHECKING:
    from pycvmfs.publish.transaction import Transaction

__all__ = ["read_user_xattrs", "sync_directory"]


def read_user_xattrs(path: str | bytes) -> dict[bytes, bytes]:
    """The ``user.*`` extended attributes of a path (links not followed)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith("user."):
            try:
                out[os.fsencode(n)] = os.getxattr(path, n, follow_symlinks=False)
            except OSError:
                continue
    return out


def sync_directory(txn: Transaction, src: Path, dest: bytes, *, delete: bool = False,
                   checksum: bool = False) -> None:
    """Make repository directory ``dest`` hold what the local directory ``src`` holds.

    New and changed entries are added; a regular file counts as unchanged when its type,
    size, mtime, mode, owner (and xattrs, when recorded) equal the catalog's, unless
    ``checksum``. With ``delete``, entries missing from ``src`` are removed. Files with several
    names in one directory become a hard-link group (unless hard links are switched off).
    The whole tree is scanned before the first file is read, so the transaction's progress
    knows the total bytes to ingest (:meth:`Transaction.expect_bytes`).
    """
    try:
        st = os.lstat(src)
    except OSError as e:
        raise PublishError(f"{src}: cannot read ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PublishError(f"{src}: not a directory")
    _Syncer(txn, delete, checksum).run(src, dest, st)


class _Syncer:
    def __init__(self, txn: Transaction, delete: bool, checksum: bool) -> None:
        self.txn = txn
        self.delete = delete
        self.checksum = checksum
        s = txn.pub.settings
        self.xattrs = s.include_xattrs
        self.mtime_ns = s.mtime_ns
        self.ignore_special = s.ignore_special_files
        self.dirtab = txn.lookup(b"/.cvmfsdirtab") is not None
        #: worker processes are started (in the background, while the scan goes on) once this
        #: many files are to be ingested: small change sets never pay for them
        self.processes_after = _PROCESSES_AFTER if s.ingest_processes else None
        #: regular files to ingest once the scan is over: (path, identity as scanned, repo
        #: path, meta, link)
        self.files: list[tuple[str, Scanned, bytes, Meta, tuple[bytes, int] | None]] = []

    def _meta(self, path: str, st: os.stat_result) -> Meta:
        return meta_from_stat(st, xattrs=read_user_xattrs(path) if self.xattrs else None,
                              mtime_ns=self.mtime_ns)

    def run(self, src: Path, dest: bytes, st: os.stat_result) -> None:
        self.txn._put_dir(dest, self._meta(str(src), st), size=st.st_size)
        stack = [(str(src), dest, True, (st.st_dev, st.st_ino))]
        progress = self.txn.progress
        while stack:
            local, repo, known, seen = stack.pop()
            stack.extend(reversed(self._sync_dir(local, repo, known, seen)))
            if self.processes_after is not None and len(self.files) > self.processes_after:
                self._go_big()
            if progress is not None:
                progress("scanning", len(self.files), None)
        if progress is not None:
            progress("scanning", len(self.files), len(self.files))
        self._ingest()

    def _go_big(self) -> None:
        """A big change set: start the worker processes, and let the disk write what they
        store as they go (no long flush before the manifest)."""
        self.processes_after = None
        ingester = self.txn.ingester
        ingester.start_processes_soon()
        store = self.txn.pub.store
        if isinstance(store, LocalStorage):
            ingester.sync_in_background(lambda: sync_storage(store))

    def _ingest(self) -> None:
        """Announce the bytes of every changed file, then hand them to the ingester, the
        largest first (the workers then finish together: no big file left alone at the end)."""
        txn = self.txn
        txn.expect_bytes(sum(seen[2] for _path, seen, _p, _meta, _link in self.files))
        files, self.files = self.files, []
        files.sort(key=_size_descending)
        for path, seen, p, meta, hardlink in files:
            txn.add_content(p, meta, txn.ingester.submit_path(path, seen=seen),
                            hardlink=hardlink)

    def _sync_dir(self, local: str, repo: bytes, known: bool,
                  seen: tuple[int, int]) -> list[tuple[str, bytes, bool, tuple[int, int]]]:
        """Sync one directory, listed through a descriptor of the very directory the scan of
        its parent saw (``seen``: device and inode), so a directory swapped for a symlink
        afterwards is never followed."""
        fd = _open_dir(local, seen)
        try:
            return self._sync_listed(fd, local, repo, known)
        finally:
            os.close(fd)

    def _sync_listed(self, fd: int, local: str, repo: bytes,
                     known: bool) -> list[tuple[str, bytes, bool, tuple[int, int]]]:
        """Sync the directory open as ``fd``; ``known``: it existed in the repository before
        this sync."""
        txn = self.txn
        try:
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise PublishError(f"{local}: cannot list ({e.strerror})") from None
        existing: dict[bytes, tuple] = txn.tree.listdir_stat(repo) if known else {}
        stats = {}
        for e in entries:
            try:
                stats[e.name] = e.stat(follow_symlinks=False)
            except OSError as err:
                raise PublishError(f"{local}/{e.name}: cannot read ({err.strerror})") from None
        links = Counter((s.st_dev, s.st_ino) for s in stats.values()
                        if stat.S_ISREG(s.st_mode) and s.st_nlink > 1)
        subdirs = []
        for e in entries:
            name = os.fsencode(e.name)
            p = repo + b"/" + name
            if len(name) > 255 or (not repo and name == b".cvmfs"):
                check_name(p)  # raises with the reason
            st = stats[e.name]
            path = f"{local}/{e.name}"
            meta = self._meta(path, st)
            old = existing.get(name)
            if stat.S_ISDIR(st.st_mode):
                was_dir = old is not None and old[0] & Flags.DIR
                txn.dirs_given.add(p)
                if not (was_dir and _same_dir(old, meta, st.st_size)):
                    txn._put_dir(p, meta, size=st.st_size)
                subdirs.append((path, p, bool(was_dir), (st.st_dev, st.st_ino)))
            elif stat.S_ISREG(st.st_mode):
                n = links.get((st.st_dev, st.st_ino), 1)
                if not self.checksum and old is not None and _unchanged(old, meta, st, n):
                    continue
                key = f"{st.st_dev}:{st.st_ino}:".encode() + repo if n > 1 else b""
                self.files.append((path, scanned(st), p, meta, (key, n) if n > 1 else None))
            elif stat.S_ISLNK(st.st_mode):
                target = os.fsencode(os.readlink(e.name, dir_fd=fd))
                txn._put_row(p, symlink_row(p, meta, target))
            else:
                if self.ignore_special:
                    continue
                txn._put_row(p, special_row(p, meta, stat.S_IFMT(st.st_mode), st.st_rdev))
        if self.delete:
            present = {os.fsencode(e.name) for e in entries}
            if b".cvmfsautocatalog" in existing:  # the publisher's own markers stay
                present |= {b".cvmfscatalog", b".cvmfsautocatalog"}
            elif self.dirtab:  # markers made for .cvmfsdirtab rules stay too
                present.add(b".cvmfscatalog")
            for name in existing:
                if name not in present:
                    txn.remove(repo + b"/" + name)
        return subdirs


#: Changed files found by a scan above which the worker processes are started.
_PROCESSES_AFTER = 256


def _size_descending(item: tuple) -> int:
    return -item[1][2]


def _open_dir(local: str, seen: tuple[int, int]) -> int:
    """A descriptor of directory ``local``, refused unless it is still the directory scanned
    (``seen``: device and inode) and not reached through a symlink in its place."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(local, flags)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PublishError(f"{local}: not a directory any more (replaced after it was "
                               f"scanned); not followed") from None
        if e.errno == errno.ENAMETOOLONG:  # the catalogs have no such limit, a tar has none
            raise PublishError(f"{local}: {len(os.fsencode(local))} bytes, a path too long for "
                               f"this system (PATH_MAX {os.pathconf('/', 'PC_PATH_MAX')}); "
                               f"a tree this deep can be published from a tar archive "
                               f"(pycvmfs ingest --tar)") from None
        raise PublishError(f"{local}: cannot list ({e.strerror})") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != seen:
        os.close(fd)
        raise PublishError(f"{local}: replaced by another directory after it was scanned")
    return fd


def _same_dir(old: tuple, meta: Meta, size: int) -> bool:
    _flags, osize, mode, mtime, mtimens, uid, gid, xattr, _hl = old
    blob = encode_xattrs(meta.xattrs, what="") if meta.xattrs else None
    return (osize == size and stat.S_IMODE(mode) == meta.perm and mtime == meta.mtime
            and mtimens == meta.mtimens and uid == meta.uid and gid == meta.gid
            and xattr == blob)


def _unchanged(old: tuple, meta: Meta, st: os.stat_result, links: int) -> bool:
    """``old`` is a ``listing_stat`` tuple of the catalog entry."""
    flags, size, mode, mtime, mtimens, uid, gid, xattr, hardlinks = old
    if flags & (Flags.DIR | Flags.LINK | Flags.SPECIAL) or not flags & Flags.FILE:
        return False
    if (size != st.st_size or mtime != meta.mtime or mtimens != meta.mtimens
            or stat.S_IMODE(mode) != meta.perm or uid != meta.uid or gid != meta.gid):
        return False
    blob = encode_xattrs(meta.xattrs, what="") if meta.xattrs else None
    group, count = (hardlinks & 0xFFFFFFFFFFFFFFFF) >> 32, hardlinks & 0xFFFFFFFF
    return xattr == blob and (count if group else 1) == links
