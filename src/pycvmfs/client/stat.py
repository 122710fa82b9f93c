"""What the reader reports for a path: POSIX-style attributes of one directory entry."""

from __future__ import annotations

import os
import stat as _stat
from collections.abc import Mapping
from dataclasses import dataclass, field

from pycvmfs.errors import ConfigError
from pycvmfs.format.compression import Compression
from pycvmfs.format.dirent import DirectoryEntry
from pycvmfs.format.hashes import ContentHash

__all__ = ["IdMap", "Ownership", "Stat", "read_id_map"]


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


@dataclass(frozen=True)
class IdMap:
    """A uid or gid map (``CVMFS_UID_MAP`` / ``CVMFS_GID_MAP``): ``rules`` maps catalog ids to
    local ids; ids without a rule become ``default``, or stay as they are when it is None."""

    rules: Mapping[int, int] = field(default_factory=dict)
    default: int | None = None

    def map(self, catalog_id: int) -> int:
        local = self.rules.get(catalog_id)
        if local is not None:
            return local
        return catalog_id if self.default is None else self.default


def read_id_map(path: str | os.PathLike) -> IdMap:
    """Read a stock owner map file: ``catalog_id local_id`` lines, ``*`` as the catalog id of
    the default rule, ``#`` comments, blank lines (as the stock ``IntegerMap::ReadFromFile``)."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{os.fspath(path)}: id map is not UTF-8 text") from e
    except OSError as e:
        raise ConfigError(f"{os.fspath(path)}: cannot read id map: {e.strerror or e}") from e
    rules: dict[int, int] = {}
    default = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if (len(fields) != 2 or not fields[1].isdecimal() or not fields[1].isascii()
                or (fields[0] != "*" and not (fields[0].isdecimal() and fields[0].isascii()))):
            raise ConfigError(f"{os.fspath(path)}:{lineno}: not a 'catalog_id local_id' line "
                              f"(ids are decimal numbers, '*' the default): {line!r}")
        local = int(fields[1])
        if local >= 1 << 32:
            raise ConfigError(f"{os.fspath(path)}:{lineno}: id {local} is out of range")
        if fields[0] == "*":
            default = local
        else:
            rules[int(fields[0])] = local
    return IdMap(rules, default)


@dataclass(frozen=True)
class Ownership:
    """Who the mount shows as owner of every entry: the mounting user (``claim``:
    ``CVMFS_CLAIM_OWNERSHIP``, the stock default) or the catalog's owners through the maps;
    ``world_readable`` adds read (and search, for directories) for everyone."""

    claim: tuple[int, int] | None = None  # (uid, gid) shown for every entry
    uid_map: IdMap | None = None
    gid_map: IdMap | None = None
    world_readable: bool = False

    def owner(self, entry: DirectoryEntry) -> tuple[int, int]:
        """``(uid, gid)`` shown for ``entry`` (the maps apply only without ``claim``)."""
        if self.claim is not None:
            return self.claim
        uid = entry.uid if self.uid_map is None else self.uid_map.map(entry.uid)
        gid = entry.gid if self.gid_map is None else self.gid_map.map(entry.gid)
        return uid, gid

    def mode(self, entry: DirectoryEntry) -> int:
        if not self.world_readable:
            return entry.mode
        return entry.mode | (0o555 if entry.is_dir else 0o444)
