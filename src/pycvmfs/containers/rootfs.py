"""A root file system directory read as a single-layer image: entries, contents and a DiffID."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform as _platform
import stat as _stat
import tarfile
from collections.abc import Callable
from concurrent.futures import Future
from typing import BinaryIO, Protocol

from pycvmfs.containers.export import open_tar_stream, tar_member
from pycvmfs.containers.layer import Entry, Kind, LayerChanges
from pycvmfs.containers.mediatypes import OCI_CONFIG, OCI_MANIFEST
from pycvmfs.containers.model import Platform, sha256_digest
from pycvmfs.errors import ContainerError, CvmfsError
from pycvmfs.publish.ingest import Ingested, Scanned, scanned

__all__ = ["DEFAULT_PATH", "ROOTFS_LAYER_TYPE", "PathSink", "host_platform", "scan_rootfs",
           "synthesize_image"]

#: the layer media type of a synthesised image: the (uncompressed) tar its DiffID hashes
ROOTFS_LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = {_stat.S_IFDIR: Kind.DIR, _stat.S_IFREG: Kind.FILE, _stat.S_IFLNK: Kind.SYMLINK,
          _stat.S_IFCHR: Kind.CHAR, _stat.S_IFBLK: Kind.BLOCK, _stat.S_IFIFO: Kind.FIFO}
_TAR_TYPES = {Kind.DIR: tarfile.DIRTYPE, Kind.FILE: tarfile.REGTYPE,
              Kind.SYMLINK: tarfile.SYMTYPE, Kind.CHAR: tarfile.CHRTYPE,
              Kind.BLOCK: tarfile.BLKTYPE, Kind.FIFO: tarfile.FIFOTYPE}
#: platform.machine() -> (OCI architecture, variant)
_ARCHITECTURES = {"x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"),
                  "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
                  "i386": ("386", ""), "i686": ("386", ""), "ppc64le": ("ppc64le", ""),
                  "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
                  "mips64": ("mips64le", ""), "loongarch64": ("loong64", "")}


class PathSink(Protocol):
    """Where file contents go (``pycvmfs.publish.ingest.Ingester`` is one): the file at
    ``path`` is read only if it is still the one ``seen`` describes."""

    def submit_path(self, path: str | os.PathLike, size: int | None = None, *,
                    seen: Scanned | None = None) -> Future[Ingested]: ...


def _keep_xattr(name: bytes) -> bool:
    """The extended attributes a layer keeps too (``layer.read_layer``): user.*, trusted.*
    except the overlay's own, security.capability."""
    return (name.startswith((b"user.", b"trusted.")) and not name.startswith(b"trusted.overlay.")
            ) or name == b"security.capability"


class _HashingWriter:
    """Counts and hashes a tar stream, passing it on to ``out`` when there is one."""

    def __init__(self, out: BinaryIO | None) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)


