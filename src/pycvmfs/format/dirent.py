"""Directory entries of the file catalog: flag bits, hard-link fields and variant symlinks."""

from __future__ import annotations

import stat as _stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pycvmfs.errors import FormatError
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import Algorithm, ContentHash

__all__ = ["DirectoryEntry", "Flags", "expand_symlink", "make_flags", "split_hardlinks"]


class Flags:
    """The ``flags`` column bits (``SqlDirent`` constants of the stock code)."""

    DIR = 1
    NESTED_MOUNTPOINT = 2
    FILE = 4
    LINK = 8
    SPECIAL = 16
    NESTED_ROOT = 32
    CHUNKED = 64
    EXTERNAL = 128
    HASH_SHIFT = 8  # bits 8-10: hash algorithm
    HASH_MASK = 0x7 << 8
    COMPRESSION_SHIFT = 11  # bits 11-13: compression
    COMPRESSION_MASK = 0x7 << 11
    BIND_MOUNTPOINT = 0x4000
    HIDDEN = 0x8000
    DIRECT_IO = 0x10000


#: The flag bits that say what kind of entry a row is, by the file type bits of its mode.
_KIND_FLAGS = Flags.DIR | Flags.FILE | Flags.LINK | Flags.SPECIAL
_SPECIAL_FLAGS = Flags.FILE | Flags.SPECIAL
_TYPE_FLAGS = {_stat.S_IFDIR: Flags.DIR, _stat.S_IFLNK: Flags.FILE | Flags.LINK,
               _stat.S_IFREG: Flags.FILE, _stat.S_IFIFO: _SPECIAL_FLAGS,
               _stat.S_IFSOCK: _SPECIAL_FLAGS, _stat.S_IFCHR: _SPECIAL_FLAGS,
               _stat.S_IFBLK: _SPECIAL_FLAGS}


def split_hardlinks(value: int) -> tuple[int, int]:
    """``(group, linkcount)`` from the ``hardlinks`` column."""
    value &= 0xFFFFFFFFFFFFFFFF
    return value >> 32, value & 0xFFFFFFFF


