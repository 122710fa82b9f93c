"""LRU size quota of the client cache, kept in ``<cache>/cachedb`` and shared by processes."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import ConfigError, CvmfsError
from pycvmfs.format.hashes import ContentHash, ObjectKind

__all__ = ["CacheEntry", "QuotaManager", "QuotaStats", "quota_limit_from_env",
           "remove_dead_temporaries"]

CATALOG, REGULAR = "catalog", "regular"
_BUSY_TIMEOUT_MS = 30_000
_TOUCH_BATCH = 512  # pending touches written at once ...
_TOUCH_INTERVAL = 5.0  # ... or after this many seconds
_OBJECT_DIR = re.compile(r"^[0-9a-f]{2}$")
_TXN_NAME = re.compile(r"^[a-z]+\.(\d+)\.")  # <prefix>.<pid>.<random>: see ObjectCache

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cache_catalog (
    hash TEXT PRIMARY KEY,        -- textual hash, no suffix (one entry per object, §8.5)
    size INTEGER NOT NULL,        -- decompressed bytes on disk
    acseq INTEGER NOT NULL,       -- access sequence: higher = used more recently
    type TEXT NOT NULL,           -- 'catalog' or 'regular'
    pinned INTEGER NOT NULL DEFAULT 0  -- number of processes pinning it (rows in pins)
)""",
    "CREATE INDEX IF NOT EXISTS cache_catalog_acseq ON cache_catalog (acseq)",
    """CREATE TABLE IF NOT EXISTS pins (
    hash TEXT NOT NULL,
    pid INTEGER NOT NULL,
    PRIMARY KEY (hash, pid)
)""",
    # The total size, kept by triggers: every insertion checks it against the limit, and a
    # SUM over the table there would cost time in proportion to the cache's object count.
    # (Databases made before this table get it filled in the same transaction.)
    "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "size INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO totals (id, size) SELECT 1, COALESCE(SUM(size), 0) "
    "FROM cache_catalog",
    "CREATE TRIGGER IF NOT EXISTS cache_catalog_added AFTER INSERT ON cache_catalog "
    "BEGIN UPDATE totals SET size = size + NEW.size WHERE id = 1; END",
    "CREATE TRIGGER IF NOT EXISTS cache_catalog_removed AFTER DELETE ON cache_catalog "
    "BEGIN UPDATE totals SET size = size - OLD.size WHERE id = 1; END",
    "CREATE TRIGGER IF NOT EXISTS cache_catalog_resized AFTER UPDATE OF size ON cache_catalog "
    "BEGIN UPDATE totals SET size = size + NEW.size - OLD.size WHERE id = 1; END",
)


def quota_limit_from_env(env: Callable[[str], str | None] = os.environ.get) -> int | None:
    """``CVMFS_QUOTA_LIMIT`` (MB) in bytes; None when unset or negative (no limit)."""
    text = env("CVMFS_QUOTA_LIMIT")
    if text is None or not text.strip():
        return None
    try:
        mb = int(text.strip())
    except ValueError:
        raise ConfigError(f"CVMFS_QUOTA_LIMIT={text!r} is not a number of megabytes") from None
    return None if mb < 0 else mb * 1024 * 1024


