"""The portal's SQLite index of the configured repositories' stacks.

:class:`WebIndex` holds, per repository, what :func:`pycvmfs.web.snapshot.read_snapshot` read
from its head revision through the verified reader. :meth:`WebIndex.refresh` re-reads a
repository only when its signed manifest names another revision (or the last read failed) and
replaces that repository's rows in ONE transaction: with SQLite's WAL, a page being rendered
sees the old index or the new one, never half of each.

When a read fails (a tampered object, catalog or summary; an unreachable server), nothing of
that revision is indexed: the repository's row keeps its previously indexed data and gets the
error text, which every page shows.

With a new revision the index also stores the repository's revisions and size history
(:mod:`pycvmfs.web.repoinfo`) and its container images; at every refresh it compares the
source's stratum 1s with the stratum 0 (:func:`pycvmfs.web.replicas.replica_status`) and
stores their rows (tables in :mod:`pycvmfs.web.repotables`). A refresh also re-indexes when
only the history changed (a new tag on an old revision).

The query methods return JSON-ready dicts (the API's response bodies); unknown names raise
:class:`UnknownName`, malformed diff specs :class:`BadSpec`. The index is a cache of what
the repositories hold: a database of another schema version is emptied and rebuilt.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycvmfs.errors import CvmfsError, StackError
from pycvmfs.stacks.compare import diff_summaries
from pycvmfs.stacks.layout import DAYS
from pycvmfs.stacks.summary import Summary, SummaryEntry, version_key
from pycvmfs.web import repotables
from pycvmfs.web.nightlygrid import nightly_grid
from pycvmfs.web.repoinfo import revisions, size_history
from pycvmfs.web.snapshot import Snapshot, read_snapshot

__all__ = ["BadSpec", "RepoSource", "UnknownName", "WebIndex"]

#: PRAGMA user_version of the index's tables; another version is dropped and rebuilt
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    fqrn TEXT PRIMARY KEY, location TEXT NOT NULL, top TEXT NOT NULL,
    revision INTEGER, root_hash TEXT, history_hash TEXT, published INTEGER, indexed_at REAL,
    error TEXT, error_at REAL, warnings TEXT NOT NULL DEFAULT '[]');
CREATE TABLE IF NOT EXISTS summaries (
    id INTEGER PRIMARY KEY, fqrn TEXT NOT NULL, kind TEXT NOT NULL, stack TEXT NOT NULL,
    day TEXT, platform TEXT NOT NULL, category TEXT NOT NULL, path TEXT NOT NULL,
    version_label TEXT, compiler TEXT, packages_json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS summaries_stack ON summaries(stack, platform, day);
CREATE TABLE IF NOT EXISTS packages (
    summary_id INTEGER NOT NULL REFERENCES summaries(id) ON DELETE CASCADE,
    name TEXT NOT NULL, version TEXT NOT NULL, hash TEXT NOT NULL, full_hash TEXT,
    prefix TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS packages_name ON packages(name);
CREATE INDEX IF NOT EXISTS packages_summary ON packages(summary_id);
CREATE TABLE IF NOT EXISTS nightly_days (
    fqrn TEXT NOT NULL, slot TEXT NOT NULL, day TEXT NOT NULL, platform TEXT NOT NULL,
    state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latest (
    fqrn TEXT NOT NULL, slot TEXT NOT NULL, platform TEXT NOT NULL, day TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, fqrn TEXT NOT NULL, stack TEXT NOT NULL, kind TEXT NOT NULL,
    day TEXT, platform TEXT NOT NULL, site TEXT NOT NULL, status TEXT NOT NULL,
    started REAL NOT NULL, finished REAL NOT NULL, path TEXT NOT NULL, counts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run_packages (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name TEXT NOT NULL, version TEXT NOT NULL, hash TEXT NOT NULL, status TEXT NOT NULL,
    duration REAL NOT NULL, test_status TEXT NOT NULL, test_duration REAL NOT NULL,
    has_test INTEGER NOT NULL, log TEXT, test_log TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS run_packages_run ON run_packages(run_id);
"""

_DATA_TABLES = ("summaries", "nightly_days", "latest", "runs", *repotables.REVISION_TABLES)


class UnknownName(StackError, LookupError):
    """A release, slot, platform, package or repository the index does not know."""


class BadSpec(StackError, ValueError):
    """A diff operand that is neither ``RELEASE/PLATFORM`` nor ``SLOT/DAY/PLATFORM``."""


