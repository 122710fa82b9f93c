"""A local content-addressed cache of verified image blobs, resumable and safe to share."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from pycvmfs.containers.model import digest_hex
from pycvmfs.errors import ContainerError

__all__ = ["BlobCache", "Partial"]

_CHUNK = 1 << 20
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: temporary and partial files older than this are removed by ``prune`` (younger ones may be
#: in use by another process)
STALE_SECONDS = 24 * 3600


class Partial(NamedTuple):
    """A claimed partial download: its file and how many bytes it holds."""

    path: Path
    offset: int


class BlobCache:
    """Blobs under ``root/sha256/<hex>``, each one verified before it gets its name.

    Writers never share a file: every put writes its own ``<hex>.<token>.tmp`` (created with
    O_EXCL) and renames it into place, so two processes or threads putting the same blob
    end with one valid file. An interrupted download is kept as ``<hex>.part``; ``partial``
    claims it (by renaming it to a private temporary name) so that only one writer resumes it.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.dir = self.root / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"BlobCache({str(self.root)!r})"

    def _final(self, digest: str) -> Path:
        return self.dir / digest_hex(digest)

    def _part(self, digest: str) -> Path:
        return self.dir / (digest_hex(digest) + ".part")

    def _temporary(self, digest: str) -> tuple[int, Path]:
        while True:
            path = self.dir / f"{digest_hex(digest)}.{os.urandom(6).hex()}.tmp"
            try:
                return os.open(path, _NEW, 0o644), path
            except FileExistsError:
                continue

    def path_for(self, digest: str) -> Path | None:
        """The cached blob's path, or None when it is not (completely) in the cache."""
        path = self._final(digest)
        return path if path.is_file() and not path.is_symlink() else None

    def partial(self, digest: str) -> Partial | None:
        """Claim the partial download of ``digest`` left by an interrupted put: the caller
        asks its source for the bytes from ``offset`` on and hands the claim to
        ``put_stream(..., resume=claim)``. None when there is none (or another writer took
        it first)."""
        fd, claimed = self._temporary(digest)
        os.close(fd)
        try:
            os.replace(self._part(digest), claimed)
        except FileNotFoundError:
            claimed.unlink(missing_ok=True)
            return None
        return Partial(claimed, claimed.stat().st_size)

    def put_stream(self, digest: str, size: int, read: Callable[[int], bytes], what: str, *,
                   resume: Partial | None = None) -> Path:
        """Store the blob ``read(n)`` yields (``size`` bytes hashing to ``digest``), verified,
        and return its path. A stream longer than ``size`` is refused as soon as it goes
        over; a digest mismatch is refused naming both digests; either way the temporary
        file goes. A stream that ends early or fails keeps what it got as ``<hex>.part`` for
        a later ``partial`` (the error says so). With ``resume`` (a claim from ``partial``)
        the stream must deliver the bytes from ``resume.offset`` on."""
        digest_hex(digest)
        done = self.path_for(digest)
        if done is not None and done.stat().st_size == size:
            if resume is not None:
                resume.path.unlink(missing_ok=True)
            return done
        hasher = hashlib.sha256()
        if resume is not None:
            fd, temp = os.open(resume.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC), resume.path
            got = _hash_prefix(fd, resume.offset, hasher)
        else:
            (fd, temp), got = self._temporary(digest), 0
        keep = False
        try:
            if got > size:
                raise ContainerError(f"{what}: the partial download of {digest} holds {got} "
                                     f"bytes, more than its size {size}")
            keep = True
            while chunk := read(_CHUNK):
                got += len(chunk)
                if got > size:
                    keep = False
                    raise ContainerError(f"{what}: more than the {size} bytes the descriptor "
                                         f"of {digest} says; refused")
                hasher.update(chunk)
                _write_all(fd, chunk)
            if got < size:
                raise ContainerError(f"{what}: the stream of {digest} ended after {got} of "
                                     f"{size} bytes (kept for resuming)")
            keep = False
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest:
                raise ContainerError(f"{what}: digest mismatch (expected {digest}, got "
                                     f"{actual}); not cached")
            os.fsync(fd)
            os.close(fd)
            fd = -1
            final = self._final(digest)
            os.replace(temp, final)
            _fsync_dir(self.dir)
            return final
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if keep and got > 0:
                os.replace(temp, self._part(digest))
            else:
                temp.unlink(missing_ok=True)
            raise

    def open(self, digest: str, size: int | None = None, *, verify: bool = False) -> BinaryIO:
        """The cached blob for reading. Its size is checked against ``size`` (when given)
        and, with ``verify``, its content against ``digest``; a cache file that fails either
        check was damaged on disk: it is removed and the error names it."""
        path = self._final(digest)
        try:
            fd = os.open(path, _READ)
        except FileNotFoundError:
            raise ContainerError(f"blob cache {self.root}: {digest} is not cached") from None
        except OSError as e:
            raise ContainerError(f"blob cache {self.root}: cannot open {path}: "
                                 f"{e.strerror}") from None
        f = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ContainerError(f"blob cache {self.root}: {path} is not a regular file")
            have = st.st_size
            if size is not None and have != size:
                raise ContainerError(f"blob cache {self.root}: {path} has {have} bytes, "
                                     f"{digest} has {size}; removed the damaged copy")
            if verify:
                actual = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
                if actual != digest:
                    raise ContainerError(f"blob cache {self.root}: {path} hashes to {actual}, "
                                         f"not {digest}; removed the damaged copy")
                f.seek(0)
        except ContainerError:
            f.close()
            if stat.S_ISREG(st.st_mode):
                path.unlink(missing_ok=True)
            raise
        return f

    def prune(self, keep: set[str], *, stale_seconds: float = STALE_SECONDS) -> int:
        """Remove every cached blob whose digest is not in ``keep``, and temporary or partial
        files older than ``stale_seconds`` (younger ones may belong to a running put).
        Returns how many files went."""
        keep_hex = {digest_hex(d) for d in keep}
        now = time.time()
        removed = 0
        for entry in os.scandir(self.dir):
            name = entry.name
            if len(name) == 64 and "." not in name:
                gone = name not in keep_hex
            else:
                try:
                    gone = now - entry.stat(follow_symlinks=False).st_mtime > stale_seconds
                except FileNotFoundError:
                    continue
            if gone:
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed


def _hash_prefix(fd: int, length: int, hasher: Any) -> int:
    """Hash the first ``length`` bytes of ``fd`` (fewer if the file is shorter) and leave
    the file positioned after them, anything beyond cut off; returns how many it hashed."""
    done = 0
    while done < length:
        block = os.read(fd, min(_CHUNK, length - done))
        if not block:
            break
        hasher.update(block)
        done += len(block)
    os.ftruncate(fd, done)
    os.lseek(fd, done, os.SEEK_SET)
    return done


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
