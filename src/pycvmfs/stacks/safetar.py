"""Extract an untrusted tar stream below a destination without ever writing outside it.

:func:`tarfile.data_filter` alone is not enough: on Python releases with the filter bypass of
the CVE-2025-4517 class, chained symbolic links make its ``realpath`` check approve a link the
kernel resolves somewhere else, and :mod:`tarfile` then writes through that link. The
extraction here runs the filter as a first layer and adds its own rules, which never depend on
what ``realpath`` makes of the tree:

- member names are normalised (``./``, empty and ``.`` components dropped); absolute names and
  ``..`` components are refused; a name may appear only once (a directory may repeat);
- no member may have a parent path that is, or goes through, a symbolic link member of the
  archive or an existing symbolic link on disk below the destination (or a non-directory);
- hard links may only name regular-file members already extracted;
- device nodes, FIFOs and other special files are refused;
- symbolic links are created LAST, after every other member, so extraction never writes
  through a link; a relative link target must stay below the destination when resolved the way
  the kernel will (component by component, following the archive's own links); absolute
  targets are refused unless the caller allows them (then a link's text is just data);
- setuid, setgid and sticky bits are dropped. With ``keep_modes`` a member's permission bits
  come back as stored (the binary cache); otherwise the ``data`` filter's modes apply (files
  ``& 0o755``, owner read/write, directories with the default mode — unpacked sources).
  Directory modes and times are applied at the very end, deepest first, so a read-only
  directory can still receive its members.

Regular files are opened with ``O_EXCL | O_NOFOLLOW`` and filled by block copies. Every
refusal is a :class:`~pycvmfs.errors.StackError` naming the archive (``what``) and the member.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

import zstandard

from pycvmfs.errors import StackError

__all__ = ["extract_tar"]

_BLOCK = 1 << 20
_MAX_LINK_HOPS = 40        # the kernel's own limit on symbolic links followed in one lookup
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_DIR, _FILE, _LINK = "directory", "regular file", "symbolic link"


class _Refused(Exception):
    """One member refused by our own rules (turned into a StackError by :func:`extract_tar`)."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(reason)
        self.member = member
        self.reason = reason


def extract_tar(stream: BinaryIO, dest: str | os.PathLike[str], *, what: str,
                absolute_links: bool = False, keep_modes: bool = False) -> None:
    """Extract the tar stream (plain or gz/bz2/xz compressed) below ``dest`` (created when
    missing) with the rules of the module docstring. ``absolute_links`` allows symbolic links
    with absolute targets; ``keep_modes`` keeps the members' permission bits (without setuid,
    setgid and sticky). A refused or unreadable member is a StackError naming ``what`` and it;
    what was extracted before is left for the caller to remove."""
    dest = Path(os.path.abspath(dest))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            _Extraction(tar, dest, absolute_links=absolute_links, keep_modes=keep_modes).run()
    except _Refused as e:
        raise StackError(f"{what}: refused member {e.member!r}: {e.reason}") from None
    except tarfile.FilterError as e:
        member = e.tarinfo.name if e.tarinfo is not None else "?"
        raise StackError(f"{what}: refused member {member!r}: {e}") from None
    except (tarfile.TarError, EOFError, zstandard.ZstdError) as e:
        raise StackError(f"{what}: not a readable tar archive: {e}") from None
    except OSError as e:
        raise StackError(f"{what}: extracting into {dest} failed: {e}") from None


