"""The relocation fallback for packages that cannot be built at their final path: rewrite the
temporary paths a build left in its TEXT files and symlinks, then prove that no build path is
left anywhere (text or binary) — refuse the package loudly otherwise.

:func:`relocate_tree` treats a regular file as text when it holds no NUL byte. Each occurrence
of an old path (the temporary prefix, a dependency's local install dir) becomes its new path
(the final prefix) in one C-speed regular expression pass over the whole file; the file keeps
its mode and modification time (hard links stay linked, the file is rewritten in place).
Symlinks whose targets name an old path are re-made the same way. Binary files are left alone:
a path compiled into a program cannot be patched safely, so :func:`verify_no_build_paths`
scans EVERY file (in large blocks with an overlap, so a path across a block boundary is found)
and raises :class:`~pycvmfs.errors.StackError` naming the first offenders.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import StackError

__all__ = ["Leftover", "find_build_paths", "relocate_tree", "verify_no_build_paths"]

_SNIFF = 64 << 10        # bytes read first: a NUL there means binary, the rest is not read
_BLOCK = 4 << 20         # scan block of verify_no_build_paths


@dataclass(frozen=True)
class Leftover:
    """A build path found in an install tree: the file (relative), the path, and whether the
    file is ``text``, ``binary`` or a ``symlink`` (its target)."""

    file: str
    path: str
    kind: str

    def __str__(self) -> str:
        return f"leftover build path {self.path} in {self.file} ({self.kind})"


def _entries(root: Path) -> Iterator[tuple[str, str]]:
    """(absolute path, relative path) of every entry below ``root`` (each directory's entries
    sorted), symlinks to directories listed but not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        names = sorted(filenames + links)
        for name in names:
            full = os.path.join(dirpath, name)
            yield full, os.path.relpath(full, root)


def _read_text(path: str) -> bytes | None:
    """The whole file if it is text (no NUL byte), else None (a binary is read no further
    than the first NUL-bearing block)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
        if b"\0" in head:
            return None
        rest = f.read()
    if b"\0" in rest:
        return None
    return head + rest


def relocate_tree(root: Path, replacements: Sequence[tuple[str, str]]) -> list[str]:
    """Replace each ``old`` path by its ``new`` one in every text file and symlink target below
    ``root`` (the longest old path wins where one is a prefix of another). Returns the
    relative paths changed, sorted."""
    mapping = {old.encode(): new.encode() for old, new in replacements if old and old != new}
    if not mapping:
        return []
    pattern = re.compile(b"|".join(re.escape(o) for o in sorted(mapping, key=len, reverse=True)))
    changed: list[str] = []
    for full, rel in _entries(Path(root)):
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(full))
            new_target = pattern.sub(lambda m: mapping[m.group(0)], target)
            if new_target != target:
                os.unlink(full)
                os.symlink(new_target, full)
                os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                changed.append(rel)
        elif stat.S_ISREG(st.st_mode):
            data = _read_text(full)
            if data is None or pattern.search(data) is None:
                continue
            new_data = pattern.sub(lambda m: mapping[m.group(0)], data)
            mode = stat.S_IMODE(st.st_mode)
            if not mode & stat.S_IWUSR:
                os.chmod(full, mode | stat.S_IWUSR)
            with open(full, "r+b") as f:
                f.write(new_data)
                f.truncate()
            os.chmod(full, mode)
            os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns))
            changed.append(rel)
    return sorted(changed)


def _scan_file(path: str, needles: Sequence[bytes], block: int) -> tuple[bytes | None, bool]:
    """The first needle found in the file (or None) and whether the file is binary; streamed
    in ``block``-sized reads that overlap by the longest needle."""
    overlap = max(len(n) for n in needles) - 1
    found: bytes | None = None
    binary = False
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(block):
            if not binary and b"\0" in chunk:
                binary = True
            if found is None:
                buf = tail + chunk
                found = next((n for n in needles if n in buf), None)
                tail = buf[-overlap:] if overlap else b""
            if found is not None and binary:
                break
    return found, binary


def find_build_paths(root: Path, paths: Sequence[str], *,
                     block: int = _BLOCK) -> list[Leftover]:
    """Every file and symlink below ``root`` naming one of ``paths`` (sorted by file)."""
    needles = sorted({p.encode() for p in paths if p}, key=len, reverse=True)
    if not needles:
        return []
    found: list[Leftover] = []
    for full, rel in _entries(Path(root)):
        st = os.lstat(full)
        if stat.S_ISLNK(st.st_mode):
            target = os.fsencode(os.readlink(full))
            hit = next((n for n in needles if n in target), None)
            if hit is not None:
                found.append(Leftover(rel, hit.decode(), "symlink"))
        elif stat.S_ISREG(st.st_mode):
            hit, binary = _scan_file(full, needles, block)
            if hit is not None:
                found.append(Leftover(rel, hit.decode(), "binary" if binary else "text"))
    return sorted(found, key=lambda x: x.file)


def verify_no_build_paths(install_dir: Path, paths: Sequence[str], *, limit: int = 5,
                          block: int = _BLOCK) -> None:
    """Raise StackError when any file or symlink below ``install_dir`` still names one of
    ``paths``: ``leftover build path /work/... in bin/prog (binary)``, the first ``limit``
    offenders and how many more."""
    found = find_build_paths(install_dir, paths, block=block)
    if not found:
        return
    text = "; ".join(str(x) for x in found[:limit])
    more = len(found) - limit
    if more > 0:
        text += f"; and {more} more file{'s' if more > 1 else ''}"
    raise StackError(f"{text} (below {install_dir})")
