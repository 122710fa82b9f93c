"""Exporting a subtree of a revision to a local directory (``pycvmfs get``), safely."""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import secrets
import stat as _stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.client.stat import Stat
from pycvmfs.client.view import RevisionView
from pycvmfs.errors import CatalogError, CvmfsError
from pycvmfs.format.catalog import is_path_component

__all__ = ["ExportOptions", "ExportReport", "export_tree"]

Progress = Callable[[int, int], None]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_BLOCK = 1 << 20
# what the scan plans, in the order the writer applies it
_ENTER, _LEAVE, _FILE, _LINK, _SYMLINK, _SPECIAL = range(6)


@dataclass
class ExportReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    special: int = 0
    skipped: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportOptions:
    """What an export recreates beyond contents, modes, mtimes, symlinks and hard links.

    Off by default, as ``tar`` and ``rsync`` have them: setuid/setgid/sticky bits
    (``preserve_setid``), device nodes (``devices``), FIFOs and sockets (``specials``).
    ``xattr_include`` lists ``fnmatch`` patterns of the extended attributes written
    (``user.*``; add ``security.*`` or ``trusted.*`` to write those too), ``xattrs=False`` none.
    """

    raw_symlinks: bool = False
    xattrs: bool = True
    xattr_include: tuple[str, ...] = ("user.*",)
    preserve_setid: bool = False
    devices: bool = False
    specials: bool = False

    def permissions(self, mode: int) -> int:
        return _stat.S_IMODE(mode) if self.preserve_setid else mode & 0o777

    def wanted_xattrs(self, s: Stat) -> list[tuple[bytes, bytes]]:
        if not self.xattrs or s.entry.xattr_blob is None:
            return []
        return [(k, v) for k, v in s.entry.xattrs(what=s.path).items()
                if any(fnmatch.fnmatchcase(os.fsdecode(k), p) for p in self.xattr_include)]


def export_tree(view: RevisionView, path: str, dest: str | os.PathLike, *, workers: int = 4,
                raw_symlinks: bool = False, xattrs: bool = True,
                progress: Progress | None = None,
                options: ExportOptions | None = None) -> ExportReport:
    """Write ``path`` of ``view`` to ``dest``: type, mode, mtime, symlinks, hard links (within a
    directory, as the format has them) and the extended attributes ``options`` allow.

    Every name is checked to be one path component, unique in its directory, before anything is
    written. Writes go through directory descriptors and never follow a link found or made below
    ``dest``: a file, symlink or special already at a name is replaced by a rename, an existing
    directory is merged into, a directory where the repository has a non-directory is an error.
    File contents are fetched by ``workers`` threads into temporary files in ``dest`` (short
    random names created exclusively) and renamed into place; ``progress(done, total)`` gets
    bytes, the total counted before the first download.
    """
    opts = options or ExportOptions(raw_symlinks=raw_symlinks, xattrs=xattrs)
    report = ExportReport()
    dest = Path(dest)
    top = view.stat(path)
    if not top.is_dir:
        _export_file(view, top, view.lstat(path).entry.name, dest, opts, report, progress)
        return report
    events, files = _scan(view, top, opts, report)
    total = sum(s.st_size for s in files)
    dest.mkdir(parents=True, exist_ok=True)
    top_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with _Downloads(view, top_fd, opts, workers, total, progress) as downloads:
            downloads.start(files)
            _Writer(top, dest, top_fd, opts, report).apply(events, downloads)
            report.warnings += downloads.warnings
    finally:
        os.close(top_fd)
    report.bytes = total
    return report


def _export_file(view: RevisionView, s: Stat, link_name: bytes, dest: Path,
                 opts: ExportOptions, report: ExportReport, progress: Progress | None) -> None:
    """One regular file to ``dest`` (a new name, or into ``dest`` if it is a directory)."""
    if dest.is_dir():
        if not is_path_component(link_name):
            raise CatalogError(f"{s.path}: entry name {link_name!r} is not a file name")
        parent, name = dest, link_name
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        parent, name = dest.parent, os.fsencode(dest.name)
    parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with _Downloads(view, parent_fd, opts, 1, s.st_size, progress) as downloads:
            downloads.start([s])
            tmp = downloads.next_temp()
            _rename_into(parent_fd, tmp, parent_fd, name, parent / os.fsdecode(name), s)
            downloads.placed(tmp)
            report.warnings += downloads.warnings
    finally:
        os.close(parent_fd)
    report.files, report.bytes = 1, s.st_size