class _Scan:
    def __init__(self, root: str, sink: PathSink, keep_xattrs: bool,
                 tar: tarfile.TarFile) -> None:
        self.root, self.sink, self.keep_xattrs, self.tar = root, sink, keep_xattrs, tar
        self.entries: list[Entry] = []
        self.warnings: list[str] = []
        self.device = 0
        # (st_dev, st_ino) of a file with several names -> (link group, its Entry, tar name)
        self.groups: dict[tuple[int, int], tuple[int, Entry, str]] = {}

    def shown(self, rel: bytes) -> str:
        return os.path.join(self.root, os.fsdecode(rel))

    def xattrs(self, dir_fd: int, name: bytes, kind: Kind) -> dict[bytes, bytes] | None:
        if not self.keep_xattrs or kind == Kind.SYMLINK:
            return None
        # through the directory descriptor: the name is looked up in the directory scanned
        # and its final component not followed, wherever the tree is moved meanwhile
        path = b"/proc/self/fd/%d/%s" % (dir_fd, name)
        try:
            names = [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=False)]
            out = {n: os.getxattr(path, n, follow_symlinks=False)
                   for n in sorted(names) if _keep_xattr(n)}
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            raise
        return out or None

    def directory(self, fd: int, rel: bytes) -> None:
        """Add the entries of the open directory ``fd`` (at ``rel``), then its subdirectories'."""
        with os.scandir(fd) as it:
            names = sorted(os.fsencode(d.name) for d in it)
        subdirs = []
        for name in names:
            path = rel + b"/" + name if rel else name
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            kind = _KINDS.get(_stat.S_IFMT(st.st_mode))
            if kind is None:
                self.warnings.append(f"{self.shown(path)}: socket left out (images hold none)")
                continue
            if kind == Kind.DIR and st.st_dev != self.device:
                self.warnings.append(f"{self.shown(path)}: another file system mounted here, "
                                     "left out")
                continue
            entry = Entry(path, kind, _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                          st.st_mtime_ns // 1_000_000_000, st.st_mtime_ns % 1_000_000_000,
                          xattrs=self.xattrs(fd, name, kind))
            if kind == Kind.SYMLINK:
                entry.target = os.readlink(name, dir_fd=fd)
            elif kind in (Kind.CHAR, Kind.BLOCK):
                entry.rdev = st.st_rdev
            self.entries.append(entry)
            if kind == Kind.FILE:
                self.file(fd, name, entry, st)
            else:
                self.add_member(entry)
            if kind == Kind.DIR:
                subdirs.append((name, path, st))
        for name, path, st in subdirs:
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            try:
                got = os.fstat(sub)
                if (got.st_dev, got.st_ino) != (st.st_dev, st.st_ino):
                    raise ContainerError(f"{self.shown(path)}: replaced while it was read")
                self.directory(sub, path)
            finally:
                os.close(sub)

    def add_member(self, entry: Entry, *, linkname: str = "",
                   content: Callable[[], BinaryIO] | None = None) -> str:
        ti = tar_member(entry.path, mode=entry.mode, uid=entry.uid, gid=entry.gid,
                        mtime=entry.mtime, mtimens=entry.mtimens, xattrs=entry.xattrs)
        ti.type = tarfile.LNKTYPE if linkname else _TAR_TYPES[entry.kind]
        ti.linkname = linkname or os.fsdecode(entry.target)
        if entry.kind in (Kind.CHAR, Kind.BLOCK):
            ti.devmajor, ti.devminor = os.major(entry.rdev), os.minor(entry.rdev)
        if content is None:
            self.tar.addfile(ti)
            return ti.name
        ti.size = entry.size
        with content() as f:
            self.tar.addfile(ti, f)
        return ti.name

    def file(self, dir_fd: int, name: bytes, entry: Entry, st: os.stat_result) -> None:
        entry.size = st.st_size
        key = (st.st_dev, st.st_ino)
        group = self.groups.get(key) if st.st_nlink > 1 else None
        if group is not None:
            link, first, first_name = group
            entry.link, entry.content = link, first.content
            self.add_member(entry, linkname=first_name)
            return
        entry.content = self.sink.submit_path(self.shown(entry.path),
                                              seen=scanned(st))

        def opened() -> BinaryIO:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            got = os.fstat(fd)
            if scanned(got) != scanned(st):
                os.close(fd)
                raise ContainerError(f"{self.shown(entry.path)}: changed while it was read")
            return open(fd, "rb", buffering=0)

        tar_name = self.add_member(entry, content=opened)
        if st.st_nlink > 1:
            entry.link = len(self.groups) + 1
            self.groups[key] = (entry.link, entry, tar_name)


