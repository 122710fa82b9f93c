"""Writing a merged root file system (``.flat/<hh>/<hex>``) and generated entries into a
transaction: catalog rows that point at the layers' objects, nothing stored twice."""

from __future__ import annotations

import os
import posixpath
import stat
from collections import Counter
from collections.abc import Sequence

from pycvmfs.containers.flatten import Node, Tree
from pycvmfs.containers.layer import Kind
from pycvmfs.containers.model import GeneratedEntry
from pycvmfs.errors import ContainerError
from pycvmfs.publish.rows import Meta

__all__ = ["MARKER_META", "flat_size", "put_generated", "write_catalog_dir", "write_tree"]

MARKER_META = Meta(0o644, 0, 0, 0)
_SPECIAL = {Kind.CHAR: stat.S_IFCHR, Kind.BLOCK: stat.S_IFBLK, Kind.FIFO: stat.S_IFIFO}


def _rp(base: str, rel: bytes) -> bytes:
    b = base.encode("utf-8", "surrogateescape")
    return b + b"/" + rel if rel else b


DIR_META = Meta(0o755, 0, 0, 0)


def write_catalog_dir(txn, path: str, meta: Meta = DIR_META) -> None:
    """A directory that is the root of its own nested catalog."""
    txn.put_dir(path, meta)
    if txn.lookup(b"/" + path.encode() + b"/.cvmfscatalog") is None:
        txn.put_file(path + "/.cvmfscatalog", MARKER_META, txn.ingester.submit_bytes(b""))


def _meta(n: Node) -> Meta:
    return Meta(n.mode, n.mtime, n.uid, n.gid, n.mtimens, dict(n.xattrs) if n.xattrs else None)


def write_tree(txn, base: str, tree: Tree, *, key: bytes) -> None:
    """Every node of ``tree`` below repository path ``base`` (its root's attributes go to
    ``base``); hard-link groups among names of one directory stay groups."""
    nodes = list(tree.walk())
    links = Counter((n.link, posixpath.dirname(p)) for p, n in nodes
                    if n.kind is Kind.FILE and n.link is not None)
    for p, n in nodes:
        rp = _rp(base, p)
        if n.kind is Kind.DIR:
            txn.put_dir(rp, _meta(n))
        elif n.kind is Kind.FILE:
            d = posixpath.dirname(p)
            hl = None
            if n.link is not None and links[(n.link, d)] > 1:
                hl = (key + b"%d:" % n.link + d, links[(n.link, d)])
            txn.put_file(rp, _meta(n), n.content, hardlink=hl)
        elif n.kind is Kind.SYMLINK:
            txn.put_symlink(rp, _meta(n), n.target)
        elif n.kind in _SPECIAL:
            txn.put_special(rp, _meta(n), _SPECIAL[n.kind], n.rdev)
        else:
            raise ContainerError(f"{os.fsdecode(rp)}: unexpected node kind {n.kind}")


def put_generated(txn, base: str, entries: Sequence[GeneratedEntry], *, mtime: int,
                  skip_existing: Tree | None = None) -> None:
    """Generated entries (Apptainer files, podman store documents) below ``base``; with
    ``skip_existing``, paths the image itself has are left as the image has them."""
    for g in entries:
        rel = g.path.encode("utf-8", "surrogateescape")
        if skip_existing is not None and skip_existing.lookup(rel) is not None:
            continue
        p = f"{base}/{g.path}" if base else g.path
        meta = Meta(g.mode, mtime, 0, 0)
        if g.kind == "dir":
            txn.put_dir(p, meta)
        elif g.kind == "file":
            txn.put_file(p, meta, txn.ingester.submit_bytes(g.data))
        else:
            txn.put_symlink(p, meta, g.target.encode())


def flat_size(tree: Tree) -> int:
    """Bytes of regular files in the tree (each hard-link group once)."""
    seen: set[int] = set()
    total = 0
    for _p, n in tree.walk():
        if n.kind is Kind.FILE:
            if n.link is not None:
                if n.link in seen:
                    continue
                seen.add(n.link)
            total += n.size
    return total