class _Extraction:
    """The state of one extraction: what each name below ``dest`` is, the symbolic links
    still to make and the directory attributes still to apply."""

    def __init__(self, tar: tarfile.TarFile, dest: Path, *, absolute_links: bool,
                 keep_modes: bool) -> None:
        self.tar = tar
        self.dest = dest
        self.absolute_links = absolute_links
        self.keep_modes = keep_modes
        self.kinds: dict[str, str] = {"": _DIR}     # normalised name -> _DIR / _FILE / _LINK
        self.links: dict[str, tuple[str, str, float]] = {}  # name -> (member, target, mtime)
        self.dir_attrs: dict[str, tuple[int | None, float]] = {}   # name -> (mode, mtime)

    def path(self, name: str) -> str:
        return os.path.join(self.dest, name) if name else str(self.dest)

    # -- the members ---------------------------------------------------------------------------
    def run(self) -> None:
        for member in self.tar:
            self.member(member)
        self.make_links()
        self.apply_dir_attrs()

    def member(self, member: tarfile.TarInfo) -> None:
        """Check one member with our rules, then the data filter, then extract it (a symbolic
        link is only noted)."""
        raw = member.name
        name = _normalise(raw, raw)
        if not name and not member.isdir():
            raise _Refused(raw, "the destination itself can only be a directory")
        if name in self.kinds and not (member.isdir() and self.kinds[name] == _DIR):
            raise _Refused(raw, f"{name or '.'!r} appears twice in the archive (as a "
                                f"{self.kinds[name]} before)")
        self.parents(raw, name)
        if name not in self.kinds:
            self.check_on_disk(member, name)
        if member.issym():
            self.check_symlink(member, name)
        elif member.islnk():
            target = self.hard_link_target(member)
        elif not (member.isdir() or member.isreg()):
            raise _Refused(raw, "device nodes, FIFOs and other special files are refused "
                                f"(type {member.type!r})")
        if member.issym() and self.absolute_links and member.linkname.startswith("/"):
            filtered = member      # the data filter refuses absolute targets; allowed here
        else:
            filtered = tarfile.data_filter(member, str(self.dest))
        mode = self.mode(member, filtered)
        if member.isdir():
            self.directory(raw, name, mode, member.mtime)
        elif member.isreg():
            self.regular(member, name, mode)
        elif member.islnk():
            os.link(self.path(target), self.path(name), follow_symlinks=False)
            self.kinds[name] = _FILE
        else:
            self.kinds[name] = _LINK
            self.links[name] = (raw, member.linkname, member.mtime)

    def mode(self, member: tarfile.TarInfo, filtered: tarfile.TarInfo) -> int | None:
        if self.keep_modes:
            return stat.S_IMODE(member.mode) & 0o777
        return None if filtered.mode is None else filtered.mode & 0o777

    def parents(self, raw: str, name: str) -> None:
        """Check (and make, when missing) every parent directory of ``name``: none may be a
        symbolic link, of the archive or already on disk, nor anything but a directory."""
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            kind = self.kinds.get(parent)
            if kind == _DIR:
                continue
            if kind is not None:
                raise _Refused(raw, f"its parent {parent!r} is a {kind} in the archive")
            path = self.path(parent)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path)
                self.kinds[parent] = _DIR
                continue
            if stat.S_ISLNK(st.st_mode):
                raise _Refused(raw, f"its parent {parent!r} is a symbolic link already on disk")
            if not stat.S_ISDIR(st.st_mode):
                raise _Refused(raw, f"its parent {parent!r} is not a directory on disk")
            self.kinds[parent] = _DIR

    def check_on_disk(self, member: tarfile.TarInfo, name: str) -> None:
        """Nothing may be on disk already where a member goes, except a directory (not a
        link to one) where the member is a directory."""
        try:
            st = os.lstat(self.path(name))
        except FileNotFoundError:
            return
        if not (member.isdir() and stat.S_ISDIR(st.st_mode)):
            there = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "something"
            raise _Refused(member.name, f"{there} is already on disk where it goes")

    def directory(self, raw: str, name: str, mode: int | None, mtime: float) -> None:
        path = self.path(name)
        if not os.path.lexists(path):
            if mode is None:
                os.mkdir(path)          # the default mode, as the data filter wants
            else:
                os.mkdir(path, 0o700)   # writable until the end, its mode applied then
        self.kinds[name] = _DIR
        self.dir_attrs[name] = (mode, mtime)

    def regular(self, member: tarfile.TarInfo, name: str, mode: int | None) -> None:
        source = self.tar.extractfile(member)
        assert source is not None
        fd = os.open(self.path(name), _FILE_FLAGS, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, _BLOCK)
            out.flush()               # before the time is set
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            os.utime(out.fileno(), (member.mtime, member.mtime))
        self.kinds[name] = _FILE

    def hard_link_target(self, member: tarfile.TarInfo) -> str:
        """The normalised target of a hard link: a regular file extracted before it."""
        target = _normalise(member.linkname, member.name, what="hard link target")
        if self.kinds.get(target) != _FILE:
            raise _Refused(member.name, f"a hard link to {member.linkname!r}, which is not a "
                                        "regular file extracted before it")
        return target

    def check_symlink(self, member: tarfile.TarInfo, name: str) -> None:
        """A link's target: absolute only when allowed; a relative one must not leave the
        destination even as written (the resolution through other links is checked at the
        end, when all of them are known)."""
        target = member.linkname
        if not target:
            raise _Refused(member.name, "a symbolic link without a target")
        if target.startswith("/"):
            if not self.absolute_links:
                raise _Refused(member.name, f"a link to the absolute path {target!r}")
        elif posixpath.normpath(posixpath.join(posixpath.dirname(name), target)) \
                .split("/")[0] == "..":
            raise _Refused(member.name, f"a link to {target!r}, outside the destination")

    # -- the end -------------------------------------------------------------------------------
    def make_links(self) -> None:
        """Check every link against the complete set of the archive's links, then make them."""
        for name, (raw, target, _) in self.links.items():
            if not target.startswith("/"):
                why = self.why_outside(name, target)
                if why:
                    raise _Refused(raw, f"a link to {target!r}, which {why}")
        for name, (_, target, mtime) in self.links.items():
            path = self.path(name)
            os.symlink(target, path)
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def why_outside(self, name: str, target: str) -> str:
        """Why the relative ``target`` of the link ``name`` is refused ('' when it is not):
        resolved the way the kernel will once every link exists, it leaves the destination,
        goes through an absolute link (unless those are allowed) or loops."""
        where = name.split("/")[:-1]
        todo = list(reversed(target.split("/")))
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not where:
                    return "resolves outside the destination through the archive's links"
                where.pop()
                continue
            where.append(part)
            link = self.link_at("/".join(where))
            if link is None:
                continue
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return f"needs more than {_MAX_LINK_HOPS} links to resolve (a loop)"
            if link.startswith("/"):
                return "" if self.absolute_links else \
                    f"resolves outside the destination through the absolute link {link!r}"
            where.pop()
            todo.extend(reversed(link.split("/")))
        return ""

    def link_at(self, name: str) -> str | None:
        """The target of the link called ``name`` (of the archive, or already on disk)."""
        if name in self.links:
            return self.links[name][1]
        if name in self.kinds:
            return None
        path = self.path(name)
        return os.readlink(path) if os.path.islink(path) else None

    def apply_dir_attrs(self) -> None:
        """Directory modes and times, deepest first (after every member went in)."""
        for name in sorted(self.dir_attrs, key=lambda n: n.count("/") + bool(n), reverse=True):
            mode, mtime = self.dir_attrs[name]
            fd = os.open(self.path(name), _DIR_FLAGS)
            try:
                if mode is not None:
                    os.fchmod(fd, mode)
                os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)


def _normalise(text: str, member: str, *, what: str = "name") -> str:
    """``text`` without ``./``, empty and ``.`` components ('' for the destination itself);
    absolute names and ``..`` refused."""
    if text.startswith("/"):
        raise _Refused(member, f"an absolute {what} ({text!r})")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _Refused(member, f"'..' in its {what} ({text!r})")
    return "/".join(parts)