@dataclass(frozen=True)
class RepoSource:
    """A repository to index: a URL or storage directory, its public keys (files or
    directories), its name (guessed from the location when None), the stacks' top folder,
    the URLs of its stratum 1s and the seconds one may lag before it is stale."""

    location: str
    keys: tuple[str, ...]
    fqrn: str | None = None
    top: str = "lcg"
    replicas: tuple[str, ...] = ()
    stale_after: float = 3600.0

    @property
    def name(self) -> str:
        """The repository name as configured or guessed (the location when it says none)."""
        from pycvmfs.client.repository import guess_fqrn

        return self.fqrn or guess_fqrn(self.location.split(";")[0]) or self.location


class WebIndex(repotables.RepositoryTables):
    """The SQLite index (WAL) at ``db_path`` of ``sources`` (see the module docstring).
    ``cache_dir``: the verified reader's object cache (default: next to the database)."""

    def __init__(self, db_path: str | Path, sources: Sequence[RepoSource] = (), *,
                 cache_dir: str | Path | None = None) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.sources = list(sources)
        self.cache_dir = Path(cache_dir) if cache_dir else self.db_path.with_suffix(".cache")
        self._local = threading.local()
        self._write_lock = threading.Lock()
        #: bumped by every refresh: what was answered before may be out of date
        self.generation = 0
        self._repos: dict[str, Any] = {}
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            _drop_all(db)
        db.executescript(_SCHEMA + repotables.SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- connections -------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = db
        return db

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every SELECT inside sees the same index."""
        db = self._db()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    # -- refreshing --------------------------------------------------------------------------
    def refresh(self) -> list[dict[str, Any]]:
        """Re-index every source whose head revision or history changed (or whose last read
        failed), then check its stratum 1s (:meth:`replicas`); returns per source
        ``{"fqrn", "revision", "changed", "error"}``."""
        with self._write_lock:
            out = []
            try:
                for src in self.sources:
                    outcome = self._refresh_one(src)
                    self._check_replicas(src, outcome)
                    out.append(outcome)
            finally:  # answers kept for the previous index state are stale now
                self.generation += 1
            return out

    def _refresh_one(self, src: RepoSource) -> dict[str, Any]:
        from pycvmfs.client.repository import open_repository

        name = src.name
        try:
            repo = self._repos.get(src.location)
            if repo is None:
                repo = open_repository(src.location, keys=list(src.keys), fqrn=src.fqrn,
                                       cache_dir=self.cache_dir)
                self._repos[src.location] = repo
            manifest = repo.refresh().manifest
            name = repo.fqrn or name
            row = self._db().execute("SELECT revision, root_hash, history_hash, error FROM "
                                     "repositories WHERE fqrn=?", (name,)).fetchone()
            root = str(manifest.root_catalog)
            history = str(manifest.history) if manifest.history is not None else None
            if row and row["revision"] == manifest.revision and row["root_hash"] == root \
                    and row["history_hash"] == history and row["error"] is None:
                return {"fqrn": name, "revision": manifest.revision, "changed": False,
                        "error": None}
            with repo.open_revision() as view:
                snap = read_snapshot(view, name, src.top)
            rows = revisions(repo)
            points = size_history(repo)
        except (CvmfsError, OSError, ValueError, EOFError) as e:
            self._record_error(name, src, f"{type(e).__name__}: {e}")
            return {"fqrn": name, "revision": None, "changed": False, "error": str(e)}
        self._store(name, src, manifest.revision, root, history, manifest.publish_timestamp,
                    snap, rows, points)
        return {"fqrn": name, "revision": manifest.revision, "changed": True, "error": None}

    def _record_error(self, fqrn: str, src: RepoSource, error: str) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO repositories (fqrn, location, top) VALUES (?, ?, ?) "
                       "ON CONFLICT(fqrn) DO NOTHING", (fqrn, src.location, src.top))
            db.execute("UPDATE repositories SET error=?, error_at=? WHERE fqrn=?",
                       (error, time.time(), fqrn))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _store(self, fqrn: str, src: RepoSource, revision: int, root: str,
               history: str | None, published: int | None, snap: Snapshot,
               revision_rows: list[dict[str, Any]], points: list[dict[str, Any]]) -> None:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in _DATA_TABLES:
                db.execute(f"DELETE FROM {table} WHERE fqrn=?", (fqrn,))
            for s in snap.summaries:
                # the table rows of a summary are stored whole, as the API answers them: a
                # package table is then one SQLite read and one C JSON decode per summary
                rows = sorted(({**p, "category": s.category} for p in s.packages),
                              key=_table_order)
                sid = db.execute(
                    "INSERT INTO summaries (fqrn, kind, stack, day, platform, category, path, "
                    "version_label, compiler, packages_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (fqrn, s.kind, s.stack, s.day, s.platform, s.category, s.path,
                     s.version_label, s.compiler,
                     json.dumps(rows, ensure_ascii=False, separators=(",", ":")))).lastrowid
                db.executemany(
                    "INSERT INTO packages VALUES (?,?,?,?,?,?)",
                    [(sid, p["name"], p["version"], p["hash"], p["full_hash"], p["prefix"])
                     for p in s.packages])
            db.executemany("INSERT INTO nightly_days VALUES (?,?,?,?,?)",
                           [(fqrn, d.slot, d.day, d.platform, d.state) for d in snap.days])
            db.executemany("INSERT INTO latest VALUES (?,?,?,?)",
                           [(fqrn, slot, plat, day) for (slot, plat), day in snap.latest.items()])
            for path, run in snap.runs:
                rid = db.execute(
                    "INSERT INTO runs (fqrn, stack, kind, day, platform, site, status, started, "
                    "finished, path, counts) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (fqrn, run.stack, run.kind, run.day, run.platform, run.site, run.status,
                     run.started, run.finished, path, json.dumps(run.counts()))).lastrowid
                db.executemany(
                    "INSERT INTO run_packages VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(rid, p.name, p.version, p.short, p.status, p.duration, p.test_status,
                      p.test_duration, int(p.reports_test), p.log, p.test_log, p.error)
                     for p in run.packages])
            repotables.store_revisions(db, fqrn, revision_rows, points)
            repotables.store_containers(db, fqrn, snap.images)
            db.execute(
                "INSERT INTO repositories (fqrn, location, top, revision, root_hash, "
                "history_hash, published, indexed_at, error, error_at, warnings) "
                "VALUES (?,?,?,?,?,?,?,?,NULL,NULL,?) "
                "ON CONFLICT(fqrn) DO UPDATE SET location=excluded.location, top=excluded.top, "
                "revision=excluded.revision, root_hash=excluded.root_hash, "
                "history_hash=excluded.history_hash, "
                "published=excluded.published, indexed_at=excluded.indexed_at, error=NULL, "
                "error_at=NULL, warnings=excluded.warnings",
                (fqrn, src.location, src.top, revision, root, history, published, time.time(),
                 json.dumps(snap.warnings)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        for repo in self._repos.values():
            repo.close()
        self._repos.clear()
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- queries -----------------------------------------------------------------------------
    def repositories(self) -> list[dict[str, Any]]:
        """Every repository the index knows: revision, root hash, when indexed, last error."""
        with self._read() as db:
            rows = db.execute("SELECT * FROM repositories ORDER BY fqrn").fetchall()
        return [_repository_json(r) for r in rows]

    def repository(self, fqrn: str) -> dict[str, Any]:
        with self._read() as db:
            row = db.execute("SELECT * FROM repositories WHERE fqrn=?", (fqrn,)).fetchone()
        if row is None:
            raise UnknownName(f"repository {fqrn!r} is not indexed here")
        return _repository_json(row)

    def revisions(self, fqrn: str) -> dict[str, Any]:
        """The indexed repository's revisions (newest first) and size history (oldest
        first), as stored at refresh time."""
        with self._read() as db:
            row = db.execute("SELECT revision FROM repositories WHERE fqrn=?",
                             (fqrn,)).fetchone()
            if row is None:
                raise UnknownName(f"repository {fqrn!r} is not indexed here")
            rows, points = repotables.load_revisions(db, fqrn)
        return {"fqrn": fqrn, "indexed_revision": row["revision"], "revisions": rows,
                "size_history": points}

    def source_of(self, fqrn: str) -> RepoSource:
        """The configured source of an indexed repository."""
        repo = self.repository(fqrn)
        for src in self.sources:
            if src.location == repo["location"]:
                return src
        raise UnknownName(f"repository {fqrn!r} is not configured here")

    def releases(self) -> dict[str, Any]:
        """``{"releases": [...], "slots": [...]}``: every release with its platforms, every
        nightly slot with its days."""
        with self._read() as db:
            rel = db.execute(
                "SELECT s.stack, s.fqrn, s.platform, count(p.name) AS n FROM summaries s "
                "LEFT JOIN packages p ON p.summary_id = s.id WHERE s.kind='release' "
                "GROUP BY s.stack, s.fqrn, s.platform").fetchall()
            days = db.execute("SELECT * FROM nightly_days").fetchall()
        releases: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rel:
            entry = releases.setdefault((r["stack"], r["fqrn"]), {
                "name": r["stack"], "fqrn": r["fqrn"], "platforms": []})
            entry["platforms"].append({"platform": r["platform"], "packages": r["n"]})
        slots: dict[tuple[str, str], set[str]] = {}
        for d in days:
            slots.setdefault((d["slot"], d["fqrn"]), set()).add(d["day"])
        out_rel = sorted(releases.values(), key=lambda e: (version_key(e["name"]), e["fqrn"]),
                         reverse=True)
        for e in out_rel:
            e["platforms"] = _merge_platforms(e["platforms"])
        return {"releases": out_rel,
                "slots": [{"name": s, "fqrn": f, "days": sorted(d, key=DAYS.index)}
                          for (s, f), d in sorted(slots.items())]}

    def release(self, name: str) -> dict[str, Any]:
        """A release's platforms with their compiler and package counts."""
        with self._read() as db:
            rows = db.execute(
                "SELECT s.fqrn, s.platform, s.category, s.version_label, s.compiler, "
                "count(p.name) AS n FROM summaries s LEFT JOIN packages p ON p.summary_id=s.id "
                "WHERE s.kind='release' AND s.stack=? GROUP BY s.id ORDER BY s.platform",
                (name,)).fetchall()
        if not rows:
            raise UnknownName(f"release {name!r} is not in any indexed repository")
        platforms: dict[str, dict[str, Any]] = {}
        for r in rows:
            p = platforms.setdefault(r["platform"], {
                "platform": r["platform"], "fqrn": r["fqrn"], "version": r["version_label"],
                "compiler": r["compiler"], "externals": 0, "generators": 0})
            p[r["category"]] += r["n"]
        return {"name": name, "platforms": list(platforms.values())}

    def release_packages(self, name: str, platform: str, day: str | None = None
                         ) -> dict[str, Any]:
        """The package table of release ``name`` (``day`` None) or of slot ``name`` on
        ``day`` (a day of the ring or ``latest``) for ``platform``."""
        with self._read() as db:
            return self._packages_of(db, name, platform, day)

    def _packages_of(self, db: sqlite3.Connection, name: str, platform: str,
                     day: str | None) -> dict[str, Any]:
        what = f"release {name}" if day is None else f"nightly {name}/{day}"
        if day == "latest":
            row = db.execute("SELECT day FROM latest WHERE slot=? AND platform=?",
                             (name, platform)).fetchone()
            if row is None:
                raise UnknownName(f"slot {name!r} has no complete build for {platform}")
            day = row["day"]
        kind = "release" if day is None else "nightly"
        sums = db.execute("SELECT * FROM summaries WHERE kind=? AND stack=? AND platform=? AND "
                          "day IS ? ORDER BY category", (kind, name, platform, day)).fetchall()
        if not sums:
            raise UnknownName(f"{what} has no summary for platform {platform!r}")
        packages = []
        for s in sums:
            packages.extend(json.loads(s["packages_json"]))
        if len(sums) > 1:
            packages.sort(key=_table_order)
        first = sums[0]
        return {"stack": name, "platform": platform, "day": day, "fqrn": first["fqrn"],
                "version": first["version_label"], "compiler": first["compiler"],
                "packages": packages}

    def package(self, name: str) -> dict[str, Any]:
        """Every version of package ``name``: its builds and where each is used."""
        with self._read() as db:
            rows = db.execute(
                "SELECT p.version, p.hash, p.full_hash, p.prefix, s.kind, s.stack, s.day, "
                "s.platform, s.fqrn FROM packages p JOIN summaries s ON p.summary_id=s.id "
                "WHERE p.name=? ORDER BY s.stack, s.day, s.platform", (name,)).fetchall()
        if not rows:
            raise UnknownName(f"package {name!r} is in no indexed release or nightly")
        versions: dict[str, dict[str, Any]] = {}
        for r in rows:
            v = versions.setdefault(r["version"], {"version": r["version"], "builds": {}})
            b = v["builds"].setdefault(r["hash"], {"hash": r["hash"],
                                                   "full_hash": r["full_hash"], "used_in": []})
            b["used_in"].append({"kind": r["kind"], "stack": r["stack"], "day": r["day"],
                                 "platform": r["platform"], "fqrn": r["fqrn"],
                                 "prefix": r["prefix"]})
        out = sorted(versions.values(), key=lambda v: version_key(v["version"]), reverse=True)
        for v in out:
            v["builds"] = list(v["builds"].values())
        return {"name": name, "versions": out}

    def search(self, q: str, limit: int = 200) -> list[dict[str, Any]]:
        """Packages whose name or version contains ``q`` (case-insensitive): one row per
        (name, version) with the releases and slots holding it."""
        q = q.strip()
        if not q:
            return []
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._read() as db:
            rows = db.execute(
                "SELECT p.name, p.version, group_concat(DISTINCT s.stack) AS stacks "
                "FROM packages p JOIN summaries s ON p.summary_id=s.id "
                "WHERE p.name LIKE ? ESCAPE '\\' OR p.version LIKE ? ESCAPE '\\' "
                "GROUP BY p.name, p.version ORDER BY p.name LIMIT ?",
                (pattern, pattern, limit)).fetchall()
        return [{"name": r["name"], "version": r["version"],
                 "stacks": sorted(r["stacks"].split(","))} for r in rows]

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """What changed from ``a`` to ``b``; each is ``RELEASE/PLATFORM``,
        ``SLOT/DAY/PLATFORM`` or ``SLOT/latest/PLATFORM``."""
        with self._read() as db:
            left, right = self._summary_of(db, a), self._summary_of(db, b)
        return diff_summaries(left, right, a_label=a, b_label=b).to_json()

    def _summary_of(self, db: sqlite3.Connection, spec: str) -> Summary:
        parts = spec.strip().strip("/").split("/")
        if len(parts) == 2 and all(parts):
            table = self._packages_of(db, parts[0], parts[1], None)
        elif len(parts) == 3 and all(parts):
            if parts[1] != "latest" and parts[1] not in DAYS:
                raise BadSpec(f"diff operand {spec!r}: {parts[1]!r} is neither a day of the "
                              f"nightly ring ({', '.join(DAYS)}) nor 'latest'")
            table = self._packages_of(db, parts[0], parts[2], parts[1])
        else:
            raise BadSpec(f"diff operand {spec!r}: expected RELEASE/PLATFORM or "
                          "SLOT/DAY/PLATFORM")
        entries = [SummaryEntry(p["name"], p["hash"], p["version"], p["directory"],
                                tuple(f"{d['name']}-{d['hash']}" for d in p["depends"]))
                   for p in table["packages"]]
        return Summary(platform=table["platform"], version=table["version"], compiler=None,
                       entries=entries)

    def nightly(self, slot: str) -> dict[str, Any]:
        """The grid of slot ``slot`` (:func:`pycvmfs.web.nightlygrid.nightly_grid`)."""
        with self._read() as db:
            grid = nightly_grid(db, slot)
        if grid is None:
            raise UnknownName(f"nightly slot {slot!r} is not in any indexed repository")
        return grid