def remove_dead_temporaries(txn: Path) -> int:
    """Delete the temporary files (``<prefix>.<pid>.<random>``) that processes which are no
    longer running left in a cache's ``txn/`` directory; returns how many."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for f in txn.iterdir():
            m = _TXN_NAME.match(f.name)
            if m and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    removed += 1
    return removed


def _call(ref: weakref.ref, method: str, *args) -> None:
    obj = ref()
    if obj is not None:
        getattr(obj, method)(*args)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` can still use the cache. A zombie cannot: a killed mount stays
    one until its parent reaps it, which in a container may be never (or only later)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (or it just went away): trust the signal check
        return True
    return state not in (b"Z", b"X")


@dataclass(frozen=True)
class CacheEntry:
    hash: str
    size: int
    acseq: int
    type: str
    pinned: int


@dataclass(frozen=True)
class QuotaStats:
    limit: int | None  # bytes; None = no limit
    cleanup_target: int | None
    total_bytes: int
    objects: int
    catalogs: int
    catalog_bytes: int
    pinned_objects: int
    pinned_bytes: int
    journal_mode: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _journal_wal(db: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another process creates or converts the
    same new database: SQLite answers "database is locked" there without calling the busy
    handler (it would deadlock), so the busy timeout alone does not cover it."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class QuotaManager:
    """Least-recently-used bookkeeping of the objects in an :class:`ObjectCache` directory.

    Several processes may share one cache: every change is one short ``BEGIN IMMEDIATE``
    transaction (writers queue on the database lock for up to ``busy_timeout``; an immediate
    transaction never has to upgrade a read lock, so it cannot dead-lock with another writer).
    The database runs in WAL mode with ``synchronous=NORMAL``: readers (``stat``/``list``) never
    block writers, and a commit is an append without fsync. A power cut may lose the newest
    commits; that is harmless because the database is an index of the directory that
    :meth:`rebuild` restores (rows without file are dropped, files without row are added).

    Reads only :meth:`touch` an in-memory list that is written in batches (every
    ``_TOUCH_BATCH`` touches or ``_TOUCH_INTERVAL`` seconds, before a cleanup, at close).
    When an insertion takes the total over ``limit``, least-recently-used unpinned objects are
    evicted (file first, then row) down to half the limit, as stock ``CVMFS_QUOTA_LIMIT`` does
    (§8.7). Pins are recorded per process id, so pins of a process that died are dropped (when
    the cache is opened, with the objects it had reserved and its temporary files, and at each
    eviction). The connection is closed before a ``fork()`` and reopened on next use.
    """

    def __init__(self, directory: str | os.PathLike, limit: int | None = None, *,
                 touch_interval: float = _TOUCH_INTERVAL) -> None:
        if limit is not None and limit < 0:
            raise ConfigError(f"cache quota for {directory}: negative limit {limit}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.db_path = self.directory / "cachedb"
        self.limit = limit
        self._touch_interval = touch_interval
        self._lock = threading.RLock()
        self._touches: OrderedDict[str, None] = OrderedDict()
        self._last_flush = time.monotonic()
        self._pins: dict[str, int] = {}  # this process's pin counts; the db holds one row each
        self._pid = os.getpid()
        self._closed = False
        self._db: sqlite3.Connection | None = None
        try:
            with self._write() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
            self._recover()
        except sqlite3.DatabaseError as e:
            raise CvmfsError(f"{self.db_path}: cannot open the cache database: {e}") from e
        # A SQLite connection must not cross fork(): the child would share the parent's lock
        # state without holding its locks, and the parent closing last would delete the WAL
        # under the child's commits. Close it before a fork; each side reopens on next use.
        ref = weakref.ref(self)
        os.register_at_fork(before=lambda: _call(ref, "_before_fork"),
                            after_in_parent=lambda: _call(ref, "_after_fork", False),
                            after_in_child=lambda: _call(ref, "_after_fork", True))

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self._closed:
                raise CvmfsError(f"{self.db_path}: the cache database was closed")
            try:
                db = sqlite3.connect(self.db_path, timeout=_BUSY_TIMEOUT_MS / 1000,
                                     isolation_level=None, check_same_thread=False)
                db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                mode = _journal_wal(db)
                self.journal_mode = str(mode).lower()
                db.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.DatabaseError as e:
                raise CvmfsError(f"{self.db_path}: cannot open the cache database: {e}") from e
            self._db = db
        return self._db

    def _before_fork(self) -> None:
        self._lock.acquire()  # held across the fork: no transaction is cut in two
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _after_fork(self, child: bool) -> None:
        if child:  # the parent's pins are not the child's
            self._pid = os.getpid()
            self._pins.clear()
        self._lock.release()

    def _recover(self) -> None:
        """Clean up after processes that died while using this cache (``kill -9``, a crash):
        drop their pins, the rows of objects they had reserved (:meth:`insert`) but never moved
        into place, and their temporary files."""
        with self._write() as db:
            pids = [r[0] for r in db.execute("SELECT DISTINCT pid FROM pins")]
            dead = [p for p in pids if p != self._pid and not _pid_alive(p)]
            if dead:
                marks = ",".join("?" * len(dead))
                held = [r[0] for r in db.execute(
                    f"SELECT DISTINCT hash FROM pins WHERE pid IN ({marks})", dead)]
                self._drop_dead_pins(db)
                db.executemany("DELETE FROM cache_catalog WHERE hash = ? AND pinned = 0",
                               ((h,) for h in held if not self._path(h).exists()))
        remove_dead_temporaries(self.directory / "txn")

    @property
    def cleanup_target(self) -> int | None:
        return None if self.limit is None else self.limit // 2

    # -- plumbing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database lock from its start."""
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _path(self, text: str) -> Path:
        return self.directory / text[:2] / text[2:]

    def _apply_touches(self, db: sqlite3.Connection) -> None:
        """Write pending touches (inside a write transaction), oldest first."""
        if not self._touches:
            return
        seq = db.execute("SELECT COALESCE(MAX(acseq), 0) FROM cache_catalog").fetchone()[0]
        db.executemany("UPDATE cache_catalog SET acseq = ? WHERE hash = ?",
                       ((seq + i + 1, h) for i, h in enumerate(self._touches)))
        self._touches.clear()
        self._last_flush = time.monotonic()

    def _drop_dead_pins(self, db: sqlite3.Connection) -> int:
        pids = [r[0] for r in db.execute("SELECT DISTINCT pid FROM pins")]
        dead = [p for p in pids if p != self._pid and not _pid_alive(p)]
        for pid in dead:
            hashes = [r[0] for r in db.execute("SELECT hash FROM pins WHERE pid = ?", (pid,))]
            db.execute("DELETE FROM pins WHERE pid = ?", (pid,))
            db.executemany("UPDATE cache_catalog SET pinned = MAX(pinned - 1, 0) WHERE hash = ?",
                           ((h,) for h in hashes))
        return len(dead)

    def _total(self, db: sqlite3.Connection) -> int:
        return db.execute("SELECT size FROM totals WHERE id = 1").fetchone()[0]

    def _evict(self, db: sqlite3.Connection, target: int, exclude: str | None = None) -> int:
        """Evict LRU unpinned objects until the total is at most ``target``; bytes freed."""
        self._apply_touches(db)
        self._drop_dead_pins(db)
        total = start = self._total(db)
        while total > target:
            rows = db.execute("SELECT hash, size FROM cache_catalog WHERE pinned = 0 "
                              "AND hash IS NOT ? ORDER BY acseq LIMIT 256", (exclude,)).fetchall()
            if not rows:
                break
            for h, size in rows:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(h))
                db.execute("DELETE FROM cache_catalog WHERE hash = ?", (h,))
                total -= size
                if total <= target:
                    break
        return start - total

    # -- bookkeeping -------------------------------------------------------------------
    def insert(self, h: ContentHash | str, size: int, kind: ObjectKind | str) -> None:
        """Record a new object of ``size`` bytes, first making room for it under the limit.

        Call it before the object is moved into place (a reservation): the directory then
        never holds more than the limit. An object larger than the limit still goes in, after
        every unpinned object was evicted; the next insertion evicts it unless it is pinned.
        """
        text = str(h)
        typ = CATALOG if kind in (ObjectKind.CATALOG, CATALOG) else REGULAR
        with self._write() as db:
            if self.limit is not None:
                old = db.execute("SELECT size FROM cache_catalog WHERE hash = ?",
                                 (text,)).fetchone()
                if self._total(db) - (old[0] if old else 0) + size > self.limit:
                    self._evict(db, max(0, min(self.limit // 2, self.limit - size)), text)
            self._touches.pop(text, None)
            seq = db.execute("SELECT COALESCE(MAX(acseq), 0) FROM cache_catalog").fetchone()[0]
            db.execute(
                "INSERT INTO cache_catalog (hash, size, acseq, type, pinned) VALUES "
                "(?, ?, ?, ?, (SELECT COUNT(*) FROM pins WHERE hash = ?)) ON CONFLICT(hash) "
                "DO UPDATE SET size = excluded.size, acseq = excluded.acseq, type = excluded.type",
                (text, size, seq + 1, typ, text))

    def remove(self, h: ContentHash | str) -> None:
        """Forget an object (its file is the caller's business)."""
        with self._write() as db:
            self._touches.pop(str(h), None)
            db.execute("DELETE FROM cache_catalog WHERE hash = ?", (str(h),))

    def touch(self, h: ContentHash | str) -> None:
        """Mark an object as just used; written to the database in batches."""
        with self._lock:
            text = str(h)
            self._touches.pop(text, None)
            self._touches[text] = None
            if (len(self._touches) >= _TOUCH_BATCH
                    or time.monotonic() - self._last_flush >= self._touch_interval):
                self.flush()

    def flush(self) -> None:
        """Write pending touches now."""
        with self._lock:
            if self._touches:
                with self._write() as db:
                    self._apply_touches(db)

    def pin(self, h: ContentHash | str) -> None:
        """Protect an object from eviction until :meth:`unpin` (counted per call)."""
        text = str(h)
        with self._lock:
            n = self._pins.get(text, 0)
            if n == 0:
                with self._write() as db:
                    cur = db.execute("INSERT OR IGNORE INTO pins (hash, pid) VALUES (?, ?)",
                                     (text, self._pid))
                    if cur.rowcount:
                        db.execute("UPDATE cache_catalog SET pinned = pinned + 1 WHERE hash = ?",
                                   (text,))
            self._pins[text] = n + 1

    def unpin(self, h: ContentHash | str) -> None:
        text = str(h)
        with self._lock:
            n = self._pins.get(text, 0)
            if n == 0:
                return
            if n > 1:
                self._pins[text] = n - 1
                return
            del self._pins[text]
            with self._write() as db:
                cur = db.execute("DELETE FROM pins WHERE hash = ? AND pid = ?", (text, self._pid))
                if cur.rowcount:
                    db.execute("UPDATE cache_catalog SET pinned = MAX(pinned - 1, 0) "
                               "WHERE hash = ?", (text,))

    def is_pinned(self, h: ContentHash | str) -> bool:
        with self._lock:
            row = self._connect().execute("SELECT 1 FROM pins WHERE hash = ? LIMIT 1",
                                          (str(h),)).fetchone()
            return row is not None

    # -- maintenance -------------------------------------------------------------------
    def cleanup(self, target_bytes: int) -> int:
        """Evict least-recently-used unpinned objects until at most ``target_bytes`` remain.
        Returns the number of bytes freed."""
        with self._write() as db:
            return self._evict(db, max(0, target_bytes))

    def clean(self) -> int:
        """Evict every unpinned object; returns the bytes freed."""
        return self.cleanup(0)

    def stats(self) -> QuotaStats:
        with self._lock:
            self.flush()
            db = self._connect()
            n, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) "
                                  "FROM cache_catalog").fetchone()
            nc, cb = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache_catalog "
                                "WHERE type = ?", (CATALOG,)).fetchone()
            npin, pb = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache_catalog "
                                  "WHERE pinned > 0").fetchone()
            return QuotaStats(self.limit, self.cleanup_target, total, n, nc, cb, npin, pb,
                              self.journal_mode)

    def list(self) -> list[CacheEntry]:
        """All recorded objects, least recently used first."""
        with self._lock:
            self.flush()
            rows = self._connect().execute("SELECT hash, size, acseq, type, pinned "
                                           "FROM cache_catalog ORDER BY acseq").fetchall()
        return [CacheEntry(*r) for r in rows]

    def rebuild(self) -> dict[str, int]:
        """Make the database agree with the directory: add objects it lacks, drop rows whose
        file is gone, fix sizes, drop pins of dead processes and temporary files they left in
        ``txn/``. Returns counts of what was changed."""
        on_disk: dict[str, int] = {}
        mtimes: dict[str, int] = {}
        for sub in self.directory.iterdir():
            if not (_OBJECT_DIR.match(sub.name) and sub.is_dir()):
                continue
            for f in sub.iterdir():
                text = sub.name + f.name
                try:
                    ContentHash.parse(text)
                    st = f.stat()
                except (OSError, ValueError, CvmfsError):
                    continue
                on_disk[text] = st.st_size
                mtimes[text] = st.st_mtime_ns
        removed_tmp = remove_dead_temporaries(self.directory / "txn")
        with self._write() as db:
            self._apply_touches(db)
            dead = self._drop_dead_pins(db)
            known = dict(db.execute("SELECT hash, size FROM cache_catalog").fetchall())
            gone = [h for h in known if h not in on_disk]
            db.executemany("DELETE FROM cache_catalog WHERE hash = ?", ((h,) for h in gone))
            resized = [(s, h) for h, s in on_disk.items() if h in known and known[h] != s]
            db.executemany("UPDATE cache_catalog SET size = ? WHERE hash = ?", resized)
            new = sorted((h for h in on_disk if h not in known), key=mtimes.__getitem__)
            db.executemany(
                "INSERT INTO cache_catalog (hash, size, acseq, type, pinned) VALUES (?, ?, "
                "(SELECT COALESCE(MIN(acseq), 1) - 1 FROM cache_catalog), ?, "
                "(SELECT COUNT(*) FROM pins WHERE hash = ?))",
                ((h, on_disk[h], REGULAR, h) for h in reversed(new)))
        return {"added": len(new), "dropped": len(gone), "resized": len(resized),
                "dead_pins": dead, "temp_files": removed_tmp}

    def close(self) -> None:
        """Write pending touches, release this process's pins and close the database."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(sqlite3.Error, CvmfsError):
                with self._write() as db:
                    self._apply_touches(db)
                    for text in self._pins:
                        if db.execute("DELETE FROM pins WHERE hash = ? AND pid = ?",
                                      (text, self._pid)).rowcount:
                            db.execute("UPDATE cache_catalog SET pinned = MAX(pinned - 1, 0) "
                                       "WHERE hash = ?", (text,))
                self._pins.clear()
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> QuotaManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
