"""LocalStorage: a repository storage directory (``.cvmfspublished``, ``data/XX/...``) on disk."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, TypeVar

from pycvmfs.errors import ConfigError, FetchError, ObjectNotFoundError
from pycvmfs.storage.base import BLOCK_SIZE, Consumer

T = TypeVar("T")

#: Mode of the files this store writes (what the stock local uploader leaves behind).
FILE_MODE = 0o644

#: Folder, relative to the storage root, holding files being written (§1.3).
TXN_DIR = "data/txn"


#: Paths that need no normalising: plain names joined by single slashes (object paths, the
#: ``.cvmfs*`` files); those with ``.``/``..`` components are caught by the general rules.
_PLAIN = re.compile(r"[A-Za-z0-9_+@=,~.-]+(?:/[A-Za-z0-9_+@=,~.-]+)*")


def check_relpath(relpath: str, *, allow_empty: bool = False) -> str:
    """Validate a path relative to a repository's root and return it normalised.

    Rejects absolute paths, ``..`` components, NUL bytes and backslashes with
    :class:`~pycvmfs.errors.ConfigError`; drops empty and ``.`` components.
    """
    if (isinstance(relpath, str) and _PLAIN.fullmatch(relpath)
            and "." not in (relpath[:1], relpath[-1:]) and "/." not in relpath):
        return relpath  # the common case, as fast as it can be: nothing to drop or refuse
    if not isinstance(relpath, str):
        raise ConfigError(f"{relpath!r}: repository path must be a string")
    if "\0" in relpath:
        raise ConfigError(f"{relpath!r}: repository path contains a NUL byte")
    if "\\" in relpath:
        raise ConfigError(f"{relpath!r}: repository path contains a backslash")
    if relpath.startswith("/"):
        raise ConfigError(f"{relpath!r}: repository path must be relative, not absolute")
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"{relpath!r}: repository path must not contain '..'")
    if not parts and not allow_empty:
        raise ConfigError(f"{relpath!r}: empty repository path")
    return "/".join(parts)


class LocalStorage:
    """An :class:`~pycvmfs.storage.base.ObjectStore` over a storage directory.

    ``root`` is the folder holding ``.cvmfspublished`` and ``data/`` (it need not exist yet; see
    :meth:`create_skeleton`). Paths are checked with :func:`check_relpath` (bad syntax →
    :class:`~pycvmfs.errors.ConfigError`), and every file is resolved through its symlinks and
    must stay below ``root``: an escaping symlink is a :class:`~pycvmfs.errors.FetchError` when
    reading and a :class:`~pycvmfs.errors.ConfigError` otherwise; nothing outside is touched.

    Writes go to a temporary file in ``data/txn``, are flushed with ``fsync`` (unless
    ``fsync=False``) and renamed into place, so readers never see partial files. Failures of the
    file system (permissions, disk full) propagate as :class:`OSError` naming the file.
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(os.path.realpath(os.fspath(root)))
        self._root = str(self.root)
        self._prefix = self._root.rstrip("/") + "/"
        self._txn = os.path.join(self._root, TXN_DIR)
        self._fsync = fsync
        self._umask = _umask()  # as the store opens (what its files are created with)
        self._folders: dict[str, str] = {}  # lexical folder -> its real path, checked inside
        self._names = itertools.count()

    def __repr__(self) -> str:
        return f"LocalStorage({self._root!r})"

    @property
    def fsync(self) -> bool:
        """Whether every write is flushed to disk before it is renamed into place."""
        return self._fsync

    @property
    def umask(self) -> int:
        """The umask files are created with here (as read when the store was opened)."""
        return self._umask

    def __enter__(self) -> LocalStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- path resolution ---------------------------------------------------------------------

    def _inside(self, real: str) -> bool:
        return real == self._root or real.startswith(self._prefix)

    def _read_path(self, relpath: str, what: str) -> str:
        """The real path of ``relpath`` for reading; escaping symlinks are a FetchError."""
        lexical = self._prefix + check_relpath(relpath)
        real = os.path.realpath(lexical)
        if not self._inside(real):
            raise FetchError(what, [f"{lexical}: resolves to {real}, outside the storage root "
                                    f"{self._root}"])
        return real

    def write_path(self, relpath: str) -> str:
        """The path a write of ``relpath`` goes to, its folder resolved; a folder that leaves
        the root is a :class:`~pycvmfs.errors.ConfigError`."""
        lexical = self._prefix + check_relpath(relpath)
        real = self._folder(lexical)
        if real is None:
            raise ConfigError(f"{lexical}: its folder resolves to "
                              f"{os.path.realpath(os.path.dirname(lexical))}, outside the "
                              f"storage root {self._root}")
        return real

    def _folder(self, lexical: str) -> str | None:
        """``lexical`` with its folder resolved, or None when the folder leaves the root.

        Folders are resolved once per store (a storage has a few hundred: ``data/XX``); the
        file name itself is never followed when writing (rename replaces a symlink).
        """
        folder, name = os.path.split(lexical)
        real = self._folders.get(folder)
        if real is None:
            real = os.path.realpath(folder)
            if not self._inside(real):
                return None
            if len(self._folders) < 4096:
                self._folders[folder] = real
        return os.path.join(real, name)

    # -- Source ------------------------------------------------------------------------------

    def fetch(self, relpath: str, consume: Consumer[T], *, what: str, fresh: bool = False) -> T:
        """Stream the file in blocks of at most ``BLOCK_SIZE`` bytes into ``consume``.

        A missing file is an :class:`~pycvmfs.errors.ObjectNotFoundError`; the consumer's own
        exceptions (e.g. :class:`~pycvmfs.errors.IntegrityError`) propagate unchanged.
        ``fresh`` has no meaning for a local directory.
        """
        path = self._read_path(relpath, what)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError) as e:
            raise ObjectNotFoundError(what, [f"{path}: no such file"]) from e
        except OSError as e:
            raise FetchError(what, [f"{path}: {e.strerror or e}"]) from e
        with f:
            return consume(_blocks(f, path, what))

    def describe(self, relpath: str = "") -> str:
        rel = check_relpath(relpath, allow_empty=True)
        return self._prefix + rel if rel else self._root

    def close(self) -> None:
        """Nothing to release; present for the Source protocol."""

    # -- ObjectStore -------------------------------------------------------------------------

    def exists(self, relpath: str) -> bool:
        """Whether a regular file (or a symlink to one inside the root) is at ``relpath``.

        A path that resolves outside the root counts as absent.
        """
        path = self._folder(self._prefix + check_relpath(relpath))  # bad syntax raises
        if path is None:  # its folder resolves outside the root
            return False
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        if stat.S_ISREG(st.st_mode):
            return True
        if not stat.S_ISLNK(st.st_mode):
            return False
        real = os.path.realpath(path)
        return self._inside(real) and os.path.isfile(real)

    def put_bytes(self, relpath: str, data: bytes) -> None:
        self._put(relpath, lambda fd: _write_all(fd, data))

    def put_file(self, relpath: str, src: BinaryIO) -> None:
        def copy(fd: int) -> None:
            with open(fd, "wb", closefd=False) as f:
                shutil.copyfileobj(src, f, BLOCK_SIZE)

        self._put(relpath, copy)

    def begin_put(self, relpath: str) -> PendingPut:
        """A file for ``relpath`` to be written block by block: invisible to readers until
        :meth:`PendingPut.commit`, gone after :meth:`PendingPut.abort` (a caller that hashes
        a stream as it arrives keeps it only once the hash is right)."""
        return PendingPut(self, self.write_path(relpath))

    def _temporary(self) -> tuple[int, str]:
        """A new file in ``data/txn`` with a name unique to this process and thread."""
        tmp = os.path.join(self._txn, f"put.{os.getpid()}.{threading.get_ident()}."
                                      f"{next(self._names)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            return os.open(tmp, flags, FILE_MODE), tmp
        except FileNotFoundError:
            os.makedirs(self._txn, exist_ok=True)
            return os.open(tmp, flags, FILE_MODE), tmp

    def _put(self, relpath: str, write: Callable[[int], object]) -> None:
        pending = self.begin_put(relpath)
        try:
            write(pending.fd)
        except BaseException:
            pending.abort()
            raise
        pending.commit()

    def delete(self, relpath: str) -> None:
        """Remove the file (or symlink) at ``relpath``; a missing file is not an error."""
        path = self.write_path(relpath)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Relative paths of the files whose path starts with ``prefix``.

        ``prefix`` is a string prefix of relative paths (``data/4e`` lists everything in that
        folder, ``data/4`` everything in ``data/40`` … ``data/4f``; ``""`` lists all). Symlinks
        to files are listed like files; symlinks to folders are neither followed nor listed.
        Files in ``data/txn`` (writes in progress) are skipped unless ``prefix`` names that
        folder. Order: depth first, the names of each folder sorted by code point
        (deterministic, but not a global sort of the full paths).
        """
        pre = check_relpath(prefix, allow_empty=True)
        if prefix.endswith("/") and pre:
            pre += "/"
        base = pre if pre.endswith("/") or not pre else os.path.dirname(pre)
        base = base.rstrip("/")
        start = os.path.realpath(self._prefix + base)
        if not self._inside(start):
            raise ConfigError(f"{self._prefix + base}: resolves to {start}, outside the storage "
                              f"root {self._root}")
        skip_txn = not pre.startswith(TXN_DIR)
        yield from self._walk(start, base, pre, skip_txn)

    def _walk(self, folder: str, rel: str, pre: str, skip_txn: bool) -> Iterator[str]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                if skip_txn and path == TXN_DIR:
                    continue
                if (path + "/").startswith(pre) or pre.startswith(path + "/"):
                    yield from self._walk(e.path, path, pre, skip_txn)
            elif path.startswith(pre) and not (e.is_symlink() and e.is_dir()):
                yield path

    def create_skeleton(self) -> None:
        """Create the root, ``data/00`` … ``data/ff`` and ``data/txn`` like ``cvmfs_server mkfs``.

        Existing folders are kept; running it twice is harmless.
        """
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (data / f"{i:02x}").mkdir(exist_ok=True)
        (self.root / TXN_DIR).mkdir(exist_ok=True)


class PendingPut:
    """One file being written into a :class:`LocalStorage` (see :meth:`LocalStorage.begin_put`):
    a temporary file in ``data/txn`` renamed over ``dest`` by :meth:`commit`."""

    __slots__ = ("_fsync", "_tmp", "_umask", "dest", "fd")

    def __init__(self, store: LocalStorage, dest: str) -> None:
        self.dest = dest
        self.fd, self._tmp = store._temporary()
        self._fsync = store._fsync
        self._umask = store._umask

    def write(self, block: bytes) -> None:
        _write_all(self.fd, block)

    def commit(self) -> None:
        """Flush (fsync unless the store was opened without it) and move into place."""
        if self.fd < 0:
            raise ValueError(f"{self.dest}: already committed or aborted")
        try:
            try:
                if self._umask & FILE_MODE:  # the umask took bits away at creation: restore
                    os.fchmod(self.fd, FILE_MODE)
                if self._fsync:
                    os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1
            try:
                os.replace(self._tmp, self.dest)
            except FileNotFoundError:  # the folder (e.g. data/XX) does not exist yet
                os.makedirs(os.path.dirname(self.dest), exist_ok=True)
                os.replace(self._tmp, self.dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            raise

    def abort(self) -> None:
        """Forget what was written (idempotent; nothing after :meth:`commit`)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def _umask() -> int:
    """The process's umask (from /proc: setting it to find it would race with other threads
    creating files); when it cannot be read, assume it takes bits away."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o777


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _blocks(f: BinaryIO, path: str, what: str) -> Iterator[bytes]:
    """The file's bytes in blocks; a read error becomes a FetchError naming the file."""
    while True:
        try:
            block = f.read(BLOCK_SIZE)
        except OSError as e:
            raise FetchError(what, [f"{path}: read error: {e.strerror or e}"]) from e
        if not block:
            return
        yield block