def _table_order(p: dict[str, Any]) -> tuple[str, str]:
    """Rows of a package table: by name (case-insensitive), then hash."""
    return p["name"].lower(), p["hash"]


def _drop_all(db: sqlite3.Connection) -> None:
    """Every table and index of an index of another schema version."""
    names = db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index') "
                       "AND name NOT LIKE 'sqlite_%'").fetchall()
    db.execute("PRAGMA foreign_keys=OFF")
    for kind, name in names:
        if kind == "table":
            db.execute(f'DROP TABLE IF EXISTS "{name}"')
    db.execute("PRAGMA foreign_keys=ON")


def _repository_json(r: sqlite3.Row) -> dict[str, Any]:
    return {"fqrn": r["fqrn"], "location": r["location"], "top": r["top"],
            "revision": r["revision"], "root_hash": r["root_hash"],
            "published": r["published"], "indexed_at": r["indexed_at"],
            "error": r["error"], "error_at": r["error_at"],
            "warnings": json.loads(r["warnings"])}


def _merge_platforms(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per platform (externals and generators summaries counted together)."""
    merged: dict[str, int] = {}
    for i in items:
        merged[i["platform"]] = merged.get(i["platform"], 0) + i["packages"]
    return [{"platform": p, "packages": n} for p, n in sorted(merged.items())]
