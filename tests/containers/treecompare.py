"""Comparing file system trees from different sources as listings (path -> Record).

A listing can come from a directory on disk (``listing_from_disk``: an oracle such as
``umoci unpack``'s rootfs, or a FUSE mount), from a flattened ``Tree`` (``listing_from_tree``)
or from anything else that fills ``Record``s. ``compare`` names every difference: path set,
types, modes, owners, sizes, content sha256, symlink targets, device numbers, xattrs (by
default ``user.*`` only), hard-link groups and, optionally, mtimes. ``exact_description``
is the stricter one for two directories on disk: nanosecond mtimes, inode partners.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.containers.flatten import Tree
from pycvmfs.containers.layer import Kind
from pycvmfs.format.compression import decompress
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.publish.ingest import Ingested, Ingester
from pycvmfs.storage.local import LocalStorage

_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
          stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}
USER_XATTRS = (b"user.",)


@dataclass(frozen=True)
class Record:
    """What one path is; fields that do not apply to the kind are left at their default."""

    kind: str  # file dir symlink char block fifo
    mode: int  # permission bits with 0o7000
    uid: int
    gid: int
    size: int = 0  # files
    sha256: str = ""  # files: of the content
    target: bytes = b""  # symlinks
    rdev: int = 0  # char/block devices
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    link: object = None  # files: a key shared by the names of one inode (None: not linked)
    mtime: int = 0  # whole seconds


def _xattrs(items: Iterable[tuple[bytes, bytes]], prefixes: tuple[bytes, ...]
            ) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(sorted((k, v) for k, v in items if k.startswith(prefixes)))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def listing_from_disk(root: str | os.PathLike, *, xattr_prefixes: tuple[bytes, ...] = USER_XATTRS,
                      skip_vanished: bool = False) -> dict[bytes, Record]:
    """Every path below ``root`` (b"" for ``root`` itself), read with lstat. With
    ``skip_vanished``, names a directory lists but lstat does not find are left out (kernel
    overlayfs lists the whiteouts of a directory that only one layer has)."""
    top = os.fsencode(root)
    out: dict[bytes, Record] = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        full = os.path.join(top, rel) if rel else top
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if skip_vanished and rel:
                continue
            raise
        kind = _KINDS[stat.S_IFMT(st.st_mode)]
        names = os.listxattr(full, follow_symlinks=False) if kind != "symlink" else []
        xattrs = _xattrs(((os.fsencode(n), os.getxattr(full, n, follow_symlinks=False))
                          for n in names), xattr_prefixes)
        out[rel] = Record(
            kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            size=st.st_size if kind == "file" else 0,
            sha256=file_sha256(full) if kind == "file" else "",
            target=os.readlink(full) if kind == "symlink" else b"",
            rdev=st.st_rdev if kind in ("char", "block") else 0,
            xattrs=xattrs,
            link=(st.st_dev, st.st_ino) if kind == "file" and st.st_nlink > 1 else None,
            mtime=int(st.st_mtime))
        if kind == "dir":
            todo.extend(rel + b"/" + n if rel else n for n in os.listdir(full))
    return out


def exact_description(root: str | os.PathLike, *, xattr_prefixes: tuple[str, ...] = ("user.",),
                      symlink_mtimes: bool = True) -> dict[bytes, tuple]:
    """Every entry below ``root`` (not ``root`` itself) as a tuple that a plain ``==`` compares
    exactly: type, permissions (with setuid...), owner, content sha256 / link target / device,
    xattrs under ``xattr_prefixes`` (never ``trusted.overlay*``), mtime in nanoseconds of
    non-directories (of symbolic links only with ``symlink_mtimes``), hard-link partners."""
    out: dict[bytes, tuple] = {}
    inodes: dict[int, list[bytes]] = defaultdict(list)
    top = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, top)
            st = os.lstat(path)
            fmt = stat.S_IFMT(st.st_mode)
            what: object = None
            if stat.S_ISREG(fmt):
                what = file_sha256(path)
                inodes[st.st_ino].append(rel)
            elif stat.S_ISLNK(fmt):
                what = os.readlink(path)
            elif stat.S_ISCHR(fmt) or stat.S_ISBLK(fmt):
                what = st.st_rdev
            xattrs = () if stat.S_ISLNK(fmt) else tuple(sorted(
                (k, os.getxattr(path, k)) for k in os.listxattr(path)
                if k.startswith(xattr_prefixes) and not k.startswith("trusted.overlay.")))
            timed = not stat.S_ISDIR(fmt) and (symlink_mtimes or not stat.S_ISLNK(fmt))
            out[rel] = (fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what, xattrs,
                        st.st_mtime_ns if timed else None)
    partners = {rel: tuple(sorted(names)) for names in inodes.values() if len(names) > 1
                for rel in names}
    return {rel: (*rec, partners.get(rel, ())) for rel, rec in out.items()}


def stored_sha256(store: LocalStorage) -> Callable[[Ingested], str]:
    """The sha256 of a stored content, read back from the objects in ``store``."""

    def content_sha256(ing: Ingested) -> str:
        h = hashlib.sha256()
        pieces = ([(ing.hash, ObjectKind.FILE)] if ing.hash is not None
                  else [(c.hash, ObjectKind.PARTIAL) for c in ing.chunks or ()])
        for obj, kind in pieces:
            data = (Path(store.root) / obj.object_path(kind)).read_bytes()
            h.update(decompress(data, ing.compression))
        return h.hexdigest()

    return content_sha256


def listing_from_tree(tree: Tree, content_sha256: Callable[[Ingested], str], *,
                      xattr_prefixes: tuple[bytes, ...] = USER_XATTRS) -> dict[bytes, Record]:
    """Every path of a flattened ``Tree``; file contents hashed by ``content_sha256``."""
    out: dict[bytes, Record] = {}
    for path, node in tree.walk():
        content = node.content.result() if node.content is not None else None
        out[path] = Record(
            node.kind.value, node.mode, node.uid, node.gid,
            size=node.size if node.kind is Kind.FILE else 0,
            sha256=content_sha256(content) if content is not None else "",
            target=node.target if node.kind is Kind.SYMLINK else b"",
            rdev=node.rdev if node.kind in (Kind.CHAR, Kind.BLOCK) else 0,
            xattrs=_xattrs((node.xattrs or {}).items(), xattr_prefixes),
            link=node.link, mtime=node.mtime)
    return out


def link_groups(listing: dict[bytes, Record], *, same_directory_links_only: bool = False
                ) -> set[frozenset[bytes]]:
    """The sets of two or more names that share an inode. With ``same_directory_links_only``
    a group is split by directory (CernVM-FS catalogs keep hard links within a directory
    only; across directories the names are independent files with the same content)."""
    groups: dict[object, list[bytes]] = defaultdict(list)
    for path, rec in listing.items():
        if rec.link is not None:
            key = (rec.link, path.rpartition(b"/")[0]) if same_directory_links_only else rec.link
            groups[key].append(path)
    return {frozenset(names) for names in groups.values() if len(names) > 1}


def compare(expected: dict[bytes, Record], actual: dict[bytes, Record], *,
            same_directory_links_only: bool = False, mtimes: bool = False) -> list[str]:
    """The differences between two listings, one line each (empty: identical). Symbolic
    links' modes are not compared; mtimes only when ``mtimes``."""
    diffs = [f"missing: {p!r}" for p in sorted(expected.keys() - actual.keys())]
    diffs += [f"unexpected: {p!r}" for p in sorted(actual.keys() - expected.keys())]
    skip = {"link"} | (set() if mtimes else {"mtime"})
    for path in sorted(expected.keys() & actual.keys()):
        want, got = expected[path], actual[path]
        for name in Record.__dataclass_fields__:
            if name == "mode" and want.kind == got.kind == "symlink":
                continue  # Linux has no modes of symbolic links (lstat says 0777)
            if name not in skip and getattr(want, name) != getattr(got, name):
                w, g = getattr(want, name), getattr(got, name)
                if name == "mode":
                    w, g = oct(w), oct(g)
                diffs.append(f"{path!r}: {name} {w!r} expected, {g!r} found")
    groups = [link_groups(x, same_directory_links_only=same_directory_links_only)
              for x in (expected, actual)]
    diffs += [f"hard-link group missing: {sorted(g)}" for g in groups[0] - groups[1]]
    diffs += [f"unexpected hard-link group: {sorted(g)}" for g in groups[1] - groups[0]]
    return diffs


def content_store(directory: str | os.PathLike, **options: object) -> tuple[Ingester,
                                                                            LocalStorage]:
    """A real Ingester writing into a LocalStorage below ``directory`` (close it after use)."""
    os.makedirs(directory, exist_ok=True)
    store = LocalStorage(directory, fsync=False)
    return Ingester(store, workers=2, **options), store  # type: ignore[arg-type]
