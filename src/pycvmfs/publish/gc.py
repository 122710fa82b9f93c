"""Garbage collection of a stratum-0 repository (format doc §10.4), with an on-disk object set."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pycvmfs.errors import ConfigError, CvmfsError, IntegrityError, ObjectNotFoundError
from pycvmfs.format.catalog import Catalog
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.format.history import History
from pycvmfs.format.manifest import Manifest
from pycvmfs.format.reflog import Reflog
from pycvmfs.publish.signing import copy_to_file, reflog_trusted, upload_reflog
from pycvmfs.storage.local import LocalStorage
from pycvmfs.storage.objects import download_verified

if TYPE_CHECKING:
    from pycvmfs.publish.repository import Publisher
    from pycvmfs.storage.base import Source

__all__ = ["DEFAULT_KEEP_SECONDS", "GcReport", "ObjectSet", "collect_garbage", "load_catalog"]

#: ``cvmfs_server gc`` keeps revisions of the last three days unless told otherwise.
DEFAULT_KEEP_SECONDS = 3 * 24 * 3600

REFLOG = ".cvmfsreflog"
_BATCH = 4096
_AUX_KINDS = (ObjectKind.CERTIFICATE, ObjectKind.HISTORY, ObjectKind.METAINFO)
_KIND_BY_SUFFIX = {k.suffix: k for k in ObjectKind}

_RootInfo = tuple[int, int, ContentHash | None]  # revision, last_modified, previous_revision

#: progress(stage, done, total or None)
Progress = Callable[[str, int, int | None], None]


def object_relpath(name: str) -> str:
    """``data/XX/...`` of an object name (textual hash plus suffix)."""
    return f"data/{name[:2]}/{name[2:]}"


class ObjectSet:
    """A set of object names in an SQLite table, so that memory does not grow with the number
    of objects. Several sets can share one scratch database (``conn``)."""

    def __init__(self, conn: sqlite3.Connection, table: str) -> None:
        self._conn = conn
        self.table = table
        conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (name TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, name: str) -> bool:
        """Add one name; whether it was new."""
        cur = self._conn.execute(f"INSERT OR IGNORE INTO {self.table} (name) VALUES (?)",
                                 (name,))
        return cur.rowcount > 0

    def update(self, names: Iterable[str]) -> None:
        """Add many names, in batches."""
        for batch in _batches(names):
            self._conn.executemany(f"INSERT OR IGNORE INTO {self.table} (name) VALUES (?)",
                                   ((n,) for n in batch))

    def __contains__(self, name: str) -> bool:
        row = self._conn.execute(f"SELECT 1 FROM {self.table} WHERE name = ?", (name,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        return int(self._conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def new_among(self, names: list[str], *, excluding: Iterable[ObjectSet] = ()) -> list[str]:
        """The names of one batch that are neither here nor in ``excluding``; they are added.

        Runs as set operations inside SQLite (one temporary table per call)."""
        conn = self._conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS _batch (name TEXT PRIMARY KEY) "
                     "WITHOUT ROWID")
        conn.execute("DELETE FROM _batch")
        conn.executemany("INSERT OR IGNORE INTO _batch (name) VALUES (?)", ((n,) for n in names))
        where = " AND ".join(f"name NOT IN (SELECT name FROM {s.table})"
                             for s in (self, *excluding))
        new = [r[0] for r in conn.execute(f"SELECT name FROM _batch WHERE {where}")]
        conn.executemany(f"INSERT INTO {self.table} (name) VALUES (?)", ((n,) for n in new))
        conn.execute("DELETE FROM _batch")
        return new


def open_scratch(path: Path) -> sqlite3.Connection:
    """A throw-away SQLite database for object sets: no fsync, a bounded cache, and one
    transaction for its whole life (nothing in it needs to survive a crash). Every page is new
    within that transaction, so the in-memory rollback journal stays empty."""
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = MEMORY")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -8192")  # 8 MiB at most
    conn.execute("PRAGMA temp_store = FILE")
    conn.execute("BEGIN")
    return conn


def _batches(items: Iterable, size: int = _BATCH) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_catalog(source: Source, h: ContentHash, dest: Path, *, what: str) -> tuple[Catalog, int]:
    """Download catalog ``h`` verified into ``dest`` and open it; (catalog, uncompressed size).

    Raises :class:`ObjectNotFoundError` when it is missing, :class:`IntegrityError` when its bytes
    are bad, :class:`FormatError` when it is not a catalog."""
    dest.unlink(missing_ok=True)
    with open(dest, "wb") as f:
        _stored, size = download_verified(source, h, ObjectKind.CATALOG, Compression.ZLIB,
                                          f, what=what)
    return Catalog.open(dest, what=what, hash=h), size


def catalog_objects(cat: Catalog) -> Iterator[str]:
    """Names of the data objects and chunks a catalog references (external files excluded)."""
    for h, _comp, _size in cat.all_file_hashes():
        yield h.object_name(ObjectKind.FILE)
    for h, _comp, _size in cat.all_chunk_hashes():
        yield h.object_name(ObjectKind.PARTIAL)


@dataclass
class GcReport:
    """What a garbage collection kept and removed (or, with ``dry_run``, would remove)."""

    fqrn: str
    dry_run: bool
    revisions_kept: list[int] = field(default_factory=list)  # trunk chain, newest first
    tags_kept: list[str] = field(default_factory=list)
    catalogs_preserved: int = 0
    root_catalogs_swept: list[str] = field(default_factory=list)  # removed from the reflog
    catalogs_swept: int = 0  # catalogs traversed in swept trees
    objects_deleted: Counter = field(default_factory=Counter)  # kind label -> objects
    bytes_deleted: Counter = field(default_factory=Counter)  # kind label -> stored bytes
    deleted: list[str] | None = None  # relative paths, when asked for (``record_deleted``)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def objects(self) -> int:
        return sum(self.objects_deleted.values())

    @property
    def bytes(self) -> int:
        return sum(self.bytes_deleted.values())

    def to_dict(self) -> dict:
        return {
            "fqrn": self.fqrn, "dry_run": self.dry_run, "revisions_kept": self.revisions_kept,
            "tags_kept": self.tags_kept, "catalogs_preserved": self.catalogs_preserved,
            "root_catalogs_swept": self.root_catalogs_swept,
            "catalogs_swept": self.catalogs_swept, "objects_deleted": self.objects,
            "bytes_deleted": self.bytes,
            "objects_by_kind": dict(sorted(self.objects_deleted.items())),
            "bytes_by_kind": dict(sorted(self.bytes_deleted.items())),
            "warnings": self.warnings, "seconds": round(self.seconds, 3),
        }


def collect_garbage(publisher: Publisher, *, keep_revisions: int | None = None,
                    keep_seconds: int | None = DEFAULT_KEEP_SECONDS, dry_run: bool = False,
                    progress: Progress | None = None, record_deleted: bool = False,
                    deletion_log: str | os.PathLike | None = None,
                    now: float | None = None) -> GcReport:
    """Delete the objects no preserved revision needs (``cvmfs_server gc``, format doc §10.4).

    Preserved: the trunk and its ``previous_revision`` chain — walking back from a revision
    continues only while it is less than ``keep_revisions`` steps from HEAD and was published
    after ``now - keep_seconds`` (``None`` lifts a bound), so the first revision beyond a bound
    is still kept — plus the complete trees of every tag in the history. Swept: the trees of
    the root catalogs in the reflog that are not preserved, and the certificate, history and
    meta-info objects in the reflog older than the oldest kept trunk revision, except those the
    manifest names. The reflog loses the swept entries and is uploaded with a new
    ``reflog.chksum``; the manifest is not re-signed. Holds the publish lock throughout.
    ``dry_run`` reports the same without changing anything.
    """
    if keep_revisions is not None and keep_revisions < 0:
        raise ConfigError(f"keep_revisions must not be negative ({keep_revisions})")
    if keep_seconds is not None and keep_seconds < 0:
        raise ConfigError(f"keep_seconds must not be negative ({keep_seconds})")
    started = time.monotonic()
    with publisher.lock():
        head = publisher.head()
        _require_collectable(publisher, head)
        work = publisher.config.work_dir / f"gc-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log = open(deletion_log, "w") if deletion_log is not None else None  # noqa: SIM115
        try:
            gc = _Collector(publisher, head, work, dry_run=dry_run, progress=progress,
                            record=record_deleted, log=log)
            try:
                gc.preserve(keep_revisions, keep_seconds,
                            time.time() if now is None else float(now))
                gc.sweep()
            finally:
                gc.close()
            report = gc.report
        finally:
            if log is not None:
                log.close()
            shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def _require_collectable(publisher: Publisher, head: Manifest) -> None:
    fqrn = publisher.fqrn
    if not publisher.settings.garbage_collection:
        raise ConfigError(f"repository {fqrn} is not garbage-collectable: "
                          f"CVMFS_GARBAGE_COLLECTION is off in {publisher.config.server_conf}")
    if not head.garbage_collectable:
        raise ConfigError(f"repository {fqrn} is not garbage-collectable: its current manifest "
                          "says G=no (publish once after enabling CVMFS_GARBAGE_COLLECTION)")


class _Collector:
    """One run: the preserved set, then the sweep, then the reflog."""

    def __init__(self, publisher: Publisher, head: Manifest, work: Path, *, dry_run: bool,
                 progress: Progress | None, record: bool, log: TextIO | None) -> None:
        self.pub = publisher
        self.store = publisher.store
        self.head = head
        self.work = work
        self.dry_run = dry_run
        self.progress = progress
        self.log = log
        self.report = GcReport(fqrn=publisher.fqrn, dry_run=dry_run,
                               deleted=[] if record else None)
        self.reflog = self._open_reflog()
        self.db = open_scratch(work / "objects.db")
        self.preserved = ObjectSet(self.db, "preserved")
        self.visited = ObjectSet(self.db, "visited")  # catalogs of swept trees, traversed
        self.condemned = ObjectSet(self.db, "condemned")
        self.db.execute("CREATE TABLE condemned_catalogs (seq INTEGER PRIMARY KEY, name TEXT)")
        self.oldest_trunk: int | None = None

    def close(self) -> None:
        self.reflog.close()
        self.db.close()

    def _progress(self, stage: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    # -- the reflog ----------------------------------------------------------------------
    def _open_reflog(self) -> Reflog:
        src = self.store.describe(REFLOG)
        known = self.pub.config.reflog_checksum_path
        copy = self.work / "reflog.db"
        if not copy_to_file(self.store, REFLOG, copy, what=src):
            raise ConfigError(f"{src}: no reflog; garbage collection needs the list of objects "
                              "the repository ever published")
        if not known.exists():
            raise ConfigError(f"{known}: missing; the reflog {src} cannot be trusted without "
                              "its checksum")
        if not reflog_trusted(known, copy):
            raise IntegrityError(f"{src}: its hash differs from {known}; "
                                 "refusing to collect garbage with an unknown reflog")
        return Reflog.open(copy, what=src, writable=True)

    def _save_reflog(self) -> None:
        self.reflog.close()
        data = (self.work / "reflog.db").read_bytes()
        upload_reflog(self.store, self.pub.config.reflog_checksum_path, data,
                      self.head.algorithm)

    # -- preserving ----------------------------------------------------------------------
    def _load(self, h: ContentHash, what: str) -> tuple[Catalog, int]:
        return load_catalog(self.store, h, self.work / "catalog.db", what=what)

    def _preserve_tree(self, root: ContentHash, what: str) -> _RootInfo | None:
        """Add a catalog tree and everything it references to the preserved set. A catalog
        already preserved had its whole subtree added, so it is not entered again. Returns
        the root's (revision, last_modified, previous_revision) if it was entered."""
        stack: list[tuple[ContentHash, str]] = [(root, what)]
        info = None
        while stack:
            h, label = stack.pop()
            if not self.preserved.add(h.object_name(ObjectKind.CATALOG)):
                continue
            try:
                cat, _size = self._load(h, label)
            except ObjectNotFoundError:
                raise IntegrityError(f"{label}: {h.describe(ObjectKind.CATALOG)} is missing; "
                                     "refusing to collect garbage of an incomplete "
                                     "repository") from None
            with cat:
                if h is root:
                    info = (cat.revision, cat.last_modified, cat.previous_revision)
                self.preserved.update(catalog_objects(cat))
                for ref in cat.nested_catalogs():
                    if ref.hash is not None:
                        stack.append((ref.hash, f"{label}, nested catalog at "
                                                f"{os.fsdecode(ref.path)}"))
            self.report.catalogs_preserved += 1
            self._progress("preserving", self.report.catalogs_preserved, None)
        return info

    def _root_info(self, h: ContentHash, what: str) -> _RootInfo:
        cat, _ = self._load(h, what)
        with cat:
            return cat.revision, cat.last_modified, cat.previous_revision

    def preserve(self, keep_revisions: int | None, keep_seconds: int | None, now: float) -> None:
        threshold = None if keep_seconds is None else now - keep_seconds
        h: ContentHash | None = self.head.root_catalog
        depth = 0
        while h is not None:
            what = f"revision at depth {depth} ({h.describe(ObjectKind.CATALOG)})"
            info = self._preserve_tree(h, what) or self._root_info(h, what)
            revision, last_modified, previous = info
            stamp = self.reflog.timestamp(h, ObjectKind.CATALOG)
            stamp = last_modified if stamp is None else stamp
            self.report.revisions_kept.append(revision)
            self.oldest_trunk = stamp if self.oldest_trunk is None else min(self.oldest_trunk,
                                                                            stamp)
            if keep_revisions is not None and depth >= keep_revisions:
                break
            if threshold is not None and stamp <= threshold:
                break
            if previous is None or not self.store.exists(previous.object_path(ObjectKind.CATALOG)):
                break  # the start of the repository, or swept by an earlier collection
            h, depth = previous, depth + 1
        for tag in self._tags():
            self._preserve_tree(tag.root_hash, f"tag {tag.name!r}")
            self.report.tags_kept.append(tag.name)

    def _tags(self) -> list:
        h = self.head.history
        if h is None:
            return []
        path = self.work / "history.db"
        with open(path, "wb") as f:
            download_verified(self.store, h, ObjectKind.HISTORY, Compression.ZLIB, f)
        with History.open(path, what=h.describe(ObjectKind.HISTORY)) as hist:
            tags = hist.tags()
        path.unlink()
        return tags

    # -- sweeping ------------------------------------------------------------------------
    def sweep(self) -> None:
        entries = self.reflog.entries()
        roots = [e.hash for e in entries if e.kind is ObjectKind.CATALOG
                 and e.hash.object_name(ObjectKind.CATALOG) not in self.preserved]
        for n, root in enumerate(roots, 1):
            self._sweep_tree(root)
            self._progress("sweeping", n, len(roots))
        rows = self.db.execute("SELECT name FROM condemned_catalogs ORDER BY seq DESC")
        for (name,) in rows:  # pre-order reversed: nested catalogs before their parents
            self._delete(name, ObjectKind.CATALOG)
        keep = {str(h) for h in (self.head.certificate, self.head.history,
                                 self.head.meta_info) if h is not None}
        aux = [e for e in entries if e.kind in _AUX_KINDS and str(e.hash) not in keep
               and self.oldest_trunk is not None and e.timestamp < self.oldest_trunk]
        for e in aux:
            self._delete(e.hash.object_name(e.kind), e.kind)
        self.report.root_catalogs_swept = [str(h) for h in roots]
        if self.dry_run or not (roots or aux):
            return
        for h in roots:
            self.reflog.remove(h, ObjectKind.CATALOG)
        for e in aux:
            self.reflog.remove(e.hash, e.kind)
        self._save_reflog()

    def _sweep_tree(self, root: ContentHash) -> None:
        stack = [root]
        while stack:
            h = stack.pop()
            name = h.object_name(ObjectKind.CATALOG)
            if name in self.preserved or not self.visited.add(name):
                continue
            what = f"swept {h.describe(ObjectKind.CATALOG)}"
            try:
                cat, _size = self._load(h, what)
            except ObjectNotFoundError:
                continue  # removed by an earlier, interrupted collection
            except CvmfsError as e:
                self.report.warnings.append(f"{what}: unreadable ({e}); deleting it, the "
                                            "objects only it referenced stay behind")
                self.db.execute("INSERT INTO condemned_catalogs (name) VALUES (?)", (name,))
                continue
            with cat:
                for batch in _batches(catalog_objects(cat)):
                    for obj in self.condemned.new_among(batch, excluding=(self.preserved,)):
                        self._delete(obj, _KIND_BY_SUFFIX[_suffix(obj)])
                stack.extend(ref.hash for ref in cat.nested_catalogs() if ref.hash is not None)
            self.report.catalogs_swept += 1
            self.db.execute("INSERT INTO condemned_catalogs (name) VALUES (?)", (name,))

    def _delete(self, name: str, kind: ObjectKind) -> None:
        rel = object_relpath(name)
        size = self._stored_size(rel)
        if size is None:
            return
        if not self.dry_run:
            self.store.delete(rel)
        r = self.report
        r.objects_deleted[kind.label] += 1
        r.bytes_deleted[kind.label] += size
        if r.deleted is not None:
            r.deleted.append(rel)
        if self.log is not None:
            self.log.write(name + "\n")


    def _stored_size(self, rel: str) -> int | None:
        """The object's stored size, None when it is not there (a stat, or a HEAD upstream)."""
        if isinstance(self.store, LocalStorage):
            try:
                return os.stat(self.store.root / rel).st_size
            except FileNotFoundError:
                return None
        return self.store.size(rel)


def _suffix(name: str) -> str:
    last = name[-1]
    return last if last in "PCHXM" else ""

