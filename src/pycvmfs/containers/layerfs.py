"""One layer in the repository: ``.layers/<hh>/<hex>/layerfs`` with overlay-native whiteouts,
its DUCC ``layers.json`` and our own record, and the way back from the catalog to the layer.

A layer tree is what kernel overlayfs (and the containerd snapshotter) stacks as a lowerdir:
a deleted name is a character device 0/0, an opaque directory carries
``trusted.overlay.opaque=y`` (and ``user.overlay.opaque=y`` for ``userxattr`` mounts). Never a
``.wh.`` file. ``.metadata/pycvmfs-layer.json`` keeps what the tree alone cannot say without
relying on xattrs (whiteouts, opaque and implied directories, hard links into lower layers), so
a published layer is flattened again later from its catalog, exactly as when it was read.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from collections.abc import Callable
from concurrent.futures import Future

from pycvmfs.containers.flatwrite import (
    DIR_META,
    HardlinkGroups,
    node_meta,
    put_node,
    write_catalog_dir,
)
from pycvmfs.containers.layer import Entry, Kind, LayerChanges
from pycvmfs.containers.layout import layer_dir, layer_metadata, layer_root
from pycvmfs.containers.model import digest_hex
from pycvmfs.errors import ContainerError
from pycvmfs.publish.ingest import Ingested
from pycvmfs.publish.rows import Meta

__all__ = ["OPAQUE_XATTRS", "RECORD", "load_layer", "write_layer"]

OPAQUE_XATTRS = {b"trusted.overlay.opaque": b"y", b"user.overlay.opaque": b"y"}
RECORD = "pycvmfs-layer.json"
WHITEOUT = Meta(0, 0, 0, 0)


def _text(p: bytes) -> str:
    return os.fsdecode(p)


def _raw(s: str) -> bytes:
    return os.fsencode(s)


def put_entries(txn, base: str, entries: list[Entry], *, group_key: bytes,
                opaque: set[bytes] = frozenset(), resolve: Callable[[Entry], Entry] | None = None
                ) -> None:
    """Write ``entries`` (parents before children) below repository path ``base``. Hard-link
    groups (``Entry.link``) become catalog groups among names of one directory; ``resolve``
    turns a HARDLINK into a lower layer into the FILE it stands for."""
    groups = HardlinkGroups(((e.path, e) for e in entries), group_key)
    for e in entries:
        if e.kind is Kind.HARDLINK:
            if resolve is None:
                raise ContainerError(f"{base}/{_text(e.path)}: hard link to "
                                     f"{_text(e.target)} cannot be resolved here")
            e = resolve(e)
        p = f"{base}/{_text(e.path)}".encode("utf-8", "surrogateescape")
        opaque_dir = e.kind is Kind.DIR and e.path in opaque
        put_node(txn, p, e, node_meta(e, OPAQUE_XATTRS if opaque_dir else None),
                 groups.of(e.path, e))


def write_layer(txn, layer: LayerChanges, *, resolve: Callable[[Entry], Entry] | None,
                created: str) -> None:
    """Put one layer (its catalog, tree and metadata) into the transaction."""
    base = layer_dir(layer.compressed_digest)
    root = layer_root(layer.compressed_digest)
    write_catalog_dir(txn, base, DIR_META)
    defined = {e.path for e in layer.entries if e.kind is Kind.DIR}
    needed: set[bytes] = set()
    for p in [e.path for e in layer.entries] + list(layer.whiteouts) + list(layer.opaque):
        d = posixpath.dirname(p)
        while d and d not in needed:
            needed.add(d)
            d = posixpath.dirname(d)
    implied = sorted((needed | set(layer.opaque)) - defined - {b""})
    root_extra = OPAQUE_XATTRS if b"" in layer.opaque else None
    txn.put_dir(root, node_meta(layer.root, root_extra) if layer.root is not None
                else Meta(0o755, 0, 0, 0, None, dict(root_extra) if root_extra else None))
    for d in implied:
        txn.put_dir(f"{root}/{_text(d)}".encode("utf-8", "surrogateescape"),
                    Meta(0o755, 0, 0, 0, None,
                         dict(OPAQUE_XATTRS) if d in layer.opaque else None))
    lower_links = {_text(e.path): _text(e.target) for e in layer.entries
                   if e.kind is Kind.HARDLINK}
    put_entries(txn, root, layer.entries, opaque=set(layer.opaque), resolve=resolve,
                group_key=b"layer:" + layer.compressed_digest.encode() + b":")
    for w in layer.whiteouts:
        txn.put_special(f"{root}/{_text(w)}".encode("utf-8", "surrogateescape"), WHITEOUT,
                        stat.S_IFCHR, 0)
    meta_dir = layer_metadata(layer.compressed_digest)
    diff_hex = digest_hex(layer.diff_id)
    ducc = [{"id": diff_hex, "created": created,
             "compressed-diff-digest": layer.compressed_digest,
             "diff-digest": layer.diff_id, "diff-size": layer.uncompressed_size}]
    record = {"version": 1, "diff_id": layer.diff_id,
              "compressed_digest": layer.compressed_digest,
              "uncompressed_size": layer.uncompressed_size,
              "whiteouts": [_text(p) for p in layer.whiteouts],
              "opaque": [_text(p) for p in layer.opaque],
              "implied_dirs": [_text(p) for p in implied],
              "root_defined": layer.root is not None,
              "lower_links": lower_links}
    fixed = Meta(0o644, 0, 0, 0)
    txn.put_dir(meta_dir, DIR_META)
    txn.put_file(meta_dir + "/layers.json", fixed, _stored(txn, _json(ducc)))
    txn.put_file(f"{meta_dir}/{RECORD}", fixed, _stored(txn, _json(record)))


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, indent=1).encode() + b"\n"


def _stored(txn, data: bytes):
    return txn.ingester.submit_bytes(data)


def load_layer(view, layer_digest: str) -> LayerChanges:
    """A layer published earlier, as :func:`pycvmfs.containers.layer.read_layer` returned it,
    read back through the verified view (nothing downloaded from any registry)."""
    meta_dir = "/" + layer_metadata(layer_digest)
    what = f"published layer {layer_digest}"
    try:
        record = json.loads(view.read_bytes(f"{meta_dir}/{RECORD}"))
    except (OSError, ValueError) as e:
        raise ContainerError(f"{what}: its record {meta_dir}/{RECORD} cannot be read ({e})"
                             ) from None
    actual = record.get("compressed_digest")
    # another compression of one layer is a symlink to the tree of the first (§7.4)
    if actual != layer_digest and (not isinstance(actual, str) or not view.lstat(
            "/" + layer_dir(layer_digest)).is_symlink):
        raise ContainerError(f"{what}: its record names {actual!r}")
    whiteouts = {_raw(p) for p in record.get("whiteouts", [])}
    opaque = {_raw(p) for p in record.get("opaque", [])}
    implied = {_raw(p) for p in record.get("implied_dirs", [])}
    lower = {_raw(k): _raw(v) for k, v in record.get("lower_links", {}).items()}
    root = "/" + layer_root(actual)
    entries: list[Entry] = []
    groups: dict[tuple[bytes, int], int] = {}
    root_entry = None
    if record.get("root_defined"):
        r = view.lstat(root).entry
        xattrs = r.xattrs(what=root)
        if b"" in opaque:
            for k in OPAQUE_XATTRS:
                xattrs.pop(k, None)
        root_entry = Entry(path=b"", kind=Kind.DIR, mode=stat.S_IMODE(r.mode), uid=r.uid,
                           gid=r.gid, mtime=r.mtime, mtimens=r.mtimens, xattrs=xattrs or None)
    for dirpath, dirs, files in view.walk(root):
        rel_dir = os.fsencode(dirpath)[len(root) + 1:]
        for s in sorted(dirs + files, key=lambda s: s.entry.name):
            e = s.entry
            rel = rel_dir + b"/" + e.name if rel_dir else e.name
            if rel in whiteouts or (rel in implied and e.is_dir):
                continue
            xattrs = e.xattrs(what=s.path)
            if rel in opaque:
                for k in OPAQUE_XATTRS:
                    xattrs.pop(k, None)
            common = dict(path=rel, mode=stat.S_IMODE(e.mode), uid=e.uid, gid=e.gid,
                          mtime=e.mtime, mtimens=e.mtimens, xattrs=xattrs or None)
            if rel in lower:
                entries.append(Entry(kind=Kind.HARDLINK, target=lower[rel], **common))
            elif e.is_dir:
                entries.append(Entry(kind=Kind.DIR, **common))
            elif e.is_symlink:
                entries.append(Entry(kind=Kind.SYMLINK, target=e.symlink, size=len(e.symlink),
                                     **common))
            elif e.is_special:
                kind = {"chardev": Kind.CHAR, "blockdev": Kind.BLOCK, "fifo": Kind.FIFO}.get(
                    e.file_type)
                if kind is None:
                    continue
                entries.append(Entry(kind=kind, rdev=e.rdev, **common))
            else:
                chunks = tuple(view.chunks(s.path)) if e.is_chunked else None
                content: Future[Ingested] = Future()
                content.set_result(Ingested(e.size, e.hash, chunks, e.compression,
                                            e.hash_algorithm))
                link = None
                if e.hardlink_group:
                    link = groups.setdefault((rel_dir, e.hardlink_group), len(groups) + 1)
                entries.append(Entry(kind=Kind.FILE, size=e.size, content=content, link=link,
                                     **common))
    return LayerChanges(whiteouts=sorted(whiteouts), opaque=sorted(opaque), entries=entries,
                        diff_id=record["diff_id"], compressed_digest=layer_digest,
                        uncompressed_size=int(record.get("uncompressed_size", 0)),
                        warnings=[], root=root_entry)
