"""Small signed repositories built from an in-memory tree, for reader tests of features the golden
fixture lacks (hard-link groups, devices, hidden entries, other algorithms, compression none).

This is test scaffolding built on the format layer's writers, not the publisher: it writes one
revision of a whole tree at once.
"""

from __future__ import annotations

import itertools
import os
import stat
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.format.catalog import Chunk
from pycvmfs.format.catalog_writer import CatalogWriter, EntryRow
from pycvmfs.format.certificate import create_certificate
from pycvmfs.format.chunking import ChunkingParams, cut_points
from pycvmfs.format.compression import Compression, compress
from pycvmfs.format.dirent import make_flags
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind, hash_bytes
from pycvmfs.format.history import History, Tag
from pycvmfs.format.manifest import Manifest, sign_manifest
from pycvmfs.format.signature import generate_rsa_key, public_key_pem
from pycvmfs.format.whitelist import create_whitelist
from pycvmfs.format.xattr import encode_xattrs


@dataclass
class Node:
    kind: str  # file, dir, symlink, fifo, chardev, blockdev, socket
    data: bytes = b""
    perm: int = 0o644
    mtime: int = 1_700_000_000
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    hardlink_group: int = 0
    nested: bool = False
    hidden: bool = False
    rdev: int = 0
    uid: int = 0
    gid: int = 0


_TYPE = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
         "fifo": stat.S_IFIFO, "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK,
         "socket": stat.S_IFSOCK}


@dataclass
class Keys:
    master: object
    repo: object
    certificate: object

    @classmethod
    def generate(cls, fqrn: str) -> Keys:
        master, repo = generate_rsa_key(), generate_rsa_key()
        return cls(master, repo, create_certificate(fqrn, repo))


@dataclass
class Built:
    storage: Path
    pub: Path
    manifest: Manifest
    keys: Keys


def _put(storage: Path, relpath: str, data: bytes) -> None:
    p = storage / relpath
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _store(storage: Path, data: bytes, kind: ObjectKind, algorithm: Algorithm,
           compression: Compression = Compression.ZLIB) -> ContentHash:
    blob = compress(data, compression)
    h = hash_bytes(blob, algorithm)
    _put(storage, h.object_path(kind), blob)
    return h


