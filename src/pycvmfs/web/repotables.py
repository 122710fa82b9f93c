"""The portal index's repository-level tables: revisions, size history, container images and
replica status rows (and :class:`RepositoryTables`, the part of the index using them).

:class:`pycvmfs.web.index.WebIndex` fills them at refresh time (revisions, size history and
images with the rest of a revision's data, in the same transaction; replica rows after every
check of the stratum 1s) and answers the browser, replica and container pages from them, so
no page walks a catalog. Rows are kept as the JSON the producers answered
(:func:`pycvmfs.web.repoinfo.revisions`, :func:`pycvmfs.web.replicas.replica_status`,
:func:`pycvmfs.web.snapshot.read_snapshot`), keyed by repository and position.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from pycvmfs.errors import CvmfsError
from pycvmfs.web.replicas import prometheus_metrics, replica_status
from pycvmfs.web.repoinfo import iso_date

__all__ = ["SCHEMA", "RepositoryTables", "alarm", "duration", "load_containers",
           "load_replicas", "load_revisions", "replace_replicas", "store_containers",
           "store_revisions", "unchecked_rows"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    fqrn TEXT NOT NULL, position INTEGER NOT NULL, revision INTEGER NOT NULL,
    root_hash TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (fqrn, position));
CREATE TABLE IF NOT EXISTS size_points (
    fqrn TEXT NOT NULL, position INTEGER NOT NULL, revision INTEGER NOT NULL, date TEXT,
    bytes INTEGER, files INTEGER, PRIMARY KEY (fqrn, position));
CREATE TABLE IF NOT EXISTS containers (
    fqrn TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (fqrn, name));
CREATE TABLE IF NOT EXISTS replicas (
    fqrn TEXT NOT NULL, position INTEGER NOT NULL, data TEXT NOT NULL,
    checked_at REAL NOT NULL, stale_after REAL NOT NULL, PRIMARY KEY (fqrn, position));
"""

#: the tables replaced with each indexed revision (replicas are replaced per check)
REVISION_TABLES = ("revisions", "size_points", "containers")


# -- revisions and size history ----------------------------------------------------------

def store_revisions(db: sqlite3.Connection, fqrn: str, rows: Sequence[Mapping[str, Any]],
                    points: Sequence[Mapping[str, Any]]) -> None:
    """Rows of :func:`~pycvmfs.web.repoinfo.revisions` (newest first) and points of
    :func:`~pycvmfs.web.repoinfo.size_history` (oldest first), in the caller's transaction."""
    db.executemany("INSERT INTO revisions VALUES (?,?,?,?,?)",
                   [(fqrn, i, r["revision"], r["root_hash"], json.dumps(r))
                    for i, r in enumerate(rows)])
    db.executemany("INSERT INTO size_points VALUES (?,?,?,?,?,?)",
                   [(fqrn, i, p["revision"], p["date"], p["bytes"], p["files"])
                    for i, p in enumerate(points)])