def make_flags(*, mode: int, chunked: bool = False, external: bool = False,
               algorithm: Algorithm = Algorithm.SHA1, compression: Compression = Compression.ZLIB,
               has_hash: bool = False, nested_mountpoint: bool = False, nested_root: bool = False,
               bind_mountpoint: bool = False, hidden: bool = False, direct_io: bool = False) -> int:
    """Compose the flags exactly as the stock publisher does (format doc §4.6)."""
    flags = 0
    if nested_root:
        flags |= Flags.NESTED_ROOT
    elif nested_mountpoint:
        flags |= Flags.NESTED_MOUNTPOINT
    elif bind_mountpoint:
        flags |= Flags.BIND_MOUNTPOINT
    if _stat.S_ISDIR(mode):
        flags |= Flags.DIR
    elif _stat.S_ISLNK(mode):
        flags |= Flags.FILE | Flags.LINK
    elif _stat.S_ISREG(mode):
        flags |= Flags.FILE | (compression.value << Flags.COMPRESSION_SHIFT)
        if chunked:
            flags |= Flags.CHUNKED
        if external:
            flags |= Flags.EXTERNAL
        if direct_io:
            flags |= Flags.DIRECT_IO
        if has_hash or chunked:
            flags |= algorithm.value << Flags.HASH_SHIFT
    else:
        flags |= Flags.FILE | Flags.SPECIAL
    if hidden:
        flags |= Flags.HIDDEN
    return flags


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """One row of a catalog's ``catalog`` table. Names and targets are raw bytes."""

    name: bytes
    mode: int
    size: int
    mtime: int
    mtimens: int | None
    flags: int
    hash: ContentHash | None
    symlink: bytes
    uid: int
    gid: int
    hardlink_group: int
    linkcount: int
    xattr_blob: bytes | None
    md5path: tuple[int, int]
    parent: tuple[int, int]
    rowid: int

    # -- kinds ---------------------------------------------------------------------------
    @property
    def is_dir(self) -> bool:
        return bool(self.flags & Flags.DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.flags & Flags.LINK)

    @property
    def is_special(self) -> bool:
        return bool(self.flags & Flags.SPECIAL)

    @property
    def is_regular(self) -> bool:
        return bool(self.flags & Flags.FILE) and not (self.flags & (Flags.LINK | Flags.SPECIAL))

    @property
    def is_chunked(self) -> bool:
        return self.is_regular and bool(self.flags & Flags.CHUNKED)

    @property
    def is_external(self) -> bool:
        return self.is_regular and bool(self.flags & Flags.EXTERNAL)

    @property
    def is_nested_mountpoint(self) -> bool:
        return bool(self.flags & Flags.NESTED_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & Flags.NESTED_ROOT)

    @property
    def is_bind_mountpoint(self) -> bool:
        return bool(self.flags & Flags.BIND_MOUNTPOINT)

    @property
    def is_hidden(self) -> bool:
        return bool(self.flags & Flags.HIDDEN)

    @property
    def is_direct_io(self) -> bool:
        return bool(self.flags & Flags.DIRECT_IO)

    # -- content -------------------------------------------------------------------------
    @property
    def hash_algorithm(self) -> Algorithm:
        if self.hash is not None:
            return self.hash.algorithm
        return Algorithm.from_flag_code((self.flags & Flags.HASH_MASK) >> Flags.HASH_SHIFT)

    @property
    def compression(self) -> Compression:
        return Compression.from_flag_code((self.flags & Flags.COMPRESSION_MASK)
                                          >> Flags.COMPRESSION_SHIFT)

    @property
    def file_type(self) -> str:
        """``dir``, ``file``, ``symlink``, ``fifo``, ``socket``, ``chardev`` or ``blockdev``."""
        if self.is_dir:
            return "dir"
        if self.is_symlink:
            return "symlink"
        if self.is_special:
            m = self.mode
            if _stat.S_ISFIFO(m):
                return "fifo"
            if _stat.S_ISSOCK(m):
                return "socket"
            if _stat.S_ISCHR(m):
                return "chardev"
            if _stat.S_ISBLK(m):
                return "blockdev"
            return "special"
        return "file"

    @property
    def rdev(self) -> int:
        """The device number of a character or block device (stored in ``size``)."""
        if self.is_special and (_stat.S_ISCHR(self.mode) or _stat.S_ISBLK(self.mode)):
            return self.size
        return 0

    def xattrs(self, *, what: str = "entry") -> dict[bytes, bytes]:
        if self.xattr_blob is None:
            return {}
        from pycvmfs.format.xattr import decode_xattrs

        return decode_xattrs(self.xattr_blob, what=what)

    def validate(self, *, what: str) -> None:
        """Reject rows that the stock client could not make sense of."""
        kinds = sum(bool(self.flags & f) for f in (Flags.DIR, Flags.FILE))
        if kinds != 1:
            raise FormatError(f"{what}: entry {self.name!r} has flags {self.flags} "
                              "(neither or both directory and file)")
        if self.is_regular and not self.is_chunked and self.hash is None:
            raise FormatError(f"{what}: regular file {self.name!r} has no content hash")
        mode = self.mode
        if not 0 <= mode <= 0o177777 or (self.flags & _KIND_FLAGS) != _TYPE_FLAGS.get(
                mode & 0o170000):
            kind = ("directory" if self.is_dir else "symlink" if self.is_symlink else
                    "special file" if self.is_special else "regular file")
            raise FormatError(f"{what}: entry {self.name!r} has mode {mode:#o}, which is not "
                              f"a {kind} mode (flags {self.flags})")
        if self.size < 0:
            raise FormatError(f"{what}: entry {self.name!r} has a negative size {self.size}")


def expand_symlink(target: bytes, lookup: Callable[[str], str | None] | Mapping[str, str]) -> bytes:
    """Expand ``$(NAME)`` and ``$(NAME:-default)`` in a variant symlink target.

    Follows the stock client byte for byte: a ``$`` followed by ``(`` and at least one more byte
    starts a reference; without a closing ``)`` the ``$(`` and the rest are copied literally; the
    text inside is split at the first ``:-``; a variable that is set (even to the empty string)
    wins over the default; nested references are not supported.
    """
    if b"$(" not in target:
        return target
    get = lookup.get if isinstance(lookup, Mapping) else lookup
    out = bytearray()
    i, n = 0, len(target)
    while i < n:
        c = target[i]
        if c == 0x24 and i + 2 < n and target[i + 1] == 0x28:  # "$(" plus at least one byte
            close = target.find(b")", i + 2)
            if close < 0:
                out += target[i:i + 2]
                i += 2
                continue
            inner = target[i + 2:close]
            sep = inner.find(b":-")
            name, default = (inner, b"") if sep < 0 else (inner[:sep], inner[sep + 2:])
            value = get(name.decode("utf-8", "surrogateescape"))
            out += default if value is None else value.encode("utf-8", "surrogateescape")
            i = close + 1
            continue
        out.append(c)
        i += 1
    return bytes(out)