def build_repository(storage: Path, fqrn: str, tree: dict[str, Node], *,
                     algorithm: Algorithm = Algorithm.SHA1,
                     compression: Compression = Compression.ZLIB,
                     chunking: ChunkingParams | None = None, revision: int = 1,
                     keys: Keys | None = None, tags: dict[str, int] | None = None,
                     timestamp: int | None = None, pub_dir: Path | None = None) -> Built:
    """Write ``tree`` ({"a/b": Node}) as one revision of a signed repository in ``storage``."""
    storage.mkdir(parents=True, exist_ok=True)
    keys = keys or Keys.generate(fqrn)
    now = timestamp or int(time.time())
    nodes = {b"": Node("dir", perm=0o755)}
    for path, node in tree.items():
        nodes[b"/" + os.fsencode(path.strip("/"))] = node
    for p in list(nodes):  # implicit parent directories
        while p:
            p = p[:p.rfind(b"/")]
            nodes.setdefault(p, Node("dir", perm=0o755))
    roots = sorted(p for p, n in nodes.items() if n.kind == "dir" and n.nested and p)

    def catalog_of(p: bytes) -> bytes:
        best = b""
        for r in roots:
            if (p == r or p.startswith(r + b"/")) and len(r) > len(best):
                best = r
        return best

    def row(p: bytes, n: Node, tmp: Path) -> tuple[EntryRow, list[Chunk]]:
        mode = _TYPE[n.kind] | n.perm
        blob = encode_xattrs(n.xattrs, what=str(p)) if n.xattrs else None
        chunks: list[Chunk] = []
        h = None
        size = 0
        if n.kind == "file":
            size = len(n.data)
            cuts = cut_points(n.data, chunking) if chunking and size > chunking.min_size else []
            if cuts:
                bounds = [0, *cuts, size]
                for a, b in itertools.pairwise(bounds):
                    ch = _store(storage, n.data[a:b], ObjectKind.PARTIAL, algorithm, compression)
                    chunks.append(Chunk(a, b - a, ch))
            else:
                h = _store(storage, n.data, ObjectKind.FILE, algorithm, compression)
        elif n.kind == "symlink":
            size = len(n.target)
        elif n.kind in ("chardev", "blockdev"):
            size = n.rdev
        elif n.kind == "dir":
            size = 4096
        flags = make_flags(mode=mode, chunked=bool(chunks), algorithm=algorithm,
                           compression=compression, has_hash=h is not None, hidden=n.hidden)
        links = 1
        if n.hardlink_group:
            links = sum(1 for q, m in nodes.items() if m.hardlink_group == n.hardlink_group
                        and q[:q.rfind(b"/")] == p[:p.rfind(b"/")])
        return EntryRow(mode=mode, flags=flags, size=size, mtime=n.mtime, hash=h,
                        symlink=n.target if n.kind == "symlink" else b"", uid=n.uid, gid=n.gid,
                        hardlink_group=n.hardlink_group, linkcount=links, xattr=blob), chunks

    tmp = storage / "data" / "txn"
    tmp.mkdir(parents=True, exist_ok=True)
    done: dict[bytes, tuple[ContentHash, int, dict]] = {}
    for root in sorted([b"", *roots], key=lambda r: -r.count(b"/") - (1 if r else 0)):
        dbp = tmp / f"cat{len(done)}.db"
        with CatalogWriter.create(dbp, root_prefix=root, what=f"catalog {root!r}") as w:
            for p in sorted(nodes):
                if catalog_of(p) != root:
                    continue
                r, chunks = row(p, nodes[p], tmp)
                if p == root and root:
                    r = r.as_nested_root()
                w.add(p, r)
                if chunks:
                    w.set_chunks(p, chunks)
            for child in roots:  # mount points of direct children
                parent = catalog_of(child[:child.rfind(b"/")] or b"")
                if parent != root or child == root:
                    continue
                h, size, _ = done[child]
                r, _ = row(child, nodes[child], tmp)
                w.add(child, r.as_mountpoint())
                w.add_nested(child, h, size)
            w.fix_directory_linkcounts()
            children = [done[c][2] for c in roots if c != root
                        and catalog_of(c[:c.rfind(b"/")] or b"") == root]
            counters = w.finalize(revision=revision if not root else 1, last_modified=now,
                                  ttl=240 if not root else None, children=children)
        raw = dbp.read_bytes()
        h = _store(storage, raw, ObjectKind.CATALOG, algorithm)
        done[root] = (h, len(raw), counters)
        dbp.unlink()
    root_hash, root_size, _ = done[b""]
    hist_path = tmp / "history.db"
    hist = History.create(hist_path, fqrn)
    hist.insert(Tag("v1", root_hash, revision, now, 0, "synthetic", root_size, ""))
    for name, rev in (tags or {}).items():
        hist.insert(Tag(name, root_hash, rev, now, 0, "", root_size, ""))
    hist.close()
    hist_hash = _store(storage, hist_path.read_bytes(), ObjectKind.HISTORY, algorithm)
    hist_path.unlink()
    cert_obj = zlib.compress(keys.certificate.pem)
    cert_hash = hash_bytes(cert_obj, algorithm)
    _put(storage, cert_hash.object_path(ObjectKind.CERTIFICATE), cert_obj)
    manifest = Manifest(root_catalog=root_hash, root_catalog_size=root_size, ttl=240,
                        revision=revision, fqrn=fqrn, certificate=cert_hash, history=hist_hash,
                        publish_timestamp=now)
    _put(storage, ".cvmfspublished", sign_manifest(manifest, keys.repo))
    _put(storage, ".cvmfswhitelist", create_whitelist(fqrn, keys.certificate, keys.master,
                                                      algorithm=algorithm, days=30))
    pub = (pub_dir or storage.parent) / f"{fqrn}.pub"
    pub.write_bytes(public_key_pem(keys.master))
    return Built(storage, pub, manifest, keys)
