"""Nested catalogs from ``.cvmfscatalog`` markers (and ``.cvmfsdirtab`` rules) at commit time."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pycvmfs.errors import PublishError
from pycvmfs.format.dirent import Flags

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
