"""Catalog rows for what a publisher adds: files, directories, links and special files."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from pycvmfs.errors import PublishError
from pycvmfs.format.catalog_writer import EntryRow
from pycvmfs.format.dirent import make_flags
from pycvmfs.format.xattr import encode_xattrs
from pycvmfs.publish.ingest import Ingested

__all__ = ["Meta", "PublishError", "check_name", "dir_row", "file_row", "meta_from_stat",
           "special_row", "symlink_row"]

NAME_MAX = 255
RESERVED_ROOT = {b".cvmfs"}


@dataclass(frozen=True, slots=True)
class Meta:
    """The attributes of an entry as the publisher takes them from the source."""

    perm: int  # permission bits incl. setuid/setgid/sticky
    mtime: int
    uid: int
    gid: int
    mtimens: int | None = None
    xattrs: dict[bytes, bytes] | None = None


def meta_from_stat(st: os.stat_result, *, xattrs: dict[bytes, bytes] | None = None,
                   mtime_ns: bool = False) -> Meta:
    return Meta(stat.S_IMODE(st.st_mode), int(st.st_mtime), st.st_uid, st.st_gid,
                st.st_mtime_ns % 1_000_000_000 if mtime_ns else None, xattrs or None)


def check_name(path: bytes) -> None:
    """Reject repository paths CernVM-FS cannot store."""
    if not path.startswith(b"/") or path.endswith(b"/") or b"//" in path:
        raise PublishError(f"{os.fsdecode(path)!r}: not an absolute repository path")
    if b"\0" in path:
        raise PublishError(f"{os.fsdecode(path)!r}: names cannot contain NUL bytes")
    for part in path.split(b"/")[1:]:
        if part in (b".", b".."):
            raise PublishError(f"{os.fsdecode(path)!r}: '.' and '..' are not names")
        if len(part) > NAME_MAX:
            raise PublishError(f"{os.fsdecode(path)!r}: the name {os.fsdecode(part[:40])}... is "
                               f"{len(part)} bytes, more than {NAME_MAX}")
    if path.split(b"/")[1] in RESERVED_ROOT:
        raise PublishError(f"{os.fsdecode(path)!r}: /.cvmfs is reserved for CernVM-FS")


def _xattr_blob(meta: Meta, path: bytes) -> bytes | None:
    if not meta.xattrs:
        return None
    return encode_xattrs(meta.xattrs, what=os.fsdecode(path))


def file_row(path: bytes, meta: Meta, content: Ingested, *, hardlink_group: int = 0,
             linkcount: int = 1) -> EntryRow:
    chunked = content.chunks is not None
    flags = make_flags(mode=stat.S_IFREG | meta.perm, chunked=chunked,
                       algorithm=content.algorithm, compression=content.compression,
                       has_hash=content.hash is not None)
    return EntryRow(mode=stat.S_IFREG | meta.perm, flags=flags, size=content.size,
                    mtime=meta.mtime, mtimens=meta.mtimens, hash=content.hash, uid=meta.uid,
                    gid=meta.gid, hardlink_group=hardlink_group, linkcount=linkcount,
                    xattr=_xattr_blob(meta, path))


def dir_row(path: bytes, meta: Meta, *, size: int = 4096) -> EntryRow:
    mode = stat.S_IFDIR | meta.perm
    return EntryRow(mode=mode, flags=make_flags(mode=mode), size=size, mtime=meta.mtime,
                    mtimens=meta.mtimens, uid=meta.uid, gid=meta.gid, linkcount=2,
                    xattr=_xattr_blob(meta, path))


def symlink_row(path: bytes, meta: Meta, target: bytes) -> EntryRow:
    if not target:
        raise PublishError(f"{os.fsdecode(path)!r}: a symbolic link needs a target")
    if len(target) >= 4096:
        raise PublishError(f"{os.fsdecode(path)!r}: symlink target longer than 4095 bytes")
    mode = stat.S_IFLNK | 0o777
    return EntryRow(mode=mode, flags=make_flags(mode=mode), size=len(target), mtime=meta.mtime,
                    mtimens=meta.mtimens, symlink=target, uid=meta.uid, gid=meta.gid,
                    xattr=_xattr_blob(meta, path))


def special_row(path: bytes, meta: Meta, file_type: int, rdev: int = 0) -> EntryRow:
    """FIFO, socket, character or block device (``file_type`` is an ``S_IF*`` constant)."""
    if file_type not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
        raise PublishError(f"{os.fsdecode(path)!r}: not a special file type")
    mode = file_type | meta.perm
    size = rdev if file_type in (stat.S_IFCHR, stat.S_IFBLK) else 0
    return EntryRow(mode=mode, flags=make_flags(mode=mode), size=size, mtime=meta.mtime,
                    mtimens=meta.mtimens, uid=meta.uid, gid=meta.gid,
                    xattr=_xattr_blob(meta, path))


