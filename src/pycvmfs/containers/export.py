"""Writing a published image back out as a standard OCI image layout with one flattened layer."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat as _stat
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.client.stat import Stat
from pycvmfs.client.view import RevisionView
from pycvmfs.containers.apptainer import SINGULARITY_DIR, apptainer_files
from pycvmfs.containers.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST
from pycvmfs.containers.model import parse_json, sha256_digest
from pycvmfs.errors import ContainerError, CvmfsError

__all__ = ["CATALOG_MARKERS", "GENERATED_ENTRIES", "LAYER_MEDIA_TYPE", "REF_NAME",
           "ExportResult", "export_oci", "open_tar_stream", "tar_member"]

#: what the publisher adds to a flat tree for Apptainer only (``exclude=GENERATED_ENTRIES``):
#: ``.singularity.d`` and the symlinks at the root (the mount points and ``etc/hosts`` it adds
#: when an image lacks them cannot be told from the image's own and stay)
GENERATED_ENTRIES = tuple(e.path for e in apptainer_files({})
                          if e.path == SINGULARITY_DIR or e.kind == "symlink")
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
HISTORY_BY = "pycvmfs container export"
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_BLOCK = 1 << 20
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: the publisher's nested-catalog markers: not part of any image, never exported
CATALOG_MARKERS = (b".cvmfscatalog", b".cvmfsautocatalog")
_SPECIAL_TYPES = {"fifo": tarfile.FIFOTYPE, "chardev": tarfile.CHRTYPE,
                  "blockdev": tarfile.BLKTYPE}


@dataclass
class ExportResult:
    """What :func:`export_oci` wrote: digests and sizes of the three blobs, and counts."""

    dest: str
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str
    layer_size: int  # gzip bytes (the blob)
    tar_size: int  # uncompressed tar bytes (what the DiffID hashes)
    entries: int  # tar members written
    excluded: int  # top-level entries left out (``exclude``)
    warnings: list[str] = field(default_factory=list)


def export_oci(view: RevisionView, image_dir: str, dest: str | os.PathLike, tag: str, *,
               config_bytes: bytes, exclude: Sequence[str] = (), created: str | None = None,
               compresslevel: int = 6) -> ExportResult:
    """Write the tree at ``image_dir`` of ``view`` as an OCI image layout at ``dest`` named
    ``tag``: one gzip layer, a config (``config_bytes`` with ``rootfs.diff_ids`` replaced by the
    new layer's DiffID, the old history marked ``empty_layer`` and one entry added), a manifest.

    The layer is a deterministic PAX tar: members in walk order (each directory's entries sorted
    by name, before its subdirectories' contents), numeric owners only, permission bits with
    setuid/setgid/sticky, catalog mtimes (nanoseconds as PAX ``mtime``), symlink targets as
    stored, hard-link groups as tar hard links to the first name, devices and FIFOs, ``user.*``
    xattrs as ``SCHILY.xattr``; sockets are left out with a warning, nested-catalog markers
    (``.cvmfscatalog``, ``.cvmfsautocatalog``) always. It is streamed through
    zlib (gzip header mtime 0) into a temporary file while both streams are hashed, so the
    same tree gives byte-identical blobs. ``exclude`` names paths relative to ``image_dir``
    (with their subtrees) to leave out, e.g. :data:`GENERATED_ENTRIES`. ``created`` (RFC 3339)
    dates the added history entry; by default the config's own ``created``.

    ``dest`` must not exist or be an empty directory; on any error what was written there is
    removed again.
    """
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise ContainerError(f"export tag {tag!r} is not a tag ([A-Za-z0-9_][A-Za-z0-9._-]*, "
                             "at most 128 characters)")
    config = parse_json(config_bytes, f"image config of {image_dir}")
    try:
        top = view.stat(image_dir)
    except CvmfsError as e:
        raise ContainerError(f"export {image_dir}: {e}") from None
    if not top.is_dir:
        raise ContainerError(f"export {image_dir}: not a directory in the repository")
    root = Path(dest)
    created_dest = _prepare_dest(root)
    blobs = root / "blobs" / "sha256"
    try:
        blobs.mkdir(parents=True)
        result = _write_layout(view, top, root, blobs, tag, config, exclude, created,
                               compresslevel)
    except BaseException:
        _undo(root, created_dest)
        raise
    return result


def _write_layout(view: RevisionView, top: Stat, root: Path, blobs: Path, tag: str,
                  config: dict, exclude: Sequence[str], created: str | None,
                  level: int) -> ExportResult:
    layer = _write_layer(view, top, blobs, exclude, level)
    config_doc = _new_config(config, layer.diff_id, created)
    config_digest = _write_blob(blobs, config_doc)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                           "size": len(config_doc)},
                "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest,
                            "size": layer.blob_size}]}
    manifest_doc = _json(manifest)
    manifest_digest = _write_blob(blobs, manifest_doc)
    entry = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_doc),
             "annotations": {REF_NAME: tag}}
    platform = {k: config[k] for k in ("os", "architecture", "variant")
                if isinstance(config.get(k), str) and config[k]}
    if "os" in platform and "architecture" in platform:
        entry["platform"] = platform
    _write_file(root / "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    _write_file(root / "index.json", _json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": [entry]}))
    return ExportResult(str(root), tag, manifest_digest, config_digest, layer.digest,
                        layer.diff_id, layer.blob_size, layer.tar_size, layer.entries,
                        layer.excluded, layer.warnings)


def _new_config(config: dict, diff_id: str, created: str | None) -> bytes:
    """The config of the exported image: one layer, the history saying where it came from."""
    out = dict(config)
    out["rootfs"] = {"type": "layers", "diff_ids": [diff_id]}
    old = config.get("history")
    history = [dict(h, empty_layer=True) for h in old if isinstance(h, dict)] \
        if isinstance(old, list) else []
    when = created if created is not None else config.get("created")
    added = {"created_by": HISTORY_BY,
             "comment": "the published root file system as one layer"}
    if isinstance(when, str):
        added = {"created": when, **added}
    out["history"] = [*history, added]
    return _json(out)


# -- the layer --------------------------------------------------------------------------------

class _HashingGzip:
    """A write-only stream for ``tarfile``: hashes the tar bytes (DiffID), gzips them with zlib
    and hashes and writes the compressed bytes (the blob digest) to ``out``."""

    def __init__(self, out, level: int) -> None:
        self.out = out
        self.tar_hash, self.blob_hash = hashlib.sha256(), hashlib.sha256()
        self.tar_size = self.blob_size = 0
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, 31)  # gzip framing, mtime 0

    def write(self, data: bytes) -> int:
        self.tar_hash.update(data)
        self.tar_size += len(data)
        self._emit(self._zlib.compress(data))
        return len(data)

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob_hash.update(data)
            self.blob_size += len(data)
            self.out.write(data)

    def finish(self) -> None:
        self._emit(self._zlib.flush())


@dataclass
class _Layer:
    digest: str
    diff_id: str
    blob_size: int
    tar_size: int
    entries: int
    excluded: int
    warnings: list[str]


def _write_layer(view: RevisionView, top: Stat, blobs: Path, exclude: Sequence[str],
                 level: int) -> _Layer:
    tmp = blobs / ".layer.tmp"
    fd = os.open(tmp, _NEW_FILE, 0o644)
    with open(fd, "wb") as out:
        sink = _HashingGzip(out, level)
        members = _Members(view, top, exclude)
        with open_tar_stream(sink) as tar:
            members.write(tar)
        sink.finish()
        out.flush()
        os.fsync(out.fileno())
    digest = "sha256:" + sink.blob_hash.hexdigest()
    os.rename(tmp, blobs / digest[7:])
    return _Layer(digest, "sha256:" + sink.tar_hash.hexdigest(), sink.blob_size,
                  sink.tar_size, members.count, members.excluded, members.warnings)


class _Members:
    """The tar members of a tree of the view, written in a fixed order."""

    def __init__(self, view: RevisionView, top: Stat, exclude: Sequence[str]) -> None:
        self.view, self.top = view, top
        self.exclude = {os.fsencode(p).strip(b"/") for p in exclude}
        self.count = self.excluded = 0
        self.warnings: list[str] = []
        self._first_of_group: dict[tuple[str, int], str] = {}

    def _relative(self, s: Stat) -> bytes:
        return os.fsencode(s.path)[len(os.fsencode(self.top.path)):].strip(b"/")

    def _excluded(self, rel: bytes) -> bool:
        return any(rel == ex or rel.startswith(ex + b"/") for ex in self.exclude)

    def write(self, tar: tarfile.TarFile) -> None:
        for dirpath, dirs, others in self.view.walk(self.top.path):
            kept = [s for s in dirs if not self._excluded(self._relative(s))]
            self.excluded += len(dirs) - len(kept)
            dirs[:] = kept  # the walk does not descend into excluded directories
            others = [s for s in others if s.entry.name not in CATALOG_MARKERS]
            children = kept + [s for s in others if not self._excluded(self._relative(s))]
            self.excluded += len(others) - (len(children) - len(kept))
            for s in sorted(children, key=lambda c: c.entry.name):
                self._add(tar, dirpath, s)

    def _add(self, tar: tarfile.TarFile, dirpath: str, s: Stat) -> None:
        e = s.entry
        xattrs = None
        if e.xattr_blob is not None:
            xattrs = {k: v for k, v in e.xattrs(what=s.path).items() if k.startswith(b"user.")}
        ti = tar_member(self._relative(s), mode=e.mode, uid=e.uid, gid=e.gid, mtime=e.mtime,
                        mtimens=e.mtimens, xattrs=xattrs)
        name = ti.name
        content = None
        if s.is_dir:
            ti.type = tarfile.DIRTYPE
        elif s.is_symlink:
            ti.type = tarfile.SYMTYPE
            ti.linkname = (e.symlink or b"").decode("utf-8", "surrogateescape")
        elif s.is_file:
            key = (dirpath, s.hardlink_group)
            first = self._first_of_group.get(key) if s.hardlink_group else None
            if first is not None:
                ti.type, ti.linkname = tarfile.LNKTYPE, first
            else:
                if s.hardlink_group:
                    self._first_of_group[key] = name
                ti.type, ti.size = tarfile.REGTYPE, e.size
                content = self.view.open_stat(s)
        elif s.type in _SPECIAL_TYPES:
            ti.type = _SPECIAL_TYPES[s.type]
            if s.type != "fifo":
                ti.devmajor, ti.devminor = os.major(e.rdev), os.minor(e.rdev)
        else:
            self.warnings.append(f"{s.path}: {s.type} left out (tar has no such member)")
            return
        if content is None:
            tar.addfile(ti)
        else:
            with content:
                try:
                    tar.addfile(ti, content)
                except OSError as err:
                    raise ContainerError(f"export {s.path}: {err}") from None
        self.count += 1


def tar_member(path: bytes, *, mode: int, uid: int, gid: int, mtime: int,
               mtimens: int | None = None, xattrs: dict[bytes, bytes] | None = None,
               ) -> tarfile.TarInfo:
    """A PAX tar member header as pycvmfs writes them (type, size and link set by the caller):
    numeric owners only (no user or group names), permission bits with setuid/setgid/sticky,
    nanoseconds as a PAX ``mtime``, xattrs as ``SCHILY.xattr.*`` in name order; names and
    values that are not UTF-8 go through surrogateescape (tarfile writes them as binary)."""
    ti = tarfile.TarInfo(path.decode("utf-8", "surrogateescape"))
    ti.mode = _stat.S_IMODE(mode)
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    pax: dict[str, str] = {}
    if mtimens:
        pax["mtime"] = f"{mtime}.{mtimens:09d}"
    for k, v in sorted((xattrs or {}).items()):
        pax["SCHILY.xattr." + k.decode("utf-8", "surrogateescape")] = \
            v.decode("utf-8", "surrogateescape")
    ti.pax_headers = pax
    return ti


def open_tar_stream(out: object) -> tarfile.TarFile:
    """A PAX tar writer streaming into ``out`` (anything with ``write``) with 1 MiB copies."""
    return tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                        errors="surrogateescape", copybufsize=_BLOCK)


# -- files of the layout ----------------------------------------------------------------------

def _json(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _write_file(path: Path, data: bytes) -> None:
    with open(os.open(path, _NEW_FILE, 0o644), "wb") as f:
        f.write(data)


def _write_blob(blobs: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    _write_file(blobs / digest[7:], data)
    return digest


def _prepare_dest(root: Path) -> bool:
    """Check ``root`` is absent (then made: True) or an empty directory (False)."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        try:
            root.mkdir(parents=True)
        except OSError as e:
            raise ContainerError(f"{root}: cannot create ({e.strerror})") from None
        return True
    if not _stat.S_ISDIR(st.st_mode):
        raise ContainerError(f"{root}: exists and is not a directory (refusing to write an "
                             "OCI layout there)")
    with os.scandir(root) as it:
        if any(True for _ in it):
            raise ContainerError(f"{root}: exists and is not empty (refusing to write an OCI "
                                 "layout into it)")
    return False


def _undo(root: Path, created: bool) -> None:
    """Remove what an export wrote into ``root`` (all of it: it was empty or absent)."""
    if created:
        shutil.rmtree(root, ignore_errors=True)
        return
    shutil.rmtree(root / "blobs", ignore_errors=True)
    for name in ("oci-layout", "index.json"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / name)