def _scan(view: RevisionView, top: Stat, opts: ExportOptions,
          report: ExportReport) -> tuple[list[tuple], list[Stat]]:
    """The plan: (op, stat, name, detail) in write order (a directory's own entries, then its
    subdirectories, then leaving it), and the files whose contents are downloaded. Refuses a
    name that is not one path component, or is twice in a directory, before any write."""
    events: list[tuple] = []
    files: list[Stat] = []
    entered: list[str] = []  # the directories entered and not left yet
    names: dict[str, tuple[Stat, bytes]] = {top.path: (top, b"")}
    for dirpath, subdirs, others in view.walk(top.path):
        d, name = names.pop(dirpath)
        parent = dirpath[:dirpath.rfind("/")] or "/"
        while entered and entered[-1] != parent:
            entered.pop()
            events.append((_LEAVE, None, b"", None))
        entered.append(dirpath)
        events.append((_ENTER, d, name, None))
        seen: set[bytes] = set()
        for c in subdirs + others:
            n = c.entry.name
            if not is_path_component(n):
                raise CatalogError(f"{dirpath}: entry name {n!r} is not a single path "
                                   "component (refusing to export it)")
            if n in seen:
                raise CatalogError(f"{dirpath}: entry name {n!r} appears twice (refusing to "
                                   "export it)")
            seen.add(n)
        for c in subdirs:
            names[c.path] = (c, c.entry.name)
        first_of_group: dict[int, bytes] = {}
        for c in others:
            n = c.entry.name
            if c.is_symlink:
                target = c.raw_symlink if opts.raw_symlinks else c.symlink_target
                events.append((_SYMLINK, c, n, target or b""))
            elif c.is_file:
                group = c.hardlink_group
                if group and group in first_of_group:
                    events.append((_LINK, c, n, first_of_group[group]))
                    continue
                if group:
                    first_of_group[group] = n
                events.append((_FILE, c, n, None))
                files.append(c)
            elif opts.devices if c.type in ("chardev", "blockdev") else opts.specials:
                events.append((_SPECIAL, c, n, None))
            else:
                report.skipped += 1
                flag = "--devices" if c.type in ("chardev", "blockdev") else "--specials"
                report.warnings.append(f"{c.path}: {c.type} skipped (use {flag})")
    events.extend((_LEAVE, None, b"", None) for _ in entered)
    return events, files


def _temp_name() -> bytes:
    return b".pycvmfs-" + secrets.token_hex(6).encode() + b".tmp"


def _make_temp(make: Callable[[bytes], object]) -> tuple[bytes, object]:
    """Run ``make(name)`` with fresh random names until one did not exist (it must fail with
    EEXIST on an existing name: O_EXCL, mkdir, symlink, link, mknod)."""
    for _ in range(100):
        name = _temp_name()
        try:
            return name, make(name)
        except FileExistsError:
            continue
    raise CvmfsError("cannot find a free temporary name (100 tries)")


def _rename_into(src_fd: int, tmp: bytes, dir_fd: int, name: bytes, shown: Path,
                 s: Stat) -> None:
    try:
        os.rename(tmp, name, src_dir_fd=src_fd, dst_dir_fd=dir_fd)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=src_fd)
        if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise CvmfsError(f"{shown}: a directory is in the way of {s.type} {s.path} "
                             "(remove it first)") from None
        raise


class _Downloads:
    """File contents fetched by a thread pool into exclusive temporary files in ``dir_fd``,
    with mode, mtime and extended attributes already set; temporaries not placed are removed."""

    def __init__(self, view: RevisionView, dir_fd: int, opts: ExportOptions, workers: int,
                 total: int, progress: Progress | None) -> None:
        self.view, self.dir_fd, self.opts = view, dir_fd, opts
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers))
        self.total, self.done, self.progress = total, 0, progress
        self.lock = threading.Lock()
        self.temps: set[bytes] = set()
        self.warnings: list[str] = []
        if progress:
            progress(0, total)

    def __enter__(self) -> _Downloads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for tmp in self.temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=self.dir_fd)

    def start(self, files: Sequence[Stat]) -> None:
        """Download ``files`` (in this order: :meth:`next_temp` hands them out so)."""
        self.results: Iterator[bytes] = self.pool.map(self._download, files)

    def next_temp(self) -> bytes:
        """The temporary name of the next file's content, once it is written."""
        return next(self.results)

    def placed(self, tmp: bytes) -> None:
        with self.lock:
            self.temps.discard(tmp)

    def _advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.progress:
                self.progress(self.done, self.total)

    def _download(self, s: Stat) -> bytes:
        def create(name: bytes) -> int:
            return os.open(name, _TEMP_FLAGS, 0o600, dir_fd=self.dir_fd)

        tmp, fd = _make_temp(create)
        with self.lock:
            self.temps.add(tmp)
        with open(fd, "wb", buffering=0) as out, self.view.open_stat(s) as src:
            remaining = s.st_size
            while remaining > 0:
                block = src.read(min(remaining, _BLOCK))
                if not block:
                    raise CvmfsError(f"{s.path}: content ended early")
                out.write(block)
                remaining -= len(block)
                self._advance(len(block))
            _set_xattrs(fd, self.opts.wanted_xattrs(s), s, self.warnings, self.lock)
            os.fchmod(fd, self.opts.permissions(s.st_mode))
            os.utime(fd, ns=(s.st_mtime_ns, s.st_mtime_ns))
        return tmp


