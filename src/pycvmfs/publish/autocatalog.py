"""Automatic nested catalogs (``CVMFS_AUTOCATALOGS``): split heavy catalogs, merge light ones."""

from __future__ import annotations

import stat
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from pycvmfs.format.catalog import parent_path
from pycvmfs.format.catalog_writer import EntryRow
from pycvmfs.format.compression import compress
from pycvmfs.format.dirent import Flags, make_flags
from pycvmfs.format.hashes import ObjectKind

if TYPE_CHECKING:
    from pycvmfs.publish.transaction import Transaction

__all__ = ["AUTO_MARKER", "balance_catalogs"]

MARKER = b".cvmfscatalog"
AUTO_MARKER = b".cvmfsautocatalog"


def _weights(rows: list[tuple[bytes, EntryRow]], root: bytes) -> dict[bytes, int]:
    """Rows below each directory of one catalog (the directory itself included)."""
    weight: dict[bytes, int] = defaultdict(int)
    for path, _row in rows:
        p = path
        while True:
            weight[p] += 1
            if p == root or not p:
                break
            p = parent_path(p)
    return weight


def _marker_rows(txn: Transaction, directory: bytes) -> list[tuple[bytes, EntryRow]]:
    """The two empty marker files of an automatic catalog (format doc §7.3)."""
    s = txn.pub.settings
    h = txn.pub.store_object(compress(b""), ObjectKind.FILE)
    parent = txn.tree.lookup(directory)
    mode = stat.S_IFREG | 0o600
    row = EntryRow(mode=mode, flags=make_flags(mode=mode, algorithm=s.hash_algorithm,
                                               has_hash=True),
                   size=0, mtime=int(time.time()), hash=h, uid=parent.uid, gid=parent.gid)
    return [(directory + b"/" + MARKER, row), (directory + b"/" + AUTO_MARKER, row)]


def balance_catalogs(txn: Transaction) -> None:
    """After a change set: merge automatic catalogs lighter than the minimum weight into their
    parent, then split catalogs heavier than the maximum: in post-order over a catalog's
    directories, while a directory's weight exceeds half the maximum, its heaviest
    sub-directory of at least the minimum weight becomes an automatic catalog."""
    s = txn.pub.settings
    tree = txn.tree
    lo, hi = s.autocatalogs_min_weight, s.autocatalogs_max_weight
    for mp in sorted(tree.catalog_roots(), key=lambda p: -p.count(b"/")):
        if not mp or mp not in tree.catalog_roots():
            continue
        if tree.lookup(mp + b"/" + AUTO_MARKER) is None:
            continue  # only automatic catalogs are merged
        if tree.entry_count(mp) < lo:
            for marker in (MARKER, AUTO_MARKER):
                tree.remove(mp + b"/" + marker)
            tree.merge_nested(mp)
            txn._changed = True
    for mp in sorted(tree.catalog_roots(), key=lambda p: p.count(b"/")):
        if mp not in tree.catalog_roots() or tree.entry_count(mp) <= hi:
            continue
        rows = tree.catalog_rows(mp)
        weight = _weights(rows, mp)
        dirs = [p for p, r in rows if r.flags & Flags.DIR and not r.flags & Flags.NESTED_MOUNTPOINT]
        children: dict[bytes, list[bytes]] = defaultdict(list)
        for d in dirs:
            if d != mp:
                children[parent_path(d)].append(d)
        split: set[bytes] = set()
        for d in sorted(dirs, key=lambda p: -p.count(b"/")):  # post-order: deepest first
            while weight[d] > hi // 2:
                candidates = [c for c in children[d] if c not in split and weight[c] >= lo]
                if not candidates:
                    break
                c = max(candidates, key=lambda x: (weight[x], x))
                split.add(c)
                moved = weight[c] - 1  # the mount point row stays
                p = d
                while True:
                    weight[p] -= moved
                    if p == mp or not p:
                        break
                    p = parent_path(p)
        for c in sorted(split, key=lambda p: p.count(b"/")):
            for path, row in _marker_rows(txn, c):
                if tree.lookup(path) is None:
                    tree.put(path, row)
            tree.make_nested(c)
            txn._changed = True