def load_revisions(db: sqlite3.Connection, fqrn: str
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(revisions newest first, size history oldest first) of ``fqrn``."""
    rows = [json.loads(r["data"]) for r in db.execute(
        "SELECT data FROM revisions WHERE fqrn=? ORDER BY position", (fqrn,))]
    points = [{"revision": p["revision"], "date": p["date"], "bytes": p["bytes"],
               "files": p["files"]} for p in db.execute(
        "SELECT * FROM size_points WHERE fqrn=? ORDER BY position", (fqrn,))]
    return rows, points


# -- container images --------------------------------------------------------------------

def store_containers(db: sqlite3.Connection, fqrn: str,
                     images: Iterable[Mapping[str, Any]]) -> None:
    db.executemany("INSERT INTO containers VALUES (?,?,?)",
                   [(fqrn, i["name"], json.dumps(i)) for i in images])


def load_containers(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every indexed image, by repository and name, with ``fqrn`` and ``published_date``."""
    out = []
    for r in db.execute("SELECT fqrn, data FROM containers ORDER BY fqrn, name"):
        image = json.loads(r["data"])
        out.append({"fqrn": r["fqrn"], **image,
                    "published_date": iso_date(image["published"] or None)})
    return out


# -- replicas ----------------------------------------------------------------------------

def unchecked_rows(fqrn: str, replicas: Sequence[str], stratum0_revision: int | None,
                   error: str) -> list[dict[str, Any]]:
    """Rows for stratum 1s that could not be compared (the stratum 0 could not be read), in
    the shape :func:`~pycvmfs.web.replicas.replica_status` answers."""
    return [{"replica": url, "fqrn": fqrn, "verified": False, "revision": None,
             "root_hash": None, "published": None, "published_timestamp": None,
             "last_snapshot": None, "last_snapshot_timestamp": None, "snapshotting": False,
             "stratum0_revision": stratum0_revision, "lag_revisions": None,
             "lag_seconds": None, "behind_since": None, "stale": True,
             "error": f"{url}: not checked, {error}"} for url in replicas]


def replace_replicas(db: sqlite3.Connection, fqrn: str, rows: Sequence[Mapping[str, Any]],
                     checked_at: float, stale_after: float) -> None:
    """The replica rows of ``fqrn`` replaced by ``rows``, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("DELETE FROM replicas WHERE fqrn=?", (fqrn,))
        db.executemany("INSERT INTO replicas VALUES (?,?,?,?,?)",
                       [(fqrn, i, json.dumps(r), checked_at, stale_after)
                        for i, r in enumerate(rows)])
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.0 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def alarm(row: Mapping[str, Any], stale_after: float) -> str | None:
    """Why a replica row needs attention, in words (None when it is up to date or lags
    within ``stale_after`` seconds)."""
    if not row["stale"] and not row["error"]:
        return None
    if not row["verified"]:
        return f"unreachable or refused: {row['error']}"
    if row["error"]:
        return row["error"]
    lag = row["lag_revisions"]
    behind = f"{lag} revision{'s' if lag != 1 else ''} behind"
    if row["lag_seconds"] is None:
        return f"stale: {behind}, since before the stratum 0's recent revisions"
    return (f"stale: {behind} for {duration(row['lag_seconds'])} "
            f"(allowed: {duration(stale_after)})")


def load_replicas(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every replica row with ``checked_at``, ``stale_after`` and ``alarm``."""
    out = []
    for r in db.execute("SELECT * FROM replicas ORDER BY fqrn, position"):
        row = json.loads(r["data"])
        out.append({**row, "stale_after": r["stale_after"], "checked_at": r["checked_at"],
                    "alarm": alarm(row, r["stale_after"])})
    return out


class RepositoryTables:
    """The replica checks and the replica, container and metrics queries of
    :class:`pycvmfs.web.index.WebIndex` (a mixin: it provides the connections, the readers
    of the stratum 0s and the cache directory)."""

    _repos: dict[str, Any]
    cache_dir: Path

    def _db(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _check_replicas(self, src: Any, outcome: dict[str, Any]) -> None:
        """Compare the stratum 1s of ``src`` with its stratum 0 and store the rows (none:
        the rows of stratum 1s no longer configured go)."""
        fqrn = outcome["fqrn"]
        repo = self._repos.get(src.location)
        if not src.replicas:
            rows: list[dict[str, Any]] = []
        elif outcome["error"] or repo is None:
            rows = unchecked_rows(
                fqrn, src.replicas, None,
                f"the stratum 0 {fqrn} could not be read ({outcome['error']})")
        else:
            try:
                rows = replica_status(repo, src.replicas, keys=src.keys,
                                      stale_after=src.stale_after,
                                      cache_dir=self.cache_dir / "replicas")
            except (CvmfsError, OSError, ValueError, EOFError) as e:
                rows = unchecked_rows(
                    fqrn, src.replicas, None, f"the stratum 0 {fqrn} could not be read ({e})")
        replace_replicas(self._db(), fqrn, rows, time.time(), src.stale_after)


    def replicas(self) -> dict[str, Any]:
        """Every stratum 1 row of the last check, ``alarm`` naming what is wrong."""
        with self._read() as db:
            rows = load_replicas(db)
        return {"replicas": rows, "alarms": sum(r["alarm"] is not None for r in rows)}

    def containers(self) -> dict[str, Any]:
        """Every container image of the indexed revisions (``.metadata/images.json``)."""
        with self._read() as db:
            return {"images": load_containers(db)}

    def metrics(self) -> str:
        """The replica rows and each repository's indexed head (revision, publish time,
        files, bytes) in the Prometheus text format."""
        with self._read() as db:
            rows = load_replicas(db)
            heads = db.execute(
                "SELECT r.fqrn, r.revision, r.published, v.data FROM repositories r "
                "LEFT JOIN revisions v ON v.fqrn=r.fqrn AND v.root_hash=r.root_hash "
                "WHERE r.revision IS NOT NULL ORDER BY r.fqrn").fetchall()
        infos: dict[str, dict[str, Any]] = {}
        for h in heads:
            figures = json.loads(h["data"]) if h["data"] else {}
            infos.setdefault(h["fqrn"], {
                "fqrn": h["fqrn"], "revision": h["revision"],
                "published_timestamp": h["published"] or None,
                "files": figures.get("files"), "bytes": figures.get("bytes")})
        return prometheus_metrics(rows, infos.values())

