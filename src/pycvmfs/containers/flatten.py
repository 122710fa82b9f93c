"""Layers applied one on top of the other into a merged root file system tree (§6.2)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from pycvmfs.containers.layer import Entry, Kind, LayerChanges
from pycvmfs.containers.model import check_digest
from pycvmfs.errors import ContainerError
from pycvmfs.publish.ingest import Ingested

__all__ = ["Node", "Tree", "chain_ids"]


@dataclass(slots=True)
class Node:
    """One name of the merged tree (never a hard link or whiteout: those are resolved)."""

    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime: int
    mtimens: int | None = None
    size: int = 0
    target: bytes = b""
    rdev: int = 0
    xattrs: dict[bytes, bytes] | None = None
    content: Future[Ingested] | None = None
    link: int | None = None  # FILE: hard-link group, unique in the whole Tree
    children: dict[bytes, Node] | None = None  # DIR only
    #: the Tree that may change this node in place; others copy it first (copy-on-write)
    owner: object = field(default=None, repr=False, compare=False)


def _made_up_dir(owner: object) -> Node:
    """A parent no layer defines: 0755, root's, mtime 0."""
    return Node(Kind.DIR, 0o755, 0, 0, 0, children={}, owner=owner)


def _node(e: Entry, owner: object) -> Node:
    return Node(e.kind, e.mode, e.uid, e.gid, e.mtime, e.mtimens, e.size, e.target, e.rdev,
                dict(e.xattrs) if e.xattrs else None, e.content,
                children={} if e.kind is Kind.DIR else None, owner=owner)


class Tree:
    """The merged tree of the layers applied so far. ``copy`` is O(1): both trees share their
    nodes and each copies a node before it changes it."""

    def __init__(self) -> None:
        self._owner = object()
        self.root = _made_up_dir(self._owner)
        self._links = 0

    def copy(self) -> Tree:
        other = Tree.__new__(Tree)
        other._owner = object()
        other.root = self.root
        other._links = self._links
        self._owner = object()  # nodes made so far are shared now: neither changes them
        return other

    # -- reading ---------------------------------------------------------------------------
    def lookup(self, path: bytes) -> Node | None:
        node = self.root
        for name in path.split(b"/") if path else ():
            if node.children is None:
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def walk(self) -> Iterator[tuple[bytes, Node]]:
        """Every path, b"" (the root) first, parents before children, names sorted bytewise."""
        stack: list[tuple[bytes, Node]] = [(b"", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.children:
                prefix = path + b"/" if path else b""
                stack.extend((prefix + name, node.children[name])
                             for name in sorted(node.children, reverse=True))

    # -- changing --------------------------------------------------------------------------
    def _own(self, node: Node) -> Node:
        if node.owner is self._owner:
            return node
        return replace(node, owner=self._owner,
                       children=dict(node.children) if node.children is not None else None,
                       xattrs=dict(node.xattrs) if node.xattrs else None)

    def _dir(self, path: bytes, *, create: bool, warnings: list[str] | None = None,
             why: bytes = b"") -> Node | None:
        """The directory at ``path``, owned by this tree (its ancestors too); missing ones are
        made up when ``create`` (a non-directory in the way is replaced), else None."""
        self.root = node = self._own(self.root)
        for name in path.split(b"/") if path else ():
            assert node.children is not None
            child = node.children.get(name)
            if child is None or child.kind is not Kind.DIR:
                if not create:
                    return None
                if child is not None and warnings is not None:
                    warnings.append(f"{path!r}: a {child.kind.value} where a directory must "
                                    f"hold {why!r}; replaced by a directory")
                child = _made_up_dir(self._owner)
            else:
                child = self._own(child)
            node.children[name] = child
            node = child
        return node

    def _remove(self, path: bytes) -> None:
        parent, _, name = path.rpartition(b"/")
        if self.lookup(path) is None:
            return
        d = self._dir(parent, create=False)
        if d is not None and d.children is not None:
            d.children.pop(name, None)

    def apply(self, layer: LayerChanges) -> list[str]:
        """Apply ``layer`` (§6.2): its deletions, then its entries in order. Returns warnings
        (made-up directories replacing files); a hard link whose target is missing raises
        ContainerError naming the layer and the path."""
        warnings: list[str] = []
        for path in layer.whiteouts:
            self._remove(path)
        for path in layer.opaque:
            node = self.lookup(path)
            if node is not None and node.kind is Kind.DIR and node.children:
                d = self._dir(path, create=False)
                assert d is not None and d.children is not None
                d.children.clear()
        if layer.root is not None:
            self.root = self._own(self.root)
            _set_attributes(self.root, layer.root)
        groups: dict[int, int] = {}  # the layer's hard-link groups -> the tree's
        for e in layer.entries:
            parent, _, name = e.path.rpartition(b"/")
            d = self._dir(parent, create=True, warnings=warnings, why=e.path)
            assert d is not None and d.children is not None
            old = d.children.get(name)
            if e.kind is Kind.DIR:
                if old is not None and old.kind is Kind.DIR:
                    old = self._own(old)
                    _set_attributes(old, e)
                    d.children[name] = old
                else:
                    d.children[name] = _node(e, self._owner)
            elif e.kind is Kind.HARDLINK:
                d.children[name] = self._linked(e, layer)
            else:
                node = _node(e, self._owner)
                if e.link is not None:
                    if e.link not in groups:
                        self._links += 1
                        groups[e.link] = self._links
                    node.link = groups[e.link]
                d.children[name] = node
        return warnings

    def _linked(self, e: Entry, layer: LayerChanges) -> Node:
        """A new name for the node at ``e.target`` (as the tree is now): same content, mode,
        owner and xattrs; a file joins the target's hard-link group."""
        target = self.lookup(e.target)
        if target is None or target.kind is Kind.DIR:
            raise ContainerError(
                f"layer {layer.compressed_digest}: hard link {e.path!r} points at "
                f"{e.target!r}, which is {'a directory' if target else 'not there'}")
        if target.kind is Kind.FILE and target.link is None:
            parent, _, name = e.target.rpartition(b"/")
            d = self._dir(parent, create=False)
            assert d is not None and d.children is not None
            target = self._own(target)
            self._links += 1
            target.link = self._links
            d.children[name] = target
        return replace(target, owner=self._owner,
                       xattrs=dict(target.xattrs) if target.xattrs else None)


def _set_attributes(node: Node, e: Entry) -> None:
    node.mode, node.uid, node.gid = e.mode, e.uid, e.gid
    node.mtime, node.mtimens = e.mtime, e.mtimens
    node.xattrs = dict(e.xattrs) if e.xattrs else None


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI ChainID of each prefix of the layers (§1): the first is its DiffID, then
    ``sha256(previous + " " + DiffID)`` over the ``sha256:<hex>`` strings."""
    out: list[str] = []
    for i, diff_id in enumerate(diff_ids):
        check_digest(diff_id, f"DiffID of layer {i}")
        out.append(diff_id if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
