"""Writing a merged root file system (``.flat/<hh>/<hex>``) and generated entries into a
transaction: catalog rows that point at the layers' objects, nothing stored twice."""

from __future__ import annotations

import os
import posixpath
import stat
from collections import Counter
from collections.abc import Iterable, Sequence

from pycvmfs.containers.flatten import Node, Tree
from pycvmfs.containers.layer import Entry, Kind
from pycvmfs.containers.model import GeneratedEntry
from pycvmfs.errors import ContainerError
from pycvmfs.publish.rows import Meta

__all__ = ["DIR_META", "HardlinkGroups", "flat_size", "node_meta", "put_generated",
           "put_node", "write_catalog_dir", "write_tree"]

DIR_META = Meta(0o755, 0, 0, 0)
_SPECIAL = {Kind.CHAR: stat.S_IFCHR, Kind.BLOCK: stat.S_IFBLK, Kind.FIFO: stat.S_IFIFO}


def _rp(base: str, rel: bytes) -> bytes:
    b = base.encode("utf-8", "surrogateescape")
    return b + b"/" + rel if rel else b


def write_catalog_dir(txn, path: str, meta: Meta = DIR_META) -> None:
    """A directory that is the root of its own nested catalog, made one at once: what is
    written below it afterwards goes straight into that catalog (nothing moved at commit)."""
    txn.put_dir(path, meta)
    txn.nested_catalog(path, meta)


def node_meta(n: Node | Entry, extra_xattrs: dict[bytes, bytes] | None = None) -> Meta:
    """The catalog attributes of a flattened node or a layer entry (plus ``extra_xattrs``)."""
    xattrs = dict(n.xattrs or {})
    if extra_xattrs:
        xattrs.update(extra_xattrs)
    return Meta(n.mode, n.mtime, n.uid, n.gid, n.mtimens, xattrs or None)


class HardlinkGroups:
    """The hard-link groups (``link``) of regular files, split by directory: a catalog keeps
    a group among names of one directory only."""

    def __init__(self, items: Iterable[tuple[bytes, Node | Entry]], key: bytes) -> None:
        self.key = key  # unique in the transaction (its groups are shared by all writers)
        self.sizes = Counter((n.link, posixpath.dirname(p)) for p, n in items
                             if n.kind is Kind.FILE and n.link is not None)

    def of(self, path: bytes, n: Node | Entry) -> tuple[bytes, int] | None:
        """The (group key, names) the file at ``path`` joins, None when it stands alone."""
        if n.kind is not Kind.FILE or n.link is None:
            return None
        d = posixpath.dirname(path)
        names = self.sizes[(n.link, d)]
        return (self.key + b"%d:" % n.link + d, names) if names > 1 else None


def put_node(txn, path: bytes, n: Node | Entry, meta: Meta,
             hardlink: tuple[bytes, int] | None = None) -> None:
    """One directory, regular file, symbolic link, device or FIFO at ``path``, by ``n.kind``
    (a layer's hard link to a lower layer must be resolved to the file before)."""
    if n.kind is Kind.DIR:
        txn.put_dir(path, meta)
    elif n.kind is Kind.FILE:
        txn.put_file(path, meta, n.content, hardlink=hardlink)
    elif n.kind is Kind.SYMLINK:
        txn.put_symlink(path, meta, n.target)
    elif n.kind in _SPECIAL:
        txn.put_special(path, meta, _SPECIAL[n.kind], n.rdev)
    else:
        raise ContainerError(f"{os.fsdecode(path)}: unexpected kind {n.kind}")


def write_tree(txn, base: str, tree: Tree, *, key: bytes) -> None:
    """Every node of ``tree`` below repository path ``base`` (its root's attributes go to
    ``base``); hard-link groups among names of one directory stay groups."""
    nodes = list(tree.walk())
    groups = HardlinkGroups(nodes, key)
    for p, n in nodes:
        put_node(txn, _rp(base, p), n, node_meta(n), groups.of(p, n))


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