def scan_rootfs(root: str | os.PathLike, sink: PathSink, *, keep_xattrs: bool = True,
                tar_out: BinaryIO | None = None) -> LayerChanges:
    """The directory ``root`` as the one layer of an image, in the form ``layer.read_layer``
    gives a layer (no whiteouts; ``root`` holds the top directory's own attributes).

    The walk goes through directory descriptors and never follows a symlink (``O_NOFOLLOW``,
    ``lstat``): nothing outside ``root`` is read, and a directory or file swapped while it is
    read is refused. Names are sorted bytewise per directory; a directory's entries come before
    its subdirectories' contents. Regular files go to ``sink.submit_path(path, seen=...)`` (read
    only if still the file scanned); names of one inode (hard links, across directories too)
    share one content and one ``link`` group. Devices, FIFOs, owners, setuid/setgid/sticky,
    nanosecond mtimes and the xattrs a layer keeps (user.*, trusted.* but trusted.overlay.*,
    security.capability; none with ``keep_xattrs=False``) are recorded; sockets and other file
    systems mounted inside are left out with a warning.

    The DiffID is the sha256 of a deterministic PAX tar of the tree (the conventions of
    ``export.tar_member``; later names of an inode as hard links to the first) streamed while
    walking: file contents are read a second time for it, nothing is stored. ``tar_out``
    receives that tar when given. ``compressed_digest`` equals the DiffID (the layer of a
    synthesised image is that uncompressed tar).
    """
    top = os.fspath(root)
    try:
        fd = os.open(top, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the top as named; nothing below
    except OSError as e:
        raise ContainerError(f"{top}: cannot open the root file system directory "
                             f"({e.strerror})") from None
    writer = _HashingWriter(tar_out)
    try:
        st = os.fstat(fd)
        with open_tar_stream(writer) as tar:
            scan = _Scan(top, sink, keep_xattrs, tar)
            scan.device = st.st_dev
            scan.directory(fd, b"")
            root_entry = Entry(b"", Kind.DIR, _stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                               st.st_mtime_ns // 1_000_000_000, st.st_mtime_ns % 1_000_000_000,
                               xattrs=scan.xattrs(fd, b".", Kind.DIR))
    except CvmfsError:
        raise
    except RecursionError:
        raise ContainerError(f"{top}: directories nested too deeply to scan") from None
    except OSError as e:
        what = f" {os.fsdecode(e.filename)}" if e.filename else ""
        raise ContainerError(f"{top}: cannot read{what} ({e.strerror or e})") from None
    finally:
        os.close(fd)
    diff_id = "sha256:" + writer.hash.hexdigest()
    return LayerChanges([], [], scan.entries, diff_id, diff_id, writer.size, scan.warnings,
                        root=root_entry)


def host_platform() -> Platform:
    """This machine's platform in OCI terms (``platform.machine()`` mapped: x86_64 -> amd64,
    aarch64 -> arm64/v8, ...); an unknown machine name is refused."""
    machine = _platform.machine().lower()
    try:
        arch, variant = _ARCHITECTURES[machine]
    except KeyError:
        raise ContainerError(f"machine type {machine!r} has no OCI architecture name here "
                             "(give the platform explicitly)") from None
    return Platform("linux", arch, variant)


def synthesize_image(layer: LayerChanges, name: str, created: str, *,
                     platform: Platform | None = None,
                     runtime: dict | None = None) -> tuple[bytes, bytes]:
    """Config and manifest bytes (compact JSON, sorted keys: the same input, the same digests)
    of a single-layer image made from a scanned directory (:func:`scan_rootfs`).

    The config carries the platform (default: this host's), ``runtime`` as its ``config``
    object (default: ``Env`` with a standard ``PATH``), ``rootfs.diff_ids = [layer.diff_id]``,
    ``created`` (RFC 3339) and one history entry. ``name`` goes into the manifest only (the
    ``org.opencontainers.image.title`` annotation), so one tree published under two names has
    one config digest, hence one flat tree. The manifest's layer is the uncompressed tar
    (``ROOTFS_LAYER_TYPE``, digest = DiffID, size = its length)."""
    plat = platform or host_platform()
    config: dict = {"architecture": plat.architecture, "os": plat.os, "created": created,
                    "config": runtime if runtime is not None else {"Env": [DEFAULT_PATH]},
                    "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
                    "history": [{"created": created,
                                 "created_by": "pycvmfs container import-rootfs"}]}
    if plat.variant:
        config["variant"] = plat.variant
    config_bytes = _json(config)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config_bytes),
                           "size": len(config_bytes)},
                "layers": [{"mediaType": ROOTFS_LAYER_TYPE, "digest": layer.diff_id,
                            "size": layer.uncompressed_size}],
                "annotations": {"org.opencontainers.image.title": name}}
    return config_bytes, _json(manifest)


def _json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
