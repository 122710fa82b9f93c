"""What the reader reports for a path: POSIX-style attributes of one directory entry."""

from __future__ import annotations

import os
import stat as _stat
from dataclasses import dataclass

from pycvmfs.format.compression import Compression
from pycvmfs.format.dirent import DirectoryEntry
from pycvmfs.format.hashes import ContentHash

__all__ = ["Stat"]


@dataclass(frozen=True, slots=True)
class Stat:
    """A path's attributes as a client shows them (``st_*`` names for ``os.stat_result`` habits).

    ``path`` is relative to the repository root with a leading ``/`` (``/`` for the root).
    """

    path: str
    entry: DirectoryEntry
    ino: int
    symlink_target: bytes | None  # expanded (variant symlinks resolved); None if not a link

    @property
    def name(self) -> str:
        return os.fsdecode(self.entry.name)

    @property
    def type(self) -> str:
        return self.entry.file_type

    @property
    def st_mode(self) -> int:
        return self.entry.mode

    @property
    def permissions(self) -> int:
        return _stat.S_IMODE(self.entry.mode)

    @property
    def st_size(self) -> int:
        e = self.entry
        if e.is_symlink:
            return len(self.symlink_target or b"")
        if e.is_special:
            return 0
        return e.size

    @property
    def st_mtime(self) -> int:
        return self.entry.mtime

    @property
    def st_mtime_ns(self) -> int:
        return self.entry.mtime * 1_000_000_000 + (self.entry.mtimens or 0)

    @property
    def st_nlink(self) -> int:
        return self.entry.linkcount

    @property
    def st_uid(self) -> int:
        return self.entry.uid

    @property
    def st_gid(self) -> int:
        return self.entry.gid

    @property
    def st_ino(self) -> int:
        return self.ino

    @property
    def st_rdev(self) -> int:
        return self.entry.rdev

    @property
    def st_blocks(self) -> int:
        return 1 + self.st_size // 512

    @property
    def hash(self) -> ContentHash | None:
        return self.entry.hash

    @property
    def compression(self) -> Compression:
        return self.entry.compression

    @property
    def is_dir(self) -> bool:
        return self.entry.is_dir

    @property
    def is_file(self) -> bool:
        return self.entry.is_regular

    @property
    def is_symlink(self) -> bool:
        return self.entry.is_symlink

    @property
    def is_special(self) -> bool:
        return self.entry.is_special

    @property
    def is_chunked(self) -> bool:
        return self.entry.is_chunked

    @property
    def hardlink_group(self) -> int:
        return self.entry.hardlink_group

    @property
    def raw_symlink(self) -> bytes | None:
        return self.entry.symlink if self.entry.is_symlink else None
