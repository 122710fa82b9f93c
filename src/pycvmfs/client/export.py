"""Exporting a subtree of a revision to a local directory (``pycvmfs get``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat as _stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.client.stat import Stat
from pycvmfs.client.view import RevisionView
from pycvmfs.errors import CvmfsError

__all__ = ["ExportReport", "export_tree"]

Progress = Callable[[int, int], None]


@dataclass
class ExportReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    special: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def export_tree(view: RevisionView, path: str, dest: str | os.PathLike, *, workers: int = 4,
                raw_symlinks: bool = False, xattrs: bool = True,
                progress: Progress | None = None) -> ExportReport:
    """Write ``path`` of ``view`` to ``dest`` preserving type, mode, mtime, symlinks, hard links
    (members of one hard-link group become hard links) and, where the file system allows, user
    extended attributes. File contents are fetched by a pool of ``workers`` threads."""
    report = ExportReport()
    dest = Path(dest)
    top = view.stat(path)
    if not top.is_dir:
        if dest.is_dir():
            dest = dest / view.lstat(path).name  # the name asked for, not a link's target
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_file(view, top, dest, report)
        report.files += 1
        report.bytes += top.st_size
        return report

    dest.mkdir(parents=True, exist_ok=True)
    dirs: list[tuple[Stat, Path]] = [(top, dest)]
    files: list[tuple[Stat, Path]] = []
    links: dict[tuple, Path] = {}
    pending_links: list[tuple[Path, Path]] = []  # made once the first member is written
    for dirpath, subdirs, others in view.walk(top.path):
        rel = os.path.relpath(dirpath, top.path)
        base = dest if rel == "." else dest / rel
        for d in subdirs:
            target = base / d.name
            target.mkdir(exist_ok=True)
            dirs.append((d, target))
        for s in others:
            target = base / s.name
            _remove_existing(target)
            if s.is_symlink:
                link = s.raw_symlink if raw_symlinks else s.symlink_target
                os.symlink(os.fsdecode(link or b""), target)
                os.utime(target, ns=(s.st_mtime_ns, s.st_mtime_ns), follow_symlinks=False)
                report.symlinks += 1
            elif s.is_file:
                key = (s.hardlink_group, s.st_ino) if s.hardlink_group else None
                if key is not None and key in links:
                    pending_links.append((links[key], target))
                    continue
                if key is not None:
                    links[key] = target
                files.append((s, target))
            else:
                _make_special(s, target, report)
    total = sum(s.st_size for s, _ in files)
    done = 0
    if progress:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for s, _ in zip(files, pool.map(lambda ft: _write_file(view, ft[0], ft[1], report),
                                        files), strict=True):
            done += s[0].st_size
            report.files += 1
            report.bytes += s[0].st_size
            if progress:
                progress(done, total)
    for first, target in pending_links:
        os.link(first, target)
        report.hardlinks += 1
    for s, target in files:
        if xattrs:
            _set_xattrs(view, s, target, report)
    for d, target in reversed(dirs):  # children first, so their writes do not touch the mtime
        if xattrs:
            _set_xattrs(view, d, target, report)
        os.chmod(target, _stat.S_IMODE(d.st_mode))
        os.utime(target, ns=(d.st_mtime_ns, d.st_mtime_ns))
        report.dirs += 1
    return report


def _remove_existing(target: Path) -> None:
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)


def _write_file(view: RevisionView, s: Stat, target: Path, report: ExportReport) -> None:
    tmp = target.with_name(f".{target.name}.pycvmfs-partial")
    try:
        with view.open(s.path) as src, open(tmp, "wb") as out:
            remaining = s.st_size
            while remaining > 0:
                block = src.read(min(remaining, 1 << 20))
                if not block:
                    raise CvmfsError(f"{s.path}: content ended early")
                out.write(block)
                remaining -= len(block)
        os.chmod(tmp, _stat.S_IMODE(s.st_mode))
        os.utime(tmp, ns=(s.st_mtime_ns, s.st_mtime_ns))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _make_special(s: Stat, target: Path, report: ExportReport) -> None:
    try:
        if s.type == "fifo":
            os.mkfifo(target, _stat.S_IMODE(s.st_mode))
        else:
            os.mknod(target, s.st_mode, s.st_rdev)
        os.utime(target, ns=(s.st_mtime_ns, s.st_mtime_ns))
        report.special += 1
    except OSError as e:
        report.warnings.append(f"{s.path}: cannot create {s.type} ({e.strerror})")


def _set_xattrs(view: RevisionView, s: Stat, target: Path, report: ExportReport) -> None:
    if s.entry.xattr_blob is None:
        return
    for name, value in view.xattrs(s.path, follow_symlinks=False).items():
        try:
            os.setxattr(target, name, value, follow_symlinks=False)
        except OSError as e:
            report.warnings.append(f"{s.path}: cannot set xattr {name} ({e.strerror})")
