"""The client's local object cache: verified, decompressed objects keyed by content hash."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.client.quota import remove_dead_temporaries
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.base import Source
from pycvmfs.storage.objects import download_verified

if TYPE_CHECKING:
    from pycvmfs.client.quota import QuotaManager

__all__ = ["Breadcrumb", "ObjectCache", "default_cache_dir"]



def default_cache_dir() -> Path:
    """``$PYCVMFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pycvmfs``, else ``~/.cache/pycvmfs``."""
    env = os.environ.get("PYCVMFS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pycvmfs"


@dataclass(frozen=True)
class Breadcrumb:
    """The newest revision accepted for a repository: ``<root hash>T<timestamp>R<revision>``."""

    root_hash: ContentHash
    timestamp: int
    revision: int

    def to_text(self) -> str:
        return f"{self.root_hash}T{self.timestamp}R{self.revision}"

    @classmethod
    def from_text(cls, text: str) -> Breadcrumb | None:
        text = text.strip()
        try:
            h, rest = text.split("T", 1)
            ts, rev = rest.split("R", 1)
            return cls(ContentHash.parse(h), int(ts), int(rev))
        except Exception:
            return None


class _FileSink:
    """Writes decompressed blocks to a temporary file; restartable when a source retries."""

    def __init__(self, f) -> None:
        self.f = f

    def reset(self) -> None:
        self.f.seek(0)
        self.f.truncate()

    def __call__(self, data: bytes) -> None:
        self.f.write(data)


class ObjectCache:
    """Decompressed objects at ``<dir>/<2 hex>/<rest of textual hash>``.

    Objects are written to ``<dir>/txn/`` and renamed into place only after their hash was
    verified, so a crash never leaves a half-written object under its final name; temporary
    files of processes that died are removed when the cache is opened. Concurrent
    requests for one object within a process are collapsed into one download.

    With a :class:`~pycvmfs.client.quota.QuotaManager`, every object is recorded (and room made
    for it under the quota) before it is moved into place, cache hits are touched, and
    ``fetch(..., pin=True)`` pins the object (before looking for it, so that no other process
    can evict it between the lookup and the caller opening it) until :meth:`unpin`.
    """

    def __init__(self, directory: str | os.PathLike, quota: QuotaManager | None = None) -> None:
        self.directory = Path(directory)
        self.quota = quota
        self.txn = self.directory / "txn"
        self.txn.mkdir(parents=True, exist_ok=True)
        if quota is None:  # (a QuotaManager does this when it opens)
            remove_dead_temporaries(self.txn)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "bytes_downloaded": 0}

    def path_for(self, h: ContentHash) -> Path:
        text = str(h)
        return self.directory / text[:2] / text[2:]

    def contains(self, h: ContentHash) -> bool:
        return self.path_for(h).is_file()

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def fetch(self, source: Source, h: ContentHash, kind: ObjectKind,
              compression: Compression = Compression.ZLIB, *, what: str | None = None,
              pin: bool = False) -> Path:
        """The path of the decompressed object, downloading and verifying it if needed.

        With ``pin`` (and a quota), the object stays pinned until :meth:`unpin` is called.
        """
        if not pin or self.quota is None:
            return self._fetch(source, h, kind, compression, what)
        self.quota.pin(h)
        try:
            return self._fetch(source, h, kind, compression, what)
        except BaseException:
            self.quota.unpin(h)
            raise

    def lookup(self, h: ContentHash, *, pin: bool = False) -> Path | None:
        """The path of ``h`` if it is in the cache (counted as a hit), else None: never
        downloads. With ``pin`` (and a quota) a found object stays pinned until :meth:`unpin`."""
        if pin and self.quota is not None:
            self.quota.pin(h)
        dest = self.path_for(h)
        if dest.is_file():
            return self._hit(h, dest)
        if pin and self.quota is not None:
            self.quota.unpin(h)
        return None

    def pin(self, h: ContentHash) -> None:
        """Protect a cached object from eviction (no-op without a quota)."""
        if self.quota is not None:
            self.quota.pin(h)

    def unpin(self, h: ContentHash) -> None:
        """Release one pin taken by :meth:`pin` or ``fetch(..., pin=True)``."""
        if self.quota is not None:
            self.quota.unpin(h)

    def _fetch(self, source: Source, h: ContentHash, kind: ObjectKind,
               compression: Compression, what: str | None) -> Path:
        dest = self.path_for(h)
        if dest.is_file():
            return self._hit(h, dest)
        with self._lock(str(h)):
            if dest.is_file():
                return self._hit(h, dest)
            self.stats["misses"] += 1
            fd, tmp = tempfile.mkstemp(dir=self.txn, prefix=f"obj.{os.getpid()}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    stored, _plain = download_verified(source, h, kind, compression, _FileSink(f),
                                                       what=what)
                    size = f.tell()
                if self.quota is not None:
                    self.quota.insert(h, size, kind)  # makes room before the object appears
                try:
                    os.replace(tmp, dest)
                except FileNotFoundError:  # first object of its <2 hex> directory
                    dest.parent.mkdir(exist_ok=True)
                    os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            self.stats["bytes_downloaded"] += stored
            return dest

    def _hit(self, h: ContentHash, dest: Path) -> Path:
        self.stats["hits"] += 1
        if self.quota is not None:
            self.quota.touch(h)
        return dest

    # -- breadcrumbs ---------------------------------------------------------------------
    def _breadcrumb_path(self, fqrn: str) -> Path:
        return self.directory / f"cvmfschecksum.{fqrn}"

    def read_breadcrumb(self, fqrn: str) -> Breadcrumb | None:
        try:
            return Breadcrumb.from_text(self._breadcrumb_path(fqrn).read_text())
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def write_breadcrumb(self, fqrn: str, crumb: Breadcrumb) -> None:
        """Record ``crumb`` unless a newer revision is recorded already."""
        with self._lock("breadcrumb:" + fqrn):
            old = self.read_breadcrumb(fqrn)
            newer = (crumb.revision, crumb.timestamp)
            if old is not None and (old.revision, old.timestamp) >= newer:
                return
            fd, tmp = tempfile.mkstemp(dir=self.txn, prefix=f"crumb.{os.getpid()}.")
            with os.fdopen(fd, "w") as f:
                f.write(crumb.to_text())
            os.replace(tmp, self._breadcrumb_path(fqrn))
