"""Nested catalogs from ``.cvmfscatalog`` markers (and ``.cvmfsdirtab`` rules) at commit time."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pycvmfs.errors import PublishError
from pycvmfs.format.dirent import Flags
from pycvmfs.format.dirtab import resolve_links

if TYPE_CHECKING:
    from pycvmfs.publish.transaction import Transaction

__all__ = ["MARKER", "apply_catalog_markers"]

MARKER = b".cvmfscatalog"


def _depth(p: bytes) -> int:
    return p.count(b"/")


def apply_catalog_markers(txn: Transaction, dirs: set[bytes]) -> None:
    """Split out a nested catalog where a touched directory gained a marker; merge one back
    where its marker went. Splits go top-down, merges bottom-up."""
    tree = txn.tree
    if tree.lookup(b"/" + MARKER) is not None:
        raise PublishError("/.cvmfscatalog: the repository root is a catalog already; "
                           "a marker there is not allowed")
    candidates = sorted((d for d in dirs if d), key=_depth)
    for d in candidates:
        row = tree.lookup(d)
        if row is None or not row.flags & Flags.DIR:
            continue
        marker = tree.lookup(d + b"/" + MARKER)
        if marker is not None and not tree.is_catalog_root(d):
            if marker.flags & (Flags.DIR | Flags.LINK | Flags.SPECIAL):
                raise PublishError(f"{os.fsdecode(d)}/.cvmfscatalog must be a regular file")
            tree.make_nested(d)
    for d in reversed(candidates):
        row = tree.lookup(d)
        if row is None or not row.flags & Flags.DIR:
            continue
        if tree.is_catalog_root(d) and tree.lookup(d + b"/" + MARKER) is None:
            tree.merge_nested(d)


class _CatalogDirtabTree:
    """The repository being published, as :class:`pycvmfs.format.dirtab.DirtabTree` sees it."""

    def __init__(self, txn: Transaction) -> None:
        self.tree = txn.tree
        self.prefix = b"/cvmfs/" + txn.pub.fqrn.encode()

    def listdir(self, path: bytes) -> list[tuple[bytes, str]]:
        row = self.tree.lookup(path.rstrip(b"/"))
        if row is None or not row.flags & Flags.DIR:
            return []
        out = []
        for name, r in self.tree.listdir(path.rstrip(b"/")):
            if r.flags & Flags.DIR:
                kind = "dir"
            elif r.flags & Flags.LINK:
                kind = "symlink"
            elif r.flags & Flags.SPECIAL:
                kind = "other"
            else:
                kind = "file"
            out.append((name, kind))
        return out

    def resolve_dir(self, path: bytes) -> bytes | None:
        def entry(p: bytes) -> tuple[str, bytes] | None:
            row = self.tree.lookup(p)
            if row is None:
                return None
            if row.flags & Flags.LINK:
                return "symlink", row.symlink
            return ("dir" if row.flags & Flags.DIR else "file"), b""

        def absolute(target: bytes) -> list[bytes] | None:
            if target != self.prefix and not target.startswith(self.prefix + b"/"):
                return None
            return [c for c in target[len(self.prefix):].split(b"/") if c]

        return resolve_links(path, entry, absolute)


def apply_dirtab(txn: Transaction) -> int:
    """Create ``.cvmfscatalog`` markers where ``/.cvmfsdirtab`` asks for catalogs (format doc
    §7.2): in every matching directory that is not a catalog root yet. Creating a marker bumps
    its directory's mtime, as it does on the stock union file system, unless this transaction
    was given the directory's attributes (a tree sync or ``mkdir``): then they stay, so syncing
    the same tree again changes nothing. Returns markers made."""
    import time

    from pycvmfs.format.compression import Compression
    from pycvmfs.format.dirtab import Dirtab
    from pycvmfs.format.hashes import ObjectKind
    from pycvmfs.storage.objects import download_verified

    tree = txn.tree
    row = tree.lookup(b"/.cvmfsdirtab")
    if row is None or row.flags & (Flags.DIR | Flags.LINK | Flags.SPECIAL):
        return 0
    data = bytearray()
    if row.flags & Flags.CHUNKED:
        for c in tree.chunks(b"/.cvmfsdirtab"):
            download_verified(txn.pub.store, c.hash, ObjectKind.PARTIAL,
                              Compression.from_flag_code((row.flags >> 11) & 7), data)
    else:
        download_verified(txn.pub.store, row.hash, ObjectKind.FILE,
                          Compression.from_flag_code((row.flags >> 11) & 7), data)
    dirtab = Dirtab.parse(bytes(data), what="/.cvmfsdirtab")
    made = 0
    now = int(time.time())
    seen: set[bytes] = set()
    for match in dirtab.candidates(_CatalogDirtabTree(txn)):
        d = match.real_path.rstrip(b"/")
        if d in seen or not d or tree.is_catalog_root(d):
            continue
        seen.add(d)
        if tree.lookup(d + b"/" + MARKER) is not None:
            continue
        txn.add_file(d + b"/" + MARKER, b"", mode=0o644, mtime=now)
        if d not in txn.dirs_given:
            tree.put(d, _with_mtime(tree.lookup(d), now))
        made += 1
    return made


def _with_mtime(row, mtime: int):
    from dataclasses import replace

    return replace(row, mtime=mtime)