def _set_xattrs(fd: int, attrs: list[tuple[bytes, bytes]], s: Stat, warnings: list[str],
                lock: threading.Lock | None = None) -> None:
    for name, value in attrs:
        try:
            os.setxattr(fd, name, value)
        except OSError as e:
            with lock or contextlib.nullcontext():
                warnings.append(f"{s.path}: cannot set xattr {os.fsdecode(name)} ({e.strerror})")


class _Writer:
    """Applies a scan's plan below ``top_fd``, holding one directory descriptor at a time (the
    way back up is ``..``, checked against the device and inode recorded on the way down)."""

    def __init__(self, top: Stat, dest: Path, top_fd: int, opts: ExportOptions,
                 report: ExportReport) -> None:
        self.top, self.dest, self.top_fd = top, dest, top_fd
        self.opts, self.report = opts, report
        self.cur = -1
        # the directories entered and not left: stat, (st_dev, st_ino) of what was opened
        self.ids: list[tuple[Stat, tuple[int, int]]] = []

    def shown(self, s: Stat) -> Path:
        return self.dest / os.path.relpath(s.path, self.top.path)

    def apply(self, events: list[tuple], downloads: _Downloads) -> None:
        s = self.top
        try:
            for op, s, name, detail in events:
                if op == _ENTER:
                    self.enter(s, name)
                elif op == _LEAVE:
                    s = self.ids[-1][0]
                    self.leave()
                elif op == _FILE:
                    tmp = downloads.next_temp()
                    _rename_into(self.top_fd, tmp, self.cur, name, self.shown(s), s)
                    downloads.placed(tmp)
                    self.report.files += 1
                else:
                    self.make_other(op, s, name, detail)
        except CvmfsError:
            raise
        except OSError as e:  # its file name would be a temporary or a bare relative name
            raise CvmfsError(f"{self.shown(s)}: cannot export {s.type} {s.path} "
                             f"({e.strerror or e})") from None
        finally:
            if self.cur >= 0:
                os.close(self.cur)

    def enter(self, s: Stat, name: bytes) -> None:
        if not self.ids:
            fd = os.dup(self.top_fd)
        else:
            try:
                os.mkdir(name, 0o700, dir_fd=self.cur)
            except FileExistsError:
                st = os.stat(name, dir_fd=self.cur, follow_symlinks=False)
                if not _stat.S_ISDIR(st.st_mode):  # a file or a link there: replaced, not followed
                    os.unlink(name, dir_fd=self.cur)
                    os.mkdir(name, 0o700, dir_fd=self.cur)
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.cur)
            os.close(self.cur)
        st = os.fstat(fd)
        self.ids.append((s, (st.st_dev, st.st_ino)))
        self.cur = fd

    def leave(self) -> None:
        fd = self.cur
        s = self.ids[-1][0]
        _set_xattrs(fd, self.opts.wanted_xattrs(s), s, self.report.warnings)
        os.fchmod(fd, self.opts.permissions(s.st_mode))
        os.utime(fd, ns=(s.st_mtime_ns, s.st_mtime_ns))
        self.report.dirs += 1
        self.ids.pop()
        if not self.ids:
            return
        parent = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        st = os.fstat(parent)
        if (st.st_dev, st.st_ino) != self.ids[-1][1]:
            os.close(parent)
            raise CvmfsError(f"{self.shown(s)}: moved while exporting (its parent changed)")
        os.close(fd)
        self.cur = parent

    def make_other(self, op: int, s: Stat, name: bytes, detail: bytes | None) -> None:
        cur = self.cur
        if op == _LINK:
            def make(tmp: bytes) -> None:
                os.link(detail, tmp, src_dir_fd=cur, dst_dir_fd=cur, follow_symlinks=False)
        elif op == _SYMLINK:
            def make(tmp: bytes) -> None:
                os.symlink(detail, tmp, dir_fd=cur)
        elif s.type == "fifo":
            def make(tmp: bytes) -> None:
                os.mkfifo(tmp, self.opts.permissions(s.st_mode), dir_fd=cur)
        else:
            def make(tmp: bytes) -> None:
                os.mknod(tmp, _stat.S_IFMT(s.st_mode) | self.opts.permissions(s.st_mode),
                         s.st_rdev, dir_fd=cur)
        try:
            tmp, _ = _make_temp(make)
        except OSError as e:
            if op != _SPECIAL:
                raise
            self.report.warnings.append(f"{s.path}: cannot create {s.type} ({e.strerror})")
            return
        if op == _SPECIAL:  # made just now, exclusively, by us: not a link (the umask undone)
            os.chmod(tmp, self.opts.permissions(s.st_mode), dir_fd=cur)
        if op != _LINK:
            os.utime(tmp, ns=(s.st_mtime_ns, s.st_mtime_ns), dir_fd=cur, follow_symlinks=False)
        _rename_into(cur, tmp, cur, name, self.shown(s), s)
        if op == _LINK:
            self.report.hardlinks += 1
        elif op == _SYMLINK:
            self.report.symlinks += 1
        else:
            self.report.special += 1
